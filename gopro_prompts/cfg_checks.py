"""Checks of a built run config: values Dassl accepts silently or fails on far from the key.

:func:`check_run_cfg` raises a :class:`~gopro_prompts.user_errors.UserError`
naming the key and the fix; :func:`config_warnings` lists settings that are
valid but ignored.  ``train.py``'s ``setup_cfg`` calls both on every run,
``--eval-only`` included, before anything is written.

What Dassl does with the values refused here:

* a batch size <= 0: ``torch.utils.data.DataLoader`` raises "batch_size should be
  a positive integer value" without naming the key (both loaders are built on
  every run, eval-only included: Dassl's ``dassl/data/data_manager.py``);
* ``OPTIM.MAX_EPOCH`` <= 0: the training loop runs no epoch and the untrained
  model is tested as if trained (``dassl/engine/trainer.py``, ``TrainerBase.train``);
* ``TEST.FINAL_MODEL`` other than ``last_step`` / ``best_val``: treated as
  ``last_step`` (``SimpleTrainer.after_train`` compares with ``"best_val"`` only);
* ``TEST.SPLIT`` other than ``val`` / ``test``: the test split is evaluated
  (``SimpleTrainer.test`` compares with ``"val"`` only).
"""
from __future__ import annotations

from typing import List

from gopro_prompts.logs import get_logger
from gopro_prompts.user_errors import UserError

logger = get_logger("config")

FINAL_MODELS = ("last_step", "best_val")
TEST_SPLITS = ("val", "test")


def trainer_trains(trainer_cls) -> bool:
    """False for a trainer with nothing to train (zero-shot CLIP evaluates in ``train()``)."""
    from gopro_prompts.trainers.zsclip import ZeroshotCLIP

    return not (isinstance(trainer_cls, type) and issubclass(trainer_cls, ZeroshotCLIP))


def check_run_cfg(cfg, trains: bool = True) -> None:
    """Refuse config values that cannot run, or would run other than asked.

    ``trains``: the run trains (not ``--eval-only``, not ``--no-train``, and a
    trainer that learns); ``OPTIM.MAX_EPOCH`` and ``TEST.FINAL_MODEL`` only
    matter then.
    """
    for key in ("DATALOADER.TRAIN_X.BATCH_SIZE", "DATALOADER.TEST.BATCH_SIZE"):
        value = _get(cfg, key)
        if value <= 0:
            raise UserError(f"{key} is {value}: a batch size must be 1 or more (e.g. {key} 32)")
    split = cfg.TEST.SPLIT
    if split not in TEST_SPLITS:
        raise UserError(f"TEST.SPLIT {split!r} is not valid: use one of {', '.join(TEST_SPLITS)} "
                        "(Dassl would silently evaluate on test)")
    if not trains:
        return
    if cfg.OPTIM.MAX_EPOCH <= 0:
        raise UserError(f"OPTIM.MAX_EPOCH is {cfg.OPTIM.MAX_EPOCH}: train for 1 or more epochs "
                        "(e.g. OPTIM.MAX_EPOCH 5), or evaluate a trained model with --eval-only --model-dir DIR")
    final = cfg.TEST.FINAL_MODEL
    if final not in FINAL_MODELS:
        raise UserError(f"TEST.FINAL_MODEL {final!r} is not valid: use one of {', '.join(FINAL_MODELS)} "
                        "(Dassl would silently deploy the last model)")


def config_warnings(cfg, trainer_cls=None) -> List[str]:
    """Valid settings that the run ignores, each as one sentence naming the keys."""
    warnings = []
    if getattr(trainer_cls, "CFG_NODE", None) == "COOP" and "COOP" in cfg.TRAINER:
        node = cfg.TRAINER.COOP
        if node.CSC and str(node.CTX_INIT).strip():
            # ours (trainers/coop.py CoOpPromptLearner) follows CoOp's trainers/coop.py
            # PromptLearner.__init__, whose CSC branch is under `else` of `if ctx_init`
            warnings.append(
                f"TRAINER.COOP.CSC True is ignored because TRAINER.COOP.CTX_INIT is set ({node.CTX_INIT!r}): "
                "one context shared by all classes is initialised from those words, as in the official "
                "CoOp code; set TRAINER.COOP.CTX_INIT \"\" for class-specific contexts"
            )
    return warnings


def log_config_warnings(cfg, trainer_cls=None) -> None:
    """Log :func:`config_warnings` (a ``logging`` warning each)."""
    for text in config_warnings(cfg, trainer_cls):
        logger.warning("Warning: %s", text)


def _get(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node
