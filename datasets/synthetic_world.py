"""The procedural concept world behind the synthetic datasets and the tiny CLIP's pretraining.

Everything here is pure torch (no Dassl), deterministic given a
``torch.Generator``, and vectorised over a batch of scenes:

* a compositional vocabulary: :data:`COLOURS` x :data:`SHAPES` x
  :data:`TEXTURES`, rendered in one of the :data:`STYLES`;
* two scene kinds: an *object* (one coloured, textured shape on a background)
  and a *pattern* (a full-frame texture swatch);
* :func:`render_scenes` -- scenes -> ``uint8`` images ``[N, 3, S, S]``;
* :func:`sample_scenes` -- random scenes (the pretraining distribution);
* :func:`caption` -- a caption naming the concepts and the style in one of
  several templates (web-like: some captions leave an attribute out);
* the class sets of the benchmarks (:func:`object_classnames`,
  :func:`pattern_classnames`), ordered so that CoOp's base / new split (first
  / second half of the labels) holds out *combinations*, never words.

Images are :data:`IMAGE_SIZE` (32 px, the tiny CLIP's input resolution); their
geometry is drawn at twice that and box-filtered down (anti-aliasing).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

#: Colour words and their base RGB value (hues far enough apart to survive jitter and styles).
COLOURS: Dict[str, tuple] = {
    "red": (214, 39, 40),
    "orange": (247, 135, 20),
    "yellow": (240, 212, 30),
    "green": (44, 160, 60),
    "blue": (31, 90, 220),
    "purple": (140, 60, 190),
    "pink": (247, 120, 190),
    "brown": (125, 78, 38),
}
SHAPES = ("circle", "square", "triangle", "star", "heart", "cross", "crescent", "diamond")
#: Fill textures; ``plain`` is a solid fill.
TEXTURES = ("plain", "striped", "dotted", "checkered", "wavy")
STYLES = ("photo", "sketch", "cartoon", "painting")
KINDS = ("object", "pattern")

#: Output size of the rendered images (what the tiny CLIP sees) and the
#: supersampling factor of the geometry.
IMAGE_SIZE = 32
SUPERSAMPLE = 2

#: Words a caption may use for a style (the first one is the canonical one).
STYLE_NOUNS = {
    "photo": ("photo", "picture"),
    "sketch": ("sketch", "drawing"),
    "cartoon": ("cartoon", "clipart"),
    "painting": ("painting", "artwork"),
}
#: Plural nouns for "a red circle with stripes".
TEXTURE_NOUNS = {"striped": "stripes", "dotted": "dots", "checkered": "checks", "wavy": "waves"}
SIZE_WORDS = ("small", "large")


@dataclass(frozen=True)
class Scene:
    """One image's concepts.  ``shape`` is ``None`` for a pattern swatch."""

    colour: str
    texture: str
    style: str
    shape: Optional[str] = None

    @property
    def kind(self) -> str:
        return "pattern" if self.shape is None else "object"


# ----------------------------------------------------------------------------
# class sets of the benchmarks
# ----------------------------------------------------------------------------
def interleaved_pairs(first: Sequence[str], second: Sequence[str]) -> List[tuple]:
    """All ``(a, b)`` pairs, the "even" half of a checkerboard first.

    The first ``ceil(n/2)`` pairs (CoOp's *base* classes) and the rest (*new*)
    then each use every word of ``first`` and of ``second``: new classes are
    unseen *combinations* of words the prompt learner saw.
    """
    pairs = [(a, b) for i, a in enumerate(first) for j, b in enumerate(second)]
    parity = [(i + j) % 2 for i in range(len(first)) for j in range(len(second))]
    return [p for p, k in zip(pairs, parity) if k == 0] + [p for p, k in zip(pairs, parity) if k == 1]


def object_classnames(colours: Sequence[str] = tuple(COLOURS), shapes: Sequence[str] = SHAPES) -> List[str]:
    """``"<colour> <shape>"`` class names, base / new interleaved (:func:`interleaved_pairs`)."""
    return [f"{c} {s}" for c, s in interleaved_pairs(colours, shapes)]


PATTERN_TEXTURES = ("striped", "dotted", "checkered", "wavy")


def pattern_classnames(colours: Sequence[str] = tuple(COLOURS),
                       textures: Sequence[str] = PATTERN_TEXTURES) -> List[str]:
    """``"<colour> <texture> pattern"`` class names (a texture family, like DTD)."""
    return [f"{c} {t} pattern" for c, t in interleaved_pairs(colours, textures)]


def scene_of_class(classname: str, style: str, texture: Optional[str] = None) -> Scene:
    """The :class:`Scene` of a benchmark class name (``texture`` only for objects)."""
    words = classname.split(" ")
    if words[-1] == "pattern":
        return Scene(colour=words[0], texture=words[1], style=style)
    return Scene(colour=words[0], shape=words[1], texture=texture or "plain", style=style)


# ----------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------
def _randint(gen: torch.Generator, n: int) -> int:
    return int(torch.randint(n, (1,), generator=gen).item())


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def sample_scenes(n: int, gen: torch.Generator, pattern_fraction: float = 0.2) -> List[Scene]:
    """``n`` random scenes, every concept uniform (the pretraining distribution)."""
    scenes = []
    colours = list(COLOURS)
    for _ in range(n):
        is_pattern = float(torch.rand(1, generator=gen)) < pattern_fraction
        colour = colours[_randint(gen, len(colours))]
        style = STYLES[_randint(gen, len(STYLES))]
        if is_pattern:
            texture = PATTERN_TEXTURES[_randint(gen, len(PATTERN_TEXTURES))]
            scenes.append(Scene(colour=colour, texture=texture, style=style))
        else:
            scenes.append(Scene(colour=colour, texture=TEXTURES[_randint(gen, len(TEXTURES))], style=style,
                                shape=SHAPES[_randint(gen, len(SHAPES))]))
    return scenes


# ----------------------------------------------------------------------------
# captions
# ----------------------------------------------------------------------------
#: Object templates: (template, attributes it names).  ``{S}`` style noun,
#: ``{C}`` colour, ``{H}`` shape, ``{T}`` texture adjective, ``{N}`` texture noun,
#: ``{Z}`` size word.  The attribute set tells the pretraining loss which images
#: a caption describes correctly.
OBJECT_TEMPLATES = (
    ("a {S} of a {C} {H}.", "SCH"),
    ("a {S} of a {C} {H}.", "SCH"),
    ("a {S} of the {C} {H}.", "SCH"),
    ("a {S} of a {T} {C} {H}.", "SCHT"),
    ("a {S} of a {C} {H} with {N}.", "SCHT"),
    ("a {C} {H}.", "CH"),
    ("a {T} {C} {H}.", "CHT"),
    ("a {Z} {C} {H}.", "ZCH"),
    ("a {C} {H} in {S} style.", "SCH"),
    ("a {S} of a {H} that is {C}.", "SCH"),
    ("a {S} of a {H}.", "SH"),
    ("a {S} of something {C}.", "SC"),
)
PATTERN_TEMPLATES = (
    ("a {S} of a {C} {T} pattern.", "SCT"),
    ("a {S} of a {C} {T} pattern.", "SCT"),
    ("a {C} {T} pattern.", "CT"),
    ("a {C} {T} texture.", "CT"),
    ("a {S} of {C} {N}.", "SCT"),
    ("a {S} of a {T} pattern.", "ST"),
)
_ATTR = {"S": "style", "C": "colour", "H": "shape", "T": "texture", "Z": "size"}


def caption(scene: Scene, gen: torch.Generator, size: Optional[str] = None):
    """A caption of ``scene`` and the set of attributes it names (deterministic given ``gen``).

    Templates naming a texture are only used for textured objects; ``{Z}``
    needs ``size`` (``"small"`` / ``"large"``), else that template is skipped.
    """
    if scene.kind == "pattern":
        options = list(PATTERN_TEMPLATES)
    else:
        options = [t for t in OBJECT_TEMPLATES
                   if ("T" not in t[1] or scene.texture != "plain") and ("{Z}" not in t[0] or size)]
    template, attrs = options[_randint(gen, len(options))]
    nouns = STYLE_NOUNS[scene.style]
    text = template.format(
        S=nouns[_randint(gen, len(nouns))], C=scene.colour, H=scene.shape or "", T=scene.texture,
        N=TEXTURE_NOUNS.get(scene.texture, ""), Z=size or "",
    )
    named = frozenset(_ATTR[a] for a in attrs) | {"kind"}
    return text, named


def caption_lexicon() -> List[str]:
    """Every word and punctuation mark a caption (or a benchmark prompt) can contain."""
    words = set()
    for template, _ in OBJECT_TEMPLATES + PATTERN_TEMPLATES:
        for w in template.replace(".", " ").replace(",", " ").split():
            if not w.startswith("{"):
                words.add(w)
    for nouns in STYLE_NOUNS.values():
        words.update(" ".join(nouns).split())
    words.update(COLOURS)
    words.update(SHAPES)
    words.update(TEXTURES)
    words.update(TEXTURE_NOUNS.values())
    words.update(SIZE_WORDS)
    words.update(STYLES)
    words.update(["a", "photo", "of", "pattern", "style", "the"])
    return sorted(words) + [".", ","]


# ----------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------
def _star(n=5, inner=0.45):
    pts = []
    for k in range(2 * n):
        rad = 1.0 if k % 2 == 0 else inner
        a = math.pi / 2 + k * math.pi / n
        pts.append((rad * math.cos(a), rad * math.sin(a)))
    return pts


#: Polygon vertices in local coordinates (y up, radius ~1).
_POLYGONS = {
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "triangle": [(0.0, 1.0), (-0.95, -0.7), (0.95, -0.7)],
    "diamond": [(0.0, 1.0), (0.68, 0.0), (0.0, -1.0), (-0.68, 0.0)],
    "star": _star(),
    "cross": [(-0.32, 1.0), (0.32, 1.0), (0.32, 0.32), (1.0, 0.32), (1.0, -0.32), (0.32, -0.32),
              (0.32, -1.0), (-0.32, -1.0), (-0.32, -0.32), (-1.0, -0.32), (-1.0, 0.32), (-0.32, 0.32)],
}


def _inside_polygon(x, y, pts):
    inside = torch.zeros_like(x, dtype=torch.bool)
    n = len(pts)
    for i in range(n):
        xi, yi = pts[i]
        xj, yj = pts[(i + 1) % n]
        if yi == yj:
            continue
        crosses = ((yi > y) != (yj > y)) & (x < (xj - xi) * (y - yi) / (yj - yi) + xi)
        inside ^= crosses
    return inside


def _shape_mask(shape, x, y):
    """Inside test in local coordinates (``x`` right, ``y`` up, radius ~1)."""
    if shape in _POLYGONS:
        return _inside_polygon(x, y, _POLYGONS[shape])
    if shape == "circle":
        return x * x + y * y <= 0.9
    if shape == "heart":
        hx, hy = 1.2 * x, 1.2 * y - 0.2
        return (hx * hx + hy * hy - 1) ** 3 - hx * hx * hy ** 3 <= 0
    if shape == "crescent":
        return (x * x + y * y <= 1.0) & ((x - 0.45) ** 2 + (y - 0.2) ** 2 > 0.72)
    raise ValueError(f"unknown shape {shape!r}: use one of {', '.join(SHAPES)}")


def _texture(texture, u, v, gen, n):
    """Texture indicator in {0, 1}; ``u``, ``v`` are pixel coordinates [n, S, S]."""
    if texture == "plain":
        return torch.ones_like(u)
    period = _uniform(gen, n, 5.5, 7.5).view(n, 1, 1)
    angle = _uniform(gen, n, 0.0, math.pi).view(n, 1, 1)
    phase = torch.rand(n, 2, generator=gen).view(n, 2, 1, 1)
    a = (u * torch.cos(angle) + v * torch.sin(angle)) / period
    b = (-u * torch.sin(angle) + v * torch.cos(angle)) / period
    if texture == "striped":
        return (torch.frac(a + phase[:, 0] + 10.0) < 0.5).float()
    if texture == "dotted":
        da = torch.frac(a + phase[:, 0] + 10.0) - 0.5
        db = torch.frac(b + phase[:, 1] + 10.0) - 0.5
        return (da * da + db * db < 0.33 ** 2).float()
    if texture == "checkered":
        return ((torch.floor(a * 1.4 + phase[:, 0]) + torch.floor(b * 1.4 + phase[:, 1])) % 2 == 0).float()
    if texture == "wavy":
        return (torch.frac(a + 0.25 * torch.sin(2 * math.pi * b * 0.8) + phase[:, 0] + 10.0) < 0.5).float()
    raise ValueError(f"unknown texture {texture!r}: use one of {', '.join(TEXTURES)}")


def _blur(img, sigma):
    """Gaussian blur of ``img`` [n, 3, S, S] with per-image ``sigma`` [n] (separable, 5 taps)."""
    k = torch.arange(-2, 3, dtype=img.dtype).view(1, 5)
    w = torch.exp(-(k ** 2) / (2 * sigma.view(-1, 1) ** 2))
    w = w / w.sum(1, keepdim=True)  # [n, 5]
    n, c, h, wd = img.shape
    x = img.reshape(1, n * c, h, wd)
    kernel = w.repeat_interleave(c, 0)
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), kernel.view(n * c, 1, 1, 5), groups=n * c)
    x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), kernel.view(n * c, 1, 5, 1), groups=n * c)
    return x.view(n, c, h, wd)


def _low_freq(gen, n, grid, size, amplitude):
    """Smooth colour noise [n, 3, size, size] in ``[-amplitude, amplitude]``."""
    noise = (torch.rand(n, 3, grid, grid, generator=gen) * 2 - 1) * amplitude
    return F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)


def _box_sum(mask, k):
    """Sum of ``mask`` [n, 1, S, S] over a k x k window (zero padded), from cumulative sums."""
    r = k // 2
    x = F.pad(mask, (r + 1, r, r + 1, r))
    x = x.cumsum(-1)
    x = x[..., k:] - x[..., :-k]
    x = x.cumsum(-2)
    return x[..., k:, :] - x[..., :-k, :]


def _band(mask, width):
    """Outline of a binary mask [n, 1, S, S]: dilation minus erosion by a ``width`` px square."""
    k = 2 * (width // 2) + 1
    total = _box_sum(mask, k)
    return ((total > 0.5) & (total < k * k - 0.5)).to(mask.dtype)


def _downsample(x, factor):
    """Box-filter ``x`` [n, c, S, S] by an integer ``factor`` (anti-aliasing)."""
    if factor == 1:
        return x
    out = None
    for i in range(factor):
        for j in range(factor):
            part = x[..., i::factor, j::factor]
            out = part.clone() if out is None else out.add_(part)
    return out / (factor * factor)


def render_scenes(scenes: Sequence[Scene], gen: torch.Generator, size: int = IMAGE_SIZE,
                  supersample: int = SUPERSAMPLE, return_sizes: bool = False, camera: str = "none"):
    """Draw ``scenes`` as ``uint8`` images ``[N, 3, size, size]`` (deterministic given ``gen``).

    Geometry (shape masks, textures, outlines) is drawn at ``size *
    supersample`` and box-filtered down (anti-aliasing); colours, styles and
    noise are applied at ``size``.  Nuisances drawn from ``gen``: object
    position, size and a small rotation, colour jitter, texture scale /
    orientation / phase, background, noise.  With ``return_sizes`` also returns
    each object's size word (``small`` / ``large``, ``None`` for patterns).
    ``camera`` names an entry of :data:`CAMERAS` applied last.
    """
    if camera not in CAMERAS:
        raise ValueError(f"unknown camera {camera!r}: use one of {', '.join(CAMERAS)}")
    n = len(scenes)
    if n == 0:
        empty = torch.zeros(0, 3, size, size, dtype=torch.uint8)
        return (empty, []) if return_sizes else empty
    hi = size * supersample
    pix = torch.arange(hi, dtype=torch.float32) + 0.5
    v_pix, u_pix = torch.meshgrid(pix, pix, indexing="ij")  # rows (down), columns (right)
    unit_x = (u_pix / hi * 2 - 1).expand(n, hi, hi)
    unit_y = (-(v_pix / hi * 2 - 1)).expand(n, hi, hi)  # up
    # texture coordinates in output pixels, so a texture's scale does not depend on supersampling
    u = (u_pix / supersample).expand(n, hi, hi)
    v = (v_pix / supersample).expand(n, hi, hi)

    # --- geometry (high resolution) ---------------------------------------------
    radius = _uniform(gen, n, 0.45, 0.72)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - radius * 1.05)
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - radius * 1.05)
    theta = _uniform(gen, n, -0.3, 0.3)
    dx = (unit_x - cx.view(n, 1, 1)) / radius.view(n, 1, 1)
    dy = (unit_y - cy.view(n, 1, 1)) / radius.view(n, 1, 1)
    ct, st = torch.cos(theta).view(n, 1, 1), torch.sin(theta).view(n, 1, 1)
    lx, ly = ct * dx + st * dy, -st * dx + ct * dy
    mask = torch.ones(n, hi, hi)
    for shape in SHAPES:
        idx = [i for i, s in enumerate(scenes) if s.shape == shape]
        if idx:
            ii = torch.tensor(idx)
            mask[ii] = _shape_mask(shape, lx[ii], ly[ii]).float()
    tex = torch.ones(n, hi, hi)
    for texture in TEXTURES:
        idx = [i for i, s in enumerate(scenes) if s.texture == texture]
        if idx and texture != "plain":
            ii = torch.tensor(idx)
            tex[ii] = _texture(texture, u[ii], v[ii], gen, len(idx))
    mask, tex = mask.unsqueeze(1), tex.unsqueeze(1)
    down = lambda x: _downsample(x, supersample)  # noqa: E731
    geo = _Geometry(mask=down(mask), tex=down(tex), thin=down(_band(mask, 3 * supersample // 2)),
                    thick=down(_band(mask, 5 * supersample // 2)), mask_tex=down(mask * tex),
                    lx=lx[:, ::supersample, ::supersample], ly=ly[:, ::supersample, ::supersample],
                    pattern=torch.tensor([s.kind == "pattern" for s in scenes]).view(n, 1, 1, 1).float())

    # --- colour -----------------------------------------------------------------
    base = torch.tensor([COLOURS[s.colour] for s in scenes], dtype=torch.float32)
    colour = (base + (torch.rand(n, 3, generator=gen) * 2 - 1) * 18).clamp(0, 255).view(n, 3, 1, 1)

    # --- styles (output resolution) -----------------------------------------------
    out = torch.zeros(n, 3, size, size)
    for style in STYLES:
        idx = [i for i, s in enumerate(scenes) if s.style == style]
        if idx:
            ii = torch.tensor(idx)
            out[ii] = _STYLE_FN[style](gen, colour[ii], geo.select(ii))
    images = apply_camera(out, camera)
    if return_sizes:
        sizes = [None if s.kind == "pattern" else ("small" if float(r) < 0.58 else "large")
                 for s, r in zip(scenes, radius)]
        return images, sizes
    return images


@dataclass
class _Geometry:
    """Anti-aliased layers at output resolution: coverage of the shape, of the
    texture, of the shape x texture, of a thin / thick outline; local coordinates."""

    mask: torch.Tensor
    tex: torch.Tensor
    mask_tex: torch.Tensor
    thin: torch.Tensor
    thick: torch.Tensor
    lx: torch.Tensor
    ly: torch.Tensor
    pattern: torch.Tensor

    def select(self, ii):
        return _Geometry(**{k: getattr(self, k)[ii] for k in self.__dataclass_fields__})

    @property
    def region(self):
        """Coverage of the drawn thing: the shape, or the whole frame for a pattern."""
        return torch.maximum(self.mask, self.pattern)

    @property
    def region_tex(self):
        """Coverage of the texture's ink inside the region."""
        return self.pattern * self.tex + (1 - self.pattern) * self.mask_tex


def _fill(colour, geo):
    """The textured fill (texture ink in ``colour`` on a light tint of it) and the region."""
    tint = colour * 0.45 + 255 * 0.55
    region = geo.region
    ink = geo.region_tex
    return ink * colour + (region - ink) * tint, region


def _muted_background(gen, n):
    grey = torch.rand(n, 1, generator=gen) * 120 + 70
    hue = torch.rand(n, 3, generator=gen) * 255
    return (0.55 * grey + 0.45 * hue).view(n, 3, 1, 1)


def _photo(gen, colour, geo):
    n, _, s, _ = geo.mask.shape
    bg = _muted_background(gen, n) + _low_freq(gen, n, 2, s, 35)
    light = _uniform(gen, n, 0, 2 * math.pi).view(n, 1, 1)
    shade = 1 + 0.14 * (torch.cos(light) * geo.lx + torch.sin(light) * geo.ly).clamp(-1.5, 1.5)
    fill, region = _fill(colour, geo)
    img = fill * shade.unsqueeze(1) + (1 - region) * bg
    img = _blur(img, _uniform(gen, n, 0.35, 0.6))
    return img + torch.randn(img.shape, generator=gen) * 6


def _sketch(gen, colour, geo):
    n, _, s, _ = geo.mask.shape
    paper = (torch.rand(n, 1, generator=gen) * 18 + 236).view(n, 1, 1, 1)
    outline = geo.thin * (1 - geo.pattern)
    # hatching: textured interiors are drawn as lines, plain interiors stay paper
    plain = (geo.tex.flatten(1).min(1).values > 0.99).float().view(n, 1, 1, 1)
    hatch = geo.region_tex * (1 - plain) * (0.55 + 0.3 * geo.pattern)
    ink = torch.maximum(outline, hatch)
    img = ink * colour + (1 - ink) * paper
    return img + torch.randn(n, 1, s, s, generator=gen) * 4


def _cartoon(gen, colour, geo):
    n = geo.mask.shape[0]
    bg = (torch.rand(n, 3, generator=gen) * 255 * 0.4 + 255 * 0.6).view(n, 3, 1, 1)
    fill, region = _fill(colour, geo)
    img = fill + (1 - region) * bg
    outline = geo.thick * (1 - geo.pattern)
    return img * (1 - outline) + 25 * outline


def _painting(gen, colour, geo):
    n, _, s, _ = geo.mask.shape
    bg = _muted_background(gen, n) + _low_freq(gen, n, 4, s, 45)
    fill, region = _fill(colour, geo)
    img = fill + (1 - region) * bg + _low_freq(gen, n, 8, s, 25)
    img = _blur(img, _uniform(gen, n, 0.6, 0.8))
    mean = img.mean(1, keepdim=True)
    return mean + 1.2 * (img - mean)  # saturated, brush-like


_STYLE_FN = {"photo": _photo, "sketch": _sketch, "cartoon": _cartoon, "painting": _painting}


#: Acquisition conditions of the *downstream* datasets, which pretraining never
#: sees: ``(contrast, offset, per-channel gain)`` applied to the rendered
#: pixels.  ``faded`` (lower contrast, warm cast) is the camera of the
#: synthetic datasets: like a real downstream dataset, their images differ from
#: the pretraining images in a way that costs zero-shot accuracy and that a few
#: labelled shots can adapt to.
CAMERAS = {
    "none": None,
    "faded": (0.7, 35.0, (1.08, 0.96, 0.80)),
}


def apply_camera(images: torch.Tensor, camera: str = "none") -> torch.Tensor:
    """Float pixels [N, 3, S, S] in 0..255 -> ``uint8`` images as seen through ``camera``."""
    params = CAMERAS[camera]
    if params is not None:
        contrast, offset, gain = params
        images = (images * contrast + offset) * torch.tensor(gain, dtype=images.dtype).view(1, 3, 1, 1)
    return images.round().clamp(0, 255).to(torch.uint8)


def to_model_input(images: torch.Tensor, resolution: int, mean: Sequence[float], std: Sequence[float]):
    """``uint8`` images -> normalised float tensors at ``resolution`` (bicubic, like the test transform)."""
    x = images.float() / 255.0
    if x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", antialias=True, align_corners=False)
    x = x.clamp(0, 1)
    mean_t = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean_t) / std_t
