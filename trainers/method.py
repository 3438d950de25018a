"""The contract between a method's model and the trainer, and the one training step.

A method is a model around a frozen CLIP that subclasses :class:`PromptMethod`.
:class:`~gopro_prompts.trainers.base.ClipTrainer`, ``tests/benchmark.py``
and the tests drive a method only through this contract:

===================================  ====================================================
``learnable_module()``               the one module optimised and checkpointed (``None``:
                                     nothing to train, e.g. zero-shot CLIP)
``forward(images)``                  evaluation forward -> logits [B, C]
``forward_train(inputs, labels)``    training forward -> ``(logits, {term: loss})``
``loss_weights``                     weight of each named term (default 1), set by the model
                                     from its config node
``backward(loss, terms, scale)``     gradients of the training objective; default: of the
                                     weighted sum.  A method may combine the gradients of
                                     its terms instead (ProGrad projects one onto another)
``begin_eval()`` / ``end_eval()``    around every evaluation (e.g. encode image-independent
                                     class prompts once)
``end_epoch(epoch, max_epoch)``      after every training epoch, before its checkpoint
                                     (e.g. PromptSRC's Gaussian prompt aggregation)
``extra_state()`` / ``load_extra_state(state)``
                                     running state that a resumed run needs (plain data,
                                     saved in every checkpoint)
===================================  ====================================================

:func:`training_step` is the step every caller runs: forward under the
precision's autocast, the model's total loss and backward, the optimiser step.
"""
from __future__ import annotations

import abc
import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

Terms = Dict[str, torch.Tensor]


class PromptMethod(nn.Module, metaclass=abc.ABCMeta):
    """Base class of every method's model (see the module docstring for the contract)."""

    #: weight of each named loss term; a term not listed has weight 1
    loss_weights: Dict[str, float] = {}

    @abc.abstractmethod
    def learnable_module(self) -> Optional[nn.Module]:
        """The module that is optimised and checkpointed (``None``: nothing to train)."""

    @abc.abstractmethod
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Evaluation forward: logits [B, C]."""

    def forward_train(self, inputs, labels: torch.Tensor) -> Tuple[torch.Tensor, Terms]:
        """Training forward: ``(logits, {term: loss})``; default: the evaluation logits and their CE."""
        logits = self(inputs)
        return logits, {"ce": F.cross_entropy(logits, labels)}

    def total_loss(self, terms: Terms) -> torch.Tensor:
        """The weighted sum of the terms, in fp32 (what is logged as ``loss``)."""
        weights = self.loss_weights
        values = [weights.get(name, 1.0) * term.float() for name, term in terms.items()]
        if not values:
            raise ValueError(f"{type(self).__name__}.forward_train returned no loss term")
        total = values[0]
        for value in values[1:]:  # left to right, as Python's sum()
            total = total + value
        return total

    def backward(self, loss: torch.Tensor, terms: Terms, scale: Optional[Callable] = None) -> None:
        """Write the gradients of the learnable parameters (``scale``: a grad scaler's ``scale``)."""
        (scale(loss) if scale is not None else loss).backward()

    def begin_eval(self) -> None:
        """Called before an evaluation, under inference mode."""

    def end_eval(self) -> None:
        """Called after an evaluation (also when it failed)."""

    def end_epoch(self, epoch: int, max_epoch: int) -> None:
        """Called after training epoch ``epoch`` (0-based) of ``max_epoch``, before its checkpoint.

        A run resumed from a pre-emption inside that epoch's evaluation calls it again for the
        same epoch: an implementation with state must make the second call a no-op.
        """

    def extra_state(self) -> dict:
        """Running state beyond the learnable weights that a resumed run needs (plain data)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what :meth:`extra_state` returned."""


def learnable_parameters(model: PromptMethod):
    """The parameters a method trains (those of its learnable module that require gradients)."""
    module = model.learnable_module()
    return [] if module is None else [p for p in module.parameters() if p.requires_grad]


def freeze_all_but_learnable(model: PromptMethod) -> Optional[nn.Module]:
    """Turn off every gradient but the learnable module's; returns that module."""
    learnable = model.learnable_module()
    for p in model.parameters():
        p.requires_grad_(False)
    if learnable is not None:
        for p in learnable.parameters():
            p.requires_grad_(True)
    return learnable


@dataclass
class StepOutput:
    """What one training step computed (detached)."""

    logits: torch.Tensor
    loss: torch.Tensor
    terms: Terms


def check_finite(loss: torch.Tensor, terms: Terms, where: str = "") -> None:
    """Raise one clear FloatingPointError when the loss is NaN or infinite."""
    if math.isfinite(loss.item()):
        return
    bad = [f"{name}={term.item()}" for name, term in terms.items() if not torch.isfinite(term).all()]
    place = f" {where}" if where else ""
    raise FloatingPointError(
        f"non-finite loss{place} ({', '.join(bad) or f'loss={loss.item()}'}): lower OPTIM.LR or use "
        "PREC fp32; the last saved checkpoint is intact"
    )


def training_step(model: PromptMethod, inputs, labels: torch.Tensor, optim: torch.optim.Optimizer,
                  precision=None, scaler=None, forward: Optional[Callable] = None, where: str = "") -> StepOutput:
    """One optimisation step of ``model`` on a batch.

    ``precision`` (a ``clip_helpers.Precision``) gives the autocast region; ``scaler`` a
    ``GradScaler`` (mixed precision: a non-finite loss skips the step and lowers the scale);
    ``forward`` replaces ``model.forward_train`` (e.g. its DistributedDataParallel wrapper);
    ``where`` places a non-finite loss in the error message.
    """
    autocast = precision.autocast() if precision is not None else contextlib.nullcontext()
    with autocast:
        logits, terms = (forward or model.forward_train)(inputs, labels)
    loss = model.total_loss(terms)
    if scaler is None:
        check_finite(loss, terms, where)
    optim.zero_grad()
    model.backward(loss, terms, scale=scaler.scale if scaler is not None else None)
    if scaler is not None:
        scaler.step(optim)
        scaler.update()
    else:
        optim.step()
    return StepOutput(logits.detach(), loss.detach(), {name: t.detach() for name, t in terms.items()})
