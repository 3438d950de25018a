"""The procedural concept world: deterministic rendering, captions, benchmark class sets."""
from __future__ import annotations

import math

import pytest
import torch

from gopro_prompts.datasets import synthetic_world as world


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_rendering_is_deterministic_per_seed():
    scenes = world.sample_scenes(24, _gen(3))
    assert scenes == world.sample_scenes(24, _gen(3))
    a = world.render_scenes(scenes, _gen(5))
    b = world.render_scenes(scenes, _gen(5))
    c = world.render_scenes(scenes, _gen(6))
    assert a.dtype == torch.uint8 and a.shape == (24, 3, world.IMAGE_SIZE, world.IMAGE_SIZE)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert world.render_scenes([], _gen(0)).shape == (0, 3, world.IMAGE_SIZE, world.IMAGE_SIZE)


def test_every_concept_changes_the_image():
    """Same nuisances (same generator state), one concept changed -> a different image."""
    base = world.Scene(colour="red", shape="circle", texture="plain", style="photo")
    variants = [
        world.Scene(colour="blue", shape="circle", texture="plain", style="photo"),
        world.Scene(colour="red", shape="star", texture="plain", style="photo"),
        world.Scene(colour="red", shape="circle", texture="striped", style="photo"),
        world.Scene(colour="red", shape="circle", texture="plain", style="sketch"),
    ]
    ref = world.render_scenes([base], _gen(1)).float()
    for scene in variants:
        img = world.render_scenes([scene], _gen(1)).float()
        assert (img - ref).abs().mean() > 2.0, scene


def test_shapes_have_distinct_silhouettes():
    x = torch.linspace(-1.2, 1.2, 96)
    yy, xx = torch.meshgrid(-x, x, indexing="ij")
    masks = {s: world._shape_mask(s, xx, yy) for s in world.SHAPES}
    for s, m in masks.items():
        assert 0.08 < m.float().mean() < 0.7, s
    for i, a in enumerate(world.SHAPES):
        for b in world.SHAPES[i + 1:]:
            assert (masks[a] ^ masks[b]).float().mean() > 0.05, (a, b)


def test_styles_are_recognisable_statistics():
    gen = _gen(2)
    scenes = {st: [world.Scene(colour="blue", shape="square", texture="plain", style=st)] * 16
              for st in world.STYLES}
    imgs = {st: world.render_scenes(s, gen).float() for st, s in scenes.items()}
    assert imgs["sketch"].mean() > imgs["photo"].mean() + 40  # paper background
    assert imgs["cartoon"].min() < 40  # black outline
    with pytest.raises(ValueError, match="unknown shape"):
        world._shape_mask("blob", torch.zeros(2), torch.zeros(2))


def test_captions_name_the_scene_and_are_deterministic():
    gen_a, gen_b = _gen(7), _gen(7)
    lexicon = set(world.caption_lexicon())
    for scene in world.sample_scenes(200, _gen(8)) + [
            world.Scene(colour="pink", shape="heart", texture="plain", style="cartoon")]:
        text, named = world.caption(scene, gen_a, size="small")
        assert (text, named) == world.caption(scene, gen_b, size="small")
        words = text.replace(".", " ").split()
        assert set(words) <= lexicon, text
        assert "kind" in named
        if "colour" in named:
            assert scene.colour in words
        if "shape" in named:
            assert scene.shape in words
        if scene.kind == "object" and scene.texture == "plain":
            assert "texture" not in named and not set(world.TEXTURE_NOUNS.values()) & set(words)
        if "style" in named:
            assert set(world.STYLE_NOUNS[scene.style]) & set(words)


def test_base_and_new_classes_are_unseen_combinations_of_seen_words():
    names = world.object_classnames()
    assert len(names) == len(set(names)) == len(world.COLOURS) * len(world.SHAPES)
    half = math.ceil(len(names) / 2)
    base, new = names[:half], names[half:]
    assert not set(base) & set(new)
    for group in (base, new):
        assert {n.split()[0] for n in group} == set(world.COLOURS)
        assert {n.split()[1] for n in group} == set(world.SHAPES)
    patterns = world.pattern_classnames()
    assert len(set(patterns)) == len(world.COLOURS) * len(world.PATTERN_TEXTURES)
    assert all(p.endswith(" pattern") for p in patterns)
    scene = world.scene_of_class(patterns[0], "sketch")
    assert scene.kind == "pattern" and scene.style == "sketch"
    scene = world.scene_of_class("red star", "photo", "dotted")
    assert (scene.colour, scene.shape, scene.texture) == ("red", "star", "dotted")


def test_the_downstream_camera_fades_and_warms_the_images():
    scenes = world.sample_scenes(32, _gen(11))
    plain = world.render_scenes(scenes, _gen(12)).float()
    faded = world.render_scenes(scenes, _gen(12), camera="faded").float()
    assert faded.std() < plain.std() * 0.85  # lower contrast
    assert faded[:, 0].mean() - faded[:, 2].mean() > plain[:, 0].mean() - plain[:, 2].mean() + 10  # warm
    with pytest.raises(ValueError, match="unknown camera 'fish-eye'"):
        world.render_scenes(scenes, _gen(12), camera="fish-eye")
