"""MaPLe: parity, prompt depth, prompt text, the eval cache, PREC, official checkpoints.

Building, training, our checkpoints and new classes: tests/test_contract.py (every trainer)."""
from __future__ import annotations

import pytest
import torch

from helpers import method_cfg, offline_trainer, perturb, random_images
from gopro_prompts.trainers.maple import MaPLeModel
from gopro_prompts.user_errors import UserError

CLASSNAMES = ["dog", "sea_turtle", "forklift", "golden retriever", "air conditioner"]


def _cfg(**node):
    return method_cfg("MAPLE", **{"PROMPT_DEPTH": 3, **node})


# --------------------------------------------------------------------------- parity
def test_parity_fixture_with_variants(parity_fixtures):
    import parity

    ok, rows = parity.check(str(parity_fixtures / "maple.pt"), str(parity_fixtures / "tiny_clip_fp16.pt"),
                            variants=True, quiet=True)
    assert ok, rows
    keys = {k for k, _ in rows}
    assert {"out.vision_deep_prompts.1", "grad.visual_prompt_proj.1.weight",
            "variant_fp16_prompt_cast.grad.ctx"} <= keys


# ------------------------------------------------ an independent reference forward
def _reference(clip, learner, images):
    """Text and image features as MaPLe's official forward (full 77-token text, no helpers)."""
    depth, n = learner.depth, learner.n_ctx
    deep_text = list(learner.compound_prompts_text)
    deep_vision = [proj(p) for proj, p in zip(learner.visual_prompt_proj, deep_text)]
    tokens = learner.tokenized_prompts
    n_cls = tokens.shape[0]
    emb = clip.token_embedding(tokens)
    x = torch.cat([emb[:, :1], learner.ctx.unsqueeze(0).expand(n_cls, -1, -1), emb[:, 1 + n:]], dim=1)
    x = (x + clip.positional_embedding).permute(1, 0, 2)
    for i, block in enumerate(clip.transformer.resblocks):
        if 1 <= i < depth:
            x = torch.cat([x[:1], deep_text[i - 1].unsqueeze(1).expand(-1, n_cls, -1), x[1 + n:]])
        x = block(x)
    x = clip.ln_final(x.permute(1, 0, 2))
    text = x[torch.arange(n_cls), tokens.argmax(-1)] @ clip.text_projection

    v, batch = clip.visual, images.shape[0]
    y = v.conv1(images).flatten(2).permute(0, 2, 1)
    y = torch.cat([v.class_embedding.expand(batch, 1, -1), y], dim=1) + v.positional_embedding
    y = torch.cat([y, learner.ctx_to_vision_proj(learner.ctx).expand(batch, -1, -1)], dim=1)
    y = v.ln_pre(y).permute(1, 0, 2)
    for i, block in enumerate(v.transformer.resblocks):
        if 1 <= i < depth:
            y = torch.cat([y[:-n], deep_vision[i - 1].unsqueeze(1).expand(-1, batch, -1)])
        y = block(y)
    image = v.ln_post(y.permute(1, 0, 2)[:, 0]) @ v.proj
    return text, image


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_every_prompt_depth_matches_the_reference(tiny_clip, depth):
    model = MaPLeModel(_cfg(PROMPT_DEPTH=depth).TRAINER.MAPLE, CLASSNAMES, tiny_clip)
    learner = model.prompt_learner
    perturb(learner)
    assert len(learner.compound_prompts_text) == len(learner.visual_prompt_proj) == depth - 1
    images = random_images()
    with torch.no_grad():
        parts = model.inspect(images)
        text, image = _reference(tiny_clip, learner, images)
    torch.testing.assert_close(parts["text_features_raw"], text, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(parts["image_features_raw"], image, rtol=1e-4, atol=1e-5)
    assert sum(k.startswith("vision_deep_prompts.") for k in parts) == depth - 1


def test_deep_prompts_are_used(tiny_clip):
    model = MaPLeModel(_cfg(PROMPT_DEPTH=2).TRAINER.MAPLE, CLASSNAMES, tiny_clip)
    images = random_images()
    with torch.no_grad():
        before = model(images)
        model.prompt_learner.compound_prompts_text[0].add_(0.5)
        assert not torch.allclose(model(images), before)


@pytest.mark.parametrize("depth", [0, 4, "3"])
def test_prompt_depth_out_of_range_is_a_clear_error(tiny_clip, depth):
    with pytest.raises(UserError, match=r"PROMPT_DEPTH must be an integer between 1 and 3"):
        MaPLeModel(_cfg(PROMPT_DEPTH=depth).TRAINER.MAPLE, CLASSNAMES, tiny_clip)


def test_resnet_backbone_is_a_clear_error():
    from gopro_prompts.trainers.clip_helpers import _clip

    clip = _clip()
    resnet_clip = clip.model.CLIP(64, 32, (1, 1, 1, 1), 32, None, 77, 49408, 64, 1, 3).float()
    with pytest.raises(UserError, match="ViT"):
        MaPLeModel(_cfg().TRAINER.MAPLE, CLASSNAMES, resnet_clip)


@pytest.mark.parametrize("n_ctx,expected_prefix", [
    (2, "a photo of a"),  # MaPLe quirk: the whole phrase stays, "of a" are fixed tokens
    (3, "a photo of a"),
    (4, "a photo of a"),
    (6, "X X X X X X"),   # N_CTX > 4: random init
])
def test_prompt_text_follows_the_official_rule(tiny_clip, n_ctx, expected_prefix):
    names = ["red_circle", "x"]
    model = MaPLeModel(_cfg(N_CTX=n_ctx, CTX_INIT="a photo of a").TRAINER.MAPLE, names, tiny_clip)
    learner = model.prompt_learner
    assert learner.prompt_prefix == expected_prefix
    assert learner.ctx.shape == (n_ctx, tiny_clip.ln_final.weight.shape[0])
    init_emb = tiny_clip.token_embedding(learner.tokenized_prompts[0])
    if n_ctx <= 4:
        torch.testing.assert_close(learner.ctx, init_emb[1:1 + n_ctx])
    # fixed part of the prompt: the words after the context, then the class name
    torch.testing.assert_close(learner.token_suffix[0], init_emb[1 + n_ctx:learner.token_suffix.shape[1] + 1 + n_ctx])
    logits, terms = model.forward_train(random_images(2), torch.tensor([1, 0]))
    assert logits.shape == (2, 2) and torch.isfinite(terms["ce"])


def test_fp16_prompt_cast_variant_is_close_but_rounded(tiny_clip):
    model = MaPLeModel(_cfg().TRAINER.MAPLE, CLASSNAMES, tiny_clip)
    perturb(model.prompt_learner)
    images = random_images()
    with torch.no_grad():
        plain = model(images)
        model.fp16_prompt_cast = True
        rounded = model(images)
    assert not torch.equal(plain, rounded)
    torch.testing.assert_close(plain, rounded, rtol=1e-2, atol=1e-2)


# ------------------------------------------------------------ checkpoints of the official code
def test_official_whole_model_checkpoint_loads(tmp_path, synthetic_root):
    """The official MaPLe saves the whole CustomCLIP with its own prompt-learner names.

    (Our own checkpoints, and new classes, are checked for every trainer in tests/test_contract.py.)
    """
    trainer = offline_trainer("MaPLe", synthetic_root, tmp_path / "out", "DATASET.SUBSAMPLE_CLASSES", "new")
    learner = trainer.model.prompt_learner
    gen = torch.Generator().manual_seed(3)
    weights = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in learner.state_dict().items()}
    official = {}
    for key, value in weights.items():
        key = key.replace("ctx_to_vision_proj.", "proj.").replace("visual_prompt_proj.", "compound_prompt_projections.")
        official["prompt_learner." + key] = value.half()  # official PREC fp16 weights
    official["prompt_learner.token_prefix"] = torch.zeros(99, 1, 64)  # class-dependent: dropped
    official["prompt_learner.token_suffix"] = torch.zeros(99, 70, 64)
    official["image_encoder.conv1.weight"] = torch.zeros(1)  # frozen CLIP: ignored
    official["logit_scale"] = torch.zeros(())
    folder = tmp_path / "official" / "MultiModalPromptLearner"
    folder.mkdir(parents=True)
    torch.save({"state_dict": official, "epoch": 5, "optimizer": None, "scheduler": None, "val_result": None},
               folder / "model.pth.tar-5")
    trainer.load_model(str(tmp_path / "official"), epoch=5)
    loaded = learner.state_dict()
    assert set(loaded) == set(weights)
    for key, value in weights.items():
        torch.testing.assert_close(loaded[key], value.half().float(), rtol=0, atol=0)
    assert learner.token_suffix.shape[0] == trainer.dm.num_classes  # the new classes' own suffix stays
