"""Tests for bundled_dassl.data.transforms (Dassl's ``dassl/data/transforms/transforms.py``)."""
import random

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from gopro_prompts.bundled_dassl.config import get_cfg_default
from gopro_prompts.bundled_dassl.data.transforms import (
    AVAI_CHOICES,
    INTERPOLATION_MODES,
    Cutout,
    GaussianNoise,
    InstanceNormalization,
    Random2DTranslation,
    build_transform,
)

pytestmark = pytest.mark.bundled_only(
    reason="tests gopro_prompts.bundled_dassl.data.transforms directly: "
           "the same code on every leg, so the bundled leg runs it")

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Every op that is not an augmentation policy, in Dassl's fixed order.
NON_POLICY_OPS = [
    "random_translation", "random_crop", "random_resized_crop", "random_flip",
    "colorjitter", "randomgrayscale", "gaussian_blur", "cutout", "normalize",
    "gaussian_noise", "instance_norm", "center_crop",
]


def make_cfg(transforms=(), size=(224, 224), interpolation="bilinear"):
    cfg = get_cfg_default()
    cfg.INPUT.TRANSFORMS = list(transforms)
    cfg.INPUT.SIZE = tuple(size)
    cfg.INPUT.INTERPOLATION = interpolation
    return cfg


def printed_lines(capsys):
    return capsys.readouterr().out.splitlines()


def random_image(w=64, h=40, seed=0):
    arr = np.random.RandomState(seed).randint(0, 256, size=(h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr)


def test_coop_train_pipeline_lines_and_ops(capsys):
    cfg = make_cfg(["random_resized_crop", "random_flip", "normalize"], interpolation="bicubic")
    cfg.INPUT.PIXEL_MEAN = CLIP_MEAN
    cfg.INPUT.PIXEL_STD = CLIP_STD
    tfm = build_transform(cfg, is_train=True)
    assert printed_lines(capsys) == [
        "Building transform_train",
        "+ random resized crop (size=(224, 224), scale=(0.08, 1.0))",
        "+ random flip",
        "+ to torch tensor of range [0, 1]",
        f"+ normalization (mean={CLIP_MEAN}, std={CLIP_STD})",
    ]
    ops = tfm.transforms
    assert [type(op) for op in ops] == [
        T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    rrc = ops[0]
    assert rrc.size == (224, 224) and rrc.scale == (0.08, 1.0)
    assert rrc.ratio == pytest.approx((3 / 4, 4 / 3))
    assert rrc.interpolation == T.InterpolationMode.BICUBIC
    assert ops[3].mean == CLIP_MEAN and ops[3].std == CLIP_STD
    out = tfm(random_image())
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32


def test_all_train_ops_fixed_order_whatever_the_list_order(capsys):
    expected_lines = [
        "Building transform_train",
        "+ random translation",
        "+ random crop (padding = 4)",
        "+ random resized crop (size=(32, 32), scale=(0.08, 1.0))",
        "+ random flip",
        "+ color jitter (brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)",
        "+ random gray scale",
        "+ gaussian blur (kernel=21)",
        "+ to torch tensor of range [0, 1]",
        "+ cutout (n_holes=1, length=16)",
        "+ normalization (mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])",
        "+ gaussian noise (mean=0.0, std=0.15)",
        "+ instance normalization",
    ]
    expected_types = [
        Random2DTranslation, T.RandomCrop, T.RandomResizedCrop, T.RandomHorizontalFlip,
        T.ColorJitter, T.RandomGrayscale, T.RandomApply, T.ToTensor, Cutout, T.Normalize,
        GaussianNoise, InstanceNormalization,
    ]
    orders = [list(NON_POLICY_OPS), list(reversed(NON_POLICY_OPS))]
    shuffled = list(NON_POLICY_OPS)
    random.Random(3).shuffle(shuffled)
    orders.append(shuffled)
    for order in orders:
        tfm = build_transform(make_cfg(order, size=(32, 32)), is_train=True)
        assert printed_lines(capsys) == expected_lines, order
        assert [type(op) for op in tfm.transforms] == expected_types, order
    # gaussian blur: kernel GB_K applied with probability GB_P
    blur = tfm.transforms[6]
    assert blur.p == 0.5 and blur.transforms[0].kernel_size == (21, 21)
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    out = tfm(random_image(48, 48))
    assert out.shape == (3, 32, 32)


def test_plain_resize_when_no_crop_and_center_crop_ignored_at_train(capsys):
    cfg = make_cfg(["center_crop", "random_flip"], size=(24, 32), interpolation="nearest")
    tfm = build_transform(cfg, is_train=True)
    assert printed_lines(capsys) == [
        "Building transform_train",
        "+ resize to 24x32",
        "+ random flip",
        "+ to torch tensor of range [0, 1]",
    ]
    resize = tfm.transforms[0]
    assert isinstance(resize, T.Resize)
    assert tuple(resize.size) == (24, 32)
    assert resize.interpolation == T.InterpolationMode.NEAREST
    # Resize to exactly (H, W), aspect ratio not kept.
    assert tfm(random_image(64, 40)).shape == (3, 24, 32)


def test_test_pipeline_resize_shorter_side_then_center_crop(capsys):
    cfg = make_cfg(["random_resized_crop", "random_flip", "normalize", "instance_norm"],
                   size=(24, 32), interpolation="bicubic")
    tfm = build_transform(cfg, is_train=False)
    assert printed_lines(capsys) == [
        "Building transform_test",
        "+ resize the smaller edge to 32",
        "+ 24x32 center crop",
        "+ to torch tensor of range [0, 1]",
        "+ normalization (mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])",
        "+ instance normalization",
    ]
    img = random_image(64, 40)
    out = tfm(img)
    assert out.shape == (3, 24, 32)
    # Same as doing it by hand: shorter side (40) -> 32 keeping aspect, centre crop.
    manual = TF.resize(img, 32, interpolation=T.InterpolationMode.BICUBIC)
    assert manual.size == (51, 32)
    manual = TF.to_tensor(TF.center_crop(manual, [24, 32]))
    manual = TF.normalize(manual, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    c = manual.shape[0]
    flat = manual.reshape(c, -1)
    manual = (manual - flat.mean(1).view(c, 1, 1)) / (flat.std(1).view(c, 1, 1) + 1e-8)
    assert torch.allclose(out, manual, atol=1e-5)


def test_test_pipeline_without_normalize_is_deterministic(capsys):
    tfm = build_transform(make_cfg(["random_flip"], size=(16, 16)), is_train=False)
    img = random_image(30, 20)
    torch.manual_seed(0)
    a = tfm(img)
    torch.manual_seed(1)
    b = tfm(img)
    assert torch.equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0


def test_no_transform_returns_none_with_note(capsys):
    cfg = make_cfg(["normalize"])
    cfg.INPUT.NO_TRANSFORM = True
    assert build_transform(cfg, is_train=True) is None
    assert build_transform(cfg, is_train=False) is None
    assert printed_lines(capsys) == ["Note: no transform is applied!"] * 2


def test_choices_argument_overrides_input_transforms(capsys):
    cfg = make_cfg(["random_flip"], size=(16, 16))
    tfm = build_transform(cfg, is_train=True, choices=["normalize"])
    assert [type(op) for op in tfm.transforms] == [T.Resize, T.ToTensor, T.Normalize]


def test_unknown_transform_name_is_a_clear_error():
    with pytest.raises(ValueError, match="random_flipp") as info:
        build_transform(make_cfg(["random_flipp"]), is_train=True)
    msg = str(info.value)
    assert "INPUT.TRANSFORMS" in msg
    for name in AVAI_CHOICES:
        assert name in msg


def test_interpolation_modes_and_unknown_interpolation():
    assert INTERPOLATION_MODES == {
        "bilinear": T.InterpolationMode.BILINEAR,
        "bicubic": T.InterpolationMode.BICUBIC,
        "nearest": T.InterpolationMode.NEAREST,
    }
    with pytest.raises(ValueError, match="lanczos.*bilinear"):
        build_transform(make_cfg([], interpolation="lanczos"), is_train=False)


def test_policies_use_torchvision_equivalents(capsys):
    cfg = make_cfg(["randaugment2", "svhn_policy", "randaugment", "imagenet_policy",
                    "randaugment_fixmatch", "cifar10_policy"], size=(32, 32))
    tfm = build_transform(cfg, is_train=True)
    assert printed_lines(capsys) == [
        "Building transform_train",
        "+ resize to 32x32",
        "+ imagenet policy",
        "+ cifar10 policy",
        "+ svhn policy",
        "+ randaugment (n=2, m=10)",
        "+ randaugment_fixmatch (n=2)",
        "+ randaugment2 (n=2)",
        "+ to torch tensor of range [0, 1]",
    ]
    ops = tfm.transforms
    assert [op.policy for op in ops[1:4]] == [
        T.AutoAugmentPolicy.IMAGENET, T.AutoAugmentPolicy.CIFAR10, T.AutoAugmentPolicy.SVHN]
    assert ops[4].num_ops == 2 and ops[4].magnitude == 10
    assert all(isinstance(op, T.RandAugment) for op in ops[4:7])
    torch.manual_seed(0)
    assert tfm(random_image(40, 40)).shape == (3, 32, 32)


def test_random2d_translation_uses_python_random():
    img = random_image(20, 10)
    tr = Random2DTranslation(height=8, width=16, p=1.0)
    random.seed(5)
    out = tr(img)
    assert out.size == (16, 8)
    random.seed(5)
    random.uniform(0, 1)  # the coin
    x1 = int(round(random.uniform(0, 18 - 16)))
    y1 = int(round(random.uniform(0, 9 - 8)))
    expected = img.resize((18, 9), Image.BILINEAR).crop((x1, y1, x1 + 16, y1 + 8))
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    # p = 0: never translates, plain resize.
    out = Random2DTranslation(height=8, width=16, p=0.0)(img)
    assert np.array_equal(np.asarray(out), np.asarray(img.resize((16, 8), Image.BILINEAR)))


def test_cutout_zeroes_a_clipped_square_with_numpy_rng():
    img = torch.ones(3, 20, 20)
    np.random.seed(0)
    out = Cutout(n_holes=1, length=8)(img)
    np.random.seed(0)
    y, x = np.random.randint(20), np.random.randint(20)
    y1, y2 = max(y - 4, 0), min(y + 4, 20)
    x1, x2 = max(x - 4, 0), min(x + 4, 20)
    assert torch.all(out[:, y1:y2, x1:x2] == 0)
    assert out.sum() == 3 * (400 - (y2 - y1) * (x2 - x1))


def test_gaussian_noise_and_instance_norm():
    img = torch.rand(3, 8, 8)
    assert torch.equal(GaussianNoise(p=0.0)(img), img)
    torch.manual_seed(0)
    noisy = GaussianNoise(mean=1.0, std=0.1, p=1.0)(img)
    assert (noisy - img).mean().item() == pytest.approx(1.0, abs=0.05)
    normed = InstanceNormalization()(img * 5 + 2)
    flat = normed.reshape(3, -1)
    assert torch.allclose(flat.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(flat.std(1), torch.ones(3), atol=1e-5)
