"""Tests of the bundled trainer engine (Dassl's ``dassl/engine/trainer.py``).

A toy ``TrainerX`` (a tiny ``nn.Linear`` on in-memory feature batches) checks
the loop, printed lines, checkpoints, resume, ``load_model``, ``test()``,
best-val mode, the LR printed under warmup + cosine and TensorBoard.
One test runs the real ``DataManager`` on generated image files.
"""
from __future__ import annotations

import math
import re
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from gopro_prompts.bundled_dassl.config import get_cfg_default
from gopro_prompts.bundled_dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum
from gopro_prompts.bundled_dassl.engine import TRAINER_REGISTRY, TrainerX, build_trainer
from gopro_prompts.bundled_dassl.optim import build_lr_scheduler, build_optimizer

pytestmark = pytest.mark.bundled_only(
    reason="tests the bundled engine's own trainer loop (gopro_prompts.bundled_dassl.engine); "
           "the real-Dassl leg runs our trainers on dassl.engine instead")

ENGINE = sys.modules[TrainerX.__module__]

N_FEAT, N_CLS = 4, 3

LINE_RE = re.compile(
    r"^epoch \[(\d+)/(\d+)\] batch \[(\d+)/(\d+)\] "
    r"time (\d+\.\d{3}) \((\d+\.\d{3})\) data (\d+\.\d{3}) \((\d+\.\d{3})\) "
    r"loss \d+\.\d{4} \(\d+\.\d{4}\) acc \d+\.\d{4} \(\d+\.\d{4}\) "
    r"lr (\d\.\d{4}e[-+]\d{2}) eta (\d+:\d{2}:\d{2})$"
)


# --------------------------------------------------------------------- toys
class _Features(Dataset):
    """Dassl-style items: a feature vector as ``img`` plus label/domain/impath/index."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, N_FEAT, generator=g)
        self.y = torch.arange(n) % N_CLS

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"img": self.x[i], "label": int(self.y[i]), "domain": 0, "impath": f"x{i}", "index": i}


@TRAINER_REGISTRY.register()
class EngineToyTrainer(TrainerX):
    """Linear classifier on in-memory data; steps the LR on the last batch like CoOp."""

    with_val = False

    def build_data_loader(self):
        self.train_loader_x = DataLoader(_Features(8, 0), batch_size=2, shuffle=False)
        self.train_loader_u = None
        self.val_loader = DataLoader(_Features(6, 1), batch_size=4) if self.with_val else None
        self.test_loader = DataLoader(_Features(6, 2), batch_size=4)
        self.num_classes = N_CLS
        self.num_source_domains = 1
        self.lab2cname = {i: f"c{i}" for i in range(N_CLS)}
        self.dm = None

    def build_model(self):
        self.model = nn.Linear(N_FEAT, N_CLS).to(self.device)
        self.optim = build_optimizer(self.model, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("toy", self.model, self.optim, self.sched)
        self.epochs_run = []

    def before_epoch(self):
        self.epochs_run.append(self.epoch)

    def forward_backward(self, batch):
        x, y, _ = self.parse_batch_train(batch)
        out = self.model(x)
        loss = F.cross_entropy(out, y)
        self.model_backward_and_update(loss)
        acc = (out.argmax(1) == y).float().mean() * 100
        if self.batch_idx + 1 == self.num_batches:
            self.update_lr()
        return {"loss": loss.item(), "acc": acc.item()}


@TRAINER_REGISTRY.register()
class EngineToyValTrainer(EngineToyTrainer):
    with_val = True


@TRAINER_REGISTRY.register()
class EngineNoModelTrainer(EngineToyTrainer):
    """A trainer that registers nothing (like ZeroshotCLIP)."""

    def build_model(self):
        self.model = nn.Linear(N_FEAT, N_CLS)


def make_cfg(tmp_path, trainer="EngineToyTrainer", **opts):
    cfg = get_cfg_default()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.USE_CUDA = False
    cfg.TRAINER.NAME = trainer
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.OPTIM.NAME = "sgd"
    cfg.OPTIM.LR = 0.01
    cfg.OPTIM.MAX_EPOCH = 2
    cfg.TRAIN.PRINT_FREQ = 2
    for key, value in opts.items():
        node = cfg
        *parents, leaf = key.split("__")
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, value)
    return cfg


def iter_lines(text):
    return [LINE_RE.match(l) for l in text.splitlines() if l.startswith("epoch [")]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def fake_clock(monkeypatch):
    """Replace the engine's clock with one that advances 1 s per call."""
    state = {"t": 1000.0}

    def now():
        state["t"] += 1.0
        return state["t"]

    monkeypatch.setattr(ENGINE, "time", types.SimpleNamespace(time=now))


# -------------------------------------------------------------------- tests
def test_build_trainer_prints_and_rejects_unknown_names(tmp_path, capsys):
    trainer = build_trainer(make_cfg(tmp_path))
    assert isinstance(trainer, EngineToyTrainer)
    out = capsys.readouterr().out
    assert "Loading trainer: EngineToyTrainer" in out
    assert "Loading evaluator: Classification" in out
    assert trainer.start_epoch == 0 and trainer.epoch == 0 and trainer.max_epoch == 2
    assert trainer.device == torch.device("cpu")
    assert trainer.best_result == -math.inf
    assert trainer.get_model_names() == ["toy"]

    with pytest.raises(ValueError, match=r"EngineToyTrainr.*EngineToyTrainer"):
        build_trainer(make_cfg(tmp_path, trainer="EngineToyTrainr"))


def test_iteration_lines_format_eta_and_print_freq(tmp_path, capsys, fake_clock):
    trainer = build_trainer(make_cfg(tmp_path))
    trainer.train()
    out = capsys.readouterr().out
    matches = iter_lines(out)
    assert all(matches), out
    # 4 batches, PRINT_FREQ 2 -> batches 2 and 4 of each epoch.
    assert [(m[1], m[3], m[4]) for m in matches] == [
        ("1", "2", "4"), ("1", "4", "4"), ("2", "2", "4"), ("2", "4", "4")
    ]
    assert all(m[2] == "2" for m in matches)
    # The fake clock ticks 1 s per call: data 1 s, batch 2 s (data + step).
    first = matches[0]
    assert first.group(5, 6, 7, 8) == ("2.000", "2.000", "1.000", "1.000")
    # eta = avg batch time * batches left: epoch 1 batch 2 -> 2 * (2 + 4) s.
    assert [m[10] for m in matches] == ["0:00:12", "0:00:08", "0:00:04", "0:00:00"]
    for marker in ("Finish training", "Deploy the last-epoch model",
                   "Evaluate on the *test* set", "=> result", "Elapsed: 0:00:"):
        assert marker in out
    assert out.index("Finish training") < out.index("Deploy the last-epoch model") \
        < out.index("Evaluate on the *test* set") < out.index("Elapsed:")


def test_every_batch_printed_when_epoch_shorter_than_print_freq(tmp_path, capsys):
    build_trainer(make_cfg(tmp_path, TRAIN__PRINT_FREQ=10, OPTIM__MAX_EPOCH=1)).train()
    matches = iter_lines(capsys.readouterr().out)
    assert [m[3] for m in matches] == ["1", "2", "3", "4"]


def test_print_freq_zero_is_a_clear_error(tmp_path):
    trainer = build_trainer(make_cfg(tmp_path, TRAIN__PRINT_FREQ=0))
    with pytest.raises(ValueError, match="TRAIN.PRINT_FREQ"):
        trainer.train()


def test_lr_printed_on_last_batch_is_next_epochs_lr(tmp_path, capsys):
    # LR 0.002, 5 epochs, cosine, 1 constant warmup epoch at 1e-5 (the CoOp/MaPLe config shape).
    cfg = make_cfg(
        tmp_path, OPTIM__LR=0.002, OPTIM__MAX_EPOCH=5, OPTIM__LR_SCHEDULER="cosine",
        OPTIM__WARMUP_EPOCH=1, OPTIM__WARMUP_TYPE="constant", OPTIM__WARMUP_CONS_LR=1e-5,
    )
    trainer = build_trainer(cfg)
    trainer.train()
    matches = iter_lines(capsys.readouterr().out)
    printed = {(int(m[1]), int(m[3])): m[9] for m in matches}
    assert printed[(1, 2)] == "1.0000e-05"
    assert printed[(1, 4)] == "2.0000e-03"
    assert printed[(2, 2)] == "2.0000e-03"
    assert printed[(2, 4)] == "1.8090e-03"
    assert printed[(3, 4)] == "1.3090e-03"
    assert printed[(4, 4)] == "6.9098e-04"
    assert printed[(5, 4)] == "1.9098e-04"
    # The last checkpoint holds the post-step optimizer state.
    ckpt = torch.load(tmp_path / "out" / "toy" / "model.pth.tar-5", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1.9098e-04, rel=1e-4)


def test_checkpoint_files_pointer_and_freq(tmp_path, capsys):
    out_dir = tmp_path / "out"
    build_trainer(make_cfg(tmp_path, OPTIM__MAX_EPOCH=3)).train()
    files = sorted(p.name for p in (out_dir / "toy").iterdir())
    assert files == ["checkpoint", "model.pth.tar-3"]  # CHECKPOINT_FREQ 0: last epoch only
    assert (out_dir / "toy" / "checkpoint").read_text() == "model.pth.tar-3\n"
    assert f"Checkpoint saved to {out_dir / 'toy' / 'model.pth.tar-3'}" in capsys.readouterr().out

    ckpt = torch.load(out_dir / "toy" / "model.pth.tar-3", weights_only=True)
    assert set(ckpt) == {"state_dict", "epoch", "optimizer", "scheduler", "val_result"}
    assert ckpt["epoch"] == 3 and ckpt["val_result"] is None
    assert set(ckpt["state_dict"]) == {"weight", "bias"}

    cfg = make_cfg(tmp_path, OPTIM__MAX_EPOCH=5, TRAIN__CHECKPOINT_FREQ=2)
    cfg.OUTPUT_DIR = str(tmp_path / "freq")
    build_trainer(cfg).train()
    files = sorted(p.name for p in (tmp_path / "freq" / "toy").iterdir())
    assert files == ["checkpoint", "model.pth.tar-2", "model.pth.tar-4", "model.pth.tar-5"]
    assert (tmp_path / "freq" / "toy" / "checkpoint").read_text() == "model.pth.tar-5\n"


def test_resume_continues_at_the_saved_epoch(tmp_path, capsys):
    first = build_trainer(make_cfg(tmp_path, OPTIM__MAX_EPOCH=2))
    first.train()
    saved = {k: v.clone() for k, v in first.model.state_dict().items()}
    out1 = capsys.readouterr().out
    assert "No checkpoint found, train from scratch" in out1

    second = build_trainer(make_cfg(tmp_path, OPTIM__MAX_EPOCH=4))
    snapshot = {}
    original = second.before_epoch

    def before_epoch():
        if not snapshot:
            snapshot.update({k: v.clone() for k, v in second.model.state_dict().items()})
        original()

    second.before_epoch = before_epoch
    second.train()
    out2 = capsys.readouterr().out
    assert f"Found checkpoint at {tmp_path / 'out'} (will resume training)" in out2
    assert "Previous epoch: 2" in out2
    assert second.start_epoch == 2
    assert second.epochs_run == [2, 3]
    assert {m[1] for m in iter_lines(out2)} == {"3", "4"}
    for key in saved:
        assert torch.equal(snapshot[key], saved[key])
    assert (tmp_path / "out" / "toy" / "checkpoint").read_text() == "model.pth.tar-4\n"

    # A finished run resumed: no epoch runs, but after_train still tests.
    third = build_trainer(make_cfg(tmp_path, OPTIM__MAX_EPOCH=4))
    third.train()
    out3 = capsys.readouterr().out
    assert third.epochs_run == [] and not iter_lines(out3)
    assert "Previous epoch: 4" in out3 and "Evaluate on the *test* set" in out3


def test_resume_dir_differs_from_output_dir(tmp_path, capsys):
    build_trainer(make_cfg(tmp_path, OPTIM__MAX_EPOCH=1)).train()
    cfg = make_cfg(tmp_path, OPTIM__MAX_EPOCH=2, RESUME=str(tmp_path / "out"))
    cfg.OUTPUT_DIR = str(tmp_path / "new")
    trainer = build_trainer(cfg)
    trainer.train()
    assert trainer.epochs_run == [1]
    assert sorted(p.name for p in (tmp_path / "new" / "toy").iterdir()) == [
        "checkpoint", "model.pth.tar-2"
    ]
    assert not (tmp_path / "out" / "toy" / "model.pth.tar-2").exists()


def test_resume_edge_cases(tmp_path, capsys):
    # No registered model: nothing to resume (Dassl would crash here).
    (tmp_path / "out").mkdir()
    trainer = build_trainer(make_cfg(tmp_path, trainer="EngineNoModelTrainer"))
    assert trainer.resume_model_if_exist(str(tmp_path / "out")) == 0
    assert "No checkpoint found, train from scratch" in capsys.readouterr().out

    # A model folder without the pointer file: clear error.
    (tmp_path / "out" / "toy").mkdir()
    trainer = build_trainer(make_cfg(tmp_path))
    with pytest.raises(FileNotFoundError, match='"checkpoint" pointer file'):
        trainer.resume_model_if_exist(str(tmp_path / "out"))


def test_load_model_prints_and_loads(tmp_path, capsys):
    trainer = build_trainer(make_cfg(tmp_path, TRAIN__CHECKPOINT_FREQ=1))
    trainer.train()
    out_dir = tmp_path / "out"
    ckpt1 = torch.load(out_dir / "toy" / "model.pth.tar-1", weights_only=True)
    capsys.readouterr()

    with torch.no_grad():
        for p in trainer.model.parameters():
            p.zero_()
    trainer.load_model(str(out_dir), epoch=1)
    out = capsys.readouterr().out
    assert f"Load {out_dir / 'toy' / 'model.pth.tar-1'} to toy (epoch=1, val_result=None)" in out
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, ckpt1["state_dict"][key])

    with pytest.raises(FileNotFoundError, match=re.escape(str(out_dir / "toy" / "model.pth.tar-7"))):
        trainer.load_model(str(out_dir), epoch=7)
    with pytest.raises(FileNotFoundError, match="model-best.pth.tar"):
        trainer.load_model(str(out_dir))

    trainer.load_model("")
    assert "Note that load_model() is skipped as no pretrained model is given" in capsys.readouterr().out


def test_test_prints_result_block_and_returns_accuracy(tmp_path, capsys):
    trainer = build_trainer(make_cfg(tmp_path))
    capsys.readouterr()
    data = trainer.test_loader.dataset
    with torch.no_grad():
        expected = (trainer.model(data.x).argmax(1) == data.y).float().mean().item() * 100

    trainer.model.train()
    acc = trainer.test()
    captured = capsys.readouterr()
    assert acc == pytest.approx(expected)
    assert not trainer.model.training  # left in eval mode
    assert "Evaluate on the *test* set" in captured.out
    assert "=> result" in captured.out and "* total: 6" in captured.out
    assert f"* accuracy: {expected:.1f}%" in captured.out
    assert "it/s" not in captured.out  # the tqdm bar goes to stderr
    # split="val" without a val loader falls back to the test set.
    trainer.test(split="val")
    assert "Evaluate on the *test* set" in capsys.readouterr().out
    # test() runs without autograd.
    grads = []
    trainer.model_inference = lambda x: (grads.append(torch.is_grad_enabled()), trainer.model(x))[1]
    trainer.test()
    assert grads and not any(grads)


def test_best_val_mode(tmp_path, capsys):
    cfg = make_cfg(tmp_path, trainer="EngineToyValTrainer", OPTIM__MAX_EPOCH=3,
                   TEST__FINAL_MODEL="best_val")
    trainer = build_trainer(cfg)
    pointers = []
    original = trainer.after_epoch

    def after_epoch():
        original()
        pointers.append((tmp_path / "out" / "toy" / "checkpoint").read_text())

    trainer.after_epoch = after_epoch
    trainer.train()
    out = capsys.readouterr().out
    toy = tmp_path / "out" / "toy"
    assert sorted(p.name for p in toy.iterdir()) == ["checkpoint", "model-best.pth.tar", "model.pth.tar-3"]
    # Epoch 1 always improves on -inf: the pointer follows the best save.
    assert pointers[0] == "model-best.pth.tar\n"
    assert pointers[-1] == "model.pth.tar-3\n"
    assert out.count("Evaluate on the *val* set") == 3
    best = torch.load(toy / "model-best.pth.tar", weights_only=True)
    assert best["val_result"] == pytest.approx(trainer.best_result)
    assert "Deploy the model with the best val performance" in out
    assert (f"Load {toy / 'model-best.pth.tar'} to toy (epoch={best['epoch']}, "
            f"val_result={best['val_result']:.1f})") in out
    assert out.rindex("Evaluate on the *test* set") > out.index("Deploy the model with the best")


def test_no_test_skips_validation_and_final_test(tmp_path, capsys):
    cfg = make_cfg(tmp_path, trainer="EngineToyValTrainer", TEST__NO_TEST=True,
                   TEST__FINAL_MODEL="best_val")
    build_trainer(cfg).train()
    out = capsys.readouterr().out
    assert "Evaluate on" not in out and "Deploy" not in out
    assert "Finish training" in out and "Elapsed:" in out
    assert not (tmp_path / "out" / "toy" / "model-best.pth.tar").exists()


def test_tensorboard_folder_and_scalars(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = build_trainer(make_cfg(tmp_path))
    trainer.train()
    tb = tmp_path / "out" / "tensorboard"
    assert f"Initialize tensorboard (log_dir={tb})" in capsys.readouterr().out
    assert any(p.name.startswith("events.out.tfevents") for p in tb.iterdir())
    acc = EventAccumulator(str(tb))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/acc", "train/lr", "test/accuracy", "test/error_rate",
            "test/macro_f1"} <= tags
    assert [e.step for e in acc.Scalars("train/lr")] == list(range(8))
    assert [e.step for e in acc.Scalars("test/accuracy")] == [1]  # self.epoch after the loop


def test_eval_only_writes_no_tensorboard(tmp_path):
    trainer = build_trainer(make_cfg(tmp_path))
    trainer.test()
    assert not (tmp_path / "out" / "tensorboard").exists()


def test_model_helpers(tmp_path):
    trainer = build_trainer(make_cfg(tmp_path))
    with pytest.raises(AssertionError, match="duplicate"):
        trainer.register_model("toy", trainer.model)
    with pytest.raises(KeyError):
        trainer.set_model_mode("bogus")
    trainer.set_model_mode("eval")
    assert not trainer.model.training
    trainer.set_model_mode("train", names="toy")
    assert trainer.model.training
    with pytest.raises(FloatingPointError, match="Loss is infinite or NaN!"):
        trainer.model_backward_and_update(torch.tensor(float("nan"), requires_grad=True))
    assert trainer.get_current_lr() == pytest.approx(0.01)

    class Early(TrainerX):
        def __init__(self):
            self.register_model("m", nn.Linear(1, 1))

    with pytest.raises(AttributeError, match=r"Cannot assign model before super\(\).__init__\(\) call"):
        Early()


def test_default_build_model_is_not_available(tmp_path):
    class NoBuild(EngineToyTrainer):
        build_model = TrainerX.build_model

    with pytest.raises(NotImplementedError, match="override build_model"):
        NoBuild(make_cfg(tmp_path))


# ------------------------------------------------------ real data pipeline
@DATASET_REGISTRY.register()
class EngineToyImages(DatasetBase):
    """Six 8x8 PNGs per split, generated under DATASET.ROOT."""

    def __init__(self, cfg):
        root = cfg.DATASET.ROOT

        def split(name, n):
            items = []
            for i in range(n):
                label = i % 2
                path = f"{root}/{name}_{i}.png"
                Image.new("RGB", (8, 8), (255 * label, 40 * i % 256, 0)).save(path)
                items.append(Datum(impath=path, label=label, classname=f"cls{label}"))
            return items

        super().__init__(train_x=split("train", 6), val=split("val", 2), test=split("test", 4))


@TRAINER_REGISTRY.register()
class EngineImageTrainer(TrainerX):
    def build_model(self):
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, self.num_classes))
        self.optim = build_optimizer(self.model, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("net", self.model, self.optim, self.sched)

    def forward_backward(self, batch):
        x, y, _ = self.parse_batch_train(batch)
        out = self.model(x)
        loss = F.cross_entropy(out, y)
        self.model_backward_and_update(loss)
        if self.batch_idx + 1 == self.num_batches:
            self.update_lr()
        return {"loss": loss.item(), "acc": (out.argmax(1) == y).float().mean().item() * 100}


def test_with_real_data_manager(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    cfg = make_cfg(tmp_path, trainer="EngineImageTrainer", OPTIM__MAX_EPOCH=1, TRAIN__PRINT_FREQ=1)
    cfg.DATASET.NAME = "EngineToyImages"
    cfg.DATASET.ROOT = str(tmp_path / "data")
    cfg.INPUT.SIZE = (8, 8)
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 4
    cfg.DATALOADER.TEST.BATCH_SIZE = 4
    trainer = build_trainer(cfg)
    assert trainer.num_classes == 2 and trainer.val_loader is not None
    assert trainer.dm is not None and trainer.train_loader_u is None
    trainer.train()
    out = capsys.readouterr().out
    assert out.index("Loading trainer: EngineImageTrainer") < out.index("Loading dataset: EngineToyImages") \
        < out.index("Loading evaluator: Classification")
    matches = iter_lines(out)
    assert len(matches) == 1 and all(matches)  # 6 images, batch 4, drop_last -> 1 batch
    assert "* total: 4" in out
    assert (tmp_path / "out" / "net" / "model.pth.tar-1").is_file()
