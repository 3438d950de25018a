"""Synthetic benchmarks with the protocols of the real ones, on the tiny-synthetic CLIP's world.

All are generated on first use (see ``datasets/synthetic.py``) from the
concepts of ``datasets/synthetic_world.py``, which the built-in
``tiny-synthetic`` CLIP saw during pretraining:

* ``SyntheticObjects`` -- 64 classes ``"<colour> <shape>"`` (8 x 8), photo
  style, random fill texture as a nuisance.  *Base-to-new*: the class order
  makes CoOp's base half and new half each use every colour and every shape,
  so new classes are unseen *combinations* of words the prompt learner saw.
  It is also the source dataset (the "ImageNet") of the cross-dataset and
  domain-generalisation protocols.
* ``SyntheticObjectsSketch`` / ``SyntheticObjectsCartoon`` /
  ``SyntheticObjectsPainting`` -- *domain generalisation*: the same 64 classes
  in another style (the "ImageNet-Sketch / -R"); they read the same folder as
  SyntheticObjects and keep only their style.
* ``SyntheticPatterns`` -- *cross-dataset*: 32 classes ``"<colour> <texture>
  pattern"`` (8 x 4), full-frame texture swatches: another concept family
  (the "DTD").

Every dataset also accepts ``DATASET.SOURCE_DOMAINS`` / ``TARGET_DOMAINS``
(``photo sketch cartoon painting``) to pick other styles.
"""
from __future__ import annotations

from gopro_prompts.registry import register_dataset
from gopro_prompts.datasets import synthetic_world as world
from gopro_prompts.datasets.synthetic import SyntheticDataset

#: Images per class, style and split of the benchmark folders.
BENCHMARK_PER_STYLE = {"train": 24, "val": 4, "test": 10}


class _BenchmarkDataset(SyntheticDataset):
    """A benchmark folder: every style generated, photo by default, BENCHMARK_PER_STYLE images."""

    styles = world.STYLES
    default_train_styles = ("photo",)
    default_test_styles = ("photo",)
    per_style = BENCHMARK_PER_STYLE


@register_dataset
class SyntheticObjects(_BenchmarkDataset):
    """64 colour x shape classes in photo style (base-to-new; source of XD / DG)."""

    dataset_dir = "synthetic_objects"
    split_file = "split_zhou_SyntheticObjects.json"

    @classmethod
    def class_names(cls):
        return world.object_classnames()


class _SyntheticObjectsInStyle(SyntheticObjects):
    """SyntheticObjects' folder, one other style (a domain-generalisation target)."""

    style = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.default_train_styles = (cls.style,)
        cls.default_test_styles = (cls.style,)


@register_dataset
class SyntheticObjectsSketch(_SyntheticObjectsInStyle):
    """SyntheticObjects' classes as sketches (domain generalisation target)."""

    style = "sketch"


@register_dataset
class SyntheticObjectsCartoon(_SyntheticObjectsInStyle):
    """SyntheticObjects' classes as cartoons (domain generalisation target)."""

    style = "cartoon"


@register_dataset
class SyntheticObjectsPainting(_SyntheticObjectsInStyle):
    """SyntheticObjects' classes as paintings (domain generalisation target)."""

    style = "painting"


@register_dataset
class SyntheticPatterns(_BenchmarkDataset):
    """32 colour x texture swatch classes in photo style (cross-dataset target)."""

    dataset_dir = "synthetic_patterns"
    split_file = "split_zhou_SyntheticPatterns.json"

    @classmethod
    def class_names(cls):
        return world.pattern_classnames()
