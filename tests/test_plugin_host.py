"""GOPro inside existing Dassl code bases (``gopro_prompts.plugin``), on real Dassl only.

* A copy of the official CoOp repository, with the two documented lines added to
  its ``train.py``, trains GOPro on base classes and evaluates it on new ones
  with its own data pipeline and command line; its own trainers, datasets and
  ``clip`` stay its own.
* A host with its own ``clip`` package (MaPLe / PromptSRC style: ``build_model``
  takes two arguments), imported before and after ours: GOPro runs on
  clip-anytorch, the host's ``clip`` is never replaced nor called.
* A host that already has a trainer named GOPro: one ``error:`` line, and with
  ``names={"GOPro": ...}`` ours runs under the other name.
* ``plugin.extend_cfg`` itself, in process.

Host runs are subprocesses, so every host process is a fresh one; a small
wrapper (``PROBE``) runs the host's ``train.py`` as ``__main__`` and records what
the host process looks like around ``extend_cfg`` and after the run.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import REPO, SHARED, assert_evaluated_on

COOP_VENDOR = SHARED / "vendor" / "CoOp"


def _skip_reason():
    if importlib.util.find_spec("dassl") is None:
        return "real Dassl is not importable (put shared/vendor/Dassl.pytorch on PYTHONPATH)"
    if os.environ.get("DASSL_BACKEND", "auto").strip().lower() == "bundled":
        return "DASSL_BACKEND=bundled: gopro_prompts.plugin plugs into real Dassl only (the real-Dassl leg runs these)"
    return ""


pytestmark = pytest.mark.skipif(bool(_skip_reason()), reason=_skip_reason() or "-")

#: the tiny CLIP and a one-epoch schedule on CPU (our GOPro YAML asks for ViT-B/16 at 224 px)
TINY = ["MODEL.BACKBONE.NAME", "tiny", "INPUT.SIZE", "(32, 32)", "OPTIM.MAX_EPOCH", "1",
        "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "16", "TRAINER.GOPRO.PREC", "fp32"]
GOPRO_YAML = REPO / "configs" / "trainers" / "GOPro" / "vit_b16.yaml"
RUN_TIMEOUT = 240

# ------------------------------------------------------------------ a tiny OxfordPets folder
#: breed (file-name prefix, as in the Oxford-IIIT Pet images) -> colour of its images
BREEDS = {"Abyssinian": (200, 40, 40), "beagle": (40, 200, 40), "Bengal": (40, 40, 200), "boxer": (200, 200, 40)}
PER_CLASS = {"train": 3, "val": 1, "test": 2}
#: test images of half the breeds (SUBSAMPLE_CLASSES base or new).  The random tiny CLIP on these few
#: images classifies at chance, so the runs' accuracies are checked against the split they cover
HALF_TEST_IMAGES = PER_CLASS["test"] * (len(BREEDS) // 2)


def make_oxford_pets(root: Path) -> Path:
    """``root/oxford_pets`` in the layout of the CoOp repository's DATASETS.md: ``images/``,
    ``annotations/{trainval,test}.txt`` and ``split_zhou_OxfordPets.json`` (4 breeds, small real JPEGs)."""
    from PIL import Image

    folder = root / "oxford_pets"
    (folder / "images").mkdir(parents=True)
    (folder / "annotations").mkdir()
    split = {key: [] for key in PER_CLASS}
    lines = {"trainval": [], "test": []}
    for label, (breed, colour) in enumerate(BREEDS.items()):
        number = 0
        for key, count in PER_CLASS.items():
            for _ in range(count):
                number += 1
                name = f"{breed}_{number}"
                shade = tuple(min(255, c + 9 * number) for c in colour)
                image = Image.new("RGB", (40, 40), shade)
                image.paste((255 - shade[0], 90, 90), (4 * number, 4, 4 * number + 10, 14))
                image.save(folder / "images" / f"{name}.jpg", "JPEG")
                split[key].append([f"{name}.jpg", label, breed.lower()])
                lines["test" if key == "test" else "trainval"].append(f"{name} {label + 1} 1 {label + 1}")
    for name, rows in lines.items():
        (folder / "annotations" / f"{name}.txt").write_text("\n".join(rows) + "\n")
    (folder / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    return root


# ------------------------------------------------------------------ running a host
#: Runs ``HOST/train.py ARGS...`` as __main__ in this process and writes FACTS (JSON) about it.
PROBE = textwrap.dedent('''
    import inspect, json, logging, os, runpy, sys

    host, facts_path = os.path.abspath(sys.argv[1]), sys.argv[2]
    sys.argv = [os.path.join(host, "train.py")] + sys.argv[3:]
    sys.path.insert(0, host)  # what `python train.py` in the host's folder does

    disable, stdout, modules = logging.root.manager.disable, sys.stdout, set(sys.modules)
    import gopro_prompts.plugin as plugin  # the host imports it again below; here to observe extend_cfg

    facts = {"extend_cfg": [], "import": {
        "disable": [disable, logging.root.manager.disable], "stdout_kept": sys.stdout is stdout,
        "new_modules": sorted(n for n in set(sys.modules) - modules
                              if n.split(".")[0] in ("dassl", "clip", "trainers", "datasets", "torch")
                              or n.startswith(("gopro_prompts.trainers", "gopro_prompts.datasets")))}}
    real_extend_cfg = plugin.extend_cfg


    def registries():
        from dassl.engine import TRAINER_REGISTRY
        from dassl.data.datasets import DATASET_REGISTRY
        return TRAINER_REGISTRY._obj_map, DATASET_REGISTRY._obj_map


    def observed_extend_cfg(cfg, *args, **kwargs):
        trainers, datasets = registries()
        before = dict(trainers), dict(datasets)
        disable, stdout, clip = logging.root.manager.disable, sys.stdout, sys.modules.get("clip")
        try:
            return real_extend_cfg(cfg, *args, **kwargs)
        finally:
            facts["extend_cfg"].append({
                "disable": [disable, logging.root.manager.disable],
                "stdout_kept": sys.stdout is stdout,
                "clip_kept": sys.modules.get("clip") is clip,
                "trainers_changed": sorted(n for n, c in before[0].items() if trainers.get(n) is not c),
                "trainers_added": sorted(set(trainers) - set(before[0])),
                "datasets_changed": sorted(n for n, c in before[1].items() if datasets.get(n) is not c),
                "datasets_added": sorted(set(datasets) - set(before[1])),
            })


    plugin.extend_cfg = observed_extend_cfg


    def describe(table):
        out = {}
        for name, cls in table.items():
            module = sys.modules.get(cls.__module__)
            out[name] = {"module": cls.__module__, "file": inspect.getsourcefile(cls),
                         "defined_there": getattr(module, name, None) is cls,
                         "bases": [b.__module__ + "." + b.__name__ for b in cls.__mro__[1:3]]}
        return out


    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        trainers, datasets = registries()
        host_clip_model = sys.modules.get("clip.model")
        facts.update({
            "modules": {name: getattr(m, "__file__", None) for name, m in list(sys.modules.items())
                        if name.split(".")[0] in ("trainers", "datasets", "clip") or name.startswith("gopro_prompts._clip")},
            "trainers": describe(trainers),
            "datasets": describe(datasets),
            "host_clip_calls": getattr(host_clip_model, "CALLS", None),
        })
        with open(facts_path, "w") as f:
            json.dump(facts, f)
''')


def _dassl_root() -> str:
    return str(Path(importlib.util.find_spec("dassl").submodule_search_locations[0]).parent)


def run_host(host: Path, tmp_path: Path, args, name="run"):
    """Run the host's ``train.py`` in a fresh process (cwd = the host); returns (process, facts)."""
    probe = tmp_path / "probe_host.py"
    if not probe.exists():
        probe.write_text(PROBE)
    facts_path = tmp_path / f"{name}.facts.json"
    paths = [str(REPO), _dassl_root(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), DASSL_BACKEND="dassl", OUTDATED_IGNORE="1",
               PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(probe), str(host), str(facts_path), *map(str, args)], cwd=host,
                          env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    facts = json.loads(facts_path.read_text()) if facts_path.exists() else None
    return proc, facts


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _under(path, folder) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(Path(folder).resolve())


def _clip_anytorch_dir() -> Path:
    import importlib.metadata

    return Path(importlib.metadata.distribution("clip-anytorch").locate_file("clip")).resolve()


def assert_extend_cfg_left_the_host_alone(facts, added=("GOPro",)):
    """Importing gopro_prompts.plugin loads nothing of the host's or ours and changes nothing; one
    extend_cfg call, which added our trainer(s) only and changed no host entry, logging, stdout or clip."""
    imported = facts["import"]
    assert imported["disable"] == [0, 0] and imported["stdout_kept"] and imported["new_modules"] == []
    (call,) = facts["extend_cfg"]
    assert call["disable"][0] == call["disable"][1] == logging.WARNING  # real Dassl's own logging.disable
    assert call["stdout_kept"] and call["clip_kept"]
    assert call["trainers_changed"] == [] and call["datasets_changed"] == []
    assert call["trainers_added"] == sorted(added) and call["datasets_added"] == []


def assert_gopro_on_clip_anytorch(facts, host):
    modules = facts["modules"]
    assert _under(modules["gopro_prompts._clip"], _clip_anytorch_dir())
    assert not _under(modules["gopro_prompts._clip"], host)


# ------------------------------------------------------------------ (a) the official CoOp repository
HOST_IMPORT = "import gopro_prompts.plugin as gopro_plugin\n"
HOST_CALL = "    gopro_plugin.extend_cfg(cfg)\n"


def make_coop_host(tmp_path: Path) -> Path:
    """A copy of the CoOp repository with exactly the two documented lines added to its train.py."""
    if not (COOP_VENDOR / "train.py").is_file():
        pytest.skip(f"{COOP_VENDOR} (the official CoOp repository) is not present")
    host = tmp_path / "CoOp"
    shutil.copytree(COOP_VENDOR, host, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    source = (host / "train.py").read_text()
    lines = source.splitlines(keepends=True)
    tree = ast.parse(source)
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    (extend,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "extend_cfg"]
    # insert from the bottom up so that the line numbers above stay valid
    lines.insert(extend.end_lineno, HOST_CALL)
    lines.insert(imports[-1].end_lineno, HOST_IMPORT)
    patched = "".join(lines)
    (host / "train.py").write_text(patched)
    # exactly two added lines, nothing else changed
    remaining = patched.splitlines(keepends=True)
    for line in (HOST_IMPORT, HOST_CALL):
        remaining.remove(line)
    assert "".join(remaining) == source
    # the call is the last statement of the host's extend_cfg
    (new_extend,) = [n for n in ast.parse(patched).body if isinstance(n, ast.FunctionDef) and n.name == "extend_cfg"]
    assert ast.unparse(new_extend.body[-1]) == "gopro_plugin.extend_cfg(cfg)"
    return host


def test_gopro_in_the_official_coop_repository(tmp_path):
    host = make_coop_host(tmp_path)
    data = make_oxford_pets(tmp_path / "data")
    out = tmp_path / "output" / "base"
    common = ["--root", data, "--trainer", "GOPro", "--dataset-config-file", host / "configs/datasets/oxford_pets.yaml",
              "--config-file", GOPRO_YAML, "--seed", "1"]
    proc, facts = run_host(host, tmp_path, [*common, "--output-dir", out,
                                            "DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", "base", *TINY],
                           name="train")
    log = _ok(proc)
    assert "Loading trainer: GOPro" in log and "Loading dataset: OxfordPets" in log
    assert "SUBSAMPLE BASE CLASSES!" in log  # the host's dataset code did the split
    assert "Finish training" in log
    accuracy = assert_evaluated_on(log, HALF_TEST_IMAGES)
    assert (out / "gopro" / "model.pth.tar-1").is_file()
    record = json.loads((out / "results.json").read_text())  # ours, with what the host's command line said
    assert f"{record['metrics']['accuracy']:.1f}" == f"{accuracy:.1f}"
    assert (record["trainer"], record["config"], record["dataset"]) == ("GOPro", "vit_b16", "OxfordPets")
    assert record["subsample"] == "base" and record["epoch"] == 1 and not record["eval_only"]

    # inside the host process: its modules and registry entries are its own
    modules = facts["modules"]
    for name in ("trainers.coop", "trainers.cocoop", "trainers.zsclip", "datasets.oxford_pets", "clip", "clip.clip"):
        assert _under(modules[name], host), (name, modules[name])
    trainers = facts["trainers"]
    for name in ("CoOp", "CoCoOp", "ZeroshotCLIP", "ZeroshotCLIP2"):
        assert trainers[name]["defined_there"] and _under(trainers[name]["file"], host), trainers[name]
    assert trainers["GOPro"]["module"] == "gopro_prompts.trainers.gopro"
    assert not any(n.startswith("GP") for n in trainers)  # nothing else of ours unless asked
    datasets = facts["datasets"]
    assert _under(datasets["OxfordPets"]["file"], host) and datasets["OxfordPets"]["defined_there"]
    assert not any(n.startswith("GP") for n in datasets)
    assert_extend_cfg_left_the_host_alone(facts)
    assert_gopro_on_clip_anytorch(facts, host)

    # evaluation on the new classes with the host's --eval-only
    proc, facts = run_host(host, tmp_path, [*common, "--output-dir", tmp_path / "output" / "new", "--eval-only",
                                            "--model-dir", out, "--load-epoch", "1",
                                            "DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", "new", *TINY],
                           name="eval")
    log = _ok(proc)
    assert "SUBSAMPLE NEW CLASSES!" in log
    assert "Loading weights to gopro" in log and "model.pth.tar-1" in log
    accuracy = assert_evaluated_on(log, HALF_TEST_IMAGES)
    assert "Finish training" not in log
    assert_extend_cfg_left_the_host_alone(facts)
    record = json.loads((tmp_path / "output" / "new" / "results.json").read_text())
    assert f"{record['metrics']['accuracy']:.1f}" == f"{accuracy:.1f}"
    assert record["trainer"] == "GOPro" and record["subsample"] == "new" and record["backend"] == "dassl"
    assert record["eval_only"] and record["load_epoch"] == 1 and record["model_dir"] == str(out)


# ------------------------------------------------------------------ (b), (c) a host with its own clip
HOST_CLIP_INIT = "from .clip import *\n"
HOST_CLIP_CLIP = textwrap.dedent('''
    """The host's fork of CLIP (as in the MaPLe / PromptSRC repositories): not clip-anytorch."""
    from .model import CALLS, build_model

    __all__ = ["available_models", "load", "tokenize", "build_model", "CALLS"]


    def available_models():
        return ["ViT-B/16"]


    def load(name, device="cpu", jit=False, design_details=None):
        CALLS.append("load")
        raise RuntimeError("the host's clip.load was called")


    def tokenize(texts, context_length=77, truncate=False):
        CALLS.append("tokenize")
        raise RuntimeError("the host's clip.tokenize was called")
''')
HOST_CLIP_MODEL = textwrap.dedent('''
    CALLS = []


    def build_model(state_dict, design_details):
        CALLS.append("build_model")
        raise RuntimeError("the host's clip.model.build_model was called")
''')
HOST_TRAINER = textwrap.dedent('''
    import inspect

    from dassl.engine import TRAINER_REGISTRY, TrainerX
    from clip import clip
    from clip.model import build_model

    # the host relies on its own clip: two-argument build_model
    assert list(inspect.signature(build_model).parameters) == ["state_dict", "design_details"], build_model


    @TRAINER_REGISTRY.register()
    class HostLab(TrainerX):
        def build_model(self):
            self.model = clip.build_model({}, {"trainer": "HostLab", "vision_depth": 0, "language_depth": 0})
''')
HOST_GOPRO = textwrap.dedent('''
    from dassl.engine import TRAINER_REGISTRY, TrainerX


    @TRAINER_REGISTRY.register()
    class GOPro(TrainerX):
        """The host's own GOPro."""
''')
HOST_DATASET = textwrap.dedent('''
    import json, math, os

    from dassl.data.datasets import DATASET_REGISTRY, Datum, DatasetBase


    @DATASET_REGISTRY.register()
    class OxfordPets(DatasetBase):
        """The host's own reader of the CoOp split file."""

        def __init__(self, cfg):
            root = os.path.join(os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT)), "oxford_pets")
            with open(os.path.join(root, "split_zhou_OxfordPets.json")) as f:
                split = json.load(f)
            parts = {k: [Datum(impath=os.path.join(root, "images", p), label=int(y), classname=c) for p, y, c in v]
                     for k, v in split.items()}
            train = parts["train"]
            if cfg.DATASET.NUM_SHOTS >= 1:
                train = self.generate_fewshot_dataset(train, num_shots=cfg.DATASET.NUM_SHOTS)
            labels = sorted({d.label for d in parts["test"]})
            half = math.ceil(len(labels) / 2)
            keep = {"all": labels, "base": labels[:half], "new": labels[half:]}[cfg.DATASET.SUBSAMPLE_CLASSES]
            relabel = {y: i for i, y in enumerate(keep)}
            print("HOST DATASET:", cfg.DATASET.SUBSAMPLE_CLASSES)

            def sub(items):
                return [Datum(impath=d.impath, label=relabel[d.label], classname=d.classname)
                        for d in items if d.label in relabel]

            super().__init__(train_x=sub(train), val=sub(parts["val"]), test=sub(parts["test"]))
''')
HOST_TRAIN = textwrap.dedent('''
    import argparse
    {top}
    from dassl.config import get_cfg_default
    from dassl.engine import build_trainer
    from dassl.utils import set_random_seed, setup_logger
    {host_first}


    def extend_cfg(cfg):
        from yacs.config import CfgNode as CN

        cfg.TRAINER.HOSTLAB = CN()
        cfg.TRAINER.HOSTLAB.N_CTX = 2
        cfg.DATASET.SUBSAMPLE_CLASSES = "all"
        gopro_plugin.extend_cfg(cfg{names})


    def main(args):
        cfg = get_cfg_default()
        extend_cfg(cfg)
        cfg.merge_from_file(args.config_file)
        cfg.DATASET.ROOT, cfg.OUTPUT_DIR, cfg.TRAINER.NAME = args.root, args.output_dir, args.trainer
        cfg.merge_from_list(args.opts)
        cfg.freeze()
        {ours_first}
        set_random_seed(1)
        setup_logger(cfg.OUTPUT_DIR)
        trainer = build_trainer(cfg)
        trainer.train()


    if __name__ == "__main__":
        parser = argparse.ArgumentParser()
        for flag in ("--root", "--output-dir", "--trainer", "--config-file"):
            parser.add_argument(flag, default="")
        parser.add_argument("opts", nargs=argparse.REMAINDER)
        main(parser.parse_args())
''')
HOST_IMPORTS = ["import clip", "import datasets.pets", "import trainers.lab"]


def make_lab_host(tmp_path: Path, order: str, host_gopro=False, names="") -> Path:
    """A host code base with its own trainers/, datasets/ and clip/; ``order``: whether the host imports
    them before ours (``host-first``) or after ``extend_cfg`` has loaded our trainers (``ours-first``)."""
    host = tmp_path / f"lab-{order}"
    files = {"clip/__init__.py": HOST_CLIP_INIT, "clip/clip.py": HOST_CLIP_CLIP, "clip/model.py": HOST_CLIP_MODEL,
             "trainers/__init__.py": "", "trainers/lab.py": HOST_TRAINER, "trainers/gopro.py": HOST_GOPRO,
             "datasets/__init__.py": "", "datasets/pets.py": HOST_DATASET}
    for rel, text in files.items():
        (host / rel).parent.mkdir(parents=True, exist_ok=True)
        (host / rel).write_text(text)
    imports = HOST_IMPORTS + (["import trainers.gopro"] if host_gopro else [])
    plugin_import = "import gopro_prompts.plugin as gopro_plugin"
    if order == "host-first":
        top, host_first, ours_first = "", "\n".join(imports + [plugin_import]), ""
    else:
        top, host_first = plugin_import, ""
        ours_first = "\n    ".join(imports)
    (host / "train.py").write_text(HOST_TRAIN.format(top=top, host_first=host_first, ours_first=ours_first,
                                                     names=f", names={names!r}" if names else ""))
    return host


def _lab_args(tmp_path, data, trainer, out_name):
    return ["--root", data, "--trainer", trainer, "--config-file", GOPRO_YAML,
            "--output-dir", tmp_path / "output" / out_name, "DATASET.NAME", "OxfordPets", "DATASET.NUM_SHOTS", "2",
            "DATASET.SUBSAMPLE_CLASSES", "base", *TINY]


@pytest.mark.parametrize("order", ["host-first", "ours-first"])
def test_a_host_with_its_own_clip_keeps_it(order, tmp_path):
    host = make_lab_host(tmp_path, order)
    data = make_oxford_pets(tmp_path / "data")
    proc, facts = run_host(host, tmp_path, _lab_args(tmp_path, data, "GOPro", order))
    log = _ok(proc)
    assert "HOST DATASET: base" in log and "Loading trainer: GOPro" in log and "Finish training" in log
    assert_evaluated_on(log, HALF_TEST_IMAGES)
    modules = facts["modules"]
    for name in ("clip", "clip.clip", "clip.model", "trainers.lab", "datasets.pets"):
        assert _under(modules[name], host), (name, modules[name])
    assert facts["host_clip_calls"] == []  # GOPro never called the host's clip
    assert_gopro_on_clip_anytorch(facts, host)
    assert_extend_cfg_left_the_host_alone(facts)
    trainers = facts["trainers"]
    assert trainers["HostLab"]["defined_there"] and _under(trainers["HostLab"]["file"], host)
    assert _under(facts["datasets"]["OxfordPets"]["file"], host)
    assert trainers["GOPro"]["module"] == "gopro_prompts.trainers.gopro"


def test_a_host_that_has_a_gopro_of_its_own(tmp_path):
    data = make_oxford_pets(tmp_path / "data")
    host = make_lab_host(tmp_path, "host-first", host_gopro=True)
    proc, facts = run_host(host, tmp_path, _lab_args(tmp_path, data, "GOPro", "clash"), name="clash")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr
    assert len(errors) == 1 and errors[0].startswith("error: "), proc.stderr
    assert "already registers a trainer named GOPro" in errors[0]
    assert "names={'GOPro': 'GOProLab'}" in errors[0] and "--trainer GOProLab" in errors[0]
    assert facts["trainers"]["GOPro"]["defined_there"] and _under(facts["trainers"]["GOPro"]["file"], host)

    # the rename the message suggests: ours runs as GOProLab, the host's GOPro stays
    host = make_lab_host(tmp_path / "renamed", "host-first", host_gopro=True, names={"GOPro": "GOProLab"})
    proc, facts = run_host(host, tmp_path, _lab_args(tmp_path, data, "GOProLab", "renamed"), name="renamed")
    log = _ok(proc)
    assert "Loading trainer: GOProLab" in log and "Finish training" in log
    renamed_accuracy = assert_evaluated_on(log, HALF_TEST_IMAGES)
    trainers = facts["trainers"]
    assert trainers["GOPro"]["defined_there"] and _under(trainers["GOPro"]["file"], host)
    assert trainers["GOProLab"]["module"] == "gopro_prompts.trainers.gopro"
    assert trainers["GOProLab"]["bases"][0] == "gopro_prompts.trainers.gopro.GOPro"
    assert_extend_cfg_left_the_host_alone(facts, added=("GOProLab",))
    record = json.loads((tmp_path / "output" / "renamed" / "results.json").read_text())
    assert record["trainer"] == "GOProLab"
    assert f"{record['metrics']['accuracy']:.1f}" == f"{renamed_accuracy:.1f}"


# ------------------------------------------------------------------ (d) plugin.extend_cfg in process
@pytest.fixture
def host_registries():
    """Real Dassl's process-global registries, restored exactly after the test."""
    from gopro_prompts import dassl_compat

    tables = [dassl_compat.TRAINER_REGISTRY._obj_map, dassl_compat.DATASET_REGISTRY._obj_map]
    saved = [dict(t) for t in tables]
    yield dassl_compat
    for table, before in zip(tables, saved):
        table.clear()
        table.update(before)


def _host_classes(dassl_compat):
    """Stand-ins for a host's own CoOp trainer and OxfordPets dataset, put into the registries."""
    host_coop = type("CoOp", (dassl_compat.TrainerX,), {"__module__": "trainers.coop"})
    host_pets = type("OxfordPets", (dassl_compat.DatasetBase,), {"__module__": "datasets.oxford_pets"})
    for table, cls in ((dassl_compat.TRAINER_REGISTRY._obj_map, host_coop),
                       (dassl_compat.DATASET_REGISTRY._obj_map, host_pets)):
        table.pop(cls.__name__, None)
        table.pop("GOPro", None)
        table[cls.__name__] = cls
    return host_coop, host_pets


def _coop_host_cfg():
    """Dassl's defaults plus the CoOp repository's own extend_cfg (read from its train.py), and a
    host-set TRAINER.GOPRO.N_CTX = 8 with no other GOPRO key."""
    from yacs.config import CfgNode as CN

    from gopro_prompts.dassl_compat import get_cfg_default

    cfg = get_cfg_default()
    source = COOP_VENDOR / "train.py"
    if source.is_file():
        tree = ast.parse(source.read_text())
        (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "extend_cfg"]
        namespace = {}
        exec(compile(ast.Module([fn], []), str(source), "exec"), namespace)
        namespace["extend_cfg"](cfg)
    else:  # the same keys, written out
        cfg.TRAINER.COOP = CN({"N_CTX": 16, "CSC": False, "CTX_INIT": "", "PREC": "fp16",
                               "CLASS_TOKEN_POSITION": "end"})
        cfg.TRAINER.COCOOP = CN({"N_CTX": 16, "CTX_INIT": "", "PREC": "fp16"})
        cfg.DATASET.SUBSAMPLE_CLASSES = "all"
    cfg.TRAINER.GOPRO = CN()
    cfg.TRAINER.GOPRO.N_CTX = 8
    return cfg


def test_extend_cfg_adds_missing_keys_only_and_is_idempotent(host_registries):
    from gopro_prompts import plugin

    dassl_compat = host_registries
    host_coop, host_pets = _host_classes(dassl_compat)
    cfg = _coop_host_cfg()
    before = cfg.clone()
    assert "PATH" not in cfg.MODEL.BACKBONE
    disable, stdout = logging.root.manager.disable, sys.stdout

    assert plugin.extend_cfg(cfg) is cfg
    assert cfg.TRAINER.GOPRO.N_CTX == 8  # the host's value stays
    assert cfg.TRAINER.GOPRO.CTX_INIT == "a photo of a" and cfg.TRAINER.GOPRO.W_CON == 0.1  # missing keys added
    assert cfg.MODEL.BACKBONE.PATH == ""
    assert cfg.TRAINER.COOP.N_CTX == 16 and cfg.TRAINER.COOP.PREC == "fp16"  # the host's node untouched
    assert "MAPLE" not in cfg.TRAINER  # nodes of trainers not asked for are not added
    # no host key changed value, and keys were added
    assert _flat(before).items() < _flat(cfg).items()

    trainers = dassl_compat.TRAINER_REGISTRY._obj_map
    datasets = dassl_compat.DATASET_REGISTRY._obj_map
    from gopro_prompts.trainers.gopro import GOPro

    assert trainers["GOPro"] is GOPro
    assert trainers["CoOp"] is host_coop and datasets["OxfordPets"] is host_pets
    assert "GPCoOp" not in trainers and "GPOxfordPets" not in datasets
    assert logging.root.manager.disable == disable and sys.stdout is stdout

    # idempotent: a second call changes nothing
    snapshot, names = cfg.dump(), (dict(trainers), dict(datasets))
    plugin.extend_cfg(cfg)
    assert cfg.dump() == snapshot and (dict(trainers), dict(datasets)) == names

    # the others only when asked, under GP names, never over the host's
    plugin.extend_cfg(cfg, trainers=["GOPro", "CoOp", "MaPLe"], datasets=["OxfordPets"])
    from gopro_prompts.datasets.oxford_pets import OxfordPets
    from gopro_prompts.trainers.coop import CoOp

    assert trainers["CoOp"] is host_coop and datasets["OxfordPets"] is host_pets
    assert issubclass(trainers["GPCoOp"], CoOp) and trainers["GPCoOp"].__name__ == "GPCoOp"
    assert trainers["GPMaPLe"].__name__ == "GPMaPLe"
    assert issubclass(datasets["GPOxfordPets"], OxfordPets)
    assert cfg.TRAINER.COOP.N_CTX == 16 and "MAPLE" in cfg.TRAINER  # MaPLe's node added, CoOp's kept
    assert "CLASS_TOKEN_POSITION" in cfg.TRAINER.COOP and cfg.TRAINER.GOPRO.N_CTX == 8
    again = dict(trainers), dict(datasets)
    plugin.extend_cfg(cfg, trainers=["GOPro", "CoOp", "MaPLe"], datasets=["OxfordPets"])
    assert (dict(trainers), dict(datasets)) == again  # the renamed classes are made once
    assert logging.root.manager.disable == disable and sys.stdout is stdout


def _flat(node):
    """Every leaf of a config under its dotted key, as its repr (so values of any type compare)."""
    from gopro_prompts.run_folder import flatten_cfg

    return {key: repr(value) for key, value in flatten_cfg(node).items()}


def test_extend_cfg_refuses_a_taken_name_and_accepts_a_rename(host_registries):
    from gopro_prompts import plugin
    from gopro_prompts.trainers.gopro import GOPro

    dassl_compat = host_registries
    trainers = dassl_compat.TRAINER_REGISTRY._obj_map
    host_gopro = type("GOPro", (dassl_compat.TrainerX,), {"__module__": "trainers.gopro"})
    trainers["GOPro"] = host_gopro
    cfg = _coop_host_cfg()
    with pytest.raises(SystemExit) as info:
        plugin.extend_cfg(cfg)
    message = str(info.value.code)
    assert len(message.splitlines()) == 1 and message.startswith("error: ")
    assert "trainers.gopro.GOPro" in message and "names={'GOPro': 'GOProLab'}" in message
    assert trainers["GOPro"] is host_gopro
    with pytest.raises(SystemExit, match="gopro_prompts has no trainer named 'GOPRo'.*did you mean GOPro"):
        plugin.extend_cfg(cfg, trainers=["GOPRo"])

    plugin.extend_cfg(cfg, names={"GOPro": "GOProLab"})
    assert trainers["GOPro"] is host_gopro
    renamed = trainers["GOProLab"]
    assert issubclass(renamed, GOPro) and renamed is not GOPro and renamed.__name__ == "GOProLab"
    plugin.extend_cfg(cfg, names={"GOPro": "GOProLab"})
    assert trainers["GOProLab"] is renamed


def test_every_yaml_of_ours_merges_into_the_coop_host_config(host_registries):
    """What a host runs with --config-file / --dataset-config-file of ours merges once extend_cfg ran:
    the GOPro YAMLs with the default call, every YAML when every trainer and dataset is asked for."""
    from gopro_prompts import plugin
    from gopro_prompts.registry import DATASETS, TRAINERS

    dassl_compat = host_registries
    _host_classes(dassl_compat)
    cfg = plugin.extend_cfg(_coop_host_cfg())
    gopro_yamls = sorted((REPO / "configs" / "trainers" / "GOPro").glob("*.yaml"))
    assert gopro_yamls
    for path in gopro_yamls:
        merged = cfg.clone()
        merged.merge_from_file(str(path))
        assert merged.TRAINER.GOPRO.N_CTX == 4  # the YAML's value wins over the host's 8
    from gopro_prompts.trainers.config import merge_config_file

    cfg = plugin.extend_cfg(_coop_host_cfg(), trainers=list(TRAINERS), datasets=list(DATASETS))
    every = sorted((REPO / "configs").rglob("*.yaml"))
    assert len(every) > 20
    bool_ctx_init = []
    for path in every:
        if "CTX_INIT: True" in path.read_text():
            # KgCoOp's and ProGrad's official configs: CoOp's train.py declares CTX_INIT a string, so plain
            # yacs refuses the bool (as in the official code bases); our merge_config_file accepts it
            bool_ctx_init.append(path.parent.name)
            with pytest.raises(ValueError, match="CTX_INIT"):
                cfg.clone().merge_from_file(str(path))
            merged = cfg.clone()
            merge_config_file(merged, str(path))
            assert merged.TRAINER.COOP.CTX_INIT is True
        else:
            cfg.clone().merge_from_file(str(path))
    assert {"KgCoOp", "ProGrad"} <= set(bool_ctx_init)
