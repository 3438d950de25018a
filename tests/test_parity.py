"""Parity with the official implementations through the `tests/parity.py` command.

The fixtures ship in tests/fixtures/parity, so these tests run in any clone; only the
comparisons with the original published files need shared/.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import parity

REPO = Path(__file__).resolve().parents[1]

#: every method fixture shipped with the repository, by file stem -> meta["method"]
SHIPPED = {"coop": "CoOp", "cocoop": "CoCoOp", "maple": "MaPLe", "gopro": "GOPro", "ivlp": "IVLP",
           "vpt": "VPT", "kgcoop": "KgCoOp", "promptsrc": "PromptSRC", "prograd": "ProGrad"}


def _bits(t):
    """A tensor's raw bits (floating types viewed as integers), for exact comparisons."""
    if t.is_floating_point():
        return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


def _same_state(a, b):
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(_bits(a[k]), _bits(b[k])) for k in a
    )


# ------------------------------------------------------------------ the command, on the shipped files
def test_parity_command_coop(parity_fixtures):
    """The README command, with relative paths from the repository root."""
    result = subprocess.run(
        [sys.executable, "tests/parity.py", "tests/fixtures/parity/coop.pt", "tests/fixtures/parity/tiny_clip_fp16.pt"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout and "grad.ctx" in result.stdout


def test_parity_tiny_clip_argument_defaults_to_the_shipped_file():
    assert Path(parity.DEFAULT_TINY_CLIP) == REPO / "tests" / "fixtures" / "parity" / "tiny_clip_fp16.pt"
    result = subprocess.run([sys.executable, "tests/parity.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and "[tiny_clip]" in result.stdout


def _perturbed(parity_fixtures, tmp_path, edit):
    fixture = torch.load(parity_fixtures / "coop.pt", weights_only=True)
    edit(fixture)
    path = tmp_path / "fixture.pt"
    torch.save(fixture, path)
    return str(path)


def test_parity_detects_a_wrong_output(parity_fixtures, tmp_path):
    def edit(f):
        f["out.logits"] = f["out.logits"] * 1.001

    ok, rows = parity.check(_perturbed(parity_fixtures, tmp_path, edit), quiet=True)
    assert not ok
    assert dict(rows)["out.logits"] > 1


def test_parity_unmapped_key_is_a_failure(parity_fixtures, tmp_path):
    def edit(f):
        f["out.something_new"] = torch.zeros(3)

    ok, rows = parity.check(_perturbed(parity_fixtures, tmp_path, edit), quiet=True)
    assert not ok and dict(rows)["out.something_new"] == "NOT MAPPED"


def test_parity_follows_the_fixture_config(parity_fixtures, tmp_path):
    """Class names and the TRAINER node come from the fixture's meta, not from our defaults."""
    def edit(f):
        f["meta"]["classnames"] = ["cat", "tree", "forklift", "golden retriever", "air conditioner"]

    ok, rows = parity.check(_perturbed(parity_fixtures, tmp_path, edit), quiet=True)
    rows = dict(rows)
    assert not ok and rows["tokenized_prompts"] == float("inf")  # other names, other tokens


@pytest.mark.parametrize("key,expected", [("loss.ce", (1e-6, 1e-5)), ("grad_total_train.sim_proj.linear.bias", ("zero", 1e-4))])
def test_tolerances(key, expected):
    assert parity.tolerance(key, torch.ones(3)) == expected


# ------------------------------------------------------------------ the shipped files
def test_every_method_fixture_ships(parity_fixtures):
    for stem, method in SHIPPED.items():
        fixture = torch.load(parity_fixtures / f"{stem}.pt", map_location="cpu", weights_only=True)
        assert fixture["meta"]["method"] == method, stem


def test_compact_tiny_clip_is_fp16():
    state = torch.load(parity.DEFAULT_TINY_CLIP, map_location="cpu", weights_only=True)
    assert len(state) == 86 and {v.dtype for v in state.values()} == {torch.float16}
    assert all(v.dtype == torch.float32 for v in parity.upcast_state(state).values())


def test_fp32_clip_path_upcasts_only_fp16_state_dicts(tmp_path):
    fp32 = {"a": torch.tensor([0.5, -0.0, 3.0]), "ids": torch.tensor([1, 2])}
    torch.save(fp32, tmp_path / "fp32.pt")
    with parity.fp32_clip_path(str(tmp_path / "fp32.pt")) as path:
        assert path == str(tmp_path / "fp32.pt")

    torch.save({"a": fp32["a"].half(), "ids": fp32["ids"]}, tmp_path / "fp16.pt")
    with parity.fp32_clip_path(str(tmp_path / "fp16.pt")) as upcast:
        assert upcast != str(tmp_path / "fp16.pt")
        assert _same_state(torch.load(upcast, weights_only=True), fp32)
    assert not Path(upcast).exists()  # the temporary copy is gone after the block


def test_compact_tiny_clip_upcasts_to_the_original_bit_for_bit(shared_dir):
    """The fp16 file, upcast, is the published fp32 tiny CLIP exactly: as a state dict, as the
    file handed to the loader, and as the model the loader builds."""
    from gopro_prompts.trainers.clip_helpers import load_clip

    original_path = shared_dir / "parity" / "tiny_clip.pt"
    original = torch.load(original_path, map_location="cpu", weights_only=True)
    compact = torch.load(parity.DEFAULT_TINY_CLIP, map_location="cpu", weights_only=True)
    assert _same_state(parity.upcast_state(compact), original)
    with parity.fp32_clip_path(parity.DEFAULT_TINY_CLIP) as upcast_file:
        assert _same_state(torch.load(upcast_file, weights_only=True), original)
        ours = load_clip("", path=upcast_file).state_dict()
    assert _same_state(ours, load_clip("", path=str(original_path)).state_dict())


def test_shipped_fixtures_are_the_published_ones(shared_dir, parity_fixtures):
    for stem in SHIPPED:
        shipped = (parity_fixtures / f"{stem}.pt").read_bytes()
        assert shipped == (shared_dir / "parity" / f"{stem}.pt").read_bytes(), stem
