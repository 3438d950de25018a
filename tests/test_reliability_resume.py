"""Issue 8: checkpoints, resuming after a kill, and numerical faults.

Every test here fails without the protection it names (RNG restore, atomic
writes, resume fall-backs, origin checks, train.cli reporting FloatingPointError).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch

from gopro_prompts import train
from gopro_prompts.trainers.base import ClipTrainer
from gopro_prompts.trainers.rng import capture_rng_state, restore_rng_state

MODEL = "prompt_learner"
#: the backbone of the embedded offline default
BACKBONE = dict(zip(train.OFFLINE_OPTS[::2], train.OFFLINE_OPTS[1::2]))["MODEL.BACKBONE.NAME"]
#: a 3-epoch CoOp run on the offline dataset that saves every epoch (12 images: one batch of 8 per epoch)
RUN = ["--trainer", "CoOp", "DATASET.NUM_SHOTS", "1", "OPTIM.MAX_EPOCH", "3", "TRAIN.CHECKPOINT_FREQ", "1"]


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing on the way catches it."""


def _argv(root, out, *opts, flags=()):
    return ["--output-dir", str(out), *flags, *RUN, *opts]


@pytest.fixture(autouse=True)
def _no_env_report(monkeypatch):
    """collect_env_info runs pip and friends (seconds): not what these tests are about."""
    monkeypatch.setattr(train, "collect_env_info", lambda: "(skipped in tests)")


def _final(out, epoch=3):
    """(weights of the last checkpoint, accuracy in results.json, results.json epoch)."""
    ckpt = torch.load(Path(out) / MODEL / f"model.pth.tar-{epoch}", weights_only=True)
    record = json.loads((Path(out) / "results.json").read_text())
    return ckpt["state_dict"], record["metrics"]["accuracy"], record["epoch"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, synthetic_root):
    """An uninterrupted run: its output folder."""
    out = tmp_path_factory.mktemp("reference")
    train.main(_argv(synthetic_root, out))
    return out


def _assert_same_result(reference, out):
    ref_weights, ref_acc, _ = _final(reference)
    weights, acc, epoch = _final(out)
    assert epoch == 3 and acc == ref_acc
    assert weights.keys() == ref_weights.keys()
    for key in weights:
        assert torch.equal(weights[key], ref_weights[key]), key


def _resumed_log(out):
    logs = sorted(Path(out).glob("log.txt-*"))
    assert len(logs) == 1, "the resumed run writes a new log file (Dassl's timestamp suffix)"
    return logs[0].read_text()


# ---------------------------------------------------------------- checkpoint content
def test_checkpoint_is_plain_data_with_learnables_rng_config_and_origin(reference):
    ckpt = torch.load(reference / MODEL / "model.pth.tar-2", weights_only=True)  # plain data only
    assert set(ckpt) == {"state_dict", "epoch", "optimizer", "scheduler", "val_result",
                         "rng_state", "method_state", "best_result", "config", "trainer", "backbone"}
    assert ckpt["method_state"] == {}  # CoOp has no state beyond its weights and optimiser
    assert list(ckpt["state_dict"]) == ["ctx"]  # learnable only: no CLIP, no class-dependent buffers
    assert ckpt["epoch"] == 2 and ckpt["trainer"] == "CoOp" and ckpt["backbone"] == BACKBONE
    assert set(ckpt["rng_state"]) == {"python", "numpy", "torch", "cuda"}
    assert "MAX_EPOCH: 3" in ckpt["config"] and "NAME: CoOp" in ckpt["config"]
    assert (reference / MODEL / "checkpoint").read_text() == "model.pth.tar-3\n"


@pytest.mark.parametrize("trainer", ["CoOp", "CoCoOp", "MaPLe", "GOPro"])
def test_learnable_state_never_holds_class_dependent_buffers(trainer, tiny_clip):
    from gopro_prompts.trainers.config import default_cfg, offline_config_file
    cfg = default_cfg()  # also registers our trainers
    from gopro_prompts.dassl_compat import TRAINER_REGISTRY

    cls = TRAINER_REGISTRY.get(trainer)
    cfg.merge_from_file(offline_config_file(trainer))
    if trainer == "MaPLe":
        cfg.merge_from_list(["TRAINER.MAPLE.PROMPT_DEPTH", 2])
    model = cls.build_clip_model(cfg, ["red circle", "blue square", "a very long class name"], tiny_clip)
    keys = list(model.learnable_module().state_dict())
    assert keys
    assert not [k for k in keys if k.split(".")[-1] in ClipTrainer.CLASS_DEPENDENT_KEYS]
    assert not [k for k in keys if "token_embedding" in k or "resblocks" in k]


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = capture_rng_state()
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restore_rng_state(torch.load(buffer, weights_only=True))
    got = (random.random(), float(np.random.rand()), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


# ---------------------------------------------------------------- resume after a kill
def test_kill_after_the_epoch_2_checkpoint_then_resume_repeats_the_uninterrupted_run(
        reference, tmp_path, synthetic_root, monkeypatch):
    out = tmp_path / "run"
    save = ClipTrainer.save_model

    def save_then_die(self, epoch, directory, *args, **kwargs):
        save(self, epoch, directory, *args, **kwargs)
        if epoch + 1 == 2:
            raise Killed

    monkeypatch.setattr(ClipTrainer, "save_model", save_then_die)
    with pytest.raises(Killed):
        train.main(_argv(synthetic_root, out))
    monkeypatch.setattr(ClipTrainer, "save_model", save)
    assert not (out / "results.json").exists() and not (out / ".train.lock").exists()

    train.main(_argv(synthetic_root, out))  # the same command again
    log = _resumed_log(out)
    assert "Previous epoch: 2" in log and "Restored the random number generator states" in log
    assert "epoch [2/3]" not in log and "epoch [3/3]" in log
    _assert_same_result(reference, out)  # weights and accuracy: RNG states were restored


def test_kill_during_the_epoch_2_checkpoint_write_resumes_from_epoch_1(
        reference, tmp_path, synthetic_root, monkeypatch):
    out = tmp_path / "run"
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and "model.pth.tar-2" in os.path.basename(str(f)):
            data = io.BytesIO()
            real_save(obj, data, *args, **kwargs)
            with open(f, "wb") as handle:  # half of the file reaches the disk, then the kill
                handle.write(data.getvalue()[: len(data.getvalue()) // 2])
            raise Killed
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(Killed):
        train.main(_argv(synthetic_root, out))
    monkeypatch.setattr(torch, "save", real_save)
    folder = out / MODEL
    # no truncated file under a final name; the pointer still names the last complete checkpoint
    assert not (folder / "model.pth.tar-2").exists()
    assert (folder / "checkpoint").read_text() == "model.pth.tar-1\n"
    # what a SIGKILL leaves: the temp file of the cut write (its pid is gone)
    (folder / f".model.pth.tar-2.{os.getpid()}-deadbeef.tmp").write_bytes(b"\x80partial")

    train.main(_argv(synthetic_root, out))
    log = _resumed_log(out)
    assert "Previous epoch: 1" in log and "epoch [2/3]" in log
    assert not list(folder.glob(".*.tmp"))
    _assert_same_result(reference, out)


def test_run_killed_during_its_first_checkpoint_write_trains_from_scratch(tmp_path, synthetic_root):
    out = tmp_path / "run"
    folder = out / MODEL
    folder.mkdir(parents=True)  # what a kill during the first save leaves behind
    (folder / f".model.pth.tar-1.{os.getpid()}-deadbeef.tmp").write_bytes(b"\x80partial")
    train.main(_argv(synthetic_root, out, "OPTIM.MAX_EPOCH", "1"))  # Dassl: FileNotFoundError
    log = (out / "log.txt").read_text()
    assert "No checkpoint found, train from scratch" in log and "epoch [1/1]" in log


@pytest.mark.parametrize("pointer", [None, "", "model.pth.tar-2\n"])
def test_lost_or_truncated_pointer_resumes_from_the_newest_readable_checkpoint(
        pointer, reference, tmp_path, synthetic_root):
    out = tmp_path / "run"
    folder = out / MODEL
    folder.mkdir(parents=True)
    for epoch in (1, 2):
        (folder / f"model.pth.tar-{epoch}").write_bytes((reference / MODEL / f"model.pth.tar-{epoch}").read_bytes())
    if pointer == "model.pth.tar-2\n":  # the pointer names a file a non-atomic writer truncated
        (folder / "model.pth.tar-2").write_bytes((folder / "model.pth.tar-2").read_bytes()[:100])
    if pointer is not None:
        (folder / "checkpoint").write_text(pointer)
    trainer = train.main(_argv(synthetic_root, out, flags=["--no-train"]))
    start = trainer.resume_model_if_exist(str(out))
    assert start == (1 if pointer == "model.pth.tar-2\n" else 2)


# ---------------------------------------------------------------- loading another run's checkpoint
def _eval_error(capfd, root, model_dir, out, *opts):
    code = train.cli(["--trainer", "CoOp", "--output-dir", str(out), "--eval-only",
                      "--model-dir", str(model_dir), "--load-epoch", "1", "DATASET.NUM_SHOTS", "1", *opts])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and err and err[-1].startswith("error: "), err
    return err[-1]


def _doctored(reference, tmp_path, **changes):
    ckpt = torch.load(reference / MODEL / "model.pth.tar-1", weights_only=True)
    ckpt.update(changes)
    model_dir = tmp_path / "model"
    (model_dir / MODEL).mkdir(parents=True)
    torch.save(ckpt, model_dir / MODEL / "model.pth.tar-1")
    return model_dir


def test_checkpoint_of_another_trainer_is_refused(capfd, reference, tmp_path, synthetic_root):
    msg = _eval_error(capfd, synthetic_root, _doctored(reference, tmp_path, trainer="CoCoOp"), tmp_path / "e")
    assert "made by the CoCoOp trainer, not CoOp" in msg


def test_checkpoint_of_another_backbone_is_refused(capfd, reference, tmp_path, synthetic_root):
    msg = _eval_error(capfd, synthetic_root, _doctored(reference, tmp_path, backbone="ViT-B/16"), tmp_path / "e")
    assert "backbone ViT-B/16" in msg and f"uses {BACKBONE}" in msg


def test_class_specific_context_for_another_class_count_is_refused(capfd, reference, tmp_path, synthetic_root):
    ckpt = torch.load(reference / MODEL / "model.pth.tar-1", weights_only=True)
    csc = torch.zeros(6, 4, ckpt["state_dict"]["ctx"].shape[-1])  # trained on the 6 base classes
    model_dir = _doctored(reference, tmp_path, state_dict={"ctx": csc})
    msg = _eval_error(capfd, synthetic_root, model_dir, tmp_path / "e", "TRAINER.COOP.CSC", "True",
                      "TRAINER.COOP.CTX_INIT", "", "TRAINER.COOP.N_CTX", "4")
    assert "class-specific context (CSC) for 6 classes" in msg and "has 12" in msg


def test_resuming_into_a_folder_of_another_trainer_is_refused(capfd, reference, tmp_path, synthetic_root):
    out = _doctored(reference, tmp_path, trainer="CoCoOp")
    (out / MODEL / "checkpoint").write_text("model.pth.tar-1\n")
    code = train.cli(_argv(synthetic_root, out))
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and "made by the CoCoOp trainer" in err[-1] and "--output-dir" in err[-1]


# ---------------------------------------------------------------- numerical faults
def test_non_finite_loss_stops_with_one_line_and_keeps_the_last_checkpoint(
        capfd, tmp_path, synthetic_root, monkeypatch):
    from gopro_prompts.trainers.coop import CoOpModel

    forward_train = CoOpModel.forward_train
    calls = []

    def nan_in_epoch_2(self, images, labels):
        logits, terms = forward_train(self, images, labels)
        calls.append(1)
        if len(calls) == 2:  # one batch per epoch: epoch 2, batch 1
            terms = {"ce": terms["ce"] * float("nan")}
        return logits, terms

    monkeypatch.setattr(CoOpModel, "forward_train", nan_in_epoch_2)
    out = tmp_path / "run"
    code = train.cli(_argv(synthetic_root, out, "OPTIM.MAX_EPOCH", "2"))
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(calls) == 2
    assert err[-1].startswith("error: non-finite loss at epoch 2 batch 1 (ce=nan)"), err[-1]
    folder = out / MODEL
    assert (folder / "checkpoint").read_text() == "model.pth.tar-1\n"
    assert torch.load(folder / "model.pth.tar-1", weights_only=True)["epoch"] == 1
    assert not (folder / "model.pth.tar-2").exists() and not (out / "results.json").exists()
    assert "error: non-finite loss" in (out / "log.txt").read_text()  # the reason is in the log too


def test_with_a_grad_scaler_a_non_finite_loss_is_left_to_the_scaler():
    from gopro_prompts.trainers.method import PromptMethod, training_step

    class NaNMethod(PromptMethod):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))

        def learnable_module(self):
            return self

        def forward(self, images):
            return (images * self.w * float("nan")).reshape(1, 2)

    class Scaler:  # amp on CUDA: GradScaler skips the step and lowers its scale
        steps = 0

        def scale(self, loss):
            return loss

        def step(self, optim):
            Scaler.steps += 1

        def update(self):
            pass

    model = NaNMethod()
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    images, labels = torch.ones(2), torch.zeros(1, dtype=torch.long)
    training_step(model, images, labels, optim, scaler=Scaler())  # no exception: the scaler decides
    assert Scaler.steps == 1
    with pytest.raises(FloatingPointError, match="at epoch 1 batch 1 \\(ce=nan\\)"):
        training_step(model, images, labels, optim, where="at epoch 1 batch 1")
    assert torch.equal(model.w, torch.ones(2))  # no step taken


# ---------------------------------------------------------------- atomic files
def test_a_kill_while_overwriting_a_checkpoint_leaves_the_old_file(tmp_path, monkeypatch):
    from gopro_prompts.dassl_compat import load_checkpoint, save_checkpoint

    state = {"state_dict": {"w": torch.ones(3)}, "epoch": 1}
    save_checkpoint(dict(state), str(tmp_path), model_name="model-best.pth.tar")
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"\x80\x02partial")
        raise Killed

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(Killed):
        save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, str(tmp_path),
                        model_name="model-best.pth.tar")
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(load_checkpoint(str(tmp_path / "model-best.pth.tar"))["state_dict"]["w"], torch.ones(3))
    assert (tmp_path / "checkpoint").read_text() == "model-best.pth.tar\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "model-best.pth.tar"]
