"""The one Dassl import module: single backend, no direct dassl imports elsewhere, logging."""
from __future__ import annotations

import ast
import gc
import importlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gopro_prompts import dassl_compat
from gopro_prompts.bundled_dassl import torch_compat

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
        if name in ("BACKEND", "get_logger", "build_lr_scheduler", "load_checkpoint", "load_pretrained_weights",
                    "resume_from_checkpoint", "save_checkpoint", "setup_logger"):  # shims over real Dassl
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
    else:
        assert _run("dassl").stdout.strip() == "dassl"
        assert _run("auto").stdout.strip() == "dassl"


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


def _two_runs_in_one_process(setup_logger, tmp_path):
    """What train.main twice in one process does with the log tee; returns the console."""
    console = sys.stdout
    setup_logger(str(tmp_path / "a"))
    print("first run")
    setup_logger(str(tmp_path / "b"))
    print("second run")
    sys.stdout.flush()
    gc.collect()  # the first run's tee is dropped: it must not close the stream it wrapped
    assert not console.closed
    assert getattr(sys.stdout, "console", None) is console  # never a tee of a tee
    assert (tmp_path / "a" / "log.txt").read_text() == "first run\n"
    assert (tmp_path / "b" / "log.txt").read_text() == "second run\n"
    return console


def test_a_second_setup_logger_in_one_process_closes_the_first_log(tmp_path, capsys):
    _two_runs_in_one_process(dassl_compat.setup_logger, tmp_path)
    assert capsys.readouterr().out == "first run\nsecond run\n"  # the console got both


@pytest.mark.real_dassl_only(reason="wraps real Dassl's own setup_logger (dassl/utils/logger.py)")
def test_make_setup_logger_releases_real_dassl_s_previous_tee(tmp_path, capsys):
    # importlib, not an import statement: only dassl_compat imports Dassl (test above)
    real_setup_logger = importlib.import_module("dassl.utils").setup_logger
    setup_logger = torch_compat.make_setup_logger(real_setup_logger)
    setup_logger(None)  # nothing, as in Dassl
    console = _two_runs_in_one_process(setup_logger, tmp_path)
    setup_logger(str(tmp_path / "a"))  # a re-run into the first folder: Dassl's time-stamped name
    print("third run")
    sys.stdout.flush()
    stamped = sorted((tmp_path / "a").glob("log.txt-*"))
    assert len(stamped) == 1 and stamped[0].read_text() == "third run\n"
    assert (tmp_path / "b" / "log.txt").read_text() == "second run\n"
    assert sys.stdout.console is console and not console.closed
