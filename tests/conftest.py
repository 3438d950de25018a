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

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
for p in (str(REPO), str(REPO / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

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
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} (the shared fixtures folder) is not present")
    return SHARED


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


def last_accuracy(log_text):
    """The last ``* accuracy: xx.x%`` value of a log."""
    import re

    values = re.findall(r"^\* accuracy: ([\d.]+)%", log_text, flags=re.M)
    assert values, "no '* accuracy:' line in the log"
    return float(values[-1])


def method_cfg(node_name, **node):
    """Our default config on the tiny CLIP in fp32, with ``TRAINER.<node_name>`` keys overridden."""
    from gopro_prompts.trainers.config import default_cfg

    cfg = default_cfg()
    cfg.MODEL.BACKBONE.NAME = "tiny"
    cfg.TRAINER[node_name].PREC = "fp32"
    for key, value in node.items():
        cfg.TRAINER[node_name][key] = value
    return cfg


def perturb(module, seed=5, scale=0.05):
    """Move every learnable tensor away from its initial value (deterministically)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


def random_images(n=3, seed=2, size=32):
    import torch

    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def offline_trainer(trainer_name, root, out, *opts):
    """A trainer on the embedded offline default, built but not trained."""
    from gopro_prompts import train

    assert os.environ.get(train.OFFLINE_ROOT_ENV) == root, "use the synthetic_root fixture"
    return train.main(["--trainer", trainer_name, "--output-dir", str(out), "--no-train",
                       "DATASET.NUM_SHOTS", "2", *opts])


def one_step_run(trainer, out):
    """One training step of ``trainer`` on its first batch, then its checkpoint saved under ``out``.

    Returns the trainer, ``out``, the names of its learnable parameters, its state before the
    step and the step's loss summary.
    """
    learnable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.set_model_mode("train")
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, len(trainer.train_loader_x)
    summary = trainer.forward_backward(next(iter(trainer.train_loader_x)))
    trainer.save_model(0, str(out))
    return dict(trainer=trainer, out=out, learnable=learnable, before=before, summary=summary)


def assert_step_changed_only_the_prompt_learner(run):
    """The learnable parameters are the prompt learner's, the loss is finite, and only they moved."""
    import torch

    trainer = run["trainer"]
    assert run["learnable"] == {"prompt_learner." + n for n, _ in trainer.model.prompt_learner.named_parameters()}
    assert torch.isfinite(torch.tensor(run["summary"]["loss"]))
    after = trainer.model.state_dict()
    changed = {k for k, v in run["before"].items() if not torch.equal(v, after[k])}
    assert changed == run["learnable"]


def assert_reload_reproduces_logits(run, fresh):
    """``fresh``, a new trainer of the same setup, differs from ``run``'s until it loads its checkpoint."""
    import torch

    trainer = run["trainer"]
    images = next(iter(trainer.test_loader))["img"][:4]
    trainer.set_model_mode("eval")
    fresh.set_model_mode("eval")
    with torch.no_grad():
        expected = trainer.model(images)
        assert not torch.equal(fresh.model(images), expected)  # a fresh model differs
        fresh.load_model(str(run["out"]), epoch=1)
        assert torch.equal(fresh.model(images), expected)


_JPEG = None


def touch_jpeg(path):
    """Write a tiny valid JPEG at ``path`` (parents created): a stand-in for a dataset image."""
    global _JPEG
    if _JPEG is None:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (10, 200, 90)).save(buf, "JPEG")
        _JPEG = buf.getvalue()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_JPEG)
