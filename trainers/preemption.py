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
import signal
from typing import Optional

from gopro_prompts.logs import get_logger

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
