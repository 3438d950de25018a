"""Our dataset wrapper (trainers/data.py) on the selected backend: an unreadable image is named."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gopro_prompts.dassl_compat import Datum, build_transform
from gopro_prompts.trainers.base import ClipTrainer
from gopro_prompts.trainers.config import default_cfg
from gopro_prompts.trainers.data import DatasetWrapper
from gopro_prompts.trainers.gopro_views import GOProDatasetWrapper


def _cfg():
    cfg = default_cfg()
    cfg.INPUT.SIZE = (16, 16)
    return cfg


def _item(path):
    return Datum(impath=str(path), label=0, classname="x")


@pytest.mark.parametrize("wrapper_cls, is_train", [(DatasetWrapper, False), (DatasetWrapper, True),
                                                   (GOProDatasetWrapper, True), (GOProDatasetWrapper, False)])
def test_a_corrupt_or_missing_image_is_named_with_the_fix(tmp_path, wrapper_cls, is_train):
    cfg = _cfg()
    bad, gone = tmp_path / "bad.png", tmp_path / "gone.png"
    bad.write_bytes(b"not an image")
    gone.write_bytes(b"")
    items = [_item(bad), _item(gone)]  # Datum checks that the file exists
    gone.unlink()  # ... then it is deleted before the loader reads it
    data = wrapper_cls(cfg, items, transform=build_transform(cfg, is_train=is_train), is_train=is_train)
    with pytest.raises(OSError) as exc:
        data[0]
    assert str(exc.value).startswith(f'Cannot read image "{bad}"') and "replace or remove it" in str(exc.value)
    with pytest.raises(FileNotFoundError) as exc:
        data[1]
    assert str(gone) in str(exc.value) and "check DATASET.ROOT and the split file" in str(exc.value)


def test_an_error_that_is_not_the_image_s_passes_unchanged(tmp_path):
    cfg = _cfg()
    path = tmp_path / "ok.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8), "RGB").save(path)

    def broken(img):
        raise ValueError("a transform bug")

    data = DatasetWrapper(cfg, [_item(path)], transform=broken, is_train=False)
    with pytest.raises(ValueError, match="^a transform bug$"):
        data[0]
    good = DatasetWrapper(cfg, [_item(path)], transform=build_transform(cfg, is_train=False), is_train=False)
    assert tuple(good[0]["img"].shape) == (3, 16, 16)


def test_every_trainer_builds_its_loaders_with_our_wrapper():
    from gopro_prompts.registry import TRAINERS, register_all

    register_all()
    for name, cls in TRAINERS.items():
        assert issubclass(cls, ClipTrainer), name
        assert issubclass(cls.DATASET_WRAPPER, DatasetWrapper), name
