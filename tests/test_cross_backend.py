"""A run started under one Dassl backend resumes and evaluates under the other.

Users switch backends: a job trained on a cluster with real Dassl is resumed
or evaluated on a laptop with the bundled engine, and the other way round.
Every step here is a separate process with its own ``DASSL_BACKEND``:

1. GOPro on the embedded offline default (3 epochs, warmup, a checkpoint per
   epoch) under backend A, killed right after its epoch-2 checkpoint (no
   clean-up: the run lock stays behind, as after a SIGKILL).  It writes the
   few-shot cache, ``log.txt`` and the checkpoints.
2. The same command under backend B: it reads A's few-shot cache, resumes
   from A's epoch-2 checkpoint (weights, optimizer, warmup scheduler, RNG
   states), writes its own time-stamped log next to A's untouched ``log.txt``,
   and ends with the weights and accuracy of an uninterrupted run, in
   ``results.json``.
3. ``--eval-only`` under backend A on B's final checkpoint: the same accuracy.

Both backends must be importable, so this runs on the real-Dassl leg only.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import REPO, last_accuracy

pytestmark = pytest.mark.real_dassl_only(
    reason="needs both backends importable (real Dassl on PYTHONPATH); the real-Dassl leg runs it")

#: GOPro on the embedded offline default: 3 epochs with a constant warmup, a checkpoint every epoch
RUN = ["--trainer", "GOPro", "DATASET.NUM_SHOTS", "2", "TRAIN.CHECKPOINT_FREQ", "1"]
MODEL = "gopro"

#: train.py's entry point (train.cli), optionally killed right after the checkpoint of one epoch
DRIVER = textwrap.dedent("""
    import os
    import sys

    from gopro_prompts import train
    from gopro_prompts.trainers.base import ClipTrainer

    train.collect_env_info = lambda: "(skipped in tests)"  # seconds of pip and compiler queries
    kill_after = int(os.environ.get("KILL_AFTER_EPOCH") or 0)
    save = ClipTrainer.save_model

    def save_then_die(self, epoch, directory, *args, **kwargs):
        save(self, epoch, directory, *args, **kwargs)
        if epoch + 1 == kill_after:
            sys.stdout.flush()
            os._exit(137)  # like SIGKILL: nothing is cleaned up

    ClipTrainer.save_model = save_then_die
    sys.exit(train.cli(sys.argv[1:]))
""")


def _run(backend, root, out, *flags, kill_after=0):
    env = {**os.environ, "DASSL_BACKEND": backend, "KILL_AFTER_EPOCH": str(kill_after),
           "GOPRO_OFFLINE_DATA": str(root)}
    return subprocess.run([sys.executable, "-c", DRIVER, "--output-dir", str(out), *flags,
                           *RUN], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _weights(out, epoch):
    return torch.load(Path(out) / MODEL / f"model.pth.tar-{epoch}", weights_only=True)["state_dict"]


def _results(out):
    return json.loads((Path(out) / "results.json").read_text())


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """An uninterrupted run (bundled engine; the backends train bit-identically, see below)."""
    out = tmp_path_factory.mktemp("reference")
    _ok(_run("bundled", data_root, out))
    return out


@pytest.mark.parametrize("first, second", [("bundled", "dassl"), ("dassl", "bundled")])
def test_a_run_killed_under_one_backend_resumes_and_evaluates_under_the_other(
        first, second, data_root, reference, tmp_path):
    shutil.rmtree(Path(data_root) / "synthetic_shapes" / "split_fewshot")  # the first run writes it anew
    out = tmp_path / "run"

    # 1. backend `first`, killed after the epoch-2 checkpoint
    killed = _run(first, data_root, out, kill_after=2)
    assert killed.returncode == 137, killed.stdout[-3000:] + killed.stderr[-3000:]
    first_log = (out / "log.txt").read_text()
    assert f"Dassl backend: {first}" in first_log
    assert "Saving preprocessed few-shot data to" in first_log and "epoch [2/3]" in first_log
    assert (out / MODEL / "model.pth.tar-2").is_file() and not (out / MODEL / "model.pth.tar-3").exists()
    assert not (out / "results.json").exists()

    # 2. the same command under backend `second`: resumes from `first`'s files
    _ok(_run(second, data_root, out))
    assert (out / "log.txt").read_text() == first_log  # the first run's log is never written again
    resumed_logs = sorted(out.glob("log.txt-*"))
    assert len(resumed_logs) == 1, "the resumed run writes a time-stamped log of its own"
    log = resumed_logs[0].read_text()
    assert f"Dassl backend: {second}" in log
    assert "Loading preprocessed few-shot data from" in log  # `first`'s few-shot cache
    assert "Previous epoch: 2" in log and "Loaded scheduler" in log
    assert "Restored the random number generator states" in log
    assert "epoch [2/3]" not in log and "epoch [3/3]" in log
    record = _results(out)
    assert record["backend"] == second and record["epoch"] == 3 and not record["eval_only"]
    # the same weights and accuracy as an uninterrupted run
    expected = _weights(reference, 3)
    weights = _weights(out, 3)
    assert weights.keys() == expected.keys()
    for key in expected:
        assert torch.equal(weights[key], expected[key]), key
    assert record["metrics"]["accuracy"] == _results(reference)["metrics"]["accuracy"]
    assert f"{last_accuracy(log):.1f}" == f"{record['metrics']['accuracy']:.1f}"

    # 3. --eval-only under backend `first` on `second`'s final checkpoint
    out_eval = tmp_path / "eval"
    _ok(_run(first, data_root, out_eval, "--eval-only", "--model-dir", str(out), "--load-epoch", "3"))
    eval_log = (out_eval / "log.txt").read_text()
    assert f"Dassl backend: {first}" in eval_log and f"Loading weights to {MODEL}" in eval_log
    evaluated = _results(out_eval)
    assert evaluated["backend"] == first and evaluated["eval_only"] and evaluated["load_epoch"] == 3
    assert evaluated["metrics"] == record["metrics"]
