"""The pieces shared by CoOp's benchmark datasets (CoOp's ``datasets/``).

CoOp, CoCoOp and MaPLe read their 11 few-shot datasets with one skeleton
(e.g. CoOp's ``datasets/oxford_pets.py`` ``OxfordPets.__init__``): read (or
build and save) a JSON split, sample K shots per class with a seed-named cache,
then keep the base or new half of the classes.  This module implements that
skeleton once (:class:`CoOpFewShotDataset`) together with the helpers the
individual readers use:

* :func:`read_split` / :func:`save_split` (CoOp's ``OxfordPets.read_split`` / ``save_split``),
* :func:`split_trainval` and :func:`read_and_split_data` (``OxfordPets.split_trainval``,
  ``DescribableTextures.read_and_split_data``),
* :func:`subsample_classes` (``OxfordPets.subsample_classes``),
* :func:`read_classnames` (``ImageNet.read_classnames``),
* the layout check that turns a missing folder or file into one clear error.

All randomness is Python's global ``random``, consumed in exactly the order of
the official readers, so the same ``SEED`` selects the same images.
"""
from __future__ import annotations

import json
import math
import os.path as osp
import random
from collections import OrderedDict

from gopro_prompts import dassl_compat
from gopro_prompts.dassl_compat import (
    DatasetBase,
    Datum,
    get_logger,
    listdir_nohidden,
    mkdir_if_missing,
    write_json,
)

from gopro_prompts.user_errors import UserError

from .datum_pickle import CacheError, load_datum_pickle, save_datum_pickle

__all__ = [
    "DATASETS_DOC",
    "DatasetNotFoundError",
    "ImageNotFoundError",
    "DatasetError",
    "CacheError",
    "CoOpFewShotDataset",
    "dataset_root",
    "check_layout",
    "check_images_exist",
    "short_list",
    "new_datum",
    "make_fewshot_dir",
    "read_split",
    "save_split",
    "split_trainval",
    "read_and_split_data",
    "subsample_classes",
    "get_subsample",
    "read_classnames",
    "fewshot_cache_path",
    "fewshot_train_val",
    "sample_fewshot",
    "load_fewshot_cache",
    "check_cached_images",
    "check_class_coverage",
    "check_images_readable",
]

_LOG = get_logger("datasets")

#: Where the expected layout of every dataset is documented.
DATASETS_DOC = "DATASETS.md"

#: How many missing items an error message names before summarising.
_MAX_LISTED = 5


class DatasetNotFoundError(FileNotFoundError, UserError):
    """A dataset folder or one of its required files is missing."""


class ImageNotFoundError(FileNotFoundError, UserError):
    """A split, list or cache names an image file that does not exist."""


class DatasetError(UserError, ValueError):
    """Dataset files that do not fit together, or a bad dataset config value."""


# ---------------------------------------------------------------------------
# Paths and layout checks
# ---------------------------------------------------------------------------


def dataset_root(cfg) -> str:
    """``DATASET.ROOT`` made absolute with ``~`` expanded, as every CoOp dataset does.

    A root that is a file is a clear :class:`DatasetError` (not a NotADirectoryError
    about some path below it).
    """
    root = osp.abspath(osp.expanduser(cfg.DATASET.ROOT))
    if osp.exists(root) and not osp.isdir(root):
        raise DatasetError(
            f"DATASET.ROOT {root} is a file, not a folder: pass --root the folder that holds the datasets"
        )
    return root


def short_list(items) -> str:
    """The first few of ``items``, comma-separated, with a count of the rest."""
    items = list(items)
    shown = ", ".join(items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f" and {len(items) - _MAX_LISTED} more"
    return shown


def check_layout(name, cfg, dataset_dir, required, optional_groups=()):
    """Raise one :class:`DatasetNotFoundError` listing everything missing.

    ``required``: paths relative to ``dataset_dir`` (a trailing ``/`` marks a
    folder) that must exist.  ``optional_groups``: ``(primary, alternatives)``
    pairs: ``primary`` (e.g. the split JSON) is fine when present; when absent,
    every path in ``alternatives`` (the files it is built from) is required.
    """
    root = dataset_root(cfg)
    hint = (
        f"see {DATASETS_DOC} (section {name}) for where to get it and the expected tree"
    )
    if not cfg.DATASET.ROOT:
        hint += "; DATASET.ROOT is empty: pass --root /path/to/datasets"
    if not osp.isdir(dataset_dir):
        raise DatasetNotFoundError(
            f"Dataset {name}: folder {dataset_dir} not found (DATASET.ROOT={root} must "
            f"contain {osp.basename(dataset_dir)}/); {hint}"
        )
    missing = []
    for rel in required:
        if not _exists(dataset_dir, rel):
            missing.append(rel)
    for primary, alternatives in optional_groups:
        if _exists(dataset_dir, primary):
            continue
        absent = [rel for rel in alternatives if not _exists(dataset_dir, rel)]
        if absent:
            missing.append(f"{primary} (or, to build it, {' + '.join(alternatives)})")
    if missing:
        raise DatasetNotFoundError(
            f"Dataset {name}: missing in {dataset_dir}: {short_list(missing)}; {hint}"
        )


def _exists(base, rel) -> bool:
    path = osp.join(base, rel.rstrip("/"))
    return osp.isdir(path) if rel.endswith("/") else osp.isfile(path)


def check_images_exist(paths, source, what="lists") -> None:
    """Raise :class:`ImageNotFoundError` naming the missing images among ``paths``."""
    missing = [p for p in paths if not osp.isfile(p)]
    if missing:
        raise ImageNotFoundError(
            f"{source} {what} {len(missing)} image(s) that do not exist: {short_list(missing)}; "
            f"check DATASET.ROOT and that the dataset is fully extracted ({DATASETS_DOC})"
        )


def new_datum(impath, label, classname, source) -> Datum:
    """``Datum(impath, label, classname=...)``, but a missing image raises
    :class:`ImageNotFoundError` naming it and the list (``source``) that names it."""
    if not osp.isfile(impath):
        raise ImageNotFoundError(
            f"{source} names {impath}, which is not an existing image file; check "
            f"DATASET.ROOT and that the dataset is fully extracted ({DATASETS_DOC})"
        )
    return Datum(impath=impath, label=label, classname=classname)


def make_fewshot_dir(dataset_dir) -> str:
    """Create ``<dataset_dir>/split_fewshot`` on every construction, like CoOp."""
    path = osp.join(dataset_dir, "split_fewshot")
    try:
        mkdir_if_missing(path)
    except OSError as err:
        raise PermissionError(
            f"Cannot create {path} ({err.strerror}): CoOp-style datasets keep their "
            f"few-shot caches next to the data, so {dataset_dir} must be writable"
        ) from None
    return path


# ---------------------------------------------------------------------------
# Split files (CoOp's ``OxfordPets.read_split`` / ``save_split``)
# ---------------------------------------------------------------------------


def read_split(filepath, path_prefix):
    """Read a ``split_zhou_*.json`` file into ``(train, val, test)`` lists of Datum.

    Every entry is checked (``[image path, integer label, class name]``, one
    class name per label across the file), then every image, so a bad entry or
    a missing file gives an error naming it and the split file at load time.
    """
    print(f"Reading split from {filepath}")
    split = _load_split_json(filepath)
    for key in ("train", "val", "test"):
        if key not in split:
            raise DatasetError(
                f"Split file {filepath} has no '{key}' list: it must hold 'train', 'val' and "
                f"'test' lists of [image path, label, class name]; re-download it ({DATASETS_DOC})"
            )
    outputs = []
    names = {}  # label -> (class name, where it was first seen)
    for key in ("train", "val", "test"):
        if not isinstance(split[key], list):
            raise DatasetError(
                f"Split file {filepath}: '{key}' is a {type(split[key]).__name__}, not a list of "
                f"[image path, label, class name]; re-download the file ({DATASETS_DOC})"
            )
        entries = []
        for index, entry in enumerate(split[key]):
            impath, label, classname = _split_entry(filepath, key, index, entry)
            first = names.setdefault(label, (classname, f"{key}[{index}]"))
            if first[0] != classname:
                raise DatasetError(
                    f"Split file {filepath}: label {label} is {first[0]!r} in {first[1]} but {classname!r} "
                    f"in {key}[{index}]: one label needs one class name; fix the file or re-download it "
                    f"({DATASETS_DOC})"
                )
            entries.append((osp.join(path_prefix, impath), label, classname))
        check_images_exist([e[0] for e in entries], f"Split file {filepath} ({key})")
        outputs.append([Datum(impath=p, label=y, classname=c) for p, y, c in entries])
    return tuple(outputs)


def _load_split_json(filepath):
    """The parsed split file (a dict); a truncated or damaged file is a :class:`DatasetError` naming it."""
    try:
        with open(filepath, encoding="utf-8") as f:
            split = json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"Split file {filepath} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}): "
            f"it is truncated or damaged; re-download it ({DATASETS_DOC}) or delete it to build a new split"
        ) from None
    except UnicodeDecodeError as err:
        raise DatasetError(
            f"Split file {filepath} is not UTF-8 JSON ({err.reason} at byte {err.start}): it is damaged; "
            f"re-download it ({DATASETS_DOC})"
        ) from None
    if not isinstance(split, dict):
        raise DatasetError(
            f"Split file {filepath} holds a {type(split).__name__}, not an object with 'train', 'val' and "
            f"'test' lists; re-download it ({DATASETS_DOC})"
        )
    return split


def _split_entry(filepath, key, index, entry):
    """``(image path, label, class name)`` of ``split[key][index]``, or a :class:`DatasetError` naming it.

    The label is read as CoOp does (``int(label)`` in ``OxfordPets.read_split``), except that a
    value with a fraction or a non-numeric text is refused instead of truncated or crashing.
    """
    shown = repr(entry)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    where = f"Split file {filepath}: {key}[{index}] = {shown}"
    fix = f"fix the entry or re-download the file ({DATASETS_DOC})"
    if not isinstance(entry, (list, tuple)) or len(entry) != 3:
        size = f"{len(entry)} field(s)" if isinstance(entry, (list, tuple)) else f"a {type(entry).__name__}"
        raise DatasetError(f"{where} has {size}: each entry must be [image path, integer label, class name]; {fix}")
    impath, label, classname = entry
    if not isinstance(impath, str) or not impath:
        raise DatasetError(f"{where}: the image path (first field) must be a non-empty string; {fix}")
    if not isinstance(classname, str):
        raise DatasetError(f"{where}: the class name (third field) must be a string; {fix}")
    value = label
    if isinstance(label, str) and label.strip().lstrip("-").isdigit():
        value = int(label.strip())
    elif isinstance(label, float) and label.is_integer():
        value = int(label)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DatasetError(f"{where}: the label (second field) {label!r} is not an integer >= 0; {fix}")
    return impath, value, classname


def _relative(impath, path_prefix):
    # As CoOp: a plain substring replace of the prefix, then one leading "/" dropped.
    impath = impath.replace(path_prefix, "")
    if impath.startswith("/"):
        impath = impath[1:]
    return impath


def save_split(train, val, test, filepath, path_prefix) -> None:
    """Write ``(train, val, test)`` as a ``split_zhou_*.json`` file (``write_json``, indent 4)."""
    split = {
        key: [(_relative(item.impath, path_prefix), item.label, item.classname) for item in items]
        for key, items in (("train", train), ("val", val), ("test", test))
    }
    write_json(split, filepath)
    print(f"Saved split to {filepath}")


# ---------------------------------------------------------------------------
# Split generation: only when no split file exists
# ---------------------------------------------------------------------------


def split_trainval(trainval, p_val=0.2, rng=None):
    """Split ``trainval`` per label into 80% train / 20% val (as CoOp's ``OxfordPets.split_trainval``).

    Labels in first-appearance order; per label ``round(n * p_val)`` items
    (half to even) go to val after a ``random.shuffle`` of the item indices.
    ``rng``: a ``random.Random`` to shuffle with instead of Python's global ``random``
    (a split that must not depend on ``SEED``, as the ImageFolder dataset's).
    """
    p_trn = 1 - p_val
    print(f"Splitting trainval into {p_trn:.0%} train and {p_val:.0%} val")
    tracker = OrderedDict()
    for idx, item in enumerate(trainval):
        tracker.setdefault(item.label, []).append(idx)
    train, val = [], []
    for label, idxs in tracker.items():
        n_val = round(len(idxs) * p_val)
        if n_val <= 0:
            raise DatasetError(
                f"Cannot split trainval: class {trainval[idxs[0]].classname!r} (label {label}) "
                f"has {len(idxs)} image(s), too few for a {p_val:.0%} val share; check the "
                f"annotation files or use the official split file ({DATASETS_DOC})"
            )
        (rng or random).shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


def read_and_split_data(image_dir, p_trn=0.5, p_val=0.2, ignored=(), new_cnames=None):
    """Build a 50/20/30 split from class folders, like CoOp's ``DescribableTextures.read_and_split_data``.

    Categories: non-hidden entries of ``image_dir`` minus ``ignored``, sorted;
    label = index.  Per category the images come in ``os.listdir`` order (not
    sorted, as in the official reader), are shuffled with ``random.shuffle``
    and sliced into train / val / test.
    """
    categories = [c for c in listdir_nohidden(image_dir) if c not in ignored]
    categories.sort()
    p_tst = 1 - p_trn - p_val
    print(f"Splitting into {p_trn:.0%} train, {p_val:.0%} val, and {p_tst:.0%} test")

    def _collate(impaths, label, classname):
        return [Datum(impath=p, label=label, classname=classname) for p in impaths]

    train, val, test = [], [], []
    for label, category in enumerate(categories):
        category_dir = osp.join(image_dir, category)
        images = [osp.join(category_dir, im) for im in listdir_nohidden(category_dir)]
        random.shuffle(images)
        n_total = len(images)
        n_train = round(n_total * p_trn)
        n_val = round(n_total * p_val)
        n_test = n_total - n_train - n_val
        if not (n_train > 0 and n_val > 0 and n_test > 0):
            raise DatasetError(
                f"Cannot split {category_dir}: {n_total} image(s) give {n_train}/{n_val}/"
                f"{n_test} train/val/test; each class needs enough images for all three "
                f"(or use the official split file, {DATASETS_DOC})"
            )
        if new_cnames is not None and category in new_cnames:
            category = new_cnames[category]
        train.extend(_collate(images[:n_train], label, category))
        val.extend(_collate(images[n_train:n_train + n_val], label, category))
        test.extend(_collate(images[n_train + n_val:], label, category))
    return train, val, test


def check_class_coverage(train, val, test, source) -> None:
    """Every class must have training images, and the labels must be 0..n-1.

    Deliberate fix: Dassl takes the class count and names from the training
    split only, so a class without training images silently shifts the class
    names against the labels (or breaks evaluation).
    """
    names = OrderedDict()
    for item in list(train) + list(val) + list(test):
        names.setdefault(item.label, item.classname)
    train_labels = {item.label for item in train}
    empty = [f"{names[label]!r} (label {label})" for label in sorted(names) if label not in train_labels]
    if empty:
        raise DatasetError(
            f"{source}: class(es) {short_list(empty)} have no training image: add images for them "
            f"or remove them from the split ({DATASETS_DOC})"
        )
    if train_labels and sorted(train_labels) != list(range(len(train_labels))):
        raise DatasetError(
            f"{source}: labels must be 0..{len(train_labels) - 1}, got {short_list(map(str, sorted(train_labels)))}: "
            "renumber the classes without gaps"
        )


def check_images_readable(data, source, header_splits=None) -> None:
    """Pre-flight check before any training: every image of ``data`` (``{split: [Datum]}``) exists,
    and the header of each val / test image opens (PIL reads only its first bytes).

    A corrupt test image then fails before training instead of at the final test.
    The error is the engine's (``read_image_checked``: names the file and the fix).
    ``header_splits``: the splits whose headers are opened (default: every split but ``train``).
    """
    from PIL import Image

    from gopro_prompts.bundled_dassl.utils import read_image_checked

    seen = set()
    # val / test first: a file also in train (test-only datasets) gets the header check
    for split in sorted(data, key=lambda s: s == "train"):
        # training images are all read in the first epoch anyway
        header = split != "train" if header_splits is None else split in header_splits
        for item in data[split]:
            path = item.impath
            if path in seen:
                continue
            seen.add(path)
            try:
                if header:
                    with Image.open(path):
                        pass
                elif not osp.isfile(path):
                    raise FileNotFoundError(path)
            except Exception:
                read_image_checked(path)  # raises its error naming the file
                _LOG.warning("%s: %s image %s failed a header check but reads", source, split, path)


# ---------------------------------------------------------------------------
# Base / new classes (CoOp's ``OxfordPets.subsample_classes``)
# ---------------------------------------------------------------------------

_SUBSAMPLE_CHOICES = ("all", "base", "new")


def get_subsample(cfg) -> str:
    """``DATASET.SUBSAMPLE_CLASSES`` (``"all"`` when the config lacks the key), validated."""
    subsample = cfg.DATASET.get("SUBSAMPLE_CLASSES", "all")
    if subsample not in _SUBSAMPLE_CHOICES:
        raise DatasetError(
            f"DATASET.SUBSAMPLE_CLASSES must be one of {', '.join(_SUBSAMPLE_CHOICES)}, "
            f"got {subsample!r}"
        )
    return subsample


def subsample_classes(*args, subsample="all"):
    """Keep the base (first ceil(n/2)) or new classes, relabelled from 0.

    The labels are the sorted distinct labels of the first dataset (train).
    ``"all"`` returns the inputs unchanged (as a tuple).
    """
    if subsample not in _SUBSAMPLE_CHOICES:
        raise DatasetError(
            f"subsample must be one of {', '.join(_SUBSAMPLE_CHOICES)}, got {subsample!r}"
        )
    if subsample == "all":
        return args

    labels = sorted({item.label for item in args[0]})
    m = math.ceil(len(labels) / 2)
    print(f"SUBSAMPLE {subsample.upper()} CLASSES!")
    selected = labels[:m] if subsample == "base" else labels[m:]
    if not selected:  # deliberate fix: Dassl goes on with empty splits and fails far away
        raise DatasetError(
            f"DATASET.SUBSAMPLE_CLASSES {subsample} leaves no class: the training split has "
            f"{len(labels)} class(es); use SUBSAMPLE_CLASSES all (base / new need at least 2 classes)"
        )
    relabeler = {old: new for new, old in enumerate(selected)}

    output = []
    for dataset in args:
        output.append([
            Datum(impath=item.impath, label=relabeler[item.label], classname=item.classname)
            for item in dataset
            if item.label in relabeler
        ])
    return output


# ---------------------------------------------------------------------------
# ImageNet-family class names (CoOp's ``ImageNet.read_classnames``)
# ---------------------------------------------------------------------------


def read_classnames(text_file) -> "OrderedDict[str, str]":
    """``classnames.txt`` -> insertion-ordered map folder id (wnid) -> class name."""
    classnames = OrderedDict()
    with open(text_file, "r") as f:
        for line in f:
            tokens = line.strip().split(" ")
            classnames[tokens[0]] = " ".join(tokens[1:])
    return classnames


# ---------------------------------------------------------------------------
# Few-shot sampling and its cache ``split_fewshot/shot_{K}-seed_{SEED}.pkl``
# ---------------------------------------------------------------------------


def fewshot_cache_path(split_fewshot_dir, num_shots, seed) -> str:
    """``split_fewshot/shot_{K}-seed_{SEED}.pkl``."""
    return osp.join(split_fewshot_dir, f"shot_{num_shots}-seed_{seed}.pkl")


def _warn_short_classes(dataset_name, items, num_shots, split) -> None:
    """Warn once per class of ``items`` that has fewer than ``num_shots`` images."""
    counts = OrderedDict()
    for item in items:
        entry = counts.setdefault(item.label, [item.classname, 0])
        entry[1] += 1
    for label, (classname, count) in counts.items():
        if count < num_shots:
            _LOG.warning(
                "%s: class %r (label %s) has only %d %s image(s), fewer than %d shots; "
                "all of them are used (CoOp behaviour)",
                dataset_name, classname, label, count, split, num_shots,
            )


def sample_fewshot(dataset, items, num_shots, split="train"):
    """``dataset.generate_fewshot_dataset(items, num_shots=K)`` with a shortage warning.

    The sampling itself is the engine's (``DatasetBase.generate_fewshot_dataset``).  A class with fewer than K
    images keeps all of them, in order, and consumes no random number; it is
    named in a warning.  The bundled engine already emits that warning, so it is
    added here only under real Dassl (which is silent about it).
    """
    if dassl_compat.BACKEND != "bundled" and num_shots >= 1:
        _warn_short_classes(type(dataset).__name__, items, num_shots, split)
    return dataset.generate_fewshot_dataset(items, num_shots=num_shots)


def check_cached_images(data, path) -> None:
    """Fail early when a loaded few-shot cache points to images that are gone.

    Deliberate fix: Dassl's cache stores absolute paths and, when the
    data moved, fails only when an image is read deep in a loader worker.
    """
    paths = [item.impath for items in data.values() for item in items]
    missing = [p for p in paths if not osp.isfile(p)]
    if missing:
        raise ImageNotFoundError(
            f"Few-shot cache {path} lists {len(missing)} image(s) that do not exist, e.g. "
            f"{short_list(missing)}: it was written for another DATASET.ROOT or the data moved; "
            f"restore the data there or delete the cache to sample again"
        )


def fewshot_train_val(dataset, train, val, num_shots, seed, split_fewshot_dir):
    """CoOp's few-shot step: ``(train, val)`` read from ``split_fewshot/shot_{K}-seed_{SEED}.pkl``,
    else K train and min(K, 4) val images per class sampled (Python's global ``random``) and saved there."""
    path = fewshot_cache_path(split_fewshot_dir, num_shots, seed)
    if osp.exists(path):
        print(f"Loading preprocessed few-shot data from {path}")
        data = load_fewshot_cache(path, ("train", "val"))
        train, val = data["train"], data["val"]
        # the sampling warned about short classes on the first run only: say it every run
        _warn_short_classes(type(dataset).__name__, train, num_shots, "train")
    else:
        train = sample_fewshot(dataset, train, num_shots, "train")
        val = sample_fewshot(dataset, val, min(num_shots, 4), "val")
        print(f"Saving preprocessed few-shot data to {path}")
        save_datum_pickle({"train": train, "val": val}, path)
    return train, val


def load_fewshot_cache(path, keys=("train", "val")):
    """Load and validate a few-shot cache (a dict of Datum lists under ``keys``)."""
    data = load_datum_pickle(path)
    if not isinstance(data, dict) or any(not isinstance(data.get(k), list) for k in keys):
        raise CacheError(
            f"Few-shot cache {path} is not a dict with {' and '.join(map(repr, keys))} lists; "
            f"delete it and it is re-created on the next run"
        )
    data = {k: data[k] for k in keys}
    check_cached_images(data, path)
    return data


# ---------------------------------------------------------------------------
# The skeleton of the 11 few-shot datasets
# ---------------------------------------------------------------------------


class CoOpFewShotDataset(DatasetBase):
    """CoOp's common dataset flow (split, few-shot cache, subsample); subclasses describe their files.

    Class attributes a subclass sets:

    * ``dataset_dir``: folder under ``DATASET.ROOT`` (replaced on the instance
      by the absolute path, as in CoOp);
    * ``image_dir_name``: image folder inside it (the split path prefix);
    * ``split_file``: ``split_zhou_<Name>.json``, or ``None`` to always build
      the split from ``source_files`` (FGVCAircraft);
    * ``source_files``: what :meth:`build_split` reads when there is no split
      file (relative to ``dataset_dir``; a trailing ``/`` marks a folder);
    * ``split_prefix_is_dataset_dir``: StanfordCars' split paths are relative
      to the dataset folder instead of the image folder;
    * ``required_dirs``: folders that must exist (default: the image folder).

    and implements :meth:`build_split` returning ``(train, val, test)``.
    """

    dataset_dir = ""
    image_dir_name = ""
    split_file = None
    source_files = ()
    split_prefix_is_dataset_dir = False
    required_dirs = None  # folders that must exist; default: the image folder

    def __init__(self, cfg):
        root = dataset_root(cfg)
        self.dataset_dir = osp.join(root, type(self).dataset_dir)
        self.image_dir = osp.join(self.dataset_dir, self.image_dir_name)
        self.split_path = (
            osp.join(self.dataset_dir, self.split_file) if self.split_file else None
        )
        self.split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot")
        subsample = get_subsample(cfg)
        self.check_files(cfg)
        make_fewshot_dir(self.dataset_dir)

        train, val, test = self.load_split()
        check_class_coverage(train, val, test, self.split_path or self.dataset_dir)

        num_shots = cfg.DATASET.NUM_SHOTS
        if num_shots >= 1:
            train, val = fewshot_train_val(self, train, val, num_shots, cfg.SEED, self.split_fewshot_dir)

        train, val, test = subsample_classes(train, val, test, subsample=subsample)
        check_images_readable({"train": train, "val": val, "test": test}, type(self).__name__)
        super().__init__(train_x=train, val=val, test=test)

    # -- hooks ------------------------------------------------------------

    @property
    def split_prefix(self) -> str:
        return self.dataset_dir if self.split_prefix_is_dataset_dir else self.image_dir

    def check_files(self, cfg) -> None:
        """One error listing every missing folder / file of this dataset."""
        if self.required_dirs is None:
            required = [self.image_dir_name + "/"]
        else:
            required = list(self.required_dirs)
        if self.split_file is None:
            required += list(self.source_files)
            groups = ()
        else:
            groups = ((self.split_file, tuple(self.source_files)),)
        check_layout(type(self).__name__, cfg, self.dataset_dir, required, groups)

    def load_split(self):
        """Read the split file, or build the split from the sources and save it."""
        if self.split_path is None:
            return self.build_split()
        if osp.exists(self.split_path):
            return read_split(self.split_path, self.split_prefix)
        _LOG.warning(
            "%s: %s not found; building a new random split from the original files. "
            "Results are comparable with published numbers only with the official split "
            "file (see %s)", type(self).__name__, self.split_path, DATASETS_DOC,
        )
        train, val, test = self.build_split()
        save_split(train, val, test, self.split_path, self.split_prefix)
        return train, val, test

    def build_split(self):  # pragma: no cover - every subclass overrides it
        raise NotImplementedError
