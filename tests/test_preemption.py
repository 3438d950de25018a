"""Pre-emption with real signals: SIGTERM / SIGUSR1 save the exact state, and re-running continues it.

Each interrupted run is a ``python train.py`` subprocess that receives a real
signal: from a ``--plugin`` that signals its own process at a chosen point
(deterministic: mid-epoch, during a checkpoint write, before training), or from
this test to the whole process group, data-loader workers included, as a
cluster does.  The re-run and the uninterrupted reference run are fresh
processes too; on CPU with a fixed seed the final weights must be bit-identical.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from gopro_prompts import train
from gopro_prompts.trainers import preemption
from gopro_prompts.trainers.rng import capture_rng_state

REPO = Path(__file__).resolve().parents[1]
#: 2 epochs of 6 steps (2 shots of 12 classes, batch 4) on the embedded offline default
BASE_OPTS = ["DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
             "TRAIN.PRINT_FREQ", "1"]
MODEL_DIR = {"CoOp": "prompt_learner", "GOPro": None}


@pytest.fixture(scope="module", autouse=True)
def _offline_data(synthetic_root):
    """The embedded default generates its data in the session's folder ($GOPRO_OFFLINE_DATA, children too)."""


@pytest.fixture(autouse=True)
def _no_env_report(monkeypatch):
    monkeypatch.setattr(train, "collect_env_info", lambda: "(skipped in tests)")


def _argv(trainer, out, *opts, flags=()):
    return ["--trainer", trainer, "--output-dir", str(out), *flags, *BASE_OPTS, *opts]


def _start(argv, plugin=None, tmp_path=None):
    """``python train.py argv`` in its own process group, stdout piped."""
    flags = []
    if plugin is not None:
        path = tmp_path / "signal_plugin.py"
        path.write_text(textwrap.dedent(plugin))
        flags = ["--plugin", str(path)]
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *flags, *argv], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _weights(out):
    """Every learnable tensor of the run's final (epoch 2) checkpoints."""
    weights = {}
    for path in sorted(Path(out).glob("*/model.pth.tar-2")):
        state = torch.load(path, weights_only=True)["state_dict"]
        weights.update({f"{path.parent.name}/{k}": v for k, v in state.items()})
    assert weights, f"no epoch-2 checkpoint in {out}"
    return weights


def _accuracy(out):
    return json.loads((Path(out) / "results.json").read_text())["metrics"]["accuracy"]


def _assert_preempted(code, err, out, signum, saved=True):
    assert code == 128 + signum, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith(f"pre-empted by {signal.Signals(signum).name}"), err
    assert "run the same command again" in lines[-1]
    assert not (Path(out) / ".train.lock").exists(), "the lock is released"
    preempt = Path(out) / preemption.PREEMPT_FILE
    assert preempt.is_file() == saved
    if saved:
        assert str(preempt) in lines[-1]
        assert torch.load(preempt, weights_only=True)["format"] == preemption.PREEMPT_FORMAT  # plain data


def _assert_same_as_reference(reference, out):
    ref, got = _weights(reference), _weights(out)
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    assert _accuracy(out) == _accuracy(reference)
    assert not (Path(out) / preemption.PREEMPT_FILE).exists(), "removed once training finished"


_REFERENCES = {}


def _reference(tmp_path_factory, trainer, *opts):
    """An uninterrupted run in a fresh process, as the runs it is compared with (cached per trainer and opts)."""
    key = (trainer, opts)
    if key not in _REFERENCES:
        out = tmp_path_factory.mktemp(f"reference_{trainer}")
        _rerun(_argv(trainer, out, *opts))
        _REFERENCES[key] = out
    return _REFERENCES[key]


def _rerun(argv):
    """Run ``python train.py argv`` to the end (the same command again, after a pre-emption); its stdout."""
    code, stdout, err = _finish(_start(argv))
    assert code == 0, err[-3000:]
    return stdout


#: a plugin that sends ``SIG`` to its own process when step STEP of epoch EPOCH starts
AT_STEP = """
    import os, signal
    from gopro_prompts.trainers.base import ClipTrainer

    _step = ClipTrainer.forward_backward

    def forward_backward(self, batch):
        if (self.epoch, self.batch_idx) == ({epoch}, {step}):
            os.kill(os.getpid(), signal.{sig})  # arrives while this step runs
        return _step(self, batch)

    ClipTrainer.forward_backward = forward_backward
"""


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_mid_epoch_saves_the_step_and_resumes_bit_identically(tmp_path, tmp_path_factory, workers):
    opts = ("DATALOADER.NUM_WORKERS", str(workers))
    reference = _reference(tmp_path_factory, "CoOp", *opts)
    out = tmp_path / "run"
    proc = _start(_argv("CoOp", out, *opts), AT_STEP.format(epoch=1, step=2, sig="SIGTERM"), tmp_path)
    code, stdout, err = _finish(proc)
    _assert_preempted(code, err, out, signal.SIGTERM)
    assert "after step 3/" in err and "epoch 2/2" in err
    state = torch.load(out / preemption.PREEMPT_FILE, weights_only=True)
    assert (state["epoch"], state["steps_done"]) == (1, 3)
    assert not (out / "prompt_learner" / "model.pth.tar-2").exists()
    assert "pre-empted by SIGTERM" in (out / "log.txt").read_text()

    _rerun(_argv("CoOp", out, *opts))  # the same command again
    log = sorted(out.glob("log.txt-*"))[-1].read_text()
    assert "Found a pre-emption checkpoint" in log and "(will resume epoch 2 after step 3)" in log
    assert "Replayed the data of the 3 steps" in log
    _assert_same_as_reference(reference, out)


def test_sigusr1_to_the_process_group_gopro_with_workers(tmp_path, tmp_path_factory):
    """As a cluster does: the whole group (data-loader workers too) gets the signal mid-training."""
    opts = ("DATALOADER.NUM_WORKERS", "2")
    reference = _reference(tmp_path_factory, "GOPro", *opts)
    out = tmp_path / "run"
    proc = _start(_argv("GOPro", out, *opts))
    for line in proc.stdout:  # signal once the first epoch has made two steps
        if re.match(r"epoch \[1/2\] batch \[2/", line):
            os.killpg(proc.pid, signal.SIGUSR1)
            break
    code, _, err = _finish(proc)
    _assert_preempted(code, err, out, signal.SIGUSR1)
    assert "DataLoader worker" not in err

    _rerun(_argv("GOPro", out, *opts))
    _assert_same_as_reference(reference, out)


def test_signal_during_a_checkpoint_write(tmp_path, tmp_path_factory):
    """The write finishes (complete file and pointer), then the run stops before the next epoch."""
    opts = ("TRAIN.CHECKPOINT_FREQ", "1")
    reference = _reference(tmp_path_factory, "CoOp", *opts)
    out = tmp_path / "run"
    plugin = """
        import os, signal, torch

        _save = torch.save

        def save(obj, f, *args, **kwargs):
            if isinstance(obj, dict) and obj.get("epoch") == 1 and "model.pth.tar-1" in str(f):
                os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of this write
            return _save(obj, f, *args, **kwargs)

        torch.save = save
    """
    code, _, err = _finish(_start(_argv("CoOp", out, *opts), plugin, tmp_path))
    _assert_preempted(code, err, out, signal.SIGTERM)
    assert "epoch 2/2, after step 0/" in err
    folder = out / "prompt_learner"
    assert torch.load(folder / "model.pth.tar-1", weights_only=True)["epoch"] == 1  # complete
    assert (folder / "checkpoint").read_text() == "model.pth.tar-1\n"
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temp file left

    _rerun(_argv("CoOp", out, *opts))
    _assert_same_as_reference(reference, out)


def test_signal_during_validation_resumes_bit_identically(tmp_path, tmp_path_factory):
    """With TEST.FINAL_MODEL best_val the per-epoch validation is interrupted between batches."""
    opts = ("TEST.FINAL_MODEL", "best_val", "DATALOADER.TEST.BATCH_SIZE", "50")
    reference = _reference(tmp_path_factory, "CoOp", *opts)
    out = tmp_path / "run"
    plugin = """
        import os, signal
        from gopro_prompts.trainers.base import ClipTrainer

        _infer = ClipTrainer.model_inference
        sent = []

        def model_inference(self, images):
            if self.epoch == 0 and self._in_after_epoch and not sent:
                sent.append(1)
                os.kill(os.getpid(), signal.SIGTERM)
            return _infer(self, images)

        ClipTrainer.model_inference = model_inference
    """
    code, _, err = _finish(_start(_argv("CoOp", out, *opts), plugin, tmp_path))
    _assert_preempted(code, err, out, signal.SIGTERM)
    state = torch.load(out / preemption.PREEMPT_FILE, weights_only=True)
    assert state["epoch"] == 0 and state["steps_done"] == state["num_batches"]

    _rerun(_argv("CoOp", out, *opts))
    ref = torch.load(reference / "prompt_learner" / "model-best.pth.tar", weights_only=True)
    got = torch.load(out / "prompt_learner" / "model-best.pth.tar", weights_only=True)
    assert ref["epoch"] == got["epoch"] and torch.equal(ref["state_dict"]["ctx"], got["state_dict"]["ctx"])
    _assert_same_as_reference(reference, out)


def test_signal_before_the_first_step_just_exits(tmp_path):
    out = tmp_path / "run"
    plugin = """
        import os, signal
        from gopro_prompts.trainers.base import ClipTrainer

        _build = ClipTrainer.build_model

        def build_model(self):
            os.kill(os.getpid(), signal.SIGTERM)
            return _build(self)

        ClipTrainer.build_model = build_model
    """
    code, _, err = _finish(_start(_argv("CoOp", out), plugin, tmp_path))
    _assert_preempted(code, err, out, signal.SIGTERM, saved=False)
    assert "before training started" in err
    assert not (out / "prompt_learner").exists()


def test_preemption_checkpoint_is_never_taken_for_an_epoch_checkpoint(tmp_path):
    """--load-epoch, Dassl's pointer and Dassl's load_model only look for model.pth.tar-N / model-best."""
    out = tmp_path / "run"
    code, _, err = _finish(_start(_argv("CoOp", out), AT_STEP.format(epoch=0, step=1, sig="SIGTERM"), tmp_path))
    _assert_preempted(code, err, out, signal.SIGTERM)
    assert not (out / "prompt_learner").exists() or not any((out / "prompt_learner").iterdir())
    assert not re.fullmatch(r"model\.pth\.tar-\d+|model-best\.pth\.tar|checkpoint", preemption.PREEMPT_FILE)
    code = train.cli(["--trainer", "CoOp", "--output-dir", str(tmp_path / "eval"), "--eval-only",
                      "--model-dir", str(out), "--load-epoch", "1", *BASE_OPTS])
    assert code == 2
    # another config never continues it, and leaves it in place
    before = (out / preemption.PREEMPT_FILE).read_bytes()
    assert train.cli(_argv("CoOp", out, "OPTIM.LR", "0.01")) == 2
    assert (out / preemption.PREEMPT_FILE).read_bytes() == before


class _SignalDispositions(torch.utils.data.Dataset):
    """Each item: whether SIGTERM and SIGUSR1 are ignored in the process that loads it."""

    def __len__(self):
        return 2

    def __getitem__(self, index):
        return torch.tensor([signal.getsignal(s) == signal.SIG_IGN for s in preemption.SIGNALS])


def test_data_loader_workers_ignore_the_signals(tmp_path, synthetic_root):
    """The trainer's loaders make their workers ignore SIGTERM / SIGUSR1, however workers start.

    A forked worker also inherits the main process's handler (which ignores signals outside the
    main process); a spawned one (macOS, Windows, Python >= 3.14's forkserver) inherits nothing,
    so only the worker_init_fn protects it: checked here with a spawned worker.
    """
    from helpers import offline_trainer

    trainer = offline_trainer("CoOp", synthetic_root, tmp_path, "DATALOADER.NUM_WORKERS", "1")
    for loader in (trainer.train_loader_x, trainer.test_loader):
        assert loader.worker_init_fn is not None
        probe = torch.utils.data.DataLoader(_SignalDispositions(), batch_size=2, num_workers=1,
                                            worker_init_fn=loader.worker_init_fn, multiprocessing_context="spawn")
        assert next(iter(probe)).all()


def test_method_state_travels_in_the_preemption_checkpoint(tmp_path, synthetic_root):
    """A method's own training state (e.g. a running prompt average) is saved and given back on resume."""
    from helpers import offline_trainer

    trainer = offline_trainer("CoOp", synthetic_root, tmp_path / "a")
    trainer.method_state = lambda: {"average": torch.arange(3.0), "count": 7}
    trainer.epoch, trainer.max_epoch, trainer.num_batches = 0, 1, 4
    trainer._epoch_rng = capture_rng_state()
    path = trainer._save_preempted(2, trainer._epoch_rng, signal.SIGTERM)

    received = []
    fresh = offline_trainer("CoOp", synthetic_root, tmp_path / "b")
    fresh.load_method_state = received.append
    checkpoint = torch.load(path, weights_only=True)  # plain data
    assert fresh._resume_preempted(path, checkpoint) == 0
    assert received and received[0]["count"] == 7 and torch.equal(received[0]["average"], torch.arange(3.0))
    assert fresh._replay["steps_done"] == 2
