"""Parity with the official implementations through the `tests/parity.py` command."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import parity

REPO = Path(__file__).resolve().parents[1]


def test_parity_command_coop(shared_dir):
    result = subprocess.run(
        [sys.executable, "tests/parity.py", str(shared_dir / "parity" / "coop.pt"),
         str(shared_dir / "parity" / "tiny_clip.pt")],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout and "grad.ctx" in result.stdout


def _perturbed(shared_dir, tmp_path, edit):
    fixture = torch.load(shared_dir / "parity" / "coop.pt", weights_only=True)
    edit(fixture)
    path = tmp_path / "fixture.pt"
    torch.save(fixture, path)
    return str(path)


def test_parity_detects_a_wrong_output(shared_dir, tmp_path):
    def edit(f):
        f["out.logits"] = f["out.logits"] * 1.001

    ok, rows = parity.check(_perturbed(shared_dir, tmp_path, edit), str(shared_dir / "parity" / "tiny_clip.pt"),
                            quiet=True)
    assert not ok
    assert dict(rows)["out.logits"] > 1


def test_parity_unmapped_key_is_a_failure(shared_dir, tmp_path):
    def edit(f):
        f["out.something_new"] = torch.zeros(3)

    ok, rows = parity.check(_perturbed(shared_dir, tmp_path, edit), str(shared_dir / "parity" / "tiny_clip.pt"),
                            quiet=True)
    assert not ok and dict(rows)["out.something_new"] == "NOT MAPPED"


def test_parity_follows_the_fixture_config(shared_dir, tmp_path):
    """Class names and the TRAINER node come from the fixture's meta, not from our defaults."""
    def edit(f):
        f["meta"]["classnames"] = ["cat", "tree", "forklift", "golden retriever", "air conditioner"]

    ok, rows = parity.check(_perturbed(shared_dir, tmp_path, edit), str(shared_dir / "parity" / "tiny_clip.pt"),
                            quiet=True)
    rows = dict(rows)
    assert not ok and rows["tokenized_prompts"] == float("inf")  # other names, other tokens


@pytest.mark.parametrize("key,expected", [("loss.ce", (1e-6, 1e-5)), ("grad_total_train.sim_proj.linear.bias", ("zero", 1e-4))])
def test_tolerances(key, expected):
    assert parity.tolerance(key, torch.ones(3)) == expected
