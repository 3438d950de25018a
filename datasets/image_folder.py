"""ImageFolder: the user's own images as a dataset, with no code to write (DATASETS.md, section ImageFolder).

Configured by the keys ``DATASET.IMAGE_FOLDER.*`` (defaults in ``trainers/config.py``):

* ``DIR``: the image folder, under ``DATASET.ROOT`` (an absolute path works too);
* ``NAME``: the display name of the dataset in ``results.json``, the result tables and the
  scripts' output folders (default: the base name of ``DIR``), so two user datasets never collide;
* ``CSV``: a CSV file in ``DIR`` that lists the images (default: ``labels.csv`` when present);
* ``SPLIT_DIR``: where the generated split file and the few-shot caches go (default: ``DIR``
  itself, as CoOp keeps them next to the data; when ``DIR`` is read-only,
  ``<OUTPUT_DIR>/image_folder_split``).

The layout of ``DIR`` is detected, in this order:

1. a CSV file (``CSV``, else ``labels.csv``) with a header and the columns
   ``path,classname[,split]`` (paths relative to the CSV's folder, split ``train`` / ``val`` /
   ``test``);
2. ``train/<class>/*`` and ``test/<class>/*`` folders, ``val/<class>/*`` optional;
3. one folder per class, ``<class>/*`` (sub-folders of a class folder are searched too).

A layout without its own split (3, or 1 without a ``split`` column) is split once, per class,
into 50% train / 20% val / 30% test (CoOp's ratios, as its ``read_and_split_data``) with a
fixed seed (:data:`SPLIT_SEED`, a ``random.Random`` of its own: neither ``SEED`` nor the global
``random`` is involved), and the split is written as a CoOp-format split file
(``split_image_folder[_<csv name>].json``, as ``split_zhou_*.json``) that every later run reads:
the same folder always gives the same split.  A layout with a train split but no val split gets
20% of each class's training images as val (CoOp's ``split_trainval``), with the same fixed seed.

Class names: ``classnames.txt`` in ``DIR`` (one class per line, in label order; a line is matched
to a class folder / CSV class name with ``_`` and ``-`` read as spaces, case-insensitively, and
is used as written), else the folder / CSV names with ``_`` and ``-`` made spaces, labels in
sorted order of the names.  Everything after the split is CoOp's flow, as for the benchmark
datasets: the few-shot caches ``split_fewshot/shot_{K}-seed_{SEED}.pkl``,
``DATASET.SUBSAMPLE_CLASSES`` base / new and the pre-flight image check (here on every image
used, training images included: a user folder may hold a stray non-image file).
"""
from __future__ import annotations

import csv
import os
import os.path as osp
import random
from collections import OrderedDict

from gopro_prompts.dassl_compat import DatasetBase, Datum, get_logger, listdir_nohidden, mkdir_if_missing
from gopro_prompts.registry import register_dataset
from gopro_prompts.results.record import image_folder_label
from gopro_prompts.run_folder import check_dataset_label

from .coop_common import (
    DATASETS_DOC,
    DatasetError,
    DatasetNotFoundError,
    ImageNotFoundError,
    check_class_coverage,
    check_images_readable,
    dataset_root,
    fewshot_cache_path,
    fewshot_train_val,
    get_subsample,
    read_split,
    save_split,
    short_list,
    split_trainval,
    subsample_classes,
)

_LOG = get_logger("datasets")

#: where the layouts are documented, for the error messages
DOC = f"{DATASETS_DOC}, section ImageFolder"
#: the seed of the one-off split (fixed: the same folder always gives the same split)
SPLIT_SEED = 1
#: CoOp's ratios (``read_and_split_data``): 50% train, 20% val, the rest test
P_TRN, P_VAL = 0.5, 0.2
SPLITS = ("train", "val", "test")
CLASSNAMES_FILE = "classnames.txt"
DEFAULT_CSV = "labels.csv"
CSV_COLUMNS = ("path", "classname", "split")
#: the generated split of a class-folder tree (a CSV's is ``split_image_folder_<csv name>.json``)
SPLIT_FILE = "split_image_folder.json"
FEWSHOT_DIR = "split_fewshot"
#: under OUTPUT_DIR: the split file and few-shot caches of a read-only image folder
READ_ONLY_DIR = "image_folder_split"


def settings(cfg) -> dict:
    """``DATASET.IMAGE_FOLDER``'s keys as stripped strings (``""`` for a key the config lacks)."""
    node = cfg.DATASET.get("IMAGE_FOLDER") or {}
    return {key: str(node.get(key, "") or "").strip() for key in ("DIR", "NAME", "CSV", "SPLIT_DIR")}


def class_text(name: str) -> str:
    """A folder / CSV class name as a class name: ``_`` and ``-`` become spaces, runs of spaces one."""
    return " ".join(str(name).replace("_", " ").replace("-", " ").split())


def class_key(name: str) -> str:
    """How two class names are compared (CLIP's tokenizer lower-cases the prompts anyway)."""
    return class_text(name).lower()


def list_images(folder: str) -> list:
    """Every non-hidden file under ``folder`` (sub-folders too), sorted: a fixed order on any filesystem."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(osp.join(dirpath, name) for name in filenames if not name.startswith("."))
    return sorted(found)


@register_dataset
class ImageFolder(DatasetBase):
    """Images of ``DATASET.ROOT/DATASET.IMAGE_FOLDER.DIR`` in one of three layouts (module docstring)."""

    def __init__(self, cfg):
        keys = settings(cfg)
        subsample = get_subsample(cfg)
        root = dataset_root(cfg)
        if not keys["DIR"]:
            raise DatasetNotFoundError(
                "ImageFolder: DATASET.IMAGE_FOLDER.DIR is empty: set it to the folder of your images under "
                f"DATASET.ROOT, e.g. DATASET.IMAGE_FOLDER.DIR my_data ({DOC})"
            )
        self.dataset_dir = osp.normpath(osp.join(root, osp.expanduser(keys["DIR"])))
        # the name results.json and the scripts' folders give the dataset (record.dataset_label)
        self.display_name = image_folder_label(keys["NAME"], keys["DIR"], cfg.DATASET.ROOT)
        check_dataset_label(self.display_name)
        self._check_folder(cfg)
        self.store_dir = self._store_dir(cfg, keys["SPLIT_DIR"])

        csv_path = self._csv_path(keys["CSV"])
        if csv_path is not None:
            self.layout = "csv"
            stem = osp.splitext(osp.basename(csv_path))[0]
            self.split_file = f"split_image_folder_{stem}.json"
            fewshot_name = FEWSHOT_DIR if osp.basename(csv_path) == DEFAULT_CSV else f"{FEWSHOT_DIR}_{stem}"
            self.source = csv_path
            entries = self._read_csv(csv_path)
        elif osp.isdir(osp.join(self.dataset_dir, "train")):
            self.layout, self.split_file, fewshot_name = "splits", None, FEWSHOT_DIR
            self.source = self.dataset_dir
            entries = self._read_split_folders()
        else:
            self.layout, self.split_file, fewshot_name = "folders", SPLIT_FILE, FEWSHOT_DIR
            self.source = self.dataset_dir
            entries = self._read_class_folders()
        self.split_fewshot_dir = osp.join(self.store_dir, fewshot_name)

        train, val, test = self._split(entries)
        check_class_coverage(train, val, test, self.source)
        _LOG.info("ImageFolder %s: %s (%s layout), %d classes, %d train / %d val / %d test images",
                  self.display_name, self.dataset_dir, self.layout, len({d.label for d in train}),
                  len(train), len(val), len(test))

        num_shots = cfg.DATASET.NUM_SHOTS
        if num_shots >= 1:
            full = {"train": train, "val": val}
            self._make_dir(self.split_fewshot_dir)
            train, val = fewshot_train_val(self, train, val, num_shots, cfg.SEED, self.split_fewshot_dir)
            self._check_fewshot_cache({"train": train, "val": val}, full, num_shots, cfg.SEED)

        train, val, test = subsample_classes(train, val, test, subsample=subsample)
        check_images_readable({"train": train, "val": val, "test": test}, f"ImageFolder {self.display_name}",
                              header_splits=SPLITS)
        super().__init__(train_x=train, val=val, test=test)

    # -- the folder --------------------------------------------------------------------------

    def _check_folder(self, cfg) -> None:
        if not osp.isdir(self.dataset_dir):
            what = "a file, not a folder" if osp.exists(self.dataset_dir) else "not found"
            raise DatasetNotFoundError(
                f"ImageFolder: {self.dataset_dir} is {what} (DATASET.ROOT={dataset_root(cfg)}, "
                f"DATASET.IMAGE_FOLDER.DIR={settings(cfg)['DIR']}): set DATASET.IMAGE_FOLDER.DIR to the folder of "
                f"your images under DATASET.ROOT ({DOC})"
            )
        if not listdir_nohidden(self.dataset_dir):
            raise DatasetNotFoundError(
                f"ImageFolder: {self.dataset_dir} is empty: put one folder of images per class in it "
                f"(<class>/*.jpg), or train/ val/ test/ class folders, or a {DEFAULT_CSV} ({DOC})"
            )

    def _store_dir(self, cfg, split_dir: str) -> str:
        """Where the generated split file and the few-shot caches go (module docstring)."""
        if split_dir:
            return osp.abspath(osp.expanduser(split_dir))
        if os.access(self.dataset_dir, os.W_OK | os.X_OK):
            return self.dataset_dir
        path = osp.join(osp.abspath(osp.expanduser(cfg.OUTPUT_DIR or "output")), READ_ONLY_DIR)
        _LOG.info("ImageFolder: %s is read-only: its split file and few-shot caches go to %s (set "
                  "DATASET.IMAGE_FOLDER.SPLIT_DIR to share one such folder between runs)", self.dataset_dir, path)
        return path

    @staticmethod
    def _make_dir(path) -> None:
        try:
            mkdir_if_missing(path)
        except OSError as err:
            raise DatasetError(
                f"ImageFolder: cannot create {path} ({err.strerror}) for the split file and few-shot caches: set "
                f"DATASET.IMAGE_FOLDER.SPLIT_DIR to a writable folder ({DOC})"
            ) from None

    def _own_folders(self) -> set:
        """Folders inside the image folder that this dataset writes (never classes)."""
        names = {name for name in os.listdir(self.dataset_dir) if name.startswith(FEWSHOT_DIR)}
        if osp.dirname(self.store_dir) == self.dataset_dir:
            names.add(osp.basename(self.store_dir))
        return names

    def _csv_path(self, csv_name: str):
        if csv_name:
            path = osp.join(self.dataset_dir, csv_name)
            if not osp.isfile(path):
                raise DatasetNotFoundError(
                    f"ImageFolder: DATASET.IMAGE_FOLDER.CSV {csv_name} not found in {self.dataset_dir}: give the "
                    f"CSV file's path relative to that folder, or leave the key empty to read {DEFAULT_CSV} or the "
                    f"class folders ({DOC})"
                )
            return path
        path = osp.join(self.dataset_dir, DEFAULT_CSV)
        return path if osp.isfile(path) else None

    # -- the three layouts: entries (image path, class name as found, split or None) ----------

    def _class_dirs(self, folder: str) -> list:
        """``[(class name, [image paths])]`` of the class folders in ``folder``, names sorted."""
        own = self._own_folders() if folder == self.dataset_dir else set()
        names = sorted(name for name in listdir_nohidden(folder)
                       if osp.isdir(osp.join(folder, name)) and name not in own)
        out = []
        for name in names:
            images = list_images(osp.join(folder, name))
            if not images:
                raise DatasetError(
                    f"ImageFolder: the class folder {osp.join(folder, name)} is empty: add its images or remove "
                    f"the folder ({DOC})"
                )
            out.append((name, images))
        return out

    def _read_class_folders(self):
        split_dirs = [s for s in ("val", "test") if osp.isdir(osp.join(self.dataset_dir, s))]
        if split_dirs:
            raise DatasetError(
                f"ImageFolder: {self.dataset_dir} has {' and '.join(s + '/' for s in split_dirs)} but no train/: "
                f"add train/<class>/ folders, or rename the class folder(s) named {' or '.join(split_dirs)} ({DOC})"
            )
        classes = self._class_dirs(self.dataset_dir)
        if not classes:
            raise DatasetNotFoundError(
                f"ImageFolder: {self.dataset_dir} holds no class folder: put the images of each class in a folder "
                f"named after the class (<class>/*.jpg), or use train/ val/ test/ class folders or a {DEFAULT_CSV} "
                f"({DOC})"
            )
        self.classes = self._class_order([name for name, _ in classes], f"the class folders of {self.dataset_dir}")
        return [(path, name, None) for name, images in classes for path in images]

    def _read_split_folders(self):
        if not osp.isdir(osp.join(self.dataset_dir, "test")):
            raise DatasetNotFoundError(
                f"ImageFolder: {self.dataset_dir} has train/ but no test/: add test/<class>/ folders with the test "
                f"images (val/ is optional) ({DOC})"
            )
        found = {}
        for split in SPLITS:
            folder = osp.join(self.dataset_dir, split)
            if not osp.isdir(folder):
                continue
            found[split] = self._class_dirs(folder)
            if not found[split]:
                raise DatasetNotFoundError(
                    f"ImageFolder: {folder} holds no class folder: put its images in {split}/<class>/ folders ({DOC})"
                )
        train_names = {name for name, _ in found["train"]}
        for split in ("val", "test"):
            for name, _ in found.get(split, []):
                if name not in train_names:
                    raise DatasetError(
                        f"ImageFolder: the class folder {split}/{name}/ has no counterpart in train/: add "
                        f"train/{name}/ with training images, or remove {split}/{name}/ ({DOC})"
                    )
        self.classes = self._class_order(sorted(train_names), f"the class folders of {self.dataset_dir}/train")
        return [(path, name, split) for split in SPLITS for name, images in found.get(split, [])
                for path in images]

    def _read_csv(self, path: str):
        base = osp.dirname(path)
        name = osp.basename(path)
        fix_header = f"its first line must be the header path,classname[,split] ({DOC})"
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.reader(f))
        except UnicodeDecodeError as err:
            raise DatasetError(f"ImageFolder: {path} is not UTF-8 text ({err.reason} at byte {err.start}): save it "
                               f"as a UTF-8 CSV file ({DOC})") from None
        except csv.Error as err:
            raise DatasetError(f"ImageFolder: {path} is not a valid CSV file ({err}) ({DOC})") from None
        if not rows or not any(field.strip() for field in rows[0]):
            raise DatasetError(f"ImageFolder: {path} is empty or starts with a blank line: {fix_header}")
        header = [field.strip().lower() for field in rows[0]]
        missing = [c for c in CSV_COLUMNS[:2] if c not in header]
        if missing:
            raise DatasetError(
                f"ImageFolder: {name} line 1 (the header: {','.join(rows[0])}) lacks the column(s) "
                f"{', '.join(missing)}: {fix_header}"
            )
        index = {column: header.index(column) for column in CSV_COLUMNS if column in header}
        has_split = "split" in index
        width = max(index.values()) + 1
        entries, seen = [], {}
        for line, fields in enumerate(rows[1:], start=2):
            if not any(field.strip() for field in fields):
                continue
            where = f"ImageFolder: {name} line {line}"
            if len(fields) < width:
                raise DatasetError(
                    f"{where} has {len(fields)} field(s), fewer than the {len(header)} columns of the header "
                    f"({','.join(rows[0])}): complete the row or delete it ({DOC})"
                )
            rel = fields[index["path"]].strip()
            classname = fields[index["classname"]].strip()
            split = fields[index["split"]].strip().lower() if has_split else None
            if not rel:
                raise DatasetError(f"{where}: the path is empty: fill it in or delete the row ({DOC})")
            if not class_key(classname):
                raise DatasetError(f"{where}: the classname of {rel} is empty: fill it in or delete the row ({DOC})")
            if has_split and split not in SPLITS:
                raise DatasetError(
                    f"{where}: the split {fields[index['split']].strip()!r} is not train, val or test: fix it, or "
                    f"drop the split column to have the images split automatically ({DOC})"
                )
            impath = osp.normpath(osp.join(base, osp.expanduser(rel)))
            if impath in seen:
                raise DatasetError(f"{where} lists {rel} again (line {seen[impath]}): list each image once ({DOC})")
            seen[impath] = line
            if not osp.isfile(impath):
                raise ImageNotFoundError(
                    f"{where} names {impath}, which is not an existing file: fix the path (relative to {base}) or "
                    f"delete the row ({DOC})"
                )
            entries.append((impath, classname, split, line))
        if not entries:
            raise DatasetError(f"ImageFolder: {path} lists no image: add rows path,classname[,split] below the "
                               f"header ({DOC})")
        if has_split:
            present = {split for _, _, split, _ in entries}
            for needed in ("train", "test"):
                if needed not in present:
                    raise DatasetError(
                        f"ImageFolder: {name} has no row with split {needed}: give the {needed} images, or drop the "
                        f"split column to have the images split automatically ({DOC})"
                    )
            train_keys = {class_key(c) for _, c, split, _ in entries if split == "train"}
            for _, classname, split, line in entries:
                if split != "train" and class_key(classname) not in train_keys:
                    raise DatasetError(
                        f"ImageFolder: {name} line {line}: class {classname!r} is in {split} but has no train row: "
                        f"add training images of it, or remove its {split} rows ({DOC})"
                    )
        names = OrderedDict()
        for _, classname, _, _ in entries:
            names.setdefault(classname, None)
        self.classes = self._class_order(list(names), name)
        return [(impath, classname, split) for impath, classname, split, _ in entries]

    # -- class names and labels -----------------------------------------------------------------

    def _class_order(self, names, where) -> "OrderedDict[str, str]":
        """``{name as found: class name}`` in label order (``classnames.txt``'s, else sorted ``names``)."""
        distinct = OrderedDict()
        for name in sorted(names):
            key = class_key(name)
            if key in distinct:
                raise DatasetError(
                    f"ImageFolder: {where} has the classes {distinct[key]!r} and {name!r}, which give the same class "
                    f"name {class_text(name)!r}: merge or rename one of them ({DOC})"
                )
            distinct.setdefault(key, name)
        path = osp.join(self.dataset_dir, CLASSNAMES_FILE)
        if not osp.isfile(path):
            return OrderedDict((name, class_text(name)) for name in distinct.values())
        lines = []
        with open(path, encoding="utf-8-sig") as f:
            for number, text in enumerate(f, start=1):
                if text.strip():
                    lines.append((number, " ".join(text.split())))
        first = {}
        for number, text in lines:
            key = class_key(text)
            if key in first:
                raise DatasetError(
                    f"ImageFolder: {path} line {number} repeats the class {text!r} of line {first[key]}: list each "
                    f"class once ({DOC})"
                )
            first[key] = number
        extra = [text for _, text in lines if class_key(text) not in distinct]
        absent = [name for key, name in distinct.items() if key not in first]
        if extra or absent:
            problems = []
            if extra:
                problems.append(f"it lists {short_list(map(repr, extra))}, which are not among them")
            if absent:
                problems.append(f"it misses {short_list(map(repr, absent))}")
            raise DatasetError(
                f"ImageFolder: {path} has other classes than {where}: {'; '.join(problems)}; write one line per "
                f"class (its folder or CSV name, '_' and '-' may be spaces), in label order ({DOC})"
            )
        return OrderedDict((distinct[class_key(text)], text) for _, text in lines)

    def _datum(self, impath, name):
        label = self._labels[name]
        return Datum(impath=impath, label=label, classname=self.classes[name])

    # -- the split --------------------------------------------------------------------------------

    def _split(self, entries):
        """``(train, val, test)`` lists of Datum from ``entries`` (module docstring)."""
        self._labels = {name: label for label, name in enumerate(self.classes)}
        if entries[0][2] is not None:  # the layout gives the split
            parts = {split: [self._datum(p, name) for p, name, s in entries if s == split] for split in SPLITS}
            if not parts["val"]:
                parts["train"], parts["val"] = self._carve_val(parts["train"])
            return parts["train"], parts["val"], parts["test"]

        fresh = self._split_per_class(entries)
        prefix = self.dataset_dir + os.sep
        for folder in dict.fromkeys((self.dataset_dir, self.store_dir)):
            path = osp.join(folder, self.split_file)
            if osp.isfile(path):
                return self._read_saved_split(path, prefix, fresh)
        path = osp.join(self.store_dir, self.split_file)
        _LOG.info("ImageFolder: splitting %s once into %.0f%% train, %.0f%% val and %.0f%% test per class (fixed "
                  "seed %d); the split is saved to %s and read by every later run", self.source, 100 * P_TRN,
                  100 * P_VAL, 100 * (1 - P_TRN - P_VAL), SPLIT_SEED, path)
        self._make_dir(self.store_dir)
        save_split(*fresh, path, prefix)
        return fresh

    def _carve_val(self, train):
        """20% of each class's training images as val (CoOp's ``split_trainval``, fixed seed)."""
        counts = OrderedDict()
        for item in train:
            counts[item.classname] = counts.get(item.classname, 0) + 1
        small = [f"{name!r} ({n})" for name, n in counts.items() if round(n * P_VAL) < 1]
        if small:
            raise DatasetError(
                f"ImageFolder: {self.source} has no val split and class(es) {short_list(small)} have too few training "
                f"images to hold out {P_VAL:.0%} as val (3 needed): add training images, or give val images "
                f"({'val/<class>/ folders' if self.layout == 'splits' else 'rows with split val'}) ({DOC})"
            )
        _LOG.info("ImageFolder: %s has no val split: %.0f%% of each class's training images are used as val "
                  "(fixed seed %d, the same every run)", self.source, 100 * P_VAL, SPLIT_SEED)
        return split_trainval(train, p_val=P_VAL, rng=random.Random(SPLIT_SEED))

    def _split_per_class(self, entries):
        """CoOp's 50/20/30 split of every class (``read_and_split_data``), shuffled with :data:`SPLIT_SEED`."""
        rng = random.Random(SPLIT_SEED)
        by_class = OrderedDict((name, []) for name in self.classes)
        for impath, name, _ in entries:
            by_class[name].append(impath)
        train, val, test = [], [], []
        for name, images in by_class.items():
            images = list(images)
            rng.shuffle(images)
            n_train, n_val = round(len(images) * P_TRN), round(len(images) * P_VAL)
            if not (n_train > 0 and n_val > 0 and len(images) - n_train - n_val > 0):
                raise DatasetError(
                    f"ImageFolder: class {name!r} has {len(images)} image(s), too few to split into train / val / "
                    f"test ({P_TRN:.0%} / {P_VAL:.0%} / {1 - P_TRN - P_VAL:.0%}; 4 needed): add images of it, or give "
                    f"the split yourself (train/ val/ test/ folders or a split column) ({DOC})"
                )
            train.extend(self._datum(p, name) for p in images[:n_train])
            val.extend(self._datum(p, name) for p in images[n_train:n_train + n_val])
            test.extend(self._datum(p, name) for p in images[n_train + n_val:])
        return train, val, test

    def _read_saved_split(self, path, prefix, fresh):
        """The split file written by an earlier run; a warning when the folder has changed since."""
        try:
            saved = read_split(path, prefix)
        except ImageNotFoundError as err:
            raise ImageNotFoundError(
                f"{err}; if you removed images from {self.dataset_dir}, delete {path} (and its {FEWSHOT_DIR}/) to "
                "split the folder again"
            ) from None

        def entries(parts):
            return {(split, d.impath, d.label, d.classname) for split, items in zip(SPLITS, parts) for d in items}

        if entries(saved) != entries(fresh):
            on_disk = {d.impath for items in fresh for d in items}
            in_file = {d.impath for items in saved for d in items}
            _LOG.warning(
                "ImageFolder: %s differs from the split %s gives now (%d image(s) not in the file, class names or "
                "labels changed, or the file was edited): the file is used as it is; delete it (and %s/) to split "
                "the folder again", path, self.source, len(on_disk - in_file), FEWSHOT_DIR,
            )
        return saved

    def _check_fewshot_cache(self, picked, full, num_shots, seed) -> None:
        """A few-shot cache sampled from another split (the folder changed since) is refused."""
        for split in ("train", "val"):
            allowed = {(d.impath, d.label, d.classname) for d in full[split]}
            if any((d.impath, d.label, d.classname) not in allowed for d in picked[split]):
                path = fewshot_cache_path(self.split_fewshot_dir, num_shots, seed)
                raise DatasetError(
                    f"ImageFolder: the few-shot cache {path} holds {split} images that are not in the current "
                    f"{split} split (the folder, its classes or its split changed since it was written): delete "
                    f"{self.split_fewshot_dir} to sample again"
                )
