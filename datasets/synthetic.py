"""SyntheticShapes: the embedded offline dataset (no download).

Coloured shapes ("red circle", "blue triangle", ...) drawn procedurally in
three visual styles -- ``photo``, ``sketch`` and ``cartoon`` -- which are the
dataset's domains.  On first use it is generated deterministically under
``DATASET.ROOT/synthetic_shapes/`` as PNG files plus a split file in CoOp's
format (``split_zhou_SyntheticShapes.json``), and from then on it is read like
every CoOp dataset: split file, few-shot cache, base / new subsampling.

``DATASET.SOURCE_DOMAINS`` restricts train / val to those styles and
``DATASET.TARGET_DOMAINS`` restricts the test set, for domain-generalisation
runs (e.g. train on ``photo``, test on ``sketch cartoon``).
"""
from __future__ import annotations

import math
import os.path as osp

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dassl_compat import DATASET_REGISTRY, Datum, get_logger, mkdir_if_missing, write_json
from datasets.coop_common import CoOpFewShotDataset
from user_errors import UserError

logger = get_logger("data.synthetic")

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
}
SHAPES = ("circle", "square", "triangle")
STYLES = ("photo", "sketch", "cartoon")
IMAGE_SIZE = 64
#: images per class and style in each split
PER_STYLE = {"train": 6, "val": 2, "test": 4}
GENERATOR_SEED = 0


def classnames():
    return [f"{colour} {shape}" for shape in SHAPES for colour in COLOURS]


def _shape_points(shape, cx, cy, r, angle):
    if shape == "circle":
        return None
    n = {"square": 4, "triangle": 3}[shape]
    return [
        (cx + r * math.cos(angle + 2 * math.pi * k / n), cy + r * math.sin(angle + 2 * math.pi * k / n))
        for k in range(n)
    ]


def render(colour, shape, style, rng):
    """One image of ``colour shape`` in ``style`` (deterministic given ``rng``)."""
    s = IMAGE_SIZE
    rgb = np.array(COLOURS[colour], dtype=np.float64)
    jitter = rng.uniform(-25, 25, size=3)
    fill = tuple(int(v) for v in np.clip(rgb + jitter, 0, 255))
    if style == "photo":
        base = rng.uniform(60, 200, size=3)
        ramp = np.linspace(-30, 30, s)[None, :, None] * rng.choice([-1, 1])
        noise = rng.normal(0, 12, size=(s, s, 3))
        bg = np.clip(base[None, None, :] + ramp + noise, 0, 255).astype(np.uint8)
        img = Image.fromarray(bg, "RGB")
    elif style == "sketch":
        img = Image.new("RGB", (s, s), tuple(int(v) for v in rng.uniform(235, 255, size=3)))
    else:  # cartoon: flat pastel background
        img = Image.new("RGB", (s, s), tuple(int(v) for v in rng.uniform(170, 240, size=3)))
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.36) * s
    cx, cy = rng.uniform(r + 2, s - r - 2, size=2)
    points = _shape_points(shape, cx, cy, r, rng.uniform(0, 2 * math.pi))
    box = [cx - r, cy - r, cx + r, cy + r]
    if style == "photo":
        kwargs = dict(fill=fill)
    elif style == "sketch":
        kwargs = dict(fill=None, outline=fill, width=int(rng.integers(2, 4)))
    else:
        kwargs = dict(fill=fill, outline=(20, 20, 20), width=4)
    if points is None:
        draw.ellipse(box, **kwargs)
    else:
        draw.polygon(points, **kwargs)
    if style == "photo":
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0))))
        arr = np.asarray(img).astype(np.float64) + rng.normal(0, 6, size=(s, s, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return img


def generate(dataset_dir, split_path, seed=GENERATOR_SEED):
    """Write every image and the split file (deterministic per seed)."""
    rng = np.random.default_rng(seed)
    image_dir = osp.join(dataset_dir, "images")
    splits = {"train": [], "val": [], "test": []}
    for label, name in enumerate(classnames()):
        colour, shape = name.split(" ")
        for style in STYLES:
            folder = osp.join(image_dir, style, name.replace(" ", "_"))
            mkdir_if_missing(folder)
            for split, count in PER_STYLE.items():
                for k in range(count):
                    rel = f"{style}/{name.replace(' ', '_')}/{split}_{k:03d}.png"
                    render(colour, shape, style, rng).save(osp.join(image_dir, rel))
                    splits[split].append([rel, label, name])
    write_json(splits, split_path)


@DATASET_REGISTRY.register()
class SyntheticShapes(CoOpFewShotDataset):
    """Coloured shapes in three styles, generated on first use (see module docstring)."""

    dataset_dir = "synthetic_shapes"
    image_dir_name = "images"
    split_file = "split_zhou_SyntheticShapes.json"
    domains = list(STYLES)

    def __init__(self, cfg):
        self._source = list(cfg.DATASET.SOURCE_DOMAINS)
        self._target = list(cfg.DATASET.TARGET_DOMAINS)
        for domain in self._source + self._target:
            if domain not in STYLES:
                raise UserError(
                    f"unknown SyntheticShapes domain {domain!r}: use some of {', '.join(STYLES)}"
                )
        super().__init__(cfg)

    def check_files(self, cfg):
        if osp.exists(self.split_path):
            return
        if osp.exists(self.dataset_dir) and not osp.isdir(self.dataset_dir):
            raise UserError(f"{self.dataset_dir} is a file: DATASET.ROOT must be a folder")
        logger.info("Generating the SyntheticShapes dataset under %s", self.dataset_dir)
        generate(self.dataset_dir, self.split_path)

    def load_split(self):
        train, val, test = super().load_split()
        if self._source:
            # few-shot samples of a style subset get their own cache folder
            self.split_fewshot_dir = osp.join(
                self.dataset_dir, "split_fewshot_" + "-".join(sorted(self._source)))
            mkdir_if_missing(self.split_fewshot_dir)
        train = self._with_domains(train, self._source)
        val = self._with_domains(val, self._source)
        test = self._with_domains(test, self._target)
        return train, val, test

    @staticmethod
    def _with_domains(items, keep):
        """Set each Datum's domain from its style folder; keep only ``keep`` styles when given."""
        out = []
        for item in items:
            style = osp.basename(osp.dirname(osp.dirname(item.impath)))  # images/<style>/<class>/x
            if keep and style not in keep:
                continue
            out.append(Datum(impath=item.impath, label=item.label, domain=STYLES.index(style),
                             classname=item.classname))
        return out
