"""Shared pytest fixtures: the repo on sys.path, shared/ location, a tiny CLIP built once."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
for p in (str(REPO), str(REPO / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

os.environ.setdefault("DASSL_BACKEND", "bundled")


@pytest.fixture(scope="session")
def shared_dir():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} (the shared fixtures folder) is not present")
    return SHARED


@pytest.fixture(scope="session")
def tiny_clip():
    """The built-in tiny random CLIP (fp32, eval, frozen), built once per session."""
    from trainers.clip_helpers import load_clip

    return load_clip("tiny")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A DATASET.ROOT shared by the tests that run the embedded offline dataset."""
    return str(tmp_path_factory.mktemp("data"))


def last_accuracy(log_text):
    """The last ``* accuracy: xx.x%`` value of a log."""
    import re

    values = re.findall(r"^\* accuracy: ([\d.]+)%", log_text, flags=re.M)
    assert values, "no '* accuracy:' line in the log"
    return float(values[-1])


def method_cfg(node_name, **node):
    """Our default config on the tiny CLIP in fp32, with ``TRAINER.<node_name>`` keys overridden."""
    from trainers.config import default_cfg

    cfg = default_cfg()
    cfg.MODEL.BACKBONE.NAME = "tiny"
    cfg.TRAINER[node_name].PREC = "fp32"
    for key, value in node.items():
        cfg.TRAINER[node_name][key] = value
    return cfg


def perturb(module, seed=5, scale=0.05):
    """Move every learnable tensor away from its initial value (deterministically)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


def random_images(n=3, seed=2, size=32):
    import torch

    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def offline_trainer(trainer_name, root, out, *opts):
    """A trainer on the embedded offline default, built but not trained."""
    import train

    return train.main(["--root", root, "--trainer", trainer_name, "--output-dir", str(out), "--no-train",
                       "DATASET.NUM_SHOTS", "2", *opts])
