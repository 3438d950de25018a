"""Image transforms: ``build_transform`` and ``INTERPOLATION_MODES``.

Reproduces Dassl 0.6.3's ``dassl.data.transforms``
(``dassl/data/transforms/transforms.py``): the same op names, the same fixed op
order whatever the order of ``INPUT.TRANSFORMS``, the same printed lines and the same RNG sources (Python
``random`` for translation and the noise coin, numpy for cutout, torch for the
torchvision ops and the noise itself).
"""
from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import (
    AutoAugment,
    AutoAugmentPolicy,
    CenterCrop,
    ColorJitter,
    Compose,
    GaussianBlur,
    InterpolationMode,
    Normalize,
    RandAugment,
    RandomApply,
    RandomCrop,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ToTensor,
)

__all__ = [
    "AVAI_CHOICES",
    "INTERPOLATION_MODES",
    "build_transform",
    "Random2DTranslation",
    "Cutout",
    "GaussianNoise",
    "InstanceNormalization",
    "get_interpolation_mode",
]

AVAI_CHOICES = [
    "random_flip",
    "random_resized_crop",
    "normalize",
    "instance_norm",
    "random_crop",
    "random_translation",
    "center_crop",  # accepted; has no effect (test always centre-crops, train never)
    "cutout",
    "imagenet_policy",
    "cifar10_policy",
    "svhn_policy",
    "randaugment",
    "randaugment_fixmatch",
    "randaugment2",
    "gaussian_noise",
    "colorjitter",
    "randomgrayscale",
    "gaussian_blur",
]

INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


def get_interpolation_mode(name):
    """Map ``INPUT.INTERPOLATION`` to torchvision's mode.

    Deliberate improvement: Dassl raises a bare KeyError for an unknown name.
    """
    try:
        return INTERPOLATION_MODES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown INPUT.INTERPOLATION {name!r}: use one of {list(INTERPOLATION_MODES)}"
        ) from None


class Random2DTranslation:
    """With probability ``p``: upscale by 1/8 and crop ``height x width`` at a random offset.

    Otherwise resize to ``height x width``.  Works on PIL images, always with
    bilinear resampling, and draws from Python ``random`` (as Dassl's ``Random2DTranslation``).
    """

    def __init__(self, height, width, p=0.5, interpolation=Image.BILINEAR):
        self.height = height
        self.width = width
        self.p = p
        self.interpolation = interpolation

    def __call__(self, img):
        if random.uniform(0, 1) > self.p:
            return img.resize((self.width, self.height), self.interpolation)
        new_width = int(round(self.width * 1.125))
        new_height = int(round(self.height * 1.125))
        resized = img.resize((new_width, new_height), self.interpolation)
        x1 = int(round(random.uniform(0, new_width - self.width)))
        y1 = int(round(random.uniform(0, new_height - self.height)))
        return resized.crop((x1, y1, x1 + self.width, y1 + self.height))

    def __repr__(self):
        return f"{type(self).__name__}(height={self.height}, width={self.width}, p={self.p})"


class Cutout:
    """Zero ``n_holes`` squares of side ``length`` in a ``[C, H, W]`` tensor (as Dassl's ``Cutout``).

    Centres are uniform over the image (numpy RNG); squares are clipped at the borders.
    """

    def __init__(self, n_holes=1, length=16):
        self.n_holes = n_holes
        self.length = length

    def __call__(self, img):
        h, w = img.size(1), img.size(2)
        mask = np.ones((h, w), np.float32)
        half = self.length // 2
        for _ in range(self.n_holes):
            y = np.random.randint(h)
            x = np.random.randint(w)
            y1, y2 = np.clip(y - half, 0, h), np.clip(y + half, 0, h)
            x1, x2 = np.clip(x - half, 0, w), np.clip(x + half, 0, w)
            mask[y1:y2, x1:x2] = 0.0
        return img * torch.from_numpy(mask).expand_as(img)

    def __repr__(self):
        return f"{type(self).__name__}(n_holes={self.n_holes}, length={self.length})"


class GaussianNoise:
    """With probability ``p`` (Python ``random``) add N(mean, std) noise (torch RNG)."""

    def __init__(self, mean=0.0, std=0.15, p=0.5):
        self.mean = mean
        self.std = std
        self.p = p

    def __call__(self, img):
        if random.uniform(0, 1) > self.p:
            return img
        noise = torch.randn(img.size()) * self.std + self.mean
        return img + noise

    def __repr__(self):
        return f"{type(self).__name__}(mean={self.mean}, std={self.std}, p={self.p})"


class InstanceNormalization:
    """Per-channel ``(x - mean) / (std + 1e-8)`` over the H*W pixels of a ``[C, H, W]`` tensor."""

    def __init__(self, eps=1e-8):
        self.eps = eps

    def __call__(self, img):
        c, h, w = img.shape
        flat = img.reshape(c, h * w)
        mean = flat.mean(1).view(c, 1, 1)
        std = flat.std(1).view(c, 1, 1)
        return (img - mean) / (std + self.eps)

    def __repr__(self):
        return f"{type(self).__name__}()"


class _RandAugmentRandomMagnitude(RandAugment):
    """RandAugment whose magnitude is drawn uniformly (torch RNG) for every image.

    Stands in for Dassl's ``randaugment_fixmatch`` / ``randaugment2`` policies,
    which sample a random strength per op (never used by prompt-learning configs).
    """

    def forward(self, img):
        self.magnitude = int(torch.randint(self.num_magnitude_bins, (1,)).item())
        return super().forward(img)


def _as_size(size):
    """``INPUT.SIZE`` as an ``(H, W)`` tuple of ints."""
    return tuple(int(s) for s in size)


def build_transform(cfg, is_train=True, choices=None):
    """Build the train or test pipeline from ``cfg.INPUT`` (as Dassl's ``build_transform``).

    Returns None (after printing ``Note: no transform is applied!``) when
    ``INPUT.NO_TRANSFORM`` is set.  ``choices`` defaults to ``INPUT.TRANSFORMS``.
    """
    if cfg.INPUT.NO_TRANSFORM:
        print("Note: no transform is applied!")
        return None

    if choices is None:
        choices = cfg.INPUT.TRANSFORMS
    for choice in choices:
        # Deliberate improvement: Dassl fails with a bare AssertionError.
        if choice not in AVAI_CHOICES:
            raise ValueError(
                f"Unknown transform {choice!r} in INPUT.TRANSFORMS: valid names are "
                f"{', '.join(AVAI_CHOICES)}"
            )

    size = _as_size(cfg.INPUT.SIZE)
    if len(size) != 2:
        raise ValueError(f"INPUT.SIZE must be (height, width), got {cfg.INPUT.SIZE!r}")
    interp_mode = get_interpolation_mode(cfg.INPUT.INTERPOLATION)
    normalize = Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)

    if is_train:
        return _build_transform_train(cfg, choices, size, interp_mode, normalize)
    return _build_transform_test(cfg, choices, size, interp_mode, normalize)


def _build_transform_train(cfg, choices, size, interp_mode, normalize):
    """Train ops in Dassl's fixed order (its ``_build_transform_train``), one printed line each."""
    print("Building transform_train")
    tfm_train = []
    h, w = size

    # 1. plain resize unless a crop sets the size
    if "random_crop" not in choices and "random_resized_crop" not in choices:
        print(f"+ resize to {h}x{w}")
        tfm_train += [Resize(size, interpolation=interp_mode)]

    # 2-5. geometry
    if "random_translation" in choices:
        print("+ random translation")
        tfm_train += [Random2DTranslation(h, w)]

    if "random_crop" in choices:
        crop_padding = cfg.INPUT.CROP_PADDING
        print(f"+ random crop (padding = {crop_padding})")
        tfm_train += [RandomCrop(size, padding=crop_padding)]

    if "random_resized_crop" in choices:
        s_ = cfg.INPUT.RRCROP_SCALE
        print(f"+ random resized crop (size={cfg.INPUT.SIZE}, scale={s_})")
        tfm_train += [RandomResizedCrop(size, scale=tuple(s_), interpolation=interp_mode)]

    if "random_flip" in choices:
        print("+ random flip")
        tfm_train += [RandomHorizontalFlip()]

    # 6-11. augmentation policies.  Dassl ships its own AutoAugment/RandAugment
    # implementations; these use torchvision's equivalents instead (none of
    # them is used by the prompt-learning configs).
    if "imagenet_policy" in choices:
        print("+ imagenet policy")
        tfm_train += [AutoAugment(AutoAugmentPolicy.IMAGENET)]

    if "cifar10_policy" in choices:
        print("+ cifar10 policy")
        tfm_train += [AutoAugment(AutoAugmentPolicy.CIFAR10)]

    if "svhn_policy" in choices:
        print("+ svhn policy")
        tfm_train += [AutoAugment(AutoAugmentPolicy.SVHN)]

    if "randaugment" in choices:
        n_ = cfg.INPUT.RANDAUGMENT_N
        m_ = cfg.INPUT.RANDAUGMENT_M
        print(f"+ randaugment (n={n_}, m={m_})")
        tfm_train += [RandAugment(num_ops=n_, magnitude=m_)]

    if "randaugment_fixmatch" in choices:
        n_ = cfg.INPUT.RANDAUGMENT_N
        print(f"+ randaugment_fixmatch (n={n_})")
        tfm_train += [_RandAugmentRandomMagnitude(num_ops=n_)]

    if "randaugment2" in choices:
        n_ = cfg.INPUT.RANDAUGMENT_N
        print(f"+ randaugment2 (n={n_})")
        tfm_train += [_RandAugmentRandomMagnitude(num_ops=n_)]

    # 12-14. colour
    if "colorjitter" in choices:
        b_ = cfg.INPUT.COLORJITTER_B
        c_ = cfg.INPUT.COLORJITTER_C
        s_ = cfg.INPUT.COLORJITTER_S
        h_ = cfg.INPUT.COLORJITTER_H
        print(
            f"+ color jitter (brightness={b_}, contrast={c_}, saturation={s_}, hue={h_})"
        )
        tfm_train += [ColorJitter(brightness=b_, contrast=c_, saturation=s_, hue=h_)]

    if "randomgrayscale" in choices:
        print("+ random gray scale")
        tfm_train += [RandomGrayscale(p=cfg.INPUT.RGS_P)]

    if "gaussian_blur" in choices:
        gb_k, gb_p = cfg.INPUT.GB_K, cfg.INPUT.GB_P
        print(f"+ gaussian blur (kernel={gb_k})")
        tfm_train += [RandomApply([GaussianBlur(gb_k)], p=gb_p)]

    # 15-19. tensor ops
    print("+ to torch tensor of range [0, 1]")
    tfm_train += [ToTensor()]

    if "cutout" in choices:
        cutout_n = cfg.INPUT.CUTOUT_N
        cutout_len = cfg.INPUT.CUTOUT_LEN
        print(f"+ cutout (n_holes={cutout_n}, length={cutout_len})")
        tfm_train += [Cutout(cutout_n, cutout_len)]

    if "normalize" in choices:
        print(
            f"+ normalization (mean={cfg.INPUT.PIXEL_MEAN}, std={cfg.INPUT.PIXEL_STD})"
        )
        tfm_train += [normalize]

    if "gaussian_noise" in choices:
        print(f"+ gaussian noise (mean={cfg.INPUT.GN_MEAN}, std={cfg.INPUT.GN_STD})")
        tfm_train += [GaussianNoise(cfg.INPUT.GN_MEAN, cfg.INPUT.GN_STD)]

    if "instance_norm" in choices:
        print("+ instance normalization")
        tfm_train += [InstanceNormalization()]

    return Compose(tfm_train)


def _build_transform_test(cfg, choices, size, interp_mode, normalize):
    """Resize the shorter side to max(SIZE), centre-crop SIZE, to tensor, [normalize], [instance norm]."""
    print("Building transform_test")
    tfm_test = []
    h, w = size

    print(f"+ resize the smaller edge to {max(size)}")
    tfm_test += [Resize(max(size), interpolation=interp_mode)]

    print(f"+ {h}x{w} center crop")
    tfm_test += [CenterCrop(size)]

    print("+ to torch tensor of range [0, 1]")
    tfm_test += [ToTensor()]

    if "normalize" in choices:
        print(
            f"+ normalization (mean={cfg.INPUT.PIXEL_MEAN}, std={cfg.INPUT.PIXEL_STD})"
        )
        tfm_test += [normalize]

    if "instance_norm" in choices:
        print("+ instance normalization")
        tfm_test += [InstanceNormalization()]

    return Compose(tfm_test)
