"""GOPro's three training views, made in the data pipeline.

GOPro trains on three views of every image (as the official GOPro code):

* ``img``  -- the configured Dassl train transform (the *original* view);
* ``img2`` -- a MoCo v3 view: RandomResizedCrop(R, scale 0.08-1), ColorJitter
  (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale with p 0.2, SimCLR Gaussian blur
  (sigma in [0.1, 2], always), horizontal flip;
* ``img3`` -- an AugMix view: RandomResizedCrop(R) + flip, then 3 chains of 1-3
  ops (autocontrast, equalize, posterize, rotate, solarize, shear x/y,
  translate x/y) at severity 1, mixed with Dirichlet(1, 1, 1) chain weights and
  a Beta(1, 1) weight for the plain image.

Deliberate fixes of the official code (D1-D9 in docs/gopro.md): the extra
views are built here, per image, from the original view's **un-normalised**
image (after the configured crop and flip), at the model's input size R, and
end with the same normalisation as the original view (CLIP's mean / std in
every GOPro config) -- the official code converted already-normalised tensors
back to PIL inside ``forward``, cropped at a fixed 224, re-normalised the MoCo
view with ImageNet statistics and paired every image with an AugMix view of
the first image of the batch.

All randomness comes from torch's global RNG (torchvision transforms included),
which Dassl seeds (``SEED``) and the DataLoader re-seeds per worker.
"""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

from gopro_prompts.dassl_compat import INTERPOLATION_MODES
from gopro_prompts.trainers.data import DatasetWrapper, read_image_checked

__all__ = [
    "AUGMIX_OPS", "AugMixView", "GOProDatasetWrapper", "GaussianBlurPIL", "augmix_mix",
    "build_moco_view", "split_train_transform",
]


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------
def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


def _coin() -> bool:
    """A fair coin from torch's RNG."""
    return bool(torch.rand(()) < 0.5)


def split_train_transform(transform) -> Tuple[T.Compose, T.Compose]:
    """Split a Dassl train transform at its ``ToTensor``.

    Returns ``(pil_part, tensor_part)``: the PIL ops (resize / crop / flip /
    ...) and the tensor ops (``ToTensor``, normalisation, ...), so that
    ``tensor_part(pil_part(img))`` is the configured transform and the extra
    views can start from ``pil_part(img)``.
    """
    ops = getattr(transform, "transforms", None)
    if ops is None:
        raise ValueError(
            f"GOPro needs the train transform as a torchvision Compose with a ToTensor step, got "
            f"{type(transform).__name__}: do not set INPUT.NO_TRANSFORM or a custom train transform"
        )
    for i, op in enumerate(ops):
        if isinstance(op, T.ToTensor):
            return T.Compose(list(ops[:i])), T.Compose(list(ops[i:]))
    raise ValueError(
        "GOPro's train transform has no ToTensor step, so the original view's un-normalised "
        "image cannot be shared with the extra views: use Dassl's build_transform (INPUT.TRANSFORMS)"
    )


class GaussianBlurPIL:
    """SimCLR / MoCo v3 Gaussian blur: PIL blur with a radius uniform in ``sigma``."""

    def __init__(self, sigma: Sequence[float] = (0.1, 2.0)):
        self.sigma = (float(sigma[0]), float(sigma[1]))

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.filter(ImageFilter.GaussianBlur(radius=_uniform(*self.sigma)))

    def __repr__(self):
        return f"{type(self).__name__}(sigma={self.sigma})"


def build_moco_view(size, normalize: Callable, interpolation=T.InterpolationMode.BICUBIC) -> T.Compose:
    """The MoCo v3 view (official GOPro parameters) at ``size``, ending with ``normalize``."""
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=interpolation),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        GaussianBlurPIL((0.1, 2.0)),  # p = 1.0 in the official pipeline
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        normalize,
    ])


# ----------------------------------------------------------------------------
# AugMix (Hendrycks et al., 2020), written from the method's description
# ----------------------------------------------------------------------------
def _level(severity: float) -> float:
    """An op strength uniform in [0.1, severity] on AugMix's 0-10 scale."""
    return _uniform(0.1, severity)


def _int_param(level: float, maxval: float) -> int:
    return int(level * maxval / 10)


def _float_param(level: float, maxval: float) -> float:
    return float(level) * maxval / 10.0


def _signed(value):
    return -value if _coin() else value


def _autocontrast(img, severity):
    return ImageOps.autocontrast(img)


def _equalize(img, severity):
    return ImageOps.equalize(img)


def _posterize(img, severity):
    return ImageOps.posterize(img, 4 - _int_param(_level(severity), 4))


def _rotate(img, severity):
    degrees = _signed(_int_param(_level(severity), 30))
    return img.rotate(degrees, resample=Image.BILINEAR)


def _solarize(img, severity):
    return ImageOps.solarize(img, 256 - _int_param(_level(severity), 256))


def _affine(img, coeffs):
    # Deliberate fix (D7): the output keeps the image's own size (the official ops hard-code 224).
    return img.transform(img.size, Image.AFFINE, coeffs, resample=Image.BILINEAR)


def _shear_x(img, severity):
    return _affine(img, (1, _signed(_float_param(_level(severity), 0.3)), 0, 0, 1, 0))


def _shear_y(img, severity):
    return _affine(img, (1, 0, 0, _signed(_float_param(_level(severity), 0.3)), 1, 0))


def _translate_x(img, severity):
    return _affine(img, (1, 0, _signed(_int_param(_level(severity), img.size[0] / 3)), 0, 1, 0))


def _translate_y(img, severity):
    return _affine(img, (1, 0, 0, 0, 1, _signed(_int_param(_level(severity), img.size[1] / 3))))


#: AugMix's op set without the ops that overlap ImageNet-C (as GOPro uses it)
AUGMIX_OPS = (
    _autocontrast, _equalize, _posterize, _rotate, _solarize,
    _shear_x, _shear_y, _translate_x, _translate_y,
)


def augmix_mix(plain: torch.Tensor, chains: Sequence[torch.Tensor], weights: torch.Tensor,
               m: float) -> torch.Tensor:
    """``m * plain + (1 - m) * sum_i weights[i] * chains[i]`` (the official mixing order)."""
    mix = torch.zeros_like(plain)
    for w, chain in zip(weights.tolist(), chains):
        mix = mix + w * chain
    return m * plain + (1.0 - m) * mix


class AugMixView:
    """The AugMix view: crop + flip, then ``width`` chains of 1..``max_depth`` ops, mixed.

    Chain weights ~ Dirichlet(``alpha``), the plain image's weight m ~
    Beta(``alpha``, ``alpha``).  ``to_tensor`` turns a PIL image into the
    (normalised) tensor; because the weights sum to 1, mixing normalised
    tensors equals normalising the mixed image.
    """

    def __init__(self, size, to_tensor: Callable, severity: int = 1, width: int = 3,
                 max_depth: int = 3, alpha: float = 1.0, interpolation=T.InterpolationMode.BICUBIC,
                 ops: Sequence[Callable] = AUGMIX_OPS):
        self.pre = T.Compose([
            T.RandomResizedCrop(size, interpolation=interpolation),
            T.RandomHorizontalFlip(),
        ])
        self.to_tensor = to_tensor
        self.severity = severity
        self.width = width
        self.max_depth = max_depth
        self.alpha = alpha
        self.ops = list(ops)

    def chain(self, img: Image.Image) -> Image.Image:
        """One chain: 1..max_depth ops drawn uniformly with replacement."""
        depth = int(torch.randint(1, self.max_depth + 1, ()))
        for _ in range(depth):
            op = self.ops[int(torch.randint(len(self.ops), ()))]
            img = op(img, self.severity)
        return img

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = self.pre(img)
        weights = torch.distributions.Dirichlet(torch.full((self.width,), float(self.alpha))).sample()
        m = float(torch.distributions.Beta(float(self.alpha), float(self.alpha)).sample())
        chains = [self.to_tensor(self.chain(img.copy())) for _ in range(self.width)]
        return augmix_mix(self.to_tensor(img), chains, weights, m)

    def __repr__(self):
        return (f"{type(self).__name__}(width={self.width}, depth=1-{self.max_depth}, "
                f"severity={self.severity}, alpha={self.alpha})")


# ----------------------------------------------------------------------------
# the dataset wrapper
# ----------------------------------------------------------------------------
def _size(cfg) -> Tuple[int, int]:
    return tuple(int(s) for s in cfg.INPUT.SIZE)


def _normalizer(cfg) -> Callable:
    """The original view's normalisation (``INPUT.PIXEL_MEAN/STD``, CLIP's in every GOPro config)."""
    if "normalize" in cfg.INPUT.TRANSFORMS:
        return T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    return _Identity()


class _Identity:
    """No normalisation (picklable, for DataLoader workers)."""

    def __call__(self, x):
        return x

    def __repr__(self):
        return "Identity()"


class GOProDatasetWrapper(DatasetWrapper):
    """Dassl's ``DatasetWrapper`` that adds GOPro's ``img2`` (MoCo v3) and ``img3`` (AugMix) views.

    Pass it as ``DataManager(cfg, dataset_wrapper=GOProDatasetWrapper)``.  At
    training time an item holds ``img`` (the configured transform), ``img2``
    and ``img3``, all three made from one decoded image: the configured
    PIL ops (crop, flip) run once and their result feeds the original view's
    tensor ops and both extra views.  Evaluation loaders (``is_train=False``)
    behave exactly like Dassl's wrapper (original view only).
    """

    def __init__(self, cfg, data_source, transform=None, is_train=False):
        super().__init__(cfg, data_source, transform=transform, is_train=is_train)
        self.gopro_views = bool(is_train)
        if not self.gopro_views:
            return
        if isinstance(transform, (list, tuple)):
            raise ValueError(
                "GOPro makes its own extra views: give one train transform (INPUT.TRANSFORMS), "
                "not a list of transforms"
            )
        if cfg.DATALOADER.K_TRANSFORMS > 1:
            raise ValueError(
                f"DATALOADER.K_TRANSFORMS={cfg.DATALOADER.K_TRANSFORMS} is not supported by GOPro "
                "(it makes exactly one MoCo v3 and one AugMix view per image): set it to 1"
            )
        self.pil_part, self.tensor_part = split_train_transform(transform)
        size = _size(cfg)
        interpolation = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
        to_tensor = T.Compose([T.ToTensor(), _normalizer(cfg)])
        self.moco_view = build_moco_view(size, _normalizer(cfg), interpolation)
        self.augmix_view = AugMixView(size, to_tensor, interpolation=interpolation)

    def describe(self) -> List[str]:
        """The view pipelines, one line each (logged once by the trainer)."""
        if not self.gopro_views:
            return []
        return [
            f"original view (img): {self.pil_part} -> {self.tensor_part}",
            f"MoCo v3 view (img2): configured PIL ops -> {self.moco_view}",
            f"AugMix view (img3): configured PIL ops -> {self.augmix_view.pre} -> {self.augmix_view}",
        ]

    def __getitem__(self, idx):
        if not self.gopro_views:
            return super().__getitem__(idx)
        item = self.data_source[idx]
        img0 = read_image_checked(item.impath)  # an unreadable file is named in the error
        base = self.pil_part(img0)  # the configured crop / flip, once for all three views
        output = {
            "label": item.label,
            "domain": item.domain,
            "impath": item.impath,
            "index": idx,
            "img": self.tensor_part(base),
            "img2": self.moco_view(base),
            "img3": self.augmix_view(base),
        }
        if self.return_img0:
            output["img0"] = self.to_tensor(img0)
        return output
