"""bundled_dassl.optim and torch_compat.make_build_lr_scheduler (Dassl's ``dassl/optim/``)."""
from __future__ import annotations

import io
import math
import pickle
import warnings

import pytest
import torch
import torch.nn as nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

from gopro_prompts.bundled_dassl import torch_compat
from gopro_prompts.bundled_dassl.config import get_cfg_default
from gopro_prompts.bundled_dassl.optim import (
    ConstantWarmupScheduler,
    LinearWarmupScheduler,
    RAdam,
    build_lr_scheduler,
    build_optimizer,
)
from gopro_prompts.bundled_dassl.utils import resume_from_checkpoint, save_checkpoint

pytestmark = pytest.mark.bundled_only(
    reason="tests gopro_prompts.bundled_dassl.optim and the torch_compat shims (with stand-ins for "
           "real Dassl's functions) directly: the same code on every leg, so the bundled leg runs it")


def _optim_cfg(**overrides):
    """The CoOp/MaPLe/GOPro config shape: LR 0.002, 5 epochs, cosine, 1 constant warmup epoch at 1e-5."""
    cfg = get_cfg_default().OPTIM
    cfg.NAME = "sgd"
    cfg.LR = 0.002
    cfg.MAX_EPOCH = 5
    cfg.LR_SCHEDULER = "cosine"
    cfg.WARMUP_EPOCH = 1
    cfg.WARMUP_TYPE = "constant"
    cfg.WARMUP_CONS_LR = 1e-5
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def _lr(optimizer):
    return optimizer.param_groups[0]["lr"]


def _train(optimizer, scheduler, epochs, num_batches=3):
    """Mimic the trainer: step the scheduler on each epoch's last batch.

    Returns, per epoch, the LR seen by every batch and the LR printed on the last batch.
    """
    used, printed = [], []
    for _ in range(epochs):
        seen = []
        for batch_idx in range(num_batches):
            seen.append(_lr(optimizer))
            optimizer.step()
            if batch_idx + 1 == num_batches:
                scheduler.step()
        assert len(set(seen)) == 1, seen  # constant within the epoch
        used.append(seen[0])
        printed.append(_lr(optimizer))
    return used, printed


def _make(cfg, builder=build_lr_scheduler):
    model = nn.Linear(3, 2)
    optimizer = build_optimizer(model, cfg)
    return model, optimizer, builder(optimizer, cfg)


def _fmt(values):
    return [f"{v:.4e}" for v in values]


# ----------------------------------------------------------------------------- worked example
D4_USED = ["1.0000e-05", "2.0000e-03", "1.8090e-03", "1.3090e-03", "6.9098e-04"]
D4_PRINTED = ["2.0000e-03", "1.8090e-03", "1.3090e-03", "6.9098e-04", "1.9098e-04"]


def test_worked_example_every_row():
    _, optimizer, scheduler = _make(_optim_cfg())
    assert isinstance(scheduler, ConstantWarmupScheduler)
    used, printed = _train(optimizer, scheduler, 5)
    assert _fmt(used) == D4_USED
    assert _fmt(printed) == D4_PRINTED
    # The state saved after the last epoch holds the post-step LR.
    assert f"{optimizer.state_dict()['param_groups'][0]['lr']:.4e}" == "1.9098e-04"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"WARMUP_RECOUNT": False},
         ["1.0000e-05", "2.0000e-03", "1.4472e-03", "7.6393e-04", "2.1115e-04"]),
        ({"WARMUP_TYPE": "linear", "WARMUP_EPOCH": 2},
         ["1.0000e-05", "1.0000e-03", "2.0000e-03", "1.8090e-03", "1.3090e-03"]),
        ({"WARMUP_EPOCH": -1},
         ["2.0000e-03", "1.8090e-03", "1.3090e-03", "6.9098e-04", "1.9098e-04"]),
        ({"MAX_EPOCH": 10},
         ["1.0000e-05"] + [f"{0.002 * (1 + math.cos(math.pi * t / 10)) / 2:.4e}" for t in range(9)]),
    ],
    ids=["recount_false", "linear_w2", "no_warmup", "max_epoch_10"],
)
def test_worked_example_variants(overrides, expected):
    cfg = _optim_cfg(**overrides)
    _, optimizer, scheduler = _make(cfg)
    used, _ = _train(optimizer, scheduler, cfg.MAX_EPOCH)
    assert _fmt(used) == expected


def test_linear_warmup_intermediate_epochs_and_recount_false():
    cfg = _optim_cfg(WARMUP_TYPE="linear", WARMUP_EPOCH=4, MAX_EPOCH=6, WARMUP_MIN_LR=3e-5)
    _, optimizer, scheduler = _make(cfg)
    assert isinstance(scheduler, LinearWarmupScheduler)
    used, _ = _train(optimizer, scheduler, 6)
    assert used[:4] == pytest.approx([3e-5, 0.0005, 0.001, 0.0015])
    assert used[4] == pytest.approx(0.002)  # successor at t = 0
    assert used[5] == pytest.approx(0.002 * (1 + math.cos(math.pi / 6)) / 2)


def test_warmup_wrappers_construct_on_current_torch_without_verbose():
    # Real Dassl passes a positional `verbose`, which raises TypeError on torch 2.14.
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    succ = CosineAnnealingLR(opt, T_max=5.0)
    sched = ConstantWarmupScheduler(opt, succ, 2, 1e-4)
    assert isinstance(sched, LRScheduler)
    assert _lr(opt) == 1e-4 and sched.get_last_lr() == [1e-4]


# ----------------------------------------------------------------------------- plain-data state
def _assert_plain(obj, path="state"):
    if isinstance(obj, dict):
        for k, v in obj.items():
            _assert_plain(v, f"{path}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _assert_plain(v, f"{path}[{i}]")
    else:
        assert obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)), (path, obj)


def test_warmup_state_dict_is_plain_data_and_loads_weights_only():
    _, optimizer, scheduler = _make(_optim_cfg())
    _train(optimizer, scheduler, 2)
    state = scheduler.state_dict()
    _assert_plain(state)
    assert state["successor"]["last_epoch"] == 1
    buf = io.BytesIO()
    torch.save({"scheduler": state}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert loaded["scheduler"]["successor"]["T_max"] == 5.0


def _checkpoint_after(tmp_path, epochs, cfg):
    model, optimizer, scheduler = _make(cfg)
    _train(optimizer, scheduler, epochs)
    save_checkpoint(
        {"state_dict": model.state_dict(), "epoch": epochs, "optimizer": optimizer.state_dict(),
         "scheduler": scheduler.state_dict(), "val_result": None},
        str(tmp_path / "prompt_learner"),
    )
    return tmp_path / "prompt_learner"


def test_resume_after_epoch_2_continues_schedule(tmp_path, capsys):
    cfg = _optim_cfg()
    fdir = _checkpoint_after(tmp_path, 2, cfg)
    # Fresh process state: build everything again, then resume.
    model, optimizer, scheduler = _make(cfg)
    start = resume_from_checkpoint(str(fdir), model, optimizer, scheduler)
    assert start == 2
    out = capsys.readouterr().out
    assert "Loaded optimizer\nLoaded scheduler\nPrevious epoch: 2\n" in out
    used, printed = _train(optimizer, scheduler, 3)
    # Dassl's defect would give 1.8090e-03 three times (LR frozen).
    assert _fmt(used) == ["1.8090e-03", "1.3090e-03", "6.9098e-04"]
    assert _fmt(printed)[-1] == "1.9098e-04"


def test_load_state_dict_of_real_dassl_style_state_with_pickled_successor():
    """A real-Dassl wrapper state holds the successor *object*; its state is adopted."""
    cfg = _optim_cfg()
    _, optimizer, scheduler = _make(cfg)
    _train(optimizer, scheduler, 2)
    legacy = {k: v for k, v in scheduler.__dict__.items() if k != "optimizer"}
    legacy["verbose"] = False
    legacy = pickle.loads(pickle.dumps(legacy))  # detached copy, bound to a copied optimizer
    assert isinstance(legacy["successor"], CosineAnnealingLR)

    _, optimizer2, scheduler2 = _make(cfg)
    optimizer2.load_state_dict(optimizer.state_dict())
    scheduler2.load_state_dict(legacy)
    assert scheduler2.successor.optimizer is optimizer2  # the live successor was kept
    used, _ = _train(optimizer2, scheduler2, 3)
    assert _fmt(used) == ["1.8090e-03", "1.3090e-03", "6.9098e-04"]


# ----------------------------------------------------------------------------- other schedulers
def test_single_step_default_is_constant_and_stepsize_applies():
    cfg = _optim_cfg(LR_SCHEDULER="single_step", WARMUP_EPOCH=-1, MAX_EPOCH=4)
    _, optimizer, scheduler = _make(cfg)
    used, _ = _train(optimizer, scheduler, 4)
    assert used == pytest.approx([0.002] * 4)
    cfg = _optim_cfg(LR_SCHEDULER="single_step", WARMUP_EPOCH=-1, STEPSIZE=(5, 2))
    _, optimizer, scheduler = _make(cfg)
    used, _ = _train(optimizer, scheduler, 5)
    assert used == pytest.approx([0.002, 0.002, 0.0002, 0.0002, 0.00002])


def test_multi_step_milestones():
    cfg = _optim_cfg(LR_SCHEDULER="multi_step", WARMUP_EPOCH=-1, STEPSIZE=(1, 3), GAMMA=0.5)
    _, optimizer, scheduler = _make(cfg)
    used, _ = _train(optimizer, scheduler, 4)
    assert used == pytest.approx([0.002, 0.001, 0.001, 0.0005])


def test_scheduler_errors():
    with pytest.raises(ValueError, match=r"scheduler must be one of \['single_step', "
                                         r"'multi_step', 'cosine'\], but got linear"):
        _make(_optim_cfg(LR_SCHEDULER="linear"))
    with pytest.raises(TypeError, match="For single_step lr_scheduler, stepsize must be an integer"):
        _make(_optim_cfg(LR_SCHEDULER="single_step", STEPSIZE=(2.5,)))
    with pytest.raises(TypeError, match="For multi_step lr_scheduler, stepsize must be a list"):
        _make(_optim_cfg(LR_SCHEDULER="multi_step", STEPSIZE=3))
    with pytest.raises(ValueError, match="WARMUP_TYPE"):
        _make(_optim_cfg(WARMUP_TYPE="exponential"))


# ----------------------------------------------------------------------------- torch_compat
def _fake_real_builder(calls):
    """Stands in for real Dassl's builder: its warmup path is broken on torch 2.14."""

    def real_build_lr_scheduler(optimizer, optim_cfg):
        calls.append(optim_cfg)
        if optim_cfg.WARMUP_EPOCH > 0:
            raise TypeError("takes from 2 to 3 positional arguments but 4 were given")
        return build_lr_scheduler(optimizer, optim_cfg)

    return real_build_lr_scheduler


@pytest.mark.parametrize("recount, expected", [
    (True, D4_USED),
    (False, ["1.0000e-05", "2.0000e-03", "1.4472e-03", "7.6393e-04", "2.1115e-04"]),
])
def test_compat_builder_wraps_real_successor(recount, expected):
    calls = []
    builder = torch_compat.make_build_lr_scheduler(_fake_real_builder(calls))
    cfg = _optim_cfg(WARMUP_RECOUNT=recount)
    cfg.freeze()
    _, optimizer, scheduler = _make(cfg, builder)
    assert isinstance(scheduler, ConstantWarmupScheduler)
    assert len(calls) == 1 and calls[0].WARMUP_EPOCH == 0 and calls[0] is not cfg
    assert cfg.WARMUP_EPOCH == 1  # the caller's cfg is untouched
    used, _ = _train(optimizer, scheduler, 5)
    assert _fmt(used) == expected
    _assert_plain(scheduler.state_dict())


def test_compat_builder_delegates_without_warmup():
    calls = []
    builder = torch_compat.make_build_lr_scheduler(_fake_real_builder(calls))
    cfg = _optim_cfg(WARMUP_EPOCH=0)
    _, optimizer, scheduler = _make(cfg, builder)
    assert isinstance(scheduler, CosineAnnealingLR) and calls == [cfg]


# ----------------------------------------------------------------------------- optimizers
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.ctx = nn.Parameter(torch.zeros(4))  # top-level: in no staged group (as Dassl)
        self.backbone = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def _all_params(opt):
    return [p for g in opt.param_groups for p in g["params"]]


def test_sgd_hyper_parameters_and_all_parameters_included():
    cfg = _optim_cfg(MOMENTUM=0.8, WEIGHT_DECAY=1e-3, SGD_DAMPNING=0.1, SGD_NESTEROV=False)
    net = _Net()
    opt = build_optimizer(net, cfg)
    assert type(opt) is torch.optim.SGD and len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["dampening"],
            group["nesterov"]) == (0.002, 0.8, 1e-3, 0.1, False)
    # Frozen parameters are handed to the optimizer too.
    assert len(_all_params(opt)) == len(list(net.parameters()))


@pytest.mark.parametrize("name, cls, checks", [
    ("adam", torch.optim.Adam, {"betas": (0.8, 0.99), "amsgrad": False}),
    ("amsgrad", torch.optim.Adam, {"betas": (0.8, 0.99), "amsgrad": True}),
    ("adamw", torch.optim.AdamW, {"betas": (0.8, 0.99)}),
    ("rmsprop", torch.optim.RMSprop, {"alpha": 0.95, "momentum": 0.9}),
    ("radam", RAdam, {"betas": (0.8, 0.99)}),
])
def test_other_optimizers(name, cls, checks):
    cfg = _optim_cfg(NAME=name, ADAM_BETA1=0.8, ADAM_BETA2=0.99, RMSPROP_ALPHA=0.95,
                     WEIGHT_DECAY=1e-4)
    opt = build_optimizer(nn.Linear(2, 2), cfg)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.002 and group["weight_decay"] == 1e-4
    for key, value in checks.items():
        assert group[key] == value, key


def test_unknown_optimizer_message():
    with pytest.raises(ValueError, match=r"optim must be one of \['adam', 'amsgrad', 'sgd', "
                                         r"'rmsprop', 'radam', 'adamw'\], but got lamb"):
        build_optimizer(nn.Linear(2, 2), _optim_cfg(NAME="lamb"))


def test_param_groups_and_iterables():
    net = _Net()
    groups = [{"params": [net.ctx], "lr": 0.5}]
    cfg = _optim_cfg(STAGED_LR=True, NEW_LAYERS=("head",))
    with pytest.warns(UserWarning, match="staged_lr will be ignored"):
        opt = build_optimizer(net, cfg, param_groups=groups)
    assert _all_params(opt) == [net.ctx] and opt.param_groups[0]["lr"] == 0.5
    opt = build_optimizer(iter([net.ctx]), _optim_cfg())
    assert _all_params(opt) == [net.ctx]


def test_staged_lr_groups():
    net = _Net()
    cfg = _optim_cfg(STAGED_LR=True, NEW_LAYERS="head", BASE_LR_MULT=0.1)
    opt = build_optimizer(net, cfg)
    base, new = opt.param_groups
    assert base["lr"] == pytest.approx(0.0002) and new["lr"] == 0.002
    assert [id(p) for p in new["params"]] == [id(p) for p in net.head.parameters()]
    base_expected = list(net.backbone.parameters()) + list(net.frozen.parameters())
    assert [id(p) for p in base["params"]] == [id(p) for p in base_expected]
    assert all(p is not net.ctx for p in _all_params(opt))  # silently not optimised
    # DataParallel is unwrapped; a non-module with STAGED_LR is a TypeError.
    opt = build_optimizer(nn.DataParallel(net), cfg)
    assert len(opt.param_groups[1]["params"]) == 2
    with pytest.raises(TypeError, match="must be an instance of nn.Module"):
        build_optimizer(list(net.parameters()), cfg)


def test_radam_matches_rectified_adam_with_decoupled_decay():
    torch.manual_seed(0)
    p_ours = nn.Parameter(torch.randn(5, 3))
    p_ref = nn.Parameter(p_ours.detach().clone())
    ours = RAdam([p_ours], lr=0.01, weight_decay=0.05, eps=0.0)
    ref = torch.optim.RAdam([p_ref], lr=0.01, weight_decay=0.05, eps=0.0,
                            decoupled_weight_decay=True)
    for _ in range(12):  # covers the SGD-like phase (rho_t < 5) and the rectified one
        g = torch.randn(5, 3)
        p_ours.grad, p_ref.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
        torch.testing.assert_close(p_ours, p_ref, rtol=1e-5, atol=1e-6)


def test_radam_first_step_is_plain_sgd():
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = RAdam([p], lr=0.1)
    p.grad = torch.tensor([0.5, 0.5])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.95, -2.05]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.save(opt.state_dict(), io.BytesIO())
