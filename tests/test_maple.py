"""MaPLe trainer: parity, prompt depth, prompt text, training, checkpoints, new classes, PREC."""
from __future__ import annotations

import pytest
import torch

from gopro_prompts.dassl_compat import load_checkpoint
from gopro_prompts.trainers.clip_helpers import PRECISIONS
from helpers import (
    assert_reload_reproduces_logits, assert_step_changed_only_the_prompt_learner, method_cfg, offline_trainer,
    one_step_run, perturb, random_images,
)
from gopro_prompts.trainers.maple import MaPLe, MaPLeModel
from gopro_prompts.user_errors import UserError

CLASSNAMES = ["dog", "sea_turtle", "forklift", "golden retriever", "air conditioner"]


def _cfg(**node):
    return method_cfg("MAPLE", **{"PROMPT_DEPTH": 3, **node})


def _trainer(root, out, *opts):
    """A MaPLe trainer on the embedded offline default, built but not trained."""
    return offline_trainer("MaPLe", root, out, *opts)


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


def test_eval_cache_gives_the_same_logits(tiny_clip):
    model = MaPLeModel(_cfg(PROMPT_DEPTH=2).TRAINER.MAPLE, CLASSNAMES, tiny_clip)
    perturb(model.prompt_learner)
    images = random_images()
    with torch.no_grad():
        plain = model(images)
        model.begin_eval()
        cached = model(images)
        model.end_eval()
    assert torch.equal(plain, cached)


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


@pytest.mark.parametrize("prec", PRECISIONS)
def test_every_prec_runs_on_cpu(prec):
    cfg = _cfg()
    cfg.TRAINER.MAPLE.PREC = prec
    clip_model, precision = MaPLe.load_backbone(cfg, "cpu")
    model = MaPLe.build_clip_model(cfg, CLASSNAMES, clip_model)
    images, labels = random_images(), torch.tensor([0, 3, 1])
    with precision.autocast():
        logits, terms = model.forward_train(images, labels)
    terms["ce"].backward()
    assert torch.isfinite(terms["ce"]) and logits.shape == (3, 5)
    with torch.no_grad(), precision.autocast():
        model.begin_eval()
        assert torch.isfinite(model(images)).all()
        model.end_eval()


# ------------------------------------------------------------ trainer integration
@pytest.fixture(scope="module")
def base_run(tmp_path_factory, synthetic_root):
    out = tmp_path_factory.mktemp("maple_base")
    return one_step_run(_trainer(synthetic_root, out, "DATASET.SUBSAMPLE_CLASSES", "base"), out)


def test_one_training_step_changes_only_learnable_params(base_run):
    assert_step_changed_only_the_prompt_learner(base_run)


def test_checkpoint_holds_only_the_prompt_learner(base_run):
    ckpt = load_checkpoint(str(base_run["out"] / "MultiModalPromptLearner" / "model.pth.tar-1"))
    assert set(ckpt["state_dict"]) == set(base_run["trainer"].model.prompt_learner.state_dict())
    assert "ctx" in ckpt["state_dict"] and not any("prefix" in k or "suffix" in k for k in ckpt["state_dict"])


def test_save_load_gives_identical_logits(base_run, tmp_path, synthetic_root):
    assert_reload_reproduces_logits(base_run, _trainer(synthetic_root, tmp_path, "DATASET.SUBSAMPLE_CLASSES", "base"))


def test_base_trained_model_evaluates_on_all_classes(base_run, tmp_path, synthetic_root):
    base_classes = base_run["trainer"].model.prompt_learner.n_cls
    other = _trainer(synthetic_root, tmp_path, "DATASET.SUBSAMPLE_CLASSES", "all")
    other.load_model(str(base_run["out"]), epoch=1)
    n_cls = other.dm.num_classes
    assert n_cls > base_classes
    assert other.model.prompt_learner.token_suffix.shape[0] == n_cls
    accuracy = other.test()
    assert 0.0 <= accuracy <= 100.0


def test_official_whole_model_checkpoint_loads(base_run, tmp_path, synthetic_root):
    """The official MaPLe saves the whole CustomCLIP with its own prompt-learner names."""
    learner = base_run["trainer"].model.prompt_learner
    official = {}
    for key, value in learner.state_dict().items():
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
    other = _trainer(synthetic_root, tmp_path / "out", "DATASET.SUBSAMPLE_CLASSES", "new")
    other.load_model(str(tmp_path / "official"), epoch=5)
    for key, value in learner.state_dict().items():
        torch.testing.assert_close(other.model.prompt_learner.state_dict()[key], value.half().float())
