"""Shared pytest fixtures: the repo on sys.path, shared/ location, a tiny CLIP built once.

The suite runs on either Dassl backend (``DASSL_BACKEND``, default ``bundled``
here); every test leaves the process as it found it (:func:`_restore_process_state`).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
for p in (str(_TESTS.parent), str(_TESTS)):  # the repository (gopro_prompts) and tests/ (helpers)
    if p not in sys.path:
        sys.path.insert(0, p)

from helpers import SHARED  # noqa: E402

# The README's test command runs on the bundled engine even where real Dassl is importable;
# the real leg sets DASSL_BACKEND=dassl (.ci/run).  Subprocesses inherit the choice.
os.environ.setdefault("DASSL_BACKEND", "bundled")


def pytest_report_header(config):
    from gopro_prompts import dassl_compat

    return f"Dassl backend: {dassl_compat.BACKEND} (DASSL_BACKEND={os.environ['DASSL_BACKEND']})"


# ------------------------------------------------------------------ one-leg markers (pytest.ini)
#: marker -> the backend whose leg runs the marked tests
_LEG_MARKERS = {"bundled_only": "bundled", "real_dassl_only": "dassl"}


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked for the other leg, with the marker's own reason."""
    from gopro_prompts import dassl_compat

    for item in items:
        for name, backend in _LEG_MARKERS.items():
            marker = item.get_closest_marker(name)
            if marker is None or dassl_compat.BACKEND == backend:
                continue
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            assert reason, f"{item.nodeid}: @pytest.mark.{name} needs a reason"
            item.add_marker(pytest.mark.skip(reason=f"{name} (backend {dassl_compat.BACKEND}): {reason}"))


# ------------------------------------------------------------------ process-wide state
# ``setup_logger`` (called by train.main) replaces sys.stdout with a tee into log.txt, on both
# backends.  Real Dassl's tee (``dassl/utils/logger.py`` ``Logger``) also closes the stream it
# wraps when it is closed or garbage-collected (``Logger.__del__`` -> ``close()`` ->
# ``self.console.close()``): once a test drops it, pytest's capture file (or the real stdout)
# is closed and every later test fails with "I/O operation on closed file".  Importing real
# Dassl calls ``logging.disable(WARNING)`` for the whole process.


def _is_tee(stream):
    return hasattr(stream, "console") and hasattr(stream, "file")  # Dassl's Logger, the bundled _Tee


def _untee(name):
    """If ``sys.<name>`` is a ``setup_logger`` tee (or a stack of them): close their log files,
    detach each from the stream it wraps, so that dropping them can never close that stream, and
    put back the stream the first tee replaced.  Any other stream is left alone (pytest's own
    capture fixtures swap the streams too)."""
    stream, seen = getattr(sys, name), set()
    if not _is_tee(stream):
        return
    while _is_tee(stream) and id(stream) not in seen:
        seen.add(id(stream))
        inner, log = stream.console, stream.file
        if log is not None and not log.closed:
            log.flush()
            log.close()
        stream.file = None
        stream.console = io.StringIO()  # what Logger.close() may close from now on
        stream = inner
    setattr(sys, name, stream)


@contextlib.contextmanager
def _tees_released():
    try:
        yield
    finally:
        _untee("stdout")
        _untee("stderr")


# pytest's capture swaps sys.stdout back at the end of each phase (setup, call, teardown) and
# drops whatever a test put there; these wrappers run inside the capture (trylast), so a tee
# left behind by the phase is released before it is dropped.
@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_setup(item):
    with _tees_released():
        return (yield)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_call(item):
    with _tees_released():
        return (yield)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item, nextitem):
    with _tees_released():
        return (yield)


@pytest.fixture(autouse=True)
def _restore_process_state():
    """After every test: ``sys.stdout`` / ``sys.stderr`` as before it (a tee that ``setup_logger``
    left behind released, its log file closed), the ``logging.disable`` level and torch's thread
    count as before it.

    Autouse fixtures are set up before, and torn down after, the test's own capture fixtures
    (capsys, capfd), so the streams saved here are the ones outside them."""
    import torch

    saved = {"stdout": sys.stdout, "stderr": sys.stderr}
    disabled = logging.root.manager.disable
    threads = torch.get_num_threads()  # tests/parity.py and the benchmark set it process-wide
    with _tees_released():
        yield
    for name, stream in saved.items():
        if getattr(sys, name) is not stream:
            setattr(sys, name, stream)
    logging.disable(disabled)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_dir():
    """The shared/ folder beside the clone (vendored Dassl and CoOp, the original parity files);
    tests that need it skip where it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} (the shared fixtures folder) is not present")
    return SHARED


@pytest.fixture(scope="session")
def parity_fixtures():
    """The parity fixtures shipped in tests/fixtures/parity (method files and the fp16 tiny CLIP)."""
    folder = _TESTS / "fixtures" / "parity"
    assert (folder / "tiny_clip_fp16.pt").is_file(), f"{folder} is missing its files"
    return folder


@pytest.fixture(scope="session")
def tiny_clip():
    """The built-in tiny random CLIP (fp32, eval, frozen), built once per session."""
    from gopro_prompts.trainers.clip_helpers import load_clip

    return load_clip("tiny")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """Where the embedded offline default generates its dataset for this session (not the clone's data/).

    Set as ``$GOPRO_OFFLINE_DATA`` for the rest of the session, so subprocesses use it too.
    """
    from gopro_prompts.train import OFFLINE_ROOT_ENV

    root = str(tmp_path_factory.mktemp("data"))
    saved = os.environ.get(OFFLINE_ROOT_ENV)
    os.environ[OFFLINE_ROOT_ENV] = root
    yield root
    if saved is None:
        os.environ.pop(OFFLINE_ROOT_ENV, None)
    else:
        os.environ[OFFLINE_ROOT_ENV] = saved
