"""The one Dassl import module: single backend, no direct dassl imports elsewhere, logging."""
from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
from pathlib import Path

from gopro_prompts import dassl_compat

REPO = Path(__file__).resolve().parents[1]


def _direct_dassl_imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            hits += [a.name for a in node.names if a.name == "dassl" or a.name.startswith("dassl.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "dassl" or node.module.startswith("dassl."):
                hits.append(node.module)
    return hits


def test_only_dassl_compat_imports_dassl():
    offenders = {}
    for path in REPO.rglob("*.py"):
        if ".git" in path.parts or path.name == "dassl_compat.py":
            continue
        hits = _direct_dassl_imports(path)
        if hits:
            offenders[str(path.relative_to(REPO))] = hits
    assert offenders == {}, f"import Dassl names from dassl_compat only: {offenders}"


def test_the_check_catches_a_direct_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from dassl.engine import TrainerX\nimport dassl.utils\n")
    assert _direct_dassl_imports(bad) == ["dassl.engine", "dassl.utils"]


def test_every_name_comes_from_one_backend():
    expected_prefix = "dassl" if dassl_compat.BACKEND == "dassl" else "gopro_prompts.bundled_dassl"
    for name in dassl_compat.__all__:
        if name in ("BACKEND", "get_logger", "build_lr_scheduler", "load_checkpoint",
                    "resume_from_checkpoint", "save_checkpoint"):
            continue
        obj = getattr(dassl_compat, name)
        if isinstance(obj, dict):  # INTERPOLATION_MODES: plain data
            continue
        module = getattr(obj, "__module__", None) or type(obj).__module__
        assert module == expected_prefix or module.startswith(expected_prefix + "."), (name, module)


def _run(env_value):
    env = dict(os.environ, DASSL_BACKEND=env_value)
    return subprocess.run([sys.executable, "-c", "from gopro_prompts import dassl_compat; print(dassl_compat.BACKEND)"],
                          cwd=REPO, env=env, capture_output=True, text=True)


def test_backend_env_var():
    assert _run("bundled").stdout.strip() == "bundled"
    bad = _run("nonsense")
    assert bad.returncode != 0 and "DASSL_BACKEND" in bad.stderr
    if dassl_compat.importlib.util.find_spec("dassl") is None:
        forced = _run("dassl")
        assert forced.returncode != 0 and "not importable" in forced.stderr
        assert _run("auto").stdout.strip() == "bundled"


def test_logger_writes_to_current_stdout_even_after_logging_disable(capsys):
    log = dassl_compat.get_logger("test")
    logging.disable(logging.WARNING)  # what importing real Dassl does
    try:
        log = dassl_compat.get_logger("test")
        log.warning("a warning that must be seen")
        log.info("an info line")
    finally:
        logging.disable(logging.NOTSET)
    out = capsys.readouterr().out
    assert "a warning that must be seen" in out and "an info line" in out
