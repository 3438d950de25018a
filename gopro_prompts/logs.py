"""The loggers of this package: INFO and above to the current ``sys.stdout``, never touching the host's logging.

Real Dassl calls ``logging.disable(WARNING)`` when it is imported, which mutes
every logger of the process's ``logging`` hierarchy.  Our loggers live in a
hierarchy of their own (a private ``logging.Manager``), so their lines are
printed whatever the host process sets, and we never change the host's
logging: no ``logging.disable``, no handler or level on its loggers.
"""
from __future__ import annotations

import logging
import sys

ROOT_NAME = "gopro_prompts"


class _CurrentStdoutHandler(logging.StreamHandler):
    """A handler that always writes to the *current* ``sys.stdout``.

    Dassl's ``setup_logger`` replaces ``sys.stdout`` with a tee into
    ``log.txt``; resolving the stream at emit time makes our lines reach that
    file no matter when the logger was created.
    """

    def __init__(self):
        super().__init__(stream=sys.stdout)

    def emit(self, record):
        self.stream = sys.stdout
        super().emit(record)


_MANAGER = logging.Manager(logging.RootLogger(logging.WARNING))
_MANAGER.root.manager = _MANAGER
_ROOT = _MANAGER.getLogger(ROOT_NAME)
_HANDLER = _CurrentStdoutHandler()
_HANDLER.setFormatter(logging.Formatter("%(message)s"))
_ROOT.addHandler(_HANDLER)
_ROOT.setLevel(logging.INFO)
_ROOT.propagate = False


def get_logger(name: str = "") -> logging.Logger:
    """The package's logger ``gopro_prompts.<name>`` (``name`` may already carry the prefix)."""
    if not name or name == ROOT_NAME:
        return _ROOT
    if not name.startswith(ROOT_NAME + "."):
        name = f"{ROOT_NAME}.{name}"
    return _MANAGER.getLogger(name)
