"""Pre-emption: SIGTERM / SIGUSR1 save the exact training state and exit, to be resumed by re-running.

Clusters signal a job (SIGTERM, or SIGUSR1 ahead of the time limit) before they
kill it.  While :class:`PreemptionGuard` is installed (``train.py`` does it for
a run), the handler only records the signal; the trainer acts at the next
safe point (``ClipTrainer``): after the current optimiser step, after the
current checkpoint write, or before the next evaluation batch.  It saves
:data:`PREEMPT_FILE` in the output folder, and :class:`Preempted` ends the
run with exit code 128 + the signal number.  Before the trainer has started
its loop (building the data, few-shot caches, the model) nothing needs saving:
the handler ends the run at once.  Data-loader worker processes ignore both
signals; their main process handles them.

:data:`PREEMPT_FILE` is never a ``model.pth.tar-N`` and sits outside the
model sub-folders, so ``--load-epoch``, Dassl's ``checkpoint`` pointer and
Dassl's ``load_model`` only ever see end-of-epoch checkpoints.
"""
from __future__ import annotations

import contextlib
import os
import os.path as osp
import signal
from typing import Optional

import torch

from gopro_prompts.bundled_dassl.utils import atomic_write
from gopro_prompts.logs import get_logger
from gopro_prompts.trainers import distributed
from gopro_prompts.trainers.checkpoints import _load_if_readable, backbone_id
from gopro_prompts.trainers.rng import capture_rng_state, restore_rng_state

logger = get_logger("preemption")

#: the signals a cluster sends before it kills a job
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
#: mid-epoch checkpoint of a pre-empted run, in its output folder
PREEMPT_FILE = "preempted.pth.tar"
#: value of its "format" key
PREEMPT_FORMAT = "gopro_prompts.preempted/1"


class Preempted(BaseException):
    """The run stopped on a pre-emption signal (a BaseException, like KeyboardInterrupt).

    ``saved`` is the checkpoint that holds its state (None: nothing needed saving).
    """

    def __init__(self, signum: int, saved: Optional[str] = None, where: str = ""):
        super().__init__(signum, saved, where)
        self.signum, self.saved, self.where = signum, saved, where

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def message(self) -> str:
        name = signal.Signals(self.signum).name
        where = f" {self.where}" if self.where else ""
        if self.saved:
            return (f"pre-empted by {name}{where}: the exact training state is saved in {self.saved}; "
                    "run the same command again to continue from it")
        return (f"pre-empted by {name}{where}: nothing needed saving; run the same command again "
                "to resume from the last saved checkpoint")


class PreemptionGuard:
    """Install the handlers for :data:`SIGNALS` (main thread only); restore the previous ones on exit."""

    _active: Optional["PreemptionGuard"] = None

    def __init__(self):
        self.signum: Optional[int] = None
        self.deferring = False
        self._pid = os.getpid()
        self._previous = {}

    def __enter__(self):
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        PreemptionGuard._active = self
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if PreemptionGuard._active is self:
            PreemptionGuard._active = None
        return False

    def _handle(self, signum, frame):
        if os.getpid() != self._pid:  # a forked data-loader worker before its own setup: ignore
            return
        self.signum = signum
        if not self.deferring:
            raise Preempted(signum, where="before training started")


def active() -> Optional[PreemptionGuard]:
    return PreemptionGuard._active


def pending() -> Optional[int]:
    """The signal received while the trainer defers it, or None (also without a guard)."""
    guard = PreemptionGuard._active
    return guard.signum if guard is not None and guard.deferring else None


def defer() -> None:
    """From now on a signal is only recorded, and acted on at the trainer's safe points.

    A signal that arrived before (and has not ended the run yet) stays pending.
    """
    guard = PreemptionGuard._active
    if guard is not None:
        guard.deferring = True


@contextlib.contextmanager
def guarded(enabled: bool = True):
    """``with guarded():`` a run; a no-op when not enabled (e.g. not the main thread)."""
    if not enabled:
        yield None
        return
    with PreemptionGuard() as guard:
        yield guard


def ignore_in_worker(worker_id: int) -> None:
    """``worker_init_fn`` of the data loaders: workers leave the signals to the main process."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def chain_worker_init(previous):
    """A ``worker_init_fn`` running :func:`ignore_in_worker`, then ``previous`` (when set)."""
    if previous is None or previous is ignore_in_worker:
        return ignore_in_worker
    return _Chained(previous)


class _Chained:
    """Picklable pair (spawned workers pickle the init function)."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, worker_id):
        ignore_in_worker(worker_id)
        self.previous(worker_id)


class PreemptionMixin:
    """Pre-emption hooks of :class:`~gopro_prompts.trainers.base.ClipTrainer` (over Dassl's ``SimpleTrainer``).

    A pending signal is acted on after the current step, after the current checkpoint
    write, or before the next evaluation batch; the mid-epoch checkpoint lets a re-run
    continue from that exact step (bit-identical on CPU with a fixed seed).
    """

    # the replay plan of a resumed pre-empted epoch, the RNG states at the start of the current
    # epoch and at the entry of a validation test, the loss summaries of the current epoch's
    # steps, and whether Dassl's after_epoch is running
    _replay = None
    _epoch_rng = None
    _val_entry_rng = None
    _epoch_summaries = None
    _in_after_epoch = False

    def before_train(self):
        defer()
        super().before_train()

    def before_epoch(self):
        super().before_epoch()
        replay = self._replay
        if replay is not None and replay["epoch"] == self.epoch:
            # the loader must draw the same shuffling and augmentation as the interrupted epoch
            restore_rng_state(replay["epoch_rng"] if replay["steps_done"] else replay["rng"])
            if not replay["steps_done"]:
                self._replay = None
        self._epoch_rng = capture_rng_state()
        self._epoch_summaries = []
        self._stop_if_preempted(0, self._epoch_rng)

    def after_epoch(self):
        self._in_after_epoch = True
        try:
            super().after_epoch()
        finally:
            self._in_after_epoch = False

    def after_train(self):
        remove_preempt_checkpoint(self.output_dir)  # the last end-of-epoch checkpoint supersedes it
        super().after_train()

    def _replay_step(self):
        """A step already done before the pre-emption: its batch was loaded (the data pipeline's
        random draws are repeated), the model is not touched, its logged summary is returned."""
        replay = self._replay
        summary = replay["summaries"][self.batch_idx]
        self._epoch_summaries.append(summary)
        if self.batch_idx + 1 == replay["steps_done"]:
            restore_rng_state(replay["rng"])  # exactly the state after the interrupted step
            self._replay = None
            logger.info("Replayed the data of the %d steps done before the pre-emption; training continues",
                        replay["steps_done"])
        signum = pending()
        if signum is not None:  # the state is still the one the pre-emption checkpoint holds
            raise Preempted(signum, saved=replay["path"], where="while resuming")
        return summary

    def _stop_if_preempted(self, steps_done, rng_state=None):
        """On a pending signal: save the state after ``steps_done`` steps of this epoch, then stop.

        ``rng_state``: the RNG states to save (default: the current ones).
        """
        signum = pending()
        if signum is None:
            return
        rng_state = rng_state if rng_state is not None else capture_rng_state()
        where = f"at epoch {self.epoch + 1}/{self.max_epoch}, after step {steps_done}/{self.num_batches}"
        if self._replay is not None:
            raise Preempted(signum, saved=self._replay["path"], where=where)
        path = None
        if distributed.is_main_process():
            path = self._save_preempted(steps_done, rng_state, signum)
        raise Preempted(signum, saved=path, where=where)

    def _save_preempted(self, steps_done, rng_state, signum):
        state = {
            "format": PREEMPT_FORMAT,
            "epoch": self.epoch,  # the interrupted epoch (0-based); `epoch` epochs are complete
            "steps_done": steps_done,
            "num_batches": self.num_batches,
            "models": {
                name: {
                    "state_dict": self._models[name].state_dict(),
                    "optimizer": self._optims[name].state_dict() if self._optims[name] is not None else None,
                    "scheduler": self._scheds[name].state_dict() if self._scheds[name] is not None else None,
                }
                for name in self.get_model_names()
            },
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "method_state": self.method_state(),
            "rng_state": rng_state,
            "epoch_rng_state": self._epoch_rng,
            "summaries": list(self._epoch_summaries or [])[:steps_done],
            "best_result": float(self.best_result),
            "trainer": type(self).__name__,
            "backbone": backbone_id(self.cfg),
            "config": self.cfg.dump(),
            "signal": int(signum),
        }
        path = osp.join(self.output_dir, PREEMPT_FILE)
        atomic_write(path, lambda tmp: torch.save(state, tmp))
        print(f"Pre-emption checkpoint saved to {path}")
        return path

    def _resume_preempted(self, path, checkpoint):
        """Load a pre-emption checkpoint; the epoch it interrupted restarts with a replay of its steps."""
        epoch, steps = checkpoint["epoch"], checkpoint["steps_done"]
        print(f"Found a pre-emption checkpoint at {path} (will resume epoch {epoch + 1} after step {steps})")
        for name in self.get_model_names():
            entry = checkpoint["models"][name]
            origin = {"state_dict": entry["state_dict"], "trainer": checkpoint.get("trainer"),
                      "backbone": checkpoint.get("backbone")}
            self._models[name].load_state_dict(self._checked_state_dict(name, origin, path, resuming=True))
            if self._optims[name] is not None and entry.get("optimizer") is not None:
                self._optims[name].load_state_dict(entry["optimizer"])
            if self._scheds[name] is not None and entry.get("scheduler") is not None:
                self._scheds[name].load_state_dict(entry["scheduler"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self._restore_loop_state(checkpoint, path)
        self._replay = {"path": path, "epoch": epoch, "steps_done": steps, "summaries": checkpoint["summaries"],
                        "epoch_rng": checkpoint["epoch_rng_state"], "rng": checkpoint["rng_state"]}
        return epoch

    def resume_preempted_if_ahead(self, directory, names, done_epochs):
        """Resume from ``directory``'s pre-emption checkpoint when it is as far as ``done_epochs`` or further."""
        preempted = read_preempt_checkpoint(directory, names)
        if preempted is None:
            return None
        if preempted[1]["epoch"] >= done_epochs:
            return self._resume_preempted(*preempted)
        logger.info("Ignoring %s: the run went on to save a later end-of-epoch checkpoint", preempted[0])
        return None

    def record_step(self, summary):
        """Keep a finished step's loss summary (replayed on resume), then act on a pending signal."""
        if self._epoch_summaries is None:  # a step outside Dassl's loop (no before_epoch), e.g. a benchmark
            self._epoch_summaries = []
        self._epoch_summaries.append(summary)
        self._stop_if_preempted(self.batch_idx + 1)

    def begin_test(self):
        """At the start of ``test()``: from now on a signal ends the run between batches, not inside one."""
        defer()
        self._val_entry_rng = capture_rng_state() if self._in_after_epoch else None

    def check_before_eval_batch(self):
        """Before each evaluation batch: stop on a pending signal (saving the state during validation)."""
        signum = pending()
        if signum is None:
            return
        if self._in_after_epoch and self._val_entry_rng is not None:  # Dassl's per-epoch validation
            self._stop_if_preempted(self.num_batches, self._val_entry_rng)
        raise Preempted(signum, where="during the final evaluation")


def read_preempt_checkpoint(directory, names):
    """``(path, checkpoint)`` of the pre-emption checkpoint in ``directory`` for modules ``names``, or None.

    A file that does not read, or is not one of ours for these modules, is ignored with a warning
    (the run then resumes from its end-of-epoch checkpoints); one that pickles code is refused.
    """
    path = osp.join(directory, PREEMPT_FILE)
    if not osp.isfile(path):
        return None
    checkpoint = _load_if_readable(path)
    if checkpoint is None:
        logger.warning("Ignoring the unreadable pre-emption checkpoint %s", path)
        return None
    if (not isinstance(checkpoint, dict) or checkpoint.get("format") != PREEMPT_FORMAT
            or set(checkpoint.get("models") or ()) != set(names)):
        logger.warning("Ignoring %s: it is not a pre-emption checkpoint of this trainer's modules %s", path, names)
        return None
    return path, checkpoint


def remove_preempt_checkpoint(directory):
    path = osp.join(directory, PREEMPT_FILE)
    if osp.isfile(path):
        os.remove(path)
        logger.info("Removed %s: training finished, the end-of-epoch checkpoints hold its result", path)
