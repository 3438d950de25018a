"""The one place where Dassl names are imported.

Every module of this project takes its Dassl names (``TrainerX``,
``DATASET_REGISTRY``, ``get_cfg_default``, ...) from here, never from ``dassl``
directly (``tests/test_dassl_compat.py`` enforces it).  One backend is picked
for *all* names at once:

* ``dassl``   -- the real Dassl.pytorch 0.6.x, when it is importable;
* ``bundled`` -- :mod:`bundled_dassl`, the Dassl-compatible engine shipped in
  this repository (used on CI and on machines without Dassl).

``DASSL_BACKEND=auto|dassl|bundled`` forces the choice (default ``auto``:
real Dassl when importable, else bundled).

Real Dassl 0.6.3 breaks on current PyTorch in two places
(``dassl/optim/lr_scheduler.py``, ``dassl/utils/torchtools.py``): its warmup schedulers cannot be
constructed, and checkpoints that pickle a warmup scheduler cannot be read by
``torch.load`` with ``weights_only=True``.  Under the real backend this module
replaces exactly those two things (``build_lr_scheduler`` when a warmup is
configured, and the checkpoint readers), plus one deliberate fix: checkpoints
are written atomically (``save_checkpoint``: temp file, then rename; real
Dassl writes to the final path, so a kill mid-write leaves a truncated file).
One more deliberate fix: ``setup_logger`` closes the previous run's log tee
before making a new one (real Dassl stacks them within one process).  Nothing
else is replaced.  :func:`get_logger` (:mod:`gopro_prompts.logs`) gives
the package's loggers, which print even after real Dassl's ``logging.disable``.
"""
from __future__ import annotations

import importlib.util
import os

from gopro_prompts.logs import get_logger
from gopro_prompts.user_errors import UserError

__all__ = [
    "BACKEND",
    # config
    "get_cfg_default", "clean_cfg",
    # engine
    "TRAINER_REGISTRY", "TrainerBase", "SimpleTrainer", "TrainerX", "build_trainer",
    # data
    "DataManager", "DatasetWrapper", "DATASET_REGISTRY", "Datum", "DatasetBase",
    "build_dataset", "build_transform", "INTERPOLATION_MODES",
    # optim
    "build_optimizer", "build_lr_scheduler",
    # metrics / evaluation
    "compute_accuracy", "build_evaluator", "EVALUATOR_REGISTRY", "Classification",
    # utils
    "setup_logger", "set_random_seed", "collect_env_info", "load_pretrained_weights",
    "load_checkpoint", "save_checkpoint", "resume_from_checkpoint", "read_json",
    "write_json", "mkdir_if_missing", "listdir_nohidden", "check_isfile", "read_image",
    "MetricMeter", "AverageMeter", "Registry", "check_availability", "count_num_param",
    "tolist_if_not",
    # ours
    "get_logger",
]

_VALID = ("auto", "dassl", "bundled")


class BackendError(UserError):
    """``DASSL_BACKEND`` names no backend, or one that is not importable (raised at import)."""


def _select_backend() -> str:
    """The backend ``DASSL_BACKEND`` asks for; a bad value raises :class:`BackendError` naming the fix."""
    raw = os.environ.get("DASSL_BACKEND", "auto")
    wanted = raw.strip().lower() or "auto"
    if wanted not in _VALID:
        raise BackendError(
            f"DASSL_BACKEND={raw!r} is not valid: set it to one of {', '.join(_VALID)} "
            "(auto: real Dassl when importable, else the bundled engine) or unset it"
        )
    if wanted == "bundled":
        return "bundled"
    real_available = importlib.util.find_spec("dassl") is not None
    if wanted == "dassl" and not real_available:
        raise BackendError(
            "DASSL_BACKEND=dassl but the real Dassl is not importable: install "
            "Dassl.pytorch (https://github.com/KaiyangZhou/Dassl.pytorch) or unset DASSL_BACKEND"
        )
    return "dassl" if real_available else "bundled"


BACKEND = _select_backend()

if BACKEND == "dassl":  # pragma: no cover - verified on machines that have Dassl
    from dassl.config import get_cfg_default, clean_cfg
    from dassl.engine import TRAINER_REGISTRY, TrainerBase, SimpleTrainer, TrainerX, build_trainer
    from dassl.data import DataManager, DatasetWrapper
    from dassl.data.datasets import DATASET_REGISTRY, Datum, DatasetBase, build_dataset
    from dassl.data.transforms import build_transform, INTERPOLATION_MODES
    from dassl.optim import build_optimizer
    from dassl.optim import build_lr_scheduler as _real_build_lr_scheduler
    from dassl.metrics import compute_accuracy
    from dassl.evaluation import build_evaluator, EVALUATOR_REGISTRY, Classification
    from dassl.utils import (
        setup_logger, set_random_seed, collect_env_info, load_pretrained_weights,
        read_json, write_json, mkdir_if_missing, listdir_nohidden,
        check_isfile, read_image, MetricMeter, AverageMeter, Registry, check_availability,
        count_num_param, tolist_if_not,
    )
    from dassl.utils import load_checkpoint as _real_load_checkpoint
    from dassl.utils import save_checkpoint as _real_save_checkpoint
    from gopro_prompts.bundled_dassl import torch_compat as _torch_compat

    # Fix 1: warmup schedulers are built by our plain-data wrapper around
    # real Dassl's successor schedule (constructing Dassl's wrapper raises
    # TypeError on torch >= 2.x where `verbose` is gone).
    build_lr_scheduler = _torch_compat.make_build_lr_scheduler(_real_build_lr_scheduler)
    # Fix 2: checkpoints that pickle schedulers/optimizers load again, executing nothing from the file.
    load_checkpoint = _torch_compat.make_load_checkpoint(_real_load_checkpoint)
    load_pretrained_weights = _torch_compat.make_load_pretrained_weights(load_pretrained_weights)
    resume_from_checkpoint = _torch_compat.make_resume_from_checkpoint(load_checkpoint)
    # Deliberate fix: checkpoint files and the pointer are written atomically (real Dassl writes in place).
    save_checkpoint = _torch_compat.make_save_checkpoint(_real_save_checkpoint)
    # Deliberate fix: a second run in one process closes the first run's log tee instead of
    # stacking on it (real Dassl's dassl/utils/logger.py setup_logger), as the bundled engine does.
    setup_logger = _torch_compat.make_setup_logger(setup_logger)
else:
    from gopro_prompts.bundled_dassl.config import get_cfg_default, clean_cfg
    from gopro_prompts.bundled_dassl.engine import (
        TRAINER_REGISTRY, TrainerBase, SimpleTrainer, TrainerX, build_trainer,
    )
    from gopro_prompts.bundled_dassl.data import DataManager, DatasetWrapper
    from gopro_prompts.bundled_dassl.data.datasets import DATASET_REGISTRY, Datum, DatasetBase, build_dataset
    from gopro_prompts.bundled_dassl.data.transforms import build_transform, INTERPOLATION_MODES
    from gopro_prompts.bundled_dassl.optim import build_optimizer, build_lr_scheduler
    from gopro_prompts.bundled_dassl.metrics import compute_accuracy
    from gopro_prompts.bundled_dassl.evaluation import build_evaluator, EVALUATOR_REGISTRY, Classification
    from gopro_prompts.bundled_dassl.utils import (
        setup_logger, set_random_seed, collect_env_info, load_pretrained_weights,
        load_checkpoint, save_checkpoint, resume_from_checkpoint, read_json, write_json,
        mkdir_if_missing, listdir_nohidden, check_isfile, read_image, MetricMeter,
        AverageMeter, Registry, check_availability, count_num_param, tolist_if_not,
    )
