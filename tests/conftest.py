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
