"""Synthetic datasets generated on first use (no download), and SyntheticShapes.

Every synthetic dataset draws its images with the concept world of
``datasets/synthetic_world.py`` (the images the built-in ``tiny-synthetic``
CLIP was pretrained on).  On first use it is generated deterministically under
``DATASET.ROOT/<dataset_dir>/`` as PNG files plus a split file in CoOp's format
(``split_zhou_<Name>.json``), and from then on it is read like every CoOp
dataset: split file, few-shot cache, base / new
subsampling.  A folder made by an older generator (``generator.json``) is
regenerated, and its stale few-shot caches are removed.

The images are seen through a *downstream camera* (``faded``: lower contrast,
warm cast; ``synthetic_world.CAMERAS``) that the pretraining never saw, as real
downstream datasets differ from CLIP's web images: zero-shot CLIP loses some
accuracy to it, and few labelled shots can adapt to it.

Styles are the domains: ``DATASET.SOURCE_DOMAINS`` restricts train / val to
those styles and ``DATASET.TARGET_DOMAINS`` the test set (Dassl-style domain
generalisation, e.g. train on ``photo``, test on ``sketch cartoon``); without
them a dataset uses its own default styles.

``SyntheticShapes`` is the embedded offline default: 12 classes (red / green /
blue / yellow x circle / square / triangle) in three styles.  The benchmark
datasets are in ``datasets/synthetic_benchmarks.py``.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

import torch
from PIL import Image

from gopro_prompts.dassl_compat import Datum, get_logger, mkdir_if_missing, write_json
from gopro_prompts.registry import register_dataset
from gopro_prompts.datasets import synthetic_world as world
from gopro_prompts.datasets.coop_common import CoOpFewShotDataset, DatasetError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs sharing a folder must not start together
    fcntl = None

logger = get_logger("data.synthetic")

#: Bump when the images a generator writes change: older folders are regenerated.
GENERATOR_VERSION = 3
GENERATOR_FILE = "generator.json"

#: SyntheticShapes' classes, in its historical label order.
SHAPES_DEMO_CLASSES = [f"{c} {s}" for s in ("circle", "square", "triangle")
                       for c in ("red", "green", "blue", "yellow")]
#: kept for callers of the first version of this module
STYLES = ("photo", "sketch", "cartoon")


def classnames():
    """SyntheticShapes' class names (label order)."""
    return list(SHAPES_DEMO_CLASSES)


def _image_name(style, classname, split, k):
    return f"{style}/{classname.replace(' ', '_')}/{split}_{k:03d}.png"


def generate(dataset_dir: str, split_path: str, class_names: Sequence[str], styles: Sequence[str],
             per_style: Dict[str, int], seed: int, batch: int = 512, camera: str = "faded") -> None:
    """Write every image and the split file of a synthetic dataset (deterministic per seed).

    Objects get a random texture per image (a nuisance); pattern classes fix it.
    Every image is seen through ``camera`` (``synthetic_world.CAMERAS``).
    The split file is written last (atomically), so an interrupted generation
    is redone on the next use.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small ops: one thread is faster, and immune to oversubscription
    try:
        _generate(dataset_dir, split_path, class_names, styles, per_style, seed, batch, camera)
    finally:
        torch.set_num_threads(threads)


def _generate(dataset_dir, split_path, class_names, styles, per_style, seed, batch, camera):
    gen = torch.Generator().manual_seed(seed)
    image_dir = osp.join(dataset_dir, "images")
    jobs = []  # (relative image path, scene)
    splits = {"train": [], "val": [], "test": []}
    for split in ("train", "val", "test"):
        for label, name in enumerate(class_names):
            for style in styles:
                for k in range(per_style[split]):
                    texture = world.TEXTURES[int(torch.randint(len(world.TEXTURES), (1,), generator=gen))]
                    rel = _image_name(style, name, split, k)
                    jobs.append((rel, world.scene_of_class(name, style, texture)))
                    splits[split].append([rel, label, name])
    for folder in sorted({osp.dirname(rel) for rel, _ in jobs}):
        mkdir_if_missing(osp.join(image_dir, folder))
    for start in range(0, len(jobs), batch):
        chunk = jobs[start:start + batch]
        images = world.render_scenes([scene for _, scene in chunk], gen, camera=camera)
        for (rel, _), img in zip(chunk, images):
            Image.fromarray(img.permute(1, 2, 0).numpy(), "RGB").save(osp.join(image_dir, rel))
    tmp = split_path + ".tmp"
    write_json(splits, tmp)
    os.replace(tmp, split_path)


@contextlib.contextmanager
def _generation_lock(dataset_dir):
    """Hold an exclusive lock on ``<dataset_dir>.lock`` (runs started together generate a folder once)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    mkdir_if_missing(osp.dirname(osp.abspath(dataset_dir)))
    with open(osp.abspath(dataset_dir) + ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class SyntheticDataset(CoOpFewShotDataset):
    """A CoOp-style dataset whose folder is generated on first use.

    Subclasses set ``dataset_dir``, ``split_file``, :meth:`class_names`,
    ``styles`` (generated), ``default_train_styles`` / ``default_test_styles``
    (used when SOURCE_DOMAINS / TARGET_DOMAINS are empty; ``None`` = all),
    ``per_style`` (images per class, style and split) and ``generator_seed``.
    Datasets sharing a folder must share all of these except the defaults.
    """

    image_dir_name = "images"
    styles: Sequence[str] = world.STYLES
    default_train_styles: Optional[Sequence[str]] = None
    default_test_styles: Optional[Sequence[str]] = None
    per_style = {"train": 16, "val": 4, "test": 10}
    generator_seed = 0
    #: the downstream camera (see ``synthetic_world.CAMERAS``)
    camera = "faded"

    @classmethod
    def class_names(cls) -> List[str]:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    @property
    def domains(self):
        return list(self.styles)

    def __init__(self, cfg):
        name = type(self).__name__
        source = list(cfg.DATASET.SOURCE_DOMAINS)
        target = list(cfg.DATASET.TARGET_DOMAINS)
        for domain in source + target:
            if domain not in self.styles:
                raise DatasetError(
                    f"unknown {name} domain {domain!r} in DATASET.SOURCE_DOMAINS / TARGET_DOMAINS: "
                    f"use some of {', '.join(self.styles)}"
                )
        self._train_styles = source or list(self.default_train_styles or self.styles)
        self._test_styles = target or list(self.default_test_styles or self.styles)
        super().__init__(cfg)

    # -- generation ----------------------------------------------------------
    def _generator_info(self):
        return {"version": GENERATOR_VERSION, "seed": self.generator_seed, "classes": self.class_names(),
                "styles": list(self.styles), "per_style": dict(self.per_style), "camera": self.camera}

    def check_files(self, cfg):
        if osp.exists(self.dataset_dir) and not osp.isdir(self.dataset_dir):
            raise DatasetError(f"{self.dataset_dir} is a file: DATASET.ROOT must be a folder")
        if self._is_current():  # the common case: no lock needed to read
            return
        with _generation_lock(self.dataset_dir):
            # another run may have generated the folder while this one waited for the lock
            if not self._is_current():
                self._regenerate()

    def _is_current(self) -> bool:
        if not osp.exists(self.split_path):
            return False
        try:
            with open(osp.join(self.dataset_dir, GENERATOR_FILE)) as f:
                return json.load(f) == self._generator_info()
        except (OSError, ValueError):
            return False

    def _regenerate(self):
        info_path = osp.join(self.dataset_dir, GENERATOR_FILE)
        info = self._generator_info()
        if osp.exists(self.split_path):
            logger.warning("%s under %s was made by another generator version: regenerating it",
                           type(self).__name__, self.dataset_dir)
            for cache in glob.glob(osp.join(self.dataset_dir, "split_fewshot*", "shot_*-seed_*.pkl")):
                os.remove(cache)  # they list images of the old generation
        logger.info("Generating the %s dataset under %s", type(self).__name__, self.dataset_dir)
        mkdir_if_missing(self.dataset_dir)
        generate(self.dataset_dir, self.split_path, self.class_names(), self.styles, self.per_style,
                 self.generator_seed, camera=self.camera)
        tmp = info_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(info, f, indent=1)
        os.replace(tmp, info_path)

    # -- styles as domains ----------------------------------------------------
    def load_split(self):
        train, val, test = super().load_split()
        if sorted(self._train_styles) != sorted(self.styles):
            # few-shot samples of a style subset get their own cache folder
            self.split_fewshot_dir = osp.join(
                self.dataset_dir, "split_fewshot_" + "-".join(sorted(self._train_styles)))
            mkdir_if_missing(self.split_fewshot_dir)
        train = self._with_domains(train, self._train_styles)
        val = self._with_domains(val, self._train_styles)
        test = self._with_domains(test, self._test_styles)
        return train, val, test

    def _with_domains(self, items, keep):
        """Set each Datum's domain from its style folder; keep only the ``keep`` styles."""
        out = []
        for item in items:
            style = osp.basename(osp.dirname(osp.dirname(item.impath)))  # images/<style>/<class>/x
            if style not in keep:
                continue
            out.append(Datum(impath=item.impath, label=item.label, domain=self.styles.index(style),
                             classname=item.classname))
        return out


@register_dataset
class SyntheticShapes(SyntheticDataset):
    """The embedded offline default: 12 coloured shapes in three styles (see module docstring)."""

    dataset_dir = "synthetic_shapes"
    split_file = "split_zhou_SyntheticShapes.json"
    styles = STYLES
    #: images per class and style in each split
    per_style = {"train": 6, "val": 2, "test": 20}

    @classmethod
    def class_names(cls):
        return list(SHAPES_DEMO_CLASSES)
