"""Patches for the *real* Dassl 0.6.3 on current PyTorch (``dassl-behaviour.md`` §d.5).

``dassl_compat`` applies these only when the real Dassl backend is selected.
They are the only places where the real backend is patched:

1. LR scheduling with warmup: real Dassl's warmup wrappers cannot be built on
   torch >= 2.2 (positional ``verbose``) and pickle their successor.  We let
   real Dassl build the successor and wrap it in our plain-data warmup wrapper.
2. Checkpoint reading: warmup checkpoints written by real Dassl pickle Python
   objects and fail with ``weights_only=True``; our loader falls back.
3. Checkpoint writing (a deliberate fix, §f.4): real Dassl writes checkpoints
   and the ``checkpoint`` pointer directly to their final paths, so a run
   killed mid-write leaves a truncated file; ours writes a temp file and
   renames it, with the same files and printed lines.
"""
from __future__ import annotations

from typing import Callable

from .optim import wrap_with_warmup
from .utils import load_checkpoint as _load_checkpoint_with_fallback
from .utils import resume_with_loader
from .utils import save_checkpoint as _atomic_save_checkpoint

__all__ = [
    "make_build_lr_scheduler", "make_load_checkpoint", "make_resume_from_checkpoint", "make_save_checkpoint",
]


def make_build_lr_scheduler(real_build_lr_scheduler: Callable) -> Callable:
    """Return ``build_lr_scheduler(optimizer, optim_cfg)`` that is safe on current torch.

    Without warmup it delegates to ``real_build_lr_scheduler``.  With
    ``WARMUP_EPOCH > 0`` the successor is built by the real builder on a copy
    of ``optim_cfg`` with ``WARMUP_EPOCH = 0``, then wrapped in our warmup
    wrapper, which also applies ``WARMUP_RECOUNT`` (§d.2, §d.3).
    """

    def build_lr_scheduler(optimizer, optim_cfg):
        if optim_cfg.WARMUP_EPOCH <= 0:
            return real_build_lr_scheduler(optimizer, optim_cfg)
        successor_cfg = optim_cfg.clone()
        successor_cfg.defrost()
        successor_cfg.WARMUP_EPOCH = 0
        successor = real_build_lr_scheduler(optimizer, successor_cfg)
        return wrap_with_warmup(optimizer, successor, optim_cfg)

    return build_lr_scheduler


def make_load_checkpoint(real_load_checkpoint: Callable) -> Callable:
    """Return a ``load_checkpoint(fpath)`` that also reads checkpoints pickling objects.

    The real loader fails on them under ``weights_only=True`` (§d.5); ours
    prints the same messages and falls back to ``weights_only=False`` with a
    warning.  ``real_load_checkpoint`` is accepted for symmetry and not used.
    """
    del real_load_checkpoint
    return _load_checkpoint_with_fallback


def make_resume_from_checkpoint(load_checkpoint: Callable) -> Callable:
    """Return ``resume_from_checkpoint(fdir, model, optimizer=None, scheduler=None)`` (§b.3)
    that reads the file with ``load_checkpoint``."""

    def resume_from_checkpoint(fdir, model, optimizer=None, scheduler=None):
        return resume_with_loader(fdir, model, optimizer, scheduler, load_checkpoint)

    return resume_from_checkpoint


def make_save_checkpoint(real_save_checkpoint: Callable) -> Callable:
    """Return ``save_checkpoint(state, save_dir, is_best=False, remove_module_from_keys=True,
    model_name="")`` that writes every file atomically (temp file, then rename).

    Same files, pointer and printed lines as the real one (§f.4); only a crash
    mid-write differs: it leaves the previous files intact instead of a
    truncated one.  ``real_save_checkpoint`` is accepted for symmetry and not used.
    """
    del real_save_checkpoint
    return _atomic_save_checkpoint
