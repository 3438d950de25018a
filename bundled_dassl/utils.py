"""Dassl-compatible utilities: logging tee, seeding, checkpoints, meters, registry.

Public behaviour follows Dassl 0.6.3's ``dassl/utils/`` (``tools.py``,
``torchtools.py``, ``logger.py``, ``meters.py``, ``registry.py``).  Deliberate
departures from Dassl are marked "Deliberate fix".
"""
from __future__ import annotations

import difflib
import errno
import json
import os
import os.path as osp
import pickle
import random
import shutil
import sys
import time
import uuid
import warnings
from collections import OrderedDict
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from gopro_prompts.logs import get_logger
from gopro_prompts.user_errors import UserError

from .safe_pickle import UnsafeCheckpointError, restricted_pickle_for

__all__ = [
    "setup_logger", "set_random_seed", "collect_env_info", "save_checkpoint",
    "load_checkpoint", "resume_from_checkpoint", "load_pretrained_weights",
    "read_json", "write_json", "mkdir_if_missing", "listdir_nohidden", "check_isfile",
    "read_image", "AverageMeter", "MetricMeter", "Registry", "check_availability",
    "count_num_param", "tolist_if_not", "resume_with_loader",
]

_logger = get_logger("gopro_prompts.bundled_dassl.utils")


# ---------------------------------------------------------------------------
# Filesystem / JSON helpers (Dassl's ``dassl/utils/tools.py``)
# ---------------------------------------------------------------------------
def mkdir_if_missing(dirname: str) -> None:
    """Create ``dirname`` (and parents) unless it exists; tolerate concurrent creation."""
    if not dirname or osp.exists(dirname):
        return
    try:
        os.makedirs(dirname)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise


def check_isfile(fpath: str) -> bool:
    """Return whether ``fpath`` is a file; warn ``No file found at "{path}"`` if not."""
    isfile = osp.isfile(fpath)
    if not isfile:
        warnings.warn(f'No file found at "{fpath}"')
    return isfile


def read_json(fpath: str) -> Any:
    """Load a JSON file."""
    with open(fpath, "r") as f:
        return json.load(f)


def write_json(obj: Any, fpath: str) -> None:
    """Write ``obj`` as JSON (indent 4, separators ``(",", ": ")``), creating the folder."""
    mkdir_if_missing(osp.dirname(fpath))
    with open(fpath, "w") as f:
        json.dump(obj, f, indent=4, separators=(",", ": "))


def listdir_nohidden(path: str, sort: bool = False) -> list:
    """Entries of ``path`` not starting with ``.``; filesystem order unless ``sort``."""
    items = [name for name in os.listdir(path) if not name.startswith(".")]
    if sort:
        items.sort()
    return items


def read_image(path: str) -> Image.Image:
    """Open an image with PIL and convert it to RGB (as Dassl: no retry, no EXIF rotation)."""
    with Image.open(path) as img:  # close the file handle (Dassl leaks it)
        return img.convert("RGB")


def read_image_checked(path: str) -> Image.Image:
    """:func:`read_image`, or an error that names the file and the fix.

    Deliberate improvement: Dassl lets PIL's error propagate, which often does
    not say which file of the split is broken.
    """
    try:
        return read_image(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f'Image file not found: "{path}" ({err}); check DATASET.ROOT and the split file'
        ) from err
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise OSError(
            f'Cannot read image "{path}": {type(err).__name__}: {err}. '
            "The file is corrupt or not an image; replace or remove it"
        ) from err


def tolist_if_not(x: Any) -> list:
    """Wrap ``x`` in a list unless it already is one."""
    if not isinstance(x, list):
        x = [x]
    return x


def count_num_param(model: Optional[nn.Module] = None, params: Optional[Iterable] = None) -> int:
    """Total number of parameter elements of ``model`` (or of a list of params/groups)."""
    if model is not None:
        return sum(p.numel() for p in model.parameters())
    if params is not None:
        total = 0
        for p in params:
            if isinstance(p, dict):
                total += sum(q.numel() for q in tolist_if_not(p["params"]))
            else:
                total += p.numel()
        return total
    raise ValueError("count_num_param() needs a model or params: pass one of them")


# ---------------------------------------------------------------------------
# Logging tee (Dassl's ``dassl/utils/logger.py``)
# ---------------------------------------------------------------------------
class _Tee:
    """A ``sys.stdout`` replacement writing to the console and to a log file."""

    def __init__(self, console, fpath: str):
        self.console = console
        self.fpath = fpath
        mkdir_if_missing(osp.dirname(fpath))
        # Line-buffered (an improvement over Dassl): every finished line reaches the file even
        # if the process is killed before it flushes.
        self.file = open(fpath, "w", buffering=1)

    def write(self, msg):
        self.console.write(msg)
        if self.file is not None:
            self.file.write(msg)

    def flush(self):
        self.console.flush()
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())  # as Dassl's Logger: each flush also fsyncs

    def close(self):
        """Flush and close the log file; later writes only reach the console."""
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.file = None

    def isatty(self):
        return False

    def __getattr__(self, name):
        # encoding, errors, fileno, ...: behave like the wrapped console.
        if name == "console":  # not set yet (e.g. during unpickling)
            raise AttributeError(name)
        return getattr(self.console, name)


_ACTIVE_TEE: Optional[_Tee] = None


def _close_active_tee() -> None:
    """Close the tee of an earlier ``setup_logger`` call and restore ``sys.stdout``."""
    global _ACTIVE_TEE
    tee = _ACTIVE_TEE
    if tee is None:
        return
    _ACTIVE_TEE = None
    tee.close()
    if sys.stdout is tee:
        sys.stdout = tee.console


def setup_logger(output: Optional[str] = None) -> None:
    """Tee ``sys.stdout`` into a log file (as Dassl's ``setup_logger``).

    ``output`` is a ``.txt``/``.log`` file or a directory (then ``output/log.txt``).
    An existing file is never overwritten: ``-%Y-%m-%d-%H-%M-%S`` is appended.
    Calling it again closes the previous tee first (its file is never written
    to again) and tees the real stream into the new file.
    """
    if output is None:
        return
    if output.endswith(".txt") or output.endswith(".log"):
        fpath = output
    else:
        fpath = osp.join(output, "log.txt")
    if osp.exists(fpath):
        stamped = fpath + time.strftime("-%Y-%m-%d-%H-%M-%S")
        # Deliberate fix: Dassl would overwrite a log made in the same second;
        # we add ".1", ".2", ... in that (rare) case instead.
        candidate, n = stamped, 0
        while osp.exists(candidate):
            n += 1
            candidate = f"{stamped}.{n}"
        fpath = candidate
    _close_active_tee()
    global _ACTIVE_TEE
    _ACTIVE_TEE = _Tee(sys.stdout, fpath)
    sys.stdout = _ACTIVE_TEE


# ---------------------------------------------------------------------------
# Seeding and environment (Dassl's ``dassl/utils/tools.py``)
# ---------------------------------------------------------------------------
def set_random_seed(seed: int) -> None:
    """Seed Python ``random``, NumPy and torch (CPU and all GPUs); no cudnn flags."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def collect_env_info() -> str:
    """torch's pretty env info plus ``\\n        Pillow ({version})`` (as Dassl)."""
    from torch.utils.collect_env import get_pretty_env_info
    import PIL

    return get_pretty_env_info() + f"\n        Pillow ({PIL.__version__})"


# ---------------------------------------------------------------------------
# Checkpoints (Dassl's ``dassl/utils/torchtools.py``)
# ---------------------------------------------------------------------------
def atomic_write(fpath: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temp file next to ``fpath``, then rename it over ``fpath``."""
    dirname = osp.dirname(fpath) or "."
    # A hidden, unique name in the same folder (same filesystem, so os.replace is
    # atomic); created by `write` itself so that it gets the usual permissions.
    tmp = osp.join(dirname, f".{osp.basename(fpath)}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, fpath)
    except BaseException as exc:
        if osp.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(exc.errno, f'cannot write "{fpath}" ({exc.strerror or exc}): free disk space or '
                                        "choose another --output-dir; the files already there are intact") from exc
        raise


class WriteError(UserError, OSError):
    """A file of the run could not be written (disk full, no permission); nothing was replaced."""

    def __str__(self):
        return self.strerror or super().__str__()


def model_checkpoint_state(model: nn.Module, optimizer, scheduler, epoch: int, val_result=None) -> dict:
    """What Dassl's ``SimpleTrainer.save_model`` stores for one registered model.

    ``epoch`` is the number of completed epochs; optimizer and scheduler may be None.
    """
    return {
        "state_dict": model.state_dict(),
        "epoch": epoch,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "val_result": val_result,
    }


def save_checkpoint(
    state: dict,
    save_dir: str,
    is_best: bool = False,
    remove_module_from_keys: bool = True,
    model_name: str = "",
) -> None:
    """Save ``state`` to ``save_dir/model.pth.tar-{epoch}`` (or ``model_name``).

    Also (re)writes the ``checkpoint`` pointer file, and copies to
    ``model-best.pth.tar`` when ``is_best``.
    """
    mkdir_if_missing(save_dir)
    if remove_module_from_keys:
        new_state_dict = OrderedDict()
        for k, v in state["state_dict"].items():
            if k.startswith("module."):
                k = k[len("module."):]
            new_state_dict[k] = v
        state["state_dict"] = new_state_dict

    if not model_name:
        model_name = f"model.pth.tar-{state['epoch']}"
    fpath = osp.join(save_dir, model_name)
    # Deliberate fix of a Dassl defect (Dassl writes directly to the final path):
    # a crash mid-write no longer leaves a truncated checkpoint, nor a pointer
    # file naming one. Every file is written to a temp file and renamed.
    atomic_write(fpath, lambda tmp: torch.save(state, tmp))
    print(f"Checkpoint saved to {fpath}")

    def _write_pointer(tmp):
        with open(tmp, "w") as f:
            f.write(f"{osp.basename(fpath)}\n")

    atomic_write(osp.join(save_dir, "checkpoint"), _write_pointer)

    if is_best:
        best_fpath = osp.join(osp.dirname(fpath), "model-best.pth.tar")
        atomic_write(best_fpath, lambda tmp: shutil.copy(fpath, tmp))
        print(f'Best checkpoint saved to "{best_fpath}"')


def load_checkpoint(fpath: Optional[str]) -> Any:
    """Load a checkpoint file onto the CPU (or back to its device when CUDA exists).

    As Dassl's ``dassl/utils/torchtools.py`` ``load_checkpoint``.  Deliberate fix: nothing in the file is ever executed.  Plain-data files
    load with ``torch.load(weights_only=True)``; files that pickle objects
    (real Dassl's warmup schedulers and, through them, optimizers) are read by
    the restricted unpickler of :mod:`.safe_pickle`, which keeps optimizer and
    scheduler objects as inert data and refuses any other class
    (:class:`~.safe_pickle.UnsafeCheckpointError`, naming the file and the
    class).  A file that is not a readable checkpoint raises
    :class:`CheckpointReadError` naming it.
    """
    if fpath is None:
        raise ValueError("File path is None")
    if not osp.exists(fpath):
        raise FileNotFoundError(f'File is not found at "{fpath}"')
    if osp.isdir(fpath):
        raise CheckpointReadError(f'checkpoint "{fpath}" is a folder, not a file: give the path of a '
                                  "model.pth.tar-N file")
    map_location = None if torch.cuda.is_available() else "cpu"
    try:
        try:
            return torch.load(fpath, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:  # it pickles objects: read them as data, or refuse
            return _restricted_load(fpath, map_location)
        except UnicodeDecodeError:  # Python 2 pickles: a latin-1 unpickler, as Dassl's, still restricted
            return _restricted_load(fpath, map_location, encoding="latin1")
    except UnsafeCheckpointError:
        raise
    except Exception as exc:
        print(f'Unable to load checkpoint from "{fpath}"')
        raise CheckpointReadError(
            f'checkpoint "{fpath}" cannot be read ({_read_problem(fpath, exc)}): it is truncated, '
            "corrupt or not a PyTorch checkpoint; point at a model.pth.tar-N file written by a finished save"
        ) from exc


def _restricted_load(fpath, map_location, **pickle_load_args):
    return torch.load(fpath, map_location=map_location, weights_only=False,
                      pickle_module=restricted_pickle_for(fpath), **pickle_load_args)


def _read_problem(fpath, exc) -> str:
    """A few words on why ``fpath`` did not load (an empty file says so)."""
    try:
        if osp.getsize(fpath) == 0:
            return "the file is empty"
    except OSError:
        pass
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:120]}" if text else type(exc).__name__


class CheckpointReadError(UserError):
    """A checkpoint file is missing its content: empty, truncated, corrupt or not a checkpoint."""


def resume_from_checkpoint(fdir: str, model: nn.Module, optimizer=None, scheduler=None) -> int:
    """Resume ``model`` (and optimizer/scheduler) from the file named in ``fdir/checkpoint``.

    Returns the stored ``epoch`` (the number of completed epochs).
    """
    return resume_with_loader(fdir, model, optimizer, scheduler, load_checkpoint)


def read_checkpoint_pointer(fdir: str) -> str:
    """The file name written in ``fdir/checkpoint`` ("" when the file is missing or empty).

    Deliberate fix: Dassl joins whatever the pointer says to ``fdir``.  Here it
    may only name a file inside ``fdir``; a pointer naming another path, or
    one that is not UTF-8 text, raises ``ValueError`` naming the pointer file.
    """
    pointer = osp.join(fdir, "checkpoint")
    if not osp.isfile(pointer):
        return ""
    try:
        with open(pointer, encoding="utf-8") as f:
            named = f.readline().strip()
    except UnicodeDecodeError:
        raise ValueError(f'The "checkpoint" pointer file {pointer} is not text (not UTF-8): '
                         "delete it, or write the checkpoint file name (e.g. model.pth.tar-5) into it") from None
    if named and (named in (".", "..") or osp.basename(named) != named or "/" in named or "\\" in named):
        raise ValueError(f'The "checkpoint" pointer file {pointer} names {named!r}, which is not a file in '
                         "its own folder: write the checkpoint file name (e.g. model.pth.tar-5) into it")
    return named


def resume_with_loader(fdir, model, optimizer, scheduler, loader: Callable) -> int:
    """:func:`resume_from_checkpoint` reading the file with ``loader(fpath)``."""
    pointer = osp.join(fdir, "checkpoint")
    if not osp.isfile(pointer):
        raise FileNotFoundError(
            f'No "checkpoint" pointer file in {fdir}: it names the file to resume from; '
            "restore it or delete the folder to train from scratch"
        )
    fname = read_checkpoint_pointer(fdir)
    if not fname:
        raise ValueError(
            f'The "checkpoint" pointer file in {fdir} is empty: write the checkpoint file name '
            "(e.g. model.pth.tar-5) into it or delete the folder to train from scratch"
        )
    fpath = osp.join(fdir, fname)
    print(f'Loading checkpoint from "{fpath}"')
    return restore_from_checkpoint(loader(fpath), model, optimizer, scheduler)


def restore_from_checkpoint(checkpoint: dict, model: nn.Module, optimizer=None, scheduler=None,
                            state_dict: Optional[dict] = None) -> int:
    """Load a read checkpoint into ``model`` (and optimizer / scheduler), printing Dassl's lines.

    ``state_dict`` replaces ``checkpoint["state_dict"]`` (e.g. after checks that drop keys).
    Returns the stored ``epoch``, as Dassl's ``resume_from_checkpoint``.
    """
    model.load_state_dict(checkpoint["state_dict"] if state_dict is None else state_dict)
    print("Loaded model weights")
    if optimizer is not None and checkpoint.get("optimizer") is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        print("Loaded optimizer")
    if scheduler is not None and checkpoint.get("scheduler") is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
        print("Loaded scheduler")
    start_epoch = checkpoint["epoch"]
    print(f"Previous epoch: {start_epoch}")
    return start_epoch


def load_pretrained_weights(model: nn.Module, weight_path: str) -> None:
    """Load the matching (same key and size) entries of ``weight_path`` into ``model``, as Dassl."""
    checkpoint = load_checkpoint(weight_path)
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        state_dict = checkpoint["state_dict"]
    else:
        state_dict = checkpoint
    # Deliberate fix: Dassl fails with AttributeError deep inside on a file that holds no weights
    if not isinstance(state_dict, dict) or not any(torch.is_tensor(v) for v in state_dict.values()):
        raise CheckpointReadError(
            f'"{weight_path}" holds no weights (a {type(state_dict).__name__} without tensors, not a '
            "state dict or a checkpoint with a \"state_dict\" entry): check MODEL.INIT_WEIGHTS"
        )

    model_dict = model.state_dict()
    new_state_dict = OrderedDict()
    matched, discarded = [], []
    for k, v in state_dict.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if k in model_dict and torch.is_tensor(v) and model_dict[k].size() == v.size():
            new_state_dict[k] = v
            matched.append(k)
        else:
            discarded.append(k)
    model_dict.update(new_state_dict)
    model.load_state_dict(model_dict)

    if not matched:
        warnings.warn(f"Cannot load {weight_path} (check the key names manually)")
    else:
        print(f"Successfully loaded pretrained weights from {weight_path}")
        if discarded:
            print(f"Layers discarded due to unmatched keys or size: {discarded}")


# ---------------------------------------------------------------------------
# Meters (Dassl's ``dassl/utils/meters.py``)
# ---------------------------------------------------------------------------
class AverageMeter:
    """Running value, sum, count and average (or EMA with ``ema=True``)."""

    def __init__(self, ema: bool = False):
        self.ema = ema
        self.reset()

    def reset(self):
        self.val = 0
        self.avg = 0
        self.sum = 0
        self.count = 0

    def update(self, val, n: int = 1):
        if isinstance(val, torch.Tensor):
            val = val.item()
        self.val = val
        self.sum += val * n
        self.count += n
        if self.ema:
            self.avg = self.avg * 0.9 + self.val * 0.1
        else:
            self.avg = self.sum / self.count


class MetricMeter:
    """Named AverageMeters in first-seen order; ``str`` gives ``name val (avg)`` entries."""

    def __init__(self, delimiter: str = " "):
        self.meters = OrderedDict()
        self.delimiter = delimiter

    def update(self, input_dict):
        if input_dict is None:
            return
        if not isinstance(input_dict, dict):
            raise TypeError("Input to MetricMeter.update() must be a dictionary")
        for k, v in input_dict.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            if k not in self.meters:
                self.meters[k] = AverageMeter()
            self.meters[k].update(v)

    def __str__(self):
        return self.delimiter.join(
            f"{name} {meter.val:.4f} ({meter.avg:.4f})" for name, meter in self.meters.items()
        )


# ---------------------------------------------------------------------------
# Registry and name checks (Dassl's ``registry.py``, ``tools.py`` ``check_availability``)
# ---------------------------------------------------------------------------
def _most_similar(name: str, candidates: Iterable[str]) -> Optional[str]:
    """Candidate with the highest difflib ratio to ``name``; later candidates win ties."""
    best, best_ratio = None, 0.0
    for cand in candidates:
        ratio = difflib.SequenceMatcher(None, name, cand).ratio()
        if ratio >= best_ratio:
            best, best_ratio = cand, ratio
    return best


def _close_names(name: str, candidates: list, n: int = 3) -> list:
    """Up to ``n`` candidates resembling ``name`` (case-insensitive difflib), best first."""
    by_lower = {}
    for cand in candidates:
        by_lower.setdefault(cand.lower(), cand)
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.5)
    return [by_lower[c] for c in close]


def check_availability(requested: str, available: list) -> None:
    """Raise ValueError naming the closest available name when ``requested`` is unknown."""
    if requested not in available:
        suggestion = _most_similar(requested, available)
        raise ValueError(
            f"The requested one is expected to belong to {available}, "
            f"but got [{requested}] (do you mean [{suggestion}]?)"
        )


class Registry:
    """A name -> object map filled with ``@REG.register()`` or ``REG.register(obj)``."""

    def __init__(self, name: str):
        self._name = name
        self._obj_map = OrderedDict()

    def _do_register(self, name: str, obj: Any, force: bool = False) -> None:
        if name in self._obj_map and not force:
            raise KeyError(
                f'An object named "{name}" was already registered in "{self._name}" registry'
            )
        self._obj_map[name] = obj

    def register(self, obj: Any = None, force: bool = False):
        """Register ``obj`` under its ``__name__``; without ``obj``, return a decorator."""
        if obj is None:

            def wrapper(fn_or_class):
                self._do_register(fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class

            return wrapper
        self._do_register(obj.__name__, obj, force=force)
        return obj

    def get(self, name: str) -> Any:
        if name not in self._obj_map:
            close = _close_names(name, self.registered_names())
            hint = f" (did you mean: {', '.join(close)}?)" if close else ""
            raise KeyError(
                f'Object name "{name}" does not exist in "{self._name}" registry{hint}'
            )
        return self._obj_map[name]

    def registered_names(self) -> list:
        return list(self._obj_map.keys())

    def __contains__(self, name: str) -> bool:
        return name in self._obj_map

    def __repr__(self) -> str:
        return f"Registry(name={self._name!r}, names={self.registered_names()})"
