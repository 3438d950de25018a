"""GOPro's three training views come out of the data pipeline (trainers/gopro_views.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from gopro_prompts import train
from gopro_prompts.dassl_compat import Datum, build_transform
from gopro_prompts.trainers.config import default_cfg
from gopro_prompts.trainers.gopro_views import (
    AUGMIX_OPS, AugMixView, GOProDatasetWrapper, augmix_mix, split_train_transform,
)

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
SIZE = 32


def make_cfg(**dataloader):
    cfg = default_cfg()
    cfg.INPUT.SIZE = (SIZE, SIZE)
    cfg.INPUT.INTERPOLATION = "bicubic"
    cfg.INPUT.TRANSFORMS = ["random_resized_crop", "random_flip", "normalize"]
    cfg.INPUT.PIXEL_MEAN = CLIP_MEAN.flatten().tolist()
    cfg.INPUT.PIXEL_STD = CLIP_STD.flatten().tolist()
    for key, value in dataloader.items():
        cfg.DATALOADER[key] = value
    return cfg


def save(tmp_path, name, array):
    path = tmp_path / f"{name}.png"
    Image.fromarray(np.asarray(array, dtype=np.uint8), "RGB").save(path)
    return Datum(impath=str(path), label=0, classname="x")


def halves(tmp_path):
    """Black left half, white right half: crops contain both extremes."""
    a = np.zeros((64, 64, 3), np.uint8)
    a[:, 32:] = 255
    return save(tmp_path, "halves", a)


def wrapper(cfg, data, is_train=True):
    return GOProDatasetWrapper(cfg, data, transform=build_transform(cfg, is_train=is_train), is_train=is_train)


def unnormalise(x):
    return x * CLIP_STD + CLIP_MEAN


def test_split_train_transform_separates_pil_and_tensor_ops():
    tfm = build_transform(make_cfg(), is_train=True)
    pil, tensor = split_train_transform(tfm)
    assert [type(op) for op in pil.transforms] == [T.RandomResizedCrop, T.RandomHorizontalFlip]
    assert [type(op) for op in tensor.transforms] == [T.ToTensor, T.Normalize]
    with pytest.raises(ValueError, match="ToTensor"):
        split_train_transform(T.Compose([T.RandomHorizontalFlip()]))
    with pytest.raises(ValueError, match="Compose"):
        split_train_transform(None)


def test_training_items_hold_three_clip_normalised_views(tmp_path):
    torch.manual_seed(0)
    ds = wrapper(make_cfg(), [halves(tmp_path)])
    lows, highs = [], []
    for _ in range(25):
        item = ds[0]
        assert {"img", "img2", "img3", "label", "domain", "impath", "index"} <= set(item)
        for key in ("img", "img2", "img3"):
            x = item[key]
            assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32
            raw = unnormalise(x)
            # CLIP statistics: a [0, 1] image comes back in [0, 1] (ImageNet statistics or a
            # second normalisation would not); bicubic resampling may overshoot by a hair
            assert raw.min() >= -0.06 and raw.max() <= 1.06, key
            lows.append(raw.min().item())
            highs.append(raw.max().item())
        assert not torch.equal(item["img"], item["img2"]) and not torch.equal(item["img"], item["img3"])
    assert min(lows) < 0.1 and max(highs) > 0.9  # the full range survives (no wrap-around, no rescale)


def test_extra_views_start_from_the_original_views_cropped_image(tmp_path):
    ds = wrapper(make_cfg(), [halves(tmp_path)])
    seen = {}

    def recorder(name):
        def view(img):
            seen[name] = img
            return torch.zeros(1)
        return view

    ds.moco_view, ds.augmix_view = recorder("moco"), recorder("augmix")
    torch.manual_seed(3)
    item = ds[0]
    assert seen["moco"] is seen["augmix"] and seen["moco"].size == (SIZE, SIZE)
    expected = T.Normalize(CLIP_MEAN.flatten().tolist(), CLIP_STD.flatten().tolist())(T.ToTensor()(seen["moco"]))
    assert torch.equal(item["img"], expected)


def test_each_image_gets_its_own_augmix_view(tmp_path):
    """Deliberate fix D2: the official code paired every image with a view of image 0."""
    red = save(tmp_path, "red", np.tile([200, 30, 30], (64, 64, 1)))
    blue = save(tmp_path, "blue", np.tile([30, 30, 200], (64, 64, 1)))
    ds = wrapper(make_cfg(), [red, blue])
    torch.manual_seed(0)
    for _ in range(10):
        r, b = unnormalise(ds[0]["img3"]), unnormalise(ds[1]["img3"])
        assert r[0].mean() > r[2].mean() and b[2].mean() > b[0].mean()


def test_augmix_mix_is_the_official_convex_combination():
    plain = torch.full((3, 2, 2), 1.0)
    chains = [torch.full((3, 2, 2), v) for v in (2.0, 4.0, 8.0)]
    w = torch.tensor([0.5, 0.25, 0.25])
    out = augmix_mix(plain, chains, w, m=0.3)
    assert torch.allclose(out, torch.full((3, 2, 2), 0.3 * 1.0 + 0.7 * (1.0 + 1.0 + 2.0)))


def test_augmix_ops_keep_the_image_size_and_chains_are_mild():
    torch.manual_seed(0)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    assert len(AUGMIX_OPS) == 9
    for op in AUGMIX_OPS:
        out = op(img, 1)
        assert out.size == img.size and out.mode == "RGB", op.__name__
    view = AugMixView((SIZE, SIZE), T.ToTensor())
    x = view(img)
    assert x.shape == (3, SIZE, SIZE) and 0.0 <= x.min() and x.max() <= 1.0 + 1e-6


def test_evaluation_items_have_only_the_original_view(tmp_path):
    ds = wrapper(make_cfg(), [halves(tmp_path)], is_train=False)
    item = ds[0]
    assert "img2" not in item and "img3" not in item and item["img"].shape == (3, SIZE, SIZE)


def test_k_transforms_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="K_TRANSFORMS"):
        wrapper(make_cfg(K_TRANSFORMS=2), [halves(tmp_path)])


def test_the_trainer_loaders_batch_the_views(tmp_path, synthetic_root):
    trainer = train.main(["--trainer", "GOPro", "--output-dir", str(tmp_path),
                          "--no-train", "DATASET.NUM_SHOTS", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "4"])
    batch = next(iter(trainer.train_loader_x))
    for key in ("img", "img2", "img3"):
        assert batch[key].shape == (4, 3, SIZE, SIZE)
    views, labels = trainer.parse_batch_train(batch)
    assert len(views) == 3 and labels.shape == (4,)
    test_batch = next(iter(trainer.test_loader))
    assert "img2" not in test_batch
