"""Optimisers and LR schedules with Dassl 0.6.3 semantics (Dassl's ``dassl/optim/``).

* :func:`build_optimizer` -- the six Dassl optimiser names and staged LR (``optimizer.py``);
* :func:`build_lr_scheduler` -- single_step / multi_step / cosine, optionally
  wrapped in a constant or linear warmup (``lr_scheduler.py``);
* :class:`ConstantWarmupScheduler`, :class:`LinearWarmupScheduler` -- the warmup
  wrappers.  Deliberate fix of a Dassl defect (Dassl pickles the successor
  scheduler object, optimizer included): their ``state_dict()`` is plain data (the
  successor's state dict, not the successor object), so checkpoints load with
  ``torch.load(weights_only=True)`` and a resumed run keeps following the schedule.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, MultiStepLR, StepLR

from .safe_pickle import InertObject, inert_state

__all__ = [
    "AVAI_OPTIMS", "AVAI_SCHEDS", "build_optimizer", "build_lr_scheduler", "wrap_with_warmup",
    "ConstantWarmupScheduler", "LinearWarmupScheduler", "RAdam",
]

AVAI_OPTIMS = ["adam", "amsgrad", "sgd", "rmsprop", "radam", "adamw"]
AVAI_SCHEDS = ["single_step", "multi_step", "cosine"]


# ---------------------------------------------------------------------------
# RAdam (Dassl ships its own class, ``dassl/optim/radam.py``)
# ---------------------------------------------------------------------------
class RAdam(Optimizer):
    """Rectified Adam (Liu et al., ICLR 2020) in the variant Dassl uses.

    Weight decay is decoupled (``p -= lr * wd * p``), ``eps`` is added to
    ``sqrt(v)``, and while the variance rectification is intractable
    (``rho_t < 5``) the update degenerates to bias-corrected SGD with momentum
    (``degenerated_to_sgd=True``).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 degenerated_to_sgd=True):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if eps < 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
        self.degenerated_to_sgd = degenerated_to_sgd
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            rho_inf = 2.0 / (1.0 - beta2) - 1.0
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float()
                if grad.is_sparse:
                    raise RuntimeError("RAdam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(grad)
                    state["exp_avg_sq"] = torch.zeros_like(grad)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                state["step"] += 1
                t = state["step"]
                beta2_t = beta2 ** t
                rho_t = rho_inf - 2.0 * t * beta2_t / (1.0 - beta2_t)
                bias1 = 1.0 - beta1 ** t
                rectified = rho_t >= 5
                if rectified:
                    r = (1.0 - beta2_t) * (rho_t - 4) / (rho_inf - 4) * (rho_t - 2) / rho_t \
                        * rho_inf / (rho_inf - 2)
                    step_size = math.sqrt(r) / bias1
                elif self.degenerated_to_sgd:
                    step_size = 1.0 / bias1
                else:
                    continue
                p32 = p.float()
                if wd != 0:
                    p32.mul_(1.0 - wd * lr)
                if rectified:
                    p32.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(eps), value=-step_size * lr)
                else:
                    p32.add_(exp_avg, alpha=-step_size * lr)
                p.copy_(p32)
        return loss


# ---------------------------------------------------------------------------
# build_optimizer (as Dassl's ``dassl/optim/optimizer.py``)
# ---------------------------------------------------------------------------
def _staged_param_groups(model, optim_cfg):
    """[base, new] groups over the model's direct children (STAGED_LR)."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            "When staged_lr is True, model given to build_optimizer() must be an "
            "instance of nn.Module"
        )
    if isinstance(model, nn.DataParallel):
        model = model.module
    new_layers = optim_cfg.NEW_LAYERS
    if isinstance(new_layers, str):
        new_layers = [new_layers]
    if not new_layers:
        warnings.warn("new_layers is empty (staged_lr is useless)")
    base_params, new_params = [], []
    for name, child in model.named_children():
        if name in new_layers:
            new_params.extend(child.parameters())
        else:
            base_params.extend(child.parameters())
    # As in Dassl, parameters registered directly on `model` join neither group.
    return [
        {"params": base_params, "lr": optim_cfg.LR * optim_cfg.BASE_LR_MULT},
        {"params": new_params},
    ]


def build_optimizer(model, optim_cfg, param_groups=None) -> Optimizer:
    """Build the optimizer named by ``optim_cfg.NAME`` (as Dassl's ``build_optimizer``).

    ``model`` is an ``nn.Module`` (all its parameters, frozen ones included)
    or an iterable of parameters; explicit ``param_groups`` win over both.
    """
    name = optim_cfg.NAME
    if name not in AVAI_OPTIMS:
        raise ValueError(f"optim must be one of {AVAI_OPTIMS}, but got {name}")
    lr = optim_cfg.LR
    weight_decay = optim_cfg.WEIGHT_DECAY
    betas = (optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2)

    if param_groups is not None and optim_cfg.STAGED_LR:
        warnings.warn(
            "staged_lr will be ignored, if you need to use staged_lr, "
            "please bind it with param_groups yourself."
        )
    if param_groups is None:
        if optim_cfg.STAGED_LR:
            param_groups = _staged_param_groups(model, optim_cfg)
        elif isinstance(model, nn.Module):
            param_groups = model.parameters()
        else:
            param_groups = model

    if name == "adam":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay, betas=betas)
    if name == "amsgrad":
        return torch.optim.Adam(
            param_groups, lr=lr, weight_decay=weight_decay, betas=betas, amsgrad=True
        )
    if name == "sgd":
        return torch.optim.SGD(
            param_groups,
            lr=lr,
            momentum=optim_cfg.MOMENTUM,
            weight_decay=weight_decay,
            dampening=optim_cfg.SGD_DAMPNING,
            nesterov=optim_cfg.SGD_NESTEROV,
        )
    if name == "rmsprop":
        return torch.optim.RMSprop(
            param_groups,
            lr=lr,
            momentum=optim_cfg.MOMENTUM,
            weight_decay=weight_decay,
            alpha=optim_cfg.RMSPROP_ALPHA,
        )
    if name == "radam":
        return RAdam(param_groups, lr=lr, weight_decay=weight_decay, betas=betas)
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, betas=betas)


# ---------------------------------------------------------------------------
# Warmup wrappers (as Dassl's ``dassl/optim/lr_scheduler.py``; plain-data state is a deliberate fix)
# ---------------------------------------------------------------------------
class _BaseWarmupScheduler(LRScheduler):
    """Runs ``warmup_epoch`` warmup steps, then hands every step to ``successor``.

    Own counter ``last_epoch`` (c): 0 at construction; each ``step()`` while
    c < W increments it and sets the warmup LR (or, once c == W, the
    successor's current LR); afterwards ``step()`` steps the successor and c
    stays at W.
    """

    def __init__(self, optimizer, successor, warmup_epoch, last_epoch=-1):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        # `verbose` is deprecated since torch 2.2 and gone in recent releases: never pass it.
        super().__init__(optimizer, last_epoch)

    def _warmup_lrs(self) -> list:
        """LRs for warmup counter ``self.last_epoch`` in ``[0, W)``."""
        raise NotImplementedError

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return list(self.successor.get_last_lr())
        return self._warmup_lrs()

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            if epoch is None:
                self.successor.step()
            else:
                self.successor.step(epoch)
            self._last_lr = list(self.successor.get_last_lr())
        else:
            super().step(epoch)

    def state_dict(self) -> dict:
        """Plain data: this wrapper's fields plus ``successor`` = the successor's state dict.

        Deliberate fix of Dassl's defect: Dassl stores the successor
        object itself, which pickles a copy of the optimizer, needs
        ``weights_only=False`` to load, and freezes the LR after a resume.
        """
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "successor")}
        state["successor"] = self.successor.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore this wrapper *and* the live successor (so the LR keeps moving after resume).

        Also accepts real-Dassl checkpoints whose ``successor`` is a pickled
        scheduler object (read as an inert record by ``load_checkpoint``, or a
        live scheduler): its state is copied into the live successor.
        """
        state = dict(state_dict)
        successor_state = state.pop("successor", None)
        self.__dict__.update(state)
        if successor_state is None:
            return
        if isinstance(successor_state, InertObject):
            successor_state = inert_state(successor_state)
        elif isinstance(successor_state, LRScheduler):
            successor_state = successor_state.state_dict()
        self.successor.load_state_dict(successor_state)


class ConstantWarmupScheduler(_BaseWarmupScheduler):
    """Warmup at the constant LR ``cons_lr`` for ``warmup_epoch`` epochs."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr, last_epoch=-1):
        self.cons_lr = cons_lr
        super().__init__(optimizer, successor, warmup_epoch, last_epoch)

    def _warmup_lrs(self):
        return [self.cons_lr for _ in self.base_lrs]


class LinearWarmupScheduler(_BaseWarmupScheduler):
    """Warmup from ``min_lr`` (epoch 0), then ``base_lr * e / W`` for epochs 1..W-1."""

    def __init__(self, optimizer, successor, warmup_epoch, min_lr, last_epoch=-1):
        self.min_lr = min_lr
        super().__init__(optimizer, successor, warmup_epoch, last_epoch)

    def _warmup_lrs(self):
        if self.last_epoch == 0:
            return [self.min_lr for _ in self.base_lrs]
        return [lr * self.last_epoch / self.warmup_epoch for lr in self.base_lrs]


def wrap_with_warmup(optimizer, successor, optim_cfg) -> LRScheduler:
    """Wrap ``successor`` in the warmup of ``optim_cfg`` (as Dassl's ``build_lr_scheduler``).

    Requires ``optim_cfg.WARMUP_EPOCH > 0``.  With ``WARMUP_RECOUNT`` False the
    successor's epoch counter first jumps to ``WARMUP_EPOCH``.
    """
    warmup_epoch = optim_cfg.WARMUP_EPOCH
    if not optim_cfg.WARMUP_RECOUNT:
        successor.last_epoch = warmup_epoch
    warmup_type = optim_cfg.WARMUP_TYPE
    if warmup_type == "constant":
        return ConstantWarmupScheduler(optimizer, successor, warmup_epoch, optim_cfg.WARMUP_CONS_LR)
    if warmup_type == "linear":
        return LinearWarmupScheduler(optimizer, successor, warmup_epoch, optim_cfg.WARMUP_MIN_LR)
    raise ValueError(
        f"OPTIM.WARMUP_TYPE must be 'constant' or 'linear', but got {warmup_type!r}"
    )


# ---------------------------------------------------------------------------
# build_lr_scheduler (as Dassl's ``dassl/optim/lr_scheduler.py``)
# ---------------------------------------------------------------------------
def build_lr_scheduler(optimizer, optim_cfg) -> LRScheduler:
    """Build the per-epoch LR scheduler of ``optim_cfg``, with warmup if ``WARMUP_EPOCH > 0``."""
    name = optim_cfg.LR_SCHEDULER
    if name not in AVAI_SCHEDS:
        raise ValueError(f"scheduler must be one of {AVAI_SCHEDS}, but got {name}")
    stepsize = optim_cfg.STEPSIZE
    max_epoch = optim_cfg.MAX_EPOCH

    if name == "single_step":
        if isinstance(stepsize, (list, tuple)):
            stepsize = stepsize[-1]
        if not isinstance(stepsize, int):
            raise TypeError(
                "For single_step lr_scheduler, stepsize must "
                f"be an integer, but got {type(stepsize)}"
            )
        if stepsize <= 0:
            stepsize = max_epoch
        scheduler = StepLR(optimizer, step_size=stepsize, gamma=optim_cfg.GAMMA)
    elif name == "multi_step":
        if not isinstance(stepsize, (list, tuple)):
            raise TypeError(
                "For multi_step lr_scheduler, stepsize must "
                f"be a list, but got {type(stepsize)}"
            )
        scheduler = MultiStepLR(optimizer, milestones=list(stepsize), gamma=optim_cfg.GAMMA)
    else:
        scheduler = CosineAnnealingLR(optimizer, T_max=float(max_epoch))

    if optim_cfg.WARMUP_EPOCH > 0:
        scheduler = wrap_with_warmup(optimizer, scheduler, optim_cfg)
    return scheduler
