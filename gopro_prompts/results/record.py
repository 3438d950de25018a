"""Machine-readable results written next to ``log.txt``.

Every final evaluation (the test after training, or an ``--eval-only`` run)
writes ``<OUTPUT_DIR>/results.json``, so results can be tabulated without
grepping log lines (see ``parse_test_res.py``).
"""
from __future__ import annotations

import datetime
import json
import os
import os.path as osp
import platform
import re
import uuid

RESULTS_FILE = "results.json"
SCHEMA_VERSION = 1

#: ``DATASET.NAME`` of the dataset read from the user's own folder (datasets/image_folder.py): its runs
#: go by a display name of their own (:func:`dataset_label`), so two user datasets never share a name
IMAGE_FOLDER_DATASET = "ImageFolder"
#: characters a display name may hold (it names output folders); others become ``_`` in a default name
_LABEL_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_LABEL_BAD_CHARS = re.compile(r"[^A-Za-z0-9._+-]+")
_LABEL_MAX = 64


def image_folder_label(name, folder, root="") -> str:
    """The display name of an ImageFolder dataset: ``name`` (``DATASET.IMAGE_FOLDER.NAME``) when set,
    else the base name of the image folder (``DATASET.IMAGE_FOLDER.DIR`` under ``root``, i.e.
    ``DATASET.ROOT``) with every run of characters other than letters, digits and ``._+-`` made ``_``.
    ``""`` when both are empty."""
    name = str(name or "").strip()
    if name:
        return name
    folder = str(folder or "").strip()
    if not folder:
        return ""
    path = osp.normpath(osp.join(osp.expanduser(str(root or "")), osp.expanduser(folder)))
    base = osp.basename(osp.abspath(path)) if osp.basename(path) in ("", ".", "..") else osp.basename(path)
    return _LABEL_BAD_CHARS.sub("_", base).strip("_.-+")[:_LABEL_MAX] or "image_folder"


def dataset_label(cfg) -> str:
    """The name a run's dataset goes by in ``results.json``, the result tables and folder names:
    ``DATASET.NAME``, except for ImageFolder (:data:`IMAGE_FOLDER_DATASET`), whose display name
    (:func:`image_folder_label`) tells two user datasets apart."""
    dataset = cfg["DATASET"]
    name = dataset["NAME"]
    if name != IMAGE_FOLDER_DATASET:
        return name
    node = dataset.get("IMAGE_FOLDER") or {}
    return image_folder_label(node.get("NAME", ""), node.get("DIR", ""), dataset.get("ROOT", "")) or name


def label_problem(label, reserved=()) -> str:
    """Why ``label`` cannot be a display name (``""`` when it can): it names output folders, so it is
    short, made of letters, digits and ``._+-``, and none of ``reserved`` (the benchmark datasets'
    config and ``DATASET.NAME``s, compared case-insensitively: their runs' folders and table rows)."""
    if not _LABEL_OK.match(label) or len(label) > _LABEL_MAX:
        return (f"the display name {label!r} must be 1 to {_LABEL_MAX} letters, digits or . _ + - "
                "(starting with a letter or digit)")
    taken = {str(r).lower(): r for r in reserved}
    if label.lower() in taken:
        return f"the display name {label!r} is taken by the benchmark dataset {taken[label.lower()]}"
    return ""


def _versions():
    import torch
    import torchvision

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__}
    try:
        from importlib.metadata import version

        versions["clip"] = version("clip-anytorch")
    except Exception:  # pragma: no cover - another CLIP distribution
        versions["clip"] = "unknown"
    return versions


def build_record(cfg, metrics, *, split, epoch, run_info=None, backend=""):
    """The dict stored in ``results.json`` for one evaluation."""
    run_info = dict(run_info or {})
    config_file = run_info.get("config_file") or ""
    return {
        "schema": SCHEMA_VERSION,
        "trainer": cfg.TRAINER.NAME,
        "config": osp.splitext(osp.basename(config_file))[0] if config_file else "",
        "config_file": config_file,
        "dataset_config_file": run_info.get("dataset_config_file", ""),
        "dataset": dataset_label(cfg),
        "subsample": cfg.DATASET.SUBSAMPLE_CLASSES,
        "shots": cfg.DATASET.NUM_SHOTS,
        "seed": cfg.SEED,
        "source_domains": list(cfg.DATASET.SOURCE_DOMAINS),
        "target_domains": list(cfg.DATASET.TARGET_DOMAINS),
        "backbone": cfg.MODEL.BACKBONE.NAME or cfg.MODEL.BACKBONE.PATH,
        "split": split,
        "epoch": epoch,
        "eval_only": bool(run_info.get("eval_only", False)),
        "model_dir": run_info.get("model_dir", ""),
        "load_epoch": run_info.get("load_epoch"),
        "metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        "backend": backend,
        "versions": _versions(),
        "finished_at": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def write_results(output_dir, record):
    """Write ``results.json`` atomically (a crash never leaves half a file)."""
    os.makedirs(output_dir, exist_ok=True)
    return write_text_atomically(osp.join(output_dir, RESULTS_FILE), json.dumps(record, indent=2))


def write_text_atomically(path, text):
    """Write ``text`` to ``path`` through a temp file and a rename, with the permissions ``open()`` gives.

    The temp file is created with mode 0o666 less the umask (``tempfile.mkstemp`` would make it 0o600).
    """
    folder, name = osp.split(path)
    tmp = osp.join(folder, f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return path


def read_results(output_dir):
    """The record of ``output_dir``, or None when it has no results.json."""
    path = osp.join(output_dir, RESULTS_FILE)
    if not osp.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
