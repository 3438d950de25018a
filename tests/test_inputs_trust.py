"""Issue 14, parts 4 and 5: bad input met outside a run folder (backend choice, --help, name suggestions).

The cases that run ``train.cli`` against a finished run are in ``test_reliability_inputs.py``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gopro_prompts import train
from gopro_prompts.user_errors import did_you_mean

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value", ["nonsense", "Dassl2"])
def test_a_bad_dassl_backend_is_one_error_line_and_exit_code_2(value, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    env = {**os.environ, "DASSL_BACKEND": value, "GOPRO_OFFLINE_DATA": str(tmp_path / "data")}
    run = subprocess.run([sys.executable, "train.py", "--trainer", "CoOp", "--output-dir", str(out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines() == [
        f"error: DASSL_BACKEND={value!r} is not valid: set it to one of auto, dassl, bundled "
        "(auto: real Dassl when importable, else the bundled engine) or unset it"]
    assert [p.name for p in out.iterdir()] == ["results.json"] and (out / "results.json").read_text() == "{}"
    assert not (tmp_path / "data").exists()


def test_importing_the_library_with_a_bad_backend_fails_clearly():
    env = {**os.environ, "DASSL_BACKEND": "nonsense"}
    run = subprocess.run([sys.executable, "-c", "import gopro_prompts.trainers.coop"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith(
        "gopro_prompts.dassl_compat.BackendError: DASSL_BACKEND='nonsense' is not valid")


def test_help_lists_the_trainers_and_explains_the_embedded_default():
    from gopro_prompts.dassl_compat import TRAINER_REGISTRY

    text = train.get_parser().format_help()
    names = TRAINER_REGISTRY.registered_names()
    assert {"CoOp", "CoCoOp", "MaPLe", "GOPro", "ZeroshotCLIP"} <= set(names)
    assert f"trainers: {', '.join(names)}" in text
    assert "embedded offline default" in text and "`python train.py --trainer CoOp`" in text
    assert "generated dataset" in text and "tiny CLIP" in text
    assert "python train.py --trainer CoOp --seed 2 OPTIM.LR 0.01" in text  # flags before the opts


@pytest.mark.parametrize("name, choices, expected", [
    ("coop", ["CoCoOp", "CoOp", "MaPLe"], " (did you mean CoOp?)"),
    ("maple", ["CoOp", "MaPLe", "GOPro"], " (did you mean MaPLe?)"),
    ("oxford_pets", ["OxfordFlowers", "OxfordPets"], " (did you mean OxfordPets?)"),
    ("CoOpp", ["CoOp", "MaPLe"], " (did you mean CoOp?)"),
    ("xyz", ["CoOp", "MaPLe"], ""),
    ("CoOp", ["CoOp"], ""),  # nothing to suggest for an exact name
])
def test_did_you_mean_ignores_case(name, choices, expected):
    assert did_you_mean(name, choices) == expected
