"""Patches for the *real* Dassl 0.6.3 on current PyTorch (warmup schedulers and checkpoints).

``dassl_compat`` applies these only when the real Dassl backend is selected.
They are the only places where the real backend is patched:

1. LR scheduling with warmup: real Dassl's warmup wrappers cannot be built on
   torch >= 2.2 (positional ``verbose``) and pickle their successor.  We let
   real Dassl build the successor and wrap it in our plain-data warmup wrapper.
2. Checkpoint reading: warmup checkpoints written by real Dassl pickle Python
   objects and fail with ``weights_only=True``; our loader reads them with a
   restricted unpickler that executes nothing (``safe_pickle.py``), also for
   ``load_pretrained_weights`` (``MODEL.INIT_WEIGHTS``).
3. Checkpoint writing (a deliberate fix of ``dassl/utils/torchtools.py``
   ``save_checkpoint``): real Dassl writes checkpoints and the ``checkpoint``
   pointer directly to their final paths, so a run killed mid-write leaves a
   truncated file; ours writes a temp file and renames it, with the same files
   and printed lines.
4. The log tee (``make_setup_logger``): real Dassl's ``setup_logger``
   (``dassl/utils/logger.py``) puts a new ``Logger`` tee on top of the current
   ``sys.stdout``.  A second run in the same process therefore stacks a tee
   on the first one, and the first run's ``log.txt`` receives every line of
   the second run; and a dropped ``Logger`` closes the stream it wraps
   (``Logger.__del__`` -> ``close()`` -> ``self.console.close()``).  Ours
   closes the previous run's tee first, as the bundled engine does.
"""
from __future__ import annotations

import io
import sys
from typing import Callable, Optional

from .optim import wrap_with_warmup
from .utils import load_checkpoint as _load_checkpoint_with_fallback
from .utils import load_pretrained_weights as _safe_load_pretrained_weights
from .utils import resume_with_loader
from .utils import save_checkpoint as _atomic_save_checkpoint

__all__ = [
    "make_build_lr_scheduler", "make_load_checkpoint", "make_load_pretrained_weights",
    "make_resume_from_checkpoint", "make_save_checkpoint", "make_setup_logger",
]


def make_build_lr_scheduler(real_build_lr_scheduler: Callable) -> Callable:
    """Return ``build_lr_scheduler(optimizer, optim_cfg)`` that is safe on current torch.

    Without warmup it delegates to ``real_build_lr_scheduler``.  With
    ``WARMUP_EPOCH > 0`` the successor is built by the real builder on a copy
    of ``optim_cfg`` with ``WARMUP_EPOCH = 0``, then wrapped in our warmup
    wrapper, which also applies ``WARMUP_RECOUNT`` (as Dassl's ``build_lr_scheduler``).
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

    The real loader fails on them under ``weights_only=True``; ours prints the
    same messages and reads optimizer / scheduler objects as inert data, never
    executing anything from the file.  ``real_load_checkpoint`` is accepted
    for symmetry and not used.
    """
    del real_load_checkpoint
    return _load_checkpoint_with_fallback


def make_load_pretrained_weights(real_load_pretrained_weights: Callable) -> Callable:
    """Return ``load_pretrained_weights(model, weight_path)`` reading the file with our loader.

    The real one (``dassl/utils/torchtools.py``) calls the real ``load_checkpoint``
    directly, so it cannot read warmup checkpoints; ours has the same matching
    rules and printed lines.  ``real_load_pretrained_weights`` is accepted for
    symmetry and not used.
    """
    del real_load_pretrained_weights
    return _safe_load_pretrained_weights


def make_resume_from_checkpoint(load_checkpoint: Callable) -> Callable:
    """Return ``resume_from_checkpoint(fdir, model, optimizer=None, scheduler=None)``
    that reads the file with ``load_checkpoint``."""

    def resume_from_checkpoint(fdir, model, optimizer=None, scheduler=None):
        return resume_with_loader(fdir, model, optimizer, scheduler, load_checkpoint)

    return resume_from_checkpoint


def make_save_checkpoint(real_save_checkpoint: Callable) -> Callable:
    """Return ``save_checkpoint(state, save_dir, is_best=False, remove_module_from_keys=True,
    model_name="")`` that writes every file atomically (temp file, then rename).

    Same files, pointer and printed lines as the real one; only a crash
    mid-write differs: it leaves the previous files intact instead of a
    truncated one.  ``real_save_checkpoint`` is accepted for symmetry and not used.
    """
    del real_save_checkpoint
    return _atomic_save_checkpoint


def make_setup_logger(real_setup_logger: Callable) -> Callable:
    """Return ``setup_logger(output=None)``: the real one, after closing the tee of its previous call.

    The real ``setup_logger`` still makes the tee, picks the file name (a
    time-stamped one when ``log.txt`` exists) and prints nothing.  Before a
    second call, the tee of the first one is released: its log file is closed
    (it is never written again), ``sys.stdout`` goes back to the stream that
    tee wrapped (when the tee is still ``sys.stdout``), and the tee is detached
    from that stream, so that closing or collecting it can no longer close it.
    """
    state = {"tee": None}

    def setup_logger(output: Optional[str] = None) -> None:
        if output is None:
            return  # the real one does nothing either
        previous, state["tee"] = state["tee"], None
        if previous is not None:
            release_tee(previous)
        before = sys.stdout
        real_setup_logger(output)
        if sys.stdout is not before:
            state["tee"] = sys.stdout

    return setup_logger


def release_tee(tee) -> None:
    """Close the log file of a ``setup_logger`` tee and detach it from the stream it wraps.

    If the tee is still ``sys.stdout``, the wrapped stream becomes ``sys.stdout``
    again.  Works for real Dassl's ``Logger`` and the bundled engine's tee
    (both keep ``console`` and ``file``).
    """
    console = getattr(tee, "console", None)
    log = getattr(tee, "file", None)
    if log is not None and not log.closed:
        log.flush()
        log.close()
    tee.file = None
    if console is None:
        return
    if sys.stdout is tee:
        sys.stdout = console
    # real Dassl's Logger.close() (also run by Logger.__del__) closes `console`: give it one of its own
    tee.console = io.StringIO()
