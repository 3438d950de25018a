"""Loading a checkpoint never executes code, and still reads Dassl's and the official trainers' files.

A pickle can call any function while it is read (``__reduce__``); Dassl-style
checkpoints pickle optimizer and scheduler objects, so ``torch.load`` with
``weights_only=False`` would run whatever a file asks for.  These tests make
such files themselves: a hostile one (an ``os.system`` reduce that would
create a marker file) and the ones real Dassl writes (a warmup scheduler whose
successor ``CosineAnnealingLR`` holds the ``SGD`` optimizer), then read them
on the three paths that load checkpoints: ``--eval-only --model-dir``,
``MODEL.INIT_WEIGHTS`` and the automatic resume.
"""
from __future__ import annotations

import logging
import os

import pytest
import torch

from gopro_prompts import train
from gopro_prompts.dassl_compat import get_logger, load_checkpoint, resume_from_checkpoint
from gopro_prompts.bundled_dassl.safe_pickle import InertObject, UnsafeCheckpointError

MODEL = "prompt_learner"
#: a 1-epoch CoOp run of the embedded offline default (seconds)
OPTS = ["DATASET.NUM_SHOTS", "1", "OPTIM.MAX_EPOCH", "1"]


def _argv(root, out, *opts, flags=()):
    """A run of the embedded offline default (its generated data under ``root``: conftest's synthetic_root)."""
    return ["--output-dir", str(out), "--trainer", "CoOp", *flags, *OPTS, *opts]


@pytest.fixture(autouse=True)
def _no_env_report(monkeypatch):
    monkeypatch.setattr(train, "collect_env_info", lambda: "(skipped in tests)")


@pytest.fixture(scope="module", autouse=True)
def _offline_data(synthetic_root):
    """The embedded default generates its data in the session's folder (conftest's synthetic_root)."""


class _RunsAShellCommand:
    """Unpickling this runs ``os.system(command)``: what a hostile checkpoint does."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_root):
    """A finished 1-epoch CoOp run: (output folder, its learnable state dict)."""
    out = tmp_path_factory.mktemp("trained")
    train.main(_argv(synthetic_root, out))
    state = torch.load(out / MODEL / "model.pth.tar-1", weights_only=True)["state_dict"]
    return out, state


def _real_dassl_checkpoint(state_dict, epoch=1, last_epoch=1):
    """The content of a warmup run's checkpoint as real Dassl writes it.

    Dassl's ``SimpleTrainer.save_model`` stores ``scheduler.state_dict()``; for its
    ``ConstantWarmupScheduler`` that is the wrapper's ``__dict__`` without the
    optimizer, which keeps the successor scheduler object (and, through it, the
    optimizer object).  The official trainers also keep the class-dependent
    ``token_prefix`` / ``token_suffix`` buffers in the state dict.
    """
    params = [torch.nn.Parameter(v.clone()) for v in state_dict.values()]
    optimizer = torch.optim.SGD(params, lr=0.002, momentum=0.9)
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
    for _ in range(last_epoch):
        optimizer.step()
        successor.step()
    scheduler = {"successor": successor, "warmup_epoch": 1, "cons_lr": 1e-5, "base_lrs": [0.002],
                 "last_epoch": 1, "_step_count": 2, "verbose": False, "_last_lr": successor.get_last_lr()}
    official_state = dict(state_dict)
    official_state["token_prefix"] = torch.zeros(3, 1, 8)
    return {"state_dict": official_state, "epoch": epoch, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler, "val_result": None}


def _model_dir(tmp_path, content, epoch=1, pointer=True):
    folder = tmp_path / "model" / MODEL
    folder.mkdir(parents=True)
    torch.save(content, folder / f"model.pth.tar-{epoch}")
    if pointer:
        (folder / "checkpoint").write_text(f"model.pth.tar-{epoch}\n")
    return folder.parent


def _hostile(tmp_path, state_dict):
    marker = tmp_path / "code-ran"
    content = {"state_dict": dict(state_dict), "epoch": 1, "optimizer": None, "scheduler": None,
               "val_result": _RunsAShellCommand(f"touch {marker}")}
    return marker, content


def _refused_one_line(capfd, code, path):
    assert code == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert str(path) in err[0] and "system" in err[0] and "refused" in err[0]


# ----------------------------------------------------------------------- hostile files
def test_hostile_checkpoint_is_refused_for_eval_only(tmp_path, trained, synthetic_root, capfd):
    marker, content = _hostile(tmp_path, trained[1])
    model_dir = _model_dir(tmp_path, content)
    code = train.cli(_argv(synthetic_root, tmp_path / "eval",
                           flags=["--eval-only", "--model-dir", str(model_dir), "--load-epoch", "1"]))
    _refused_one_line(capfd, code, model_dir / MODEL / "model.pth.tar-1")
    assert not marker.exists()


def test_hostile_checkpoint_is_refused_as_init_weights(tmp_path, trained, synthetic_root, capfd):
    marker, content = _hostile(tmp_path, trained[1])
    path = tmp_path / "init.pth.tar"
    torch.save(content, path)
    code = train.cli(_argv(synthetic_root, tmp_path / "out", "MODEL.INIT_WEIGHTS", str(path)))
    _refused_one_line(capfd, code, path)
    assert not marker.exists()


def test_hostile_checkpoint_is_refused_on_resume(tmp_path, trained, synthetic_root, capfd):
    marker, content = _hostile(tmp_path, trained[1])
    out = _model_dir(tmp_path, content)
    code = train.cli(_argv(synthetic_root, out, "OPTIM.MAX_EPOCH", "2"))
    _refused_one_line(capfd, code, out / MODEL / "model.pth.tar-1")
    assert not marker.exists()
    assert not (out / "results.json").exists()


def test_hostile_checkpoint_is_refused_by_the_dassl_loaders(tmp_path, trained):
    marker, content = _hostile(tmp_path, trained[1])
    folder = _model_dir(tmp_path, content) / MODEL
    with pytest.raises(UnsafeCheckpointError, match="posix.system|nt.system"):
        load_checkpoint(str(folder / "model.pth.tar-1"))
    with pytest.raises(UnsafeCheckpointError):
        resume_from_checkpoint(str(folder), torch.nn.Linear(1, 1))
    assert not marker.exists()


@pytest.mark.parametrize("hostile", ["builtins.eval", "subprocess.Popen", "unknown_module.Thing"])
def test_any_class_outside_the_allow_list_is_refused(tmp_path, hostile):
    module, name = hostile.split(".")
    # protocol 2: GLOBAL module name, an empty tuple, REDUCE -> would call module.name()
    payload = b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n)R."
    path = tmp_path / "raw.pth"
    path.write_bytes(payload)
    with pytest.raises(UnsafeCheckpointError, match=hostile.replace(".", r"\.")):
        load_checkpoint(str(path))


# ------------------------------------------------------------ Dassl / official files
def test_real_dassl_warmup_checkpoint_is_read_as_data(tmp_path, trained):
    path = tmp_path / "dassl.pth.tar"
    torch.save(_real_dassl_checkpoint(trained[1]), path)
    with pytest.raises(Exception):  # what real Dassl's own loader does on current torch
        torch.load(path, weights_only=True)
    checkpoint = load_checkpoint(str(path))
    successor = checkpoint["scheduler"]["successor"]
    assert isinstance(successor, InertObject)
    assert successor.pickled_class == "torch.optim.lr_scheduler.CosineAnnealingLR"
    assert successor.pickled_state["last_epoch"] == 1
    assert isinstance(successor.pickled_state["optimizer"], InertObject)  # the optimizer object: data too
    for key, value in trained[1].items():
        assert torch.equal(checkpoint["state_dict"][key], value)


def test_real_dassl_checkpoint_evaluates_and_initialises(tmp_path, trained, synthetic_root):
    out, state = trained
    model_dir = _model_dir(tmp_path, _real_dassl_checkpoint(state))
    trainer = train.main(_argv(synthetic_root, tmp_path / "eval",
                               flags=["--eval-only", "--model-dir", str(model_dir), "--load-epoch", "1"]))
    assert isinstance(trainer, float)  # the eval-only result
    init = tmp_path / "init.pth.tar"
    torch.save(_real_dassl_checkpoint(state), init)
    trainer = train.main(_argv(synthetic_root, tmp_path / "init", "MODEL.INIT_WEIGHTS", str(init),
                               flags=["--no-train"]))
    assert torch.equal(trainer.model.learnable_module().ctx.detach().cpu(), state["ctx"])


def test_real_dassl_warmup_checkpoint_resumes_its_schedule(tmp_path, trained, synthetic_root):
    """The pickled successor's state (its cosine position) is restored into the live scheduler."""
    out = _model_dir(tmp_path, _real_dassl_checkpoint(trained[1], epoch=1, last_epoch=1))
    warmup = ["OPTIM.WARMUP_EPOCH", "1", "OPTIM.WARMUP_TYPE", "constant", "OPTIM.WARMUP_CONS_LR", "1e-5"]
    trainer = train.main(_argv(synthetic_root, out, "OPTIM.MAX_EPOCH", "2", *warmup))
    successor = trainer.sched.successor
    assert successor.last_epoch == 2  # 1 from the file, plus the epoch this run trained
    assert trainer.optim.param_groups[0]["lr"] == pytest.approx(successor.get_last_lr()[0])


# ------------------------------------------------------------------------ pointer
@pytest.mark.parametrize("named", ["../elsewhere/model.pth.tar-1", "/tmp/model.pth.tar-1", ".."])
def test_pointer_naming_a_file_outside_its_folder_is_ignored(tmp_path, trained, named, caplog_ours):
    folder = _model_dir(tmp_path, {"state_dict": dict(trained[1]), "epoch": 1}) / MODEL
    (folder / "checkpoint").write_text(named + "\n")
    from gopro_prompts.trainers.checkpoints import find_complete_checkpoint

    path, checkpoint = find_complete_checkpoint(str(folder))
    assert path == str(folder / "model.pth.tar-1") and checkpoint["epoch"] == 1
    assert any(str(folder / "checkpoint") in m and "own folder" in m for m in caplog_ours)
    with pytest.raises(ValueError, match="not a file in its own folder"):
        resume_from_checkpoint(str(folder), torch.nn.Linear(1, 1))


def test_pointer_that_is_not_utf8_falls_back_naming_it(tmp_path, trained, caplog_ours):
    folder = _model_dir(tmp_path, {"state_dict": dict(trained[1]), "epoch": 1}) / MODEL
    (folder / "checkpoint").write_bytes(b"model.pth.tar-\xff\xfe\n")
    from gopro_prompts.trainers.checkpoints import find_complete_checkpoint

    path, _ = find_complete_checkpoint(str(folder))
    assert path == str(folder / "model.pth.tar-1")
    assert any(str(folder / "checkpoint") in m and "UTF-8" in m for m in caplog_ours)
    with pytest.raises(ValueError, match="not UTF-8"):
        resume_from_checkpoint(str(folder), torch.nn.Linear(1, 1))


# ------------------------------------------------------------- unreadable files
@pytest.mark.parametrize("kind", ["empty", "corrupt", "truncated", "not_a_checkpoint"])
@pytest.mark.parametrize("path_kind", ["eval_only", "init_weights"])
def test_unreadable_checkpoint_gives_one_line(tmp_path, trained, synthetic_root, capfd, kind, path_kind):
    out, _ = trained
    good = (out / MODEL / "model.pth.tar-1").read_bytes()
    content = {"empty": b"", "corrupt": b"this is not a checkpoint", "truncated": good[: len(good) // 2]}
    if path_kind == "eval_only":
        folder = tmp_path / "model" / MODEL
        folder.mkdir(parents=True)
        bad = folder / "model.pth.tar-1"
        flags, opts = ["--eval-only", "--model-dir", str(folder.parent), "--load-epoch", "1"], []
    else:
        bad = tmp_path / "init.pth.tar"
        flags, opts = [], ["MODEL.INIT_WEIGHTS", str(bad)]
    if kind == "not_a_checkpoint":
        torch.save([1, 2, 3], bad)
    else:
        bad.write_bytes(content[kind])
    target = tmp_path / "out"
    target.mkdir()
    (target / "log.txt").write_text("an earlier run")  # stays untouched
    code = train.cli(_argv(synthetic_root, target, *opts, flags=flags))
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and str(bad) in err[0], err
    assert (target / "log.txt").read_text() == "an earlier run"
    assert not (target / "results.json").exists()


# ------------------------------------------------------------------- run lock
def test_lock_file_that_is_not_utf8_is_taken_over_naming_it(tmp_path, caplog_ours):
    from gopro_prompts.run_lock import RunLock

    out = tmp_path / "out"
    out.mkdir()
    lock = out / ".train.lock"
    lock.write_bytes(b"pid=\xff\xfe\ntoken=\x80\n")
    old = lock.stat().st_mtime - 60
    os.utime(lock, (old, old))
    with RunLock(str(out)):
        assert "token=" in lock.read_text()  # ours now
    assert any(str(lock) in m and "unreadable" in m for m in caplog_ours)


@pytest.fixture
def caplog_ours():
    """Messages of the package's loggers (they live in a private logging manager)."""
    records = []

    class _Handler(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = _Handler(level=logging.DEBUG)
    loggers = [get_logger(name) for name in ("trainer", "run_lock")]
    for logger in loggers:
        logger.addHandler(handler)
    yield records
    for logger in loggers:
        logger.removeHandler(handler)


# ------------------------------------------------------------------- disk full
def test_disk_full_during_a_checkpoint_write_gives_one_line_and_keeps_the_last_checkpoint(
        tmp_path, synthetic_root, capfd, monkeypatch):
    import errno

    out = tmp_path / "out"
    save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if "model.pth.tar-2" in str(f):
            with open(f, "wb") as handle:
                handle.write(b"partial")  # what a full disk leaves: a short file
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    code = train.cli(_argv(synthetic_root, out, "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1"))
    err = capfd.readouterr().err.strip().splitlines()
    target = out / MODEL / "model.pth.tar-2"
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert str(target) in err[0] and "No space left on device" in err[0] and "disk space" in err[0]
    folder = out / MODEL
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint", "model.pth.tar-1"]  # no partial file
    assert (folder / "checkpoint").read_text() == "model.pth.tar-1\n"
    assert load_checkpoint(str(folder / "model.pth.tar-1"))["epoch"] == 1
