"""Checkpoints of the learnable modules: writing, resuming, loading, and the checks made on the way.

The file layout, keys and printed lines are Dassl's (``dassl/engine/trainer.py``
``SimpleTrainer.save_model`` / ``resume_model_if_exist`` / ``load_model`` and
``dassl/utils/torchtools.py``).  Deliberate fixes of Dassl defects: every file is
written atomically (temp file + rename, so a kill mid-write leaves the previous
file intact); a checkpoint also holds the RNG states, ``best_result`` and the
method's own state, so a resumed run repeats an uninterrupted one, and the
config, trainer and backbone it was made with, which loading checks.  All of it
is plain data (``torch.load(weights_only=True)`` reads it), and only the
learnable module is saved: class-dependent buffers are non-persistent and
rebuilt from the class names, so a base-class model evaluates on new classes.
"""
from __future__ import annotations

import os
import os.path as osp
import re

from gopro_prompts.bundled_dassl.safe_pickle import UnsafeCheckpointError
from gopro_prompts.bundled_dassl.utils import (
    model_checkpoint_state, read_checkpoint_pointer, restore_from_checkpoint,
)
from gopro_prompts.dassl_compat import get_logger, load_checkpoint, save_checkpoint
from gopro_prompts.run_folder import changed_config_error, config_changes
from gopro_prompts.run_lock import pid_exists
from gopro_prompts.trainers import distributed
from gopro_prompts.trainers.rng import capture_rng_state, restore_rng_state
from gopro_prompts.user_errors import UserError

logger = get_logger("trainer")

_NUMBERED = re.compile(r"^model\.pth\.tar-(\d+)$")
#: temp files of bundled_dassl.utils' atomic writes: ``.<final name>.<pid>-<hex>.tmp``
_TEMP = re.compile(r"^\..+\.(\d+)-[0-9a-f]+\.tmp$")


class CheckpointMixin:
    """Checkpoint methods of :class:`~gopro_prompts.trainers.base.ClipTrainer` (over Dassl's ``SimpleTrainer``)."""

    #: checkpoint keys that depend on the class names; dropped when loading
    CLASS_DEPENDENT_KEYS = ("token_prefix", "token_suffix", "tokenized_prompts")

    def save_model(self, *args, **kwargs):
        """Checkpoints are written by rank 0 only; the other ranks wait for them (torchrun)."""
        if distributed.is_main_process():
            self.write_checkpoint(*args, **kwargs)
        distributed.barrier()

    def write_checkpoint(self, epoch, directory, is_best=False, val_result=None, model_name=""):
        """Save every registered module to ``directory/<name>/`` (Dassl's keys plus ours)."""
        extra = {
            "rng_state": capture_rng_state(),
            "method_state": self.method_state(),
            "best_result": float(self.best_result),
            "trainer": type(self).__name__,
            "backbone": backbone_id(self.cfg),
            "config": self.cfg.dump(),
        }
        for name in self.get_model_names():
            state = model_checkpoint_state(self._models[name], self._optims[name], self._scheds[name],
                                           epoch + 1, val_result)
            save_checkpoint({**state, **extra}, osp.join(directory, name), is_best=is_best, model_name=model_name)

    def resume_model_if_exist(self, directory):
        """Resume from the last complete checkpoint in ``directory``; returns the start epoch.

        Prints Dassl's lines.  Deliberate fixes: a folder without a complete
        checkpoint (a run killed during its first save) trains from scratch; a
        missing, empty or unreadable pointer falls back to the newest readable
        ``model.pth.tar-N``; the RNG states and best_result are restored; a
        checkpoint of another trainer, backbone or class count is refused.
        """
        names = self.get_model_names()
        found = {}
        if names and all(osp.isdir(osp.join(directory, name)) for name in names):
            for name in names:
                found[name] = find_complete_checkpoint(osp.join(directory, name))
        complete = bool(names) and len(found) == len(names) and all(item is not None for item in found.values())
        done = min(item[1]["epoch"] for item in found.values()) if complete else 0
        start_epoch = self.resume_preempted_if_ahead(directory, names, done)
        if start_epoch is not None:
            return start_epoch
        if not complete:
            print("No checkpoint found, train from scratch")
            return 0

        print(f"Found checkpoint at {directory} (will resume training)")
        start_epoch, checkpoint, path = 0, None, ""
        for name in names:
            path, checkpoint = found[name]
            print(f'Loading checkpoint from "{path}"')
            state_dict = self._checked_state_dict(name, checkpoint, path, resuming=True)
            start_epoch = restore_from_checkpoint(checkpoint, self._models[name], self._optims[name],
                                                  self._scheds[name], state_dict=state_dict)
        self._restore_loop_state(checkpoint, path)
        return start_epoch

    def _restore_loop_state(self, checkpoint, path):
        """RNG states and best_result of a resumed checkpoint; a checkpoint of another config is refused."""
        changes = config_changes(checkpoint.get("config"), self.cfg)
        if changes:  # the folder is another experiment's: resuming it would mix the two
            # <run>/<model>/model.pth.tar-N; a pre-emption checkpoint (it has a "format") is <run>/<file>
            run_dir = osp.dirname(path) if checkpoint.get("format") else osp.dirname(osp.dirname(path))
            raise changed_config_error(f"checkpoint {path}", changes, run_dir or ".")
        if checkpoint.get("best_result") is not None:
            self.best_result = checkpoint["best_result"]
        if checkpoint.get("method_state"):
            self.load_method_state(checkpoint["method_state"])
        if checkpoint.get("rng_state") is None:
            logger.warning(
                "%s has no random-number-generator state (written by Dassl or the official code): "
                "the resumed run continues but will not repeat an uninterrupted run exactly", path,
            )
            return
        restore_rng_state(checkpoint["rng_state"])
        logger.info("Restored the random number generator states of %s", path)

    def load_model(self, directory, epoch=None):
        """Load learnable weights; class-dependent tensors stay those of the current classes."""
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in self.get_model_names():
            model_path = osp.join(directory, name, model_file)
            if not osp.exists(model_path):
                raise FileNotFoundError(missing_model_message(directory, name, model_file))
            checkpoint = load_checkpoint(model_path)
            if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "epoch" not in checkpoint:
                raise UserError(
                    f'"{model_path}" is not a Dassl checkpoint (no "state_dict" and "epoch" entries): '
                    "point --model-dir at the output folder of a training run of this trainer"
                )
            state_dict = self._checked_state_dict(name, checkpoint, model_path, resuming=False)
            print(f'Loading weights to {name} from "{model_path}" (epoch = {checkpoint["epoch"]})')
            self._models[name].load_state_dict(state_dict, strict=True)

    def _checked_state_dict(self, name, checkpoint, path, resuming):
        """The checkpoint's state dict for module ``name``, after every compatibility check."""
        trainer_name = type(self).__name__
        check_checkpoint_origin(checkpoint, path, trainer_name, backbone_id(self.cfg), resuming=resuming)
        state_dict = self.convert_state_dict(name, checkpoint["state_dict"])
        state_dict = {key: value for key, value in state_dict.items()
                      if key.split(".")[-1] not in self.CLASS_DEPENDENT_KEYS}
        check_state_dict_compatible(self._models[name], state_dict, path, trainer_name)
        return state_dict

    def convert_state_dict(self, name, state_dict):
        """Hook: map a loaded state dict to our parameter names (default: unchanged).

        A trainer overrides it to read checkpoints written by the official code
        with other names or layout (e.g. MaPLe's whole-model checkpoints).
        """
        return state_dict

    def method_state(self) -> dict:
        """Training state of the method beyond its learnable weights and optimiser (plain data).

        For example a running average of prompts over epochs.  Saved in every checkpoint (end of
        epoch and pre-emption) and given back to :meth:`load_method_state` on resume.  Default: none.
        """
        return {}

    def load_method_state(self, state: dict) -> None:
        """Restore what :meth:`method_state` returned (called when a run resumes)."""

    def resume_preempted_if_ahead(self, directory, names, done_epochs):
        """Hook: resume from a pre-emption checkpoint newer than ``done_epochs`` finished epochs.

        Returns the start epoch, or None to resume from the end-of-epoch checkpoints
        (:class:`~gopro_prompts.trainers.preemption.PreemptionMixin` overrides it).
        """
        return None


def backbone_id(cfg) -> str:
    """The backbone a run uses, as stored in its checkpoints: the name, else the file name."""
    backbone = cfg.MODEL.BACKBONE
    return backbone.NAME or osp.basename(backbone.PATH)


def find_complete_checkpoint(fdir):
    """``(path, checkpoint)`` of the last complete checkpoint in ``fdir``, or None.

    The file named by the ``checkpoint`` pointer (Dassl's ``save_checkpoint``) when it reads; else
    the newest readable ``model.pth.tar-N`` (a pointer lost or truncated by a
    non-atomic writer, e.g. real Dassl's).  Leftover temp files of writes cut
    short by a kill are removed first.
    """
    _remove_dead_temp_files(fdir)
    named = read_pointer(fdir)
    numbered = sorted(
        (name for name in os.listdir(fdir) if _NUMBERED.match(name)),
        key=lambda name: int(_NUMBERED.match(name).group(1)), reverse=True,
    )
    unusable = []
    for name in ([named] if named else []) + [n for n in numbered if n != named]:
        path = osp.join(fdir, name)
        checkpoint = _read_checkpoint(path)
        if checkpoint is None:
            unusable.append(name)
            continue
        if name != named:
            logger.warning(
                'The "checkpoint" pointer in %s is %s: resuming from %s, the newest readable checkpoint',
                fdir, f"unusable ({named} does not load)" if named else "missing or empty", name,
            )
        return path, checkpoint
    if unusable:
        logger.warning("No complete checkpoint in %s (unreadable: %s): training from scratch",
                       fdir, ", ".join(unusable))
    return None


def read_pointer(fdir) -> str:
    """The file named by Dassl's ``checkpoint`` pointer in ``fdir``, or "" when unusable.

    A pointer that is not UTF-8 text or names a file outside its folder
    (``read_checkpoint_pointer``) is ignored with a warning naming it; the
    caller then falls back to the numbered files.
    """
    try:
        return read_checkpoint_pointer(fdir)
    except (ValueError, OSError) as exc:
        logger.warning("Ignoring it: %s", exc)
        return ""


def _load_if_readable(path):
    """The content of the checkpoint file ``path``, or None when it is missing, truncated or corrupt.

    A file that pickles a class loading would have to execute is not skipped
    but refused (``UnsafeCheckpointError`` propagates): someone put it there.
    """
    if not osp.isfile(path):
        return None
    try:
        return load_checkpoint(path)
    except UnsafeCheckpointError:
        raise
    except Exception:  # truncated or corrupt: load_checkpoint printed which file
        return None


def _read_checkpoint(path):
    """The checkpoint at ``path`` if it is a complete, readable one, else None."""
    checkpoint = _load_if_readable(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "epoch" not in checkpoint:
        return None
    return checkpoint


def _remove_dead_temp_files(fdir):
    """Delete temp files of atomic writes whose writer process is gone."""
    for name in os.listdir(fdir):
        match = _TEMP.match(name)
        if match and not _pid_alive(int(match.group(1))):
            try:
                os.remove(osp.join(fdir, name))
                logger.info("Removed %s, left by a checkpoint write that was cut short", osp.join(fdir, name))
            except OSError:
                pass


def _pid_alive(pid: int) -> bool:
    # our own temp files are never left behind while we run
    return pid != os.getpid() and pid_exists(pid)


def missing_model_message(directory, name, model_file):
    """Why ``--model-dir`` has no ``<name>/<model_file>`` and what to pass instead."""
    folder = osp.join(directory, name)
    path = osp.join(folder, model_file)
    if not osp.isdir(directory):
        return (f'Model not found at "{path}": --model-dir {directory} does not exist; '
                "point it at the output folder of a training run")
    if not osp.isdir(folder):
        return (f'Model not found at "{path}": {directory} has no {name}/ folder, so it is not the output '
                "folder of a finished training run of this trainer; check --model-dir and --trainer")
    names = os.listdir(folder)
    epochs = sorted(int(_NUMBERED.match(n).group(1)) for n in names if _NUMBERED.match(n))
    hints = [f"--load-epoch {' or '.join(map(str, epochs))}"] if epochs else []
    if "model-best.pth.tar" in names:
        hints.append("no --load-epoch for model-best.pth.tar")
    hint = f"use {' or '.join(hints)}" if hints else "the run saved no checkpoint (did it finish?)"
    return f'Model not found at "{path}": check --model-dir and --load-epoch ({hint})'


def check_checkpoint_origin(checkpoint, path, trainer_name, backbone, resuming=False):
    """Refuse a checkpoint made by another trainer or with another backbone (when it says so).

    Checkpoints of Dassl / the official code carry no such fields and are not checked here.
    """
    fix = ("use another --output-dir (this one holds that run) or the same settings to resume it"
           if resuming else "point --model-dir at a run made with the same trainer and backbone")
    made_by = checkpoint.get("trainer")
    if made_by and made_by != trainer_name:
        raise UserError(
            f"checkpoint {path} was made by the {made_by} trainer, not {trainer_name}: {fix}"
        )
    made_with = checkpoint.get("backbone")
    if made_with and backbone and made_with != backbone:
        raise UserError(
            f"checkpoint {path} was made with backbone {made_with}, but this run uses {backbone} "
            f"(MODEL.BACKBONE): {fix}"
        )


def check_state_dict_compatible(module, state_dict, path, trainer_name):
    """Fail with one clear message when a checkpoint does not fit ``module``."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise UserError(
            f"checkpoint {path} does not match the {trainer_name} model (made by another trainer "
            f"or config?): missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for key, value in state_dict.items():
        expected = own[key]
        if tuple(value.shape) == tuple(expected.shape):
            continue
        if key.split(".")[-1] == "ctx" and value.dim() == 3 and expected.dim() == 3:
            raise UserError(
                f"checkpoint {path}: class-specific context (CSC) for {value.shape[0]} classes, but this "
                f"dataset has {expected.shape[0]}: a CSC checkpoint only evaluates on the classes it was "
                "trained on (use DATASET.SUBSAMPLE_CLASSES of its run, or train with CSC False)"
            )
        if key.split(".")[-1] == "ctx" and value.dim() != expected.dim():
            made = "class-specific (CSC True)" if value.dim() == 3 else "shared (CSC False)"
            raise UserError(
                f"checkpoint {path} holds a {made} context, {tuple(value.shape)}, but this run expects "
                f"{tuple(expected.shape)}: set CSC (and N_CTX, CTX_INIT) as in the run that made it"
            )
        raise UserError(
            f"checkpoint {path}: {key} has shape {tuple(value.shape)} but the {trainer_name} model "
            f"expects {tuple(expected.shape)}; was it made with another backbone or N_CTX?"
        )
