"""The installable package: one import name, package data, no generic top-level names, one module per file."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

#: building and installing the package does not depend on the Dassl backend
ONE_LEG = pytest.mark.bundled_only(reason="packaging is the same under both backends; building and "
                                          "installing it takes half a minute")
REPO = Path(__file__).resolve().parents[1]


def NOT_SOURCE(folder, names):
    """What a clone holds besides its sources: generated data, outputs and build folders (top level), caches."""
    top = Path(folder) == REPO
    return [n for n in names if n in ("__pycache__", ".pytest_cache") or n.endswith(".egg-info")
            or (top and n in (".git", "data", "output", "build"))]


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory):
    """A copy of the repository to build from (building writes build/ and *.egg-info next to the sources)."""
    dst = tmp_path_factory.mktemp("src") / "gopro-prompts"
    shutil.copytree(REPO, dst, ignore=NOT_SOURCE)
    return dst


def _pip(python, *args, cwd=None):
    proc = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def wheel(source_copy, tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    _pip(sys.executable, "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(source_copy))
    (path,) = out.glob("gopro_prompts-*.whl")
    return path


def _venv(path):
    """A virtual environment that sees this interpreter's packages (torch, clip ...) but not the clone."""
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(path)
    return path / "bin" / "python"


@ONE_LEG
def test_wheel_installs_one_package_and_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"gopro_prompts", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    for generic in ("trainers", "datasets", "tools", "clip", "train", "bundled_dassl"):
        assert generic not in top  # e.g. Hugging Face's `datasets` keeps its name
    for data in ("gopro_prompts/configs/trainers/GOPro/vit_b16.yaml", "gopro_prompts/configs/datasets/imagenet.yaml",
                 "gopro_prompts/assets/tiny_clip_synthetic.pt", "gopro_prompts/trainers/gopro.py",
                 "gopro_prompts/bundled_dassl/data/samplers.py", "gopro_prompts/datasets/oxford_pets.py",
                 "gopro_prompts/configs/offline/CoOp.yaml", "gopro_prompts/results/tables.py"):
        assert data in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "gopro-train = gopro_prompts.train:cli" in entry_points


PROBE = """
import json, sys, gopro_prompts
from gopro_prompts import resource_path
from gopro_prompts.registry import register_all
from gopro_prompts.trainers.clip_helpers import load_clip
register_all()
import os
facts = {
    "package": gopro_prompts.__file__, "from_source": gopro_prompts.FROM_SOURCE,
    "gopro_yaml": os.path.isfile(resource_path("configs", "trainers", "GOPro", "vit_b16.yaml")),
    "tiny_clip_dim": int(load_clip("tiny-synthetic").text_projection.shape[1]),
}
for generic in ("trainers", "datasets", "tools", "bundled_dassl"):
    try:
        __import__(generic)
        facts[generic] = "imported"
    except ImportError as exc:
        facts[generic] = type(exc).__name__
print(json.dumps(facts))
"""


def _probe(python, cwd):
    proc = subprocess.run([str(python), "-c", PROBE], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "DASSL_BACKEND": "bundled"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@ONE_LEG
def test_installed_wheel_finds_its_data_and_trains_outside_a_clone(wheel, tmp_path):
    python = _venv(tmp_path / "venv")
    _pip(python, "install", "--no-deps", "--no-index", str(wheel))
    work = tmp_path / "elsewhere"
    work.mkdir()
    facts = _probe(python, work)
    assert facts["package"].startswith(str(tmp_path / "venv")) and not facts["from_source"]
    assert facts["gopro_yaml"] and facts["tiny_clip_dim"] == 64
    assert facts["trainers"] == facts["datasets"] == facts["tools"] == "ModuleNotFoundError"

    # the console command runs the embedded default; its data go to a per-user cache, not site-packages
    env = {**os.environ, "HOME": str(tmp_path / "home"), "DASSL_BACKEND": "bundled"}
    env.pop("GOPRO_OFFLINE_DATA", None)  # the default place, not the test session's data folder
    proc = subprocess.run([str(tmp_path / "venv" / "bin" / "gopro-train"), "--trainer", "ZeroshotCLIP",
                           "--output-dir", str(work / "zs")], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "* accuracy:" in proc.stdout
    assert (tmp_path / "home" / ".cache" / "gopro_prompts" / "data").is_dir()
    assert (work / "zs" / "results.json").is_file()


@ONE_LEG
def test_editable_install_uses_the_clone_and_claims_no_generic_name(source_copy, tmp_path):
    python = _venv(tmp_path / "venv")
    _pip(python, "install", "--no-deps", "--no-build-isolation", "-e", str(source_copy))
    work = tmp_path / "elsewhere"
    work.mkdir()
    facts = _probe(python, work)
    assert facts["package"] == str(source_copy / "gopro_prompts" / "__init__.py") and facts["from_source"]
    assert facts["gopro_yaml"] and facts["tiny_clip_dim"] == 64
    assert facts["trainers"] == facts["datasets"] == facts["tools"] == "ModuleNotFoundError"


def test_every_source_file_is_one_module():
    """Importing everything loads each file under one name (a second name would register classes twice)."""
    from gopro_prompts import datasets, plugin, train, trainers  # noqa: F401
    from gopro_prompts.registry import register_all
    from gopro_prompts.results import capture, record, runs, tables  # noqa: F401

    register_all()
    register_all()  # registering the same classes again is a no-op
    seen = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and str(Path(path).resolve()).startswith(str(REPO) + os.sep):
            seen.setdefault(str(Path(path).resolve()), []).append(name)
    twice = {path: names for path, names in seen.items() if len(names) > 1}
    assert not twice
    assert len(seen) > 40  # the check saw the package's modules


def test_a_top_level_folder_refuses_its_bare_name():
    proc = subprocess.run([sys.executable, "-c", "import trainers"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "import it under that name" in proc.stderr and "gopro_prompts.trainers" in proc.stderr


def test_registry_refuses_another_object_under_a_taken_name():
    from gopro_prompts.bundled_dassl.utils import Registry
    from gopro_prompts.registry import add_to_registry
    from gopro_prompts.user_errors import UserError

    registry = Registry("TRAINER")

    class CoOp:  # a host's own class of the same name
        pass

    add_to_registry(registry, CoOp)
    add_to_registry(registry, CoOp)  # the same class again: no-op
    other = type("CoOp", (), {})
    with pytest.raises(UserError, match="already taken"):
        add_to_registry(registry, other)
    assert registry.get("CoOp") is CoOp


def test_clip_is_loaded_privately_whatever_clip_means_on_the_path(tmp_path):
    """A host's own `clip` package (two-argument build_model) imported before or after ours stays the host's."""
    fake = tmp_path / "host" / "clip"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("from .model import build_model\nHOST = True\n")
    (fake / "model.py").write_text("def build_model(state_dict, design_details):\n    raise RuntimeError('host clip')\n")
    probe = ("import json, sys{first}\n"
             "from gopro_prompts.trainers.clip_helpers import CLIP_MODULE, load_clip, tokenize\n"
             "model = load_clip('tiny-synthetic'); tokens = tokenize(['a photo of a dog.'])\n"
             "{second}\n"
             "import clip\n"
             "print(json.dumps({{'host_clip': getattr(clip, 'HOST', False), 'ours': sys.modules[CLIP_MODULE].__file__,"
             " 'width': int(model.text_projection.shape[0])}}))\n")
    for first, second in (("\nimport clip", ""), ("", "import clip")):
        proc = subprocess.run([sys.executable, "-c", probe.format(first=first, second=second)],
                              cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  [str(tmp_path / "host"), str(REPO), os.environ.get("PYTHONPATH", "")])})
        assert proc.returncode == 0, proc.stderr[-3000:]
        facts = json.loads(proc.stdout.strip().splitlines()[-1])
        assert facts["host_clip"] is True
        assert "site-packages" in facts["ours"] and str(tmp_path) not in facts["ours"]
        assert facts["width"] == 64


def test_the_bundled_backend_imports_none_of_real_dassls_packages(synthetic_root, tmp_path):
    """CI installs requirements-dassl.txt beside requirements.txt for its two parallel legs: a run on
    the bundled engine must still need nothing that only real Dassl needs (requirements.txt suffices)."""
    code = (
        "import sys; from gopro_prompts import train; "
        f"train.main(['--trainer', 'CoOp', '--output-dir', {str(tmp_path / 'run')!r}, "
        "'OPTIM.MAX_EPOCH', '1', 'DATASET.NUM_SHOTS', '1']); "
        "print('IMPORTED', sorted({m.split('.')[0] for m in sys.modules} & {'dassl', 'sklearn', 'wilds', 'pandas'}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(DASSL_BACKEND="bundled", PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "IMPORTED []" in result.stdout, result.stdout[-500:]
