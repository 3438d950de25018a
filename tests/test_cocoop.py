"""CoCoOp trainer: parity, batched per-image text path, training, checkpoints, new classes, PREC."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gopro_prompts.dassl_compat import load_checkpoint
from gopro_prompts.trainers.clip_helpers import PRECISIONS
from gopro_prompts.trainers.cocoop import CoCoOp, CoCoOpModel
from helpers import (
    assert_reload_reproduces_logits, assert_step_changed_only_the_prompt_learner, method_cfg, offline_trainer,
    one_step_run, perturb, random_images,
)

CLASSNAMES = ["dog", "sea_turtle", "forklift", "golden retriever", "air conditioner"]


def _cfg(**node):
    defaults = {"PROMPT_DEPTH": 3} if "COCOOP" == "MAPLE" else {}
    return method_cfg("COCOOP", **{**defaults, **node})


def _trainer(root, out, *opts):
    """A CoCoOp trainer on the embedded offline default, built but not trained."""
    return offline_trainer("CoCoOp", root, out, *opts)


# --------------------------------------------------------------------------- parity
def test_parity_fixture(parity_fixtures):
    import parity

    ok, rows = parity.check(str(parity_fixtures / "cocoop.pt"), str(parity_fixtures / "tiny_clip_fp16.pt"),
                            quiet=True)
    assert ok, rows
    assert {k for k, _ in rows} >= {"out.meta_net_bias", "out.text_features_raw", "grad.meta_net.linear2.weight"}


# ------------------------------------------------------------------ model behaviour
def test_batched_text_path_equals_a_per_image_loop(tiny_clip):
    model = CoCoOpModel(_cfg(N_CTX=4, CTX_INIT="a photo of a").TRAINER.COCOOP, CLASSNAMES, tiny_clip)
    perturb(model.prompt_learner)
    images = random_images()
    with torch.no_grad():
        image = model.encode_images(images)
        prompts, bias = model.prompt_learner(F.normalize(image, dim=-1))
        batched = model.encode_prompts(prompts)
        tokenized = model.prompt_learner.tokenized_prompts
        loop = torch.stack([model.text_encoder(prompts[b], tokenized) for b in range(len(images))])
        model.max_text_batch = 7  # forces one image per text-encoder call
        chunked = model.encode_prompts(prompts)
    assert batched.shape == (3, len(CLASSNAMES), image.shape[1])
    torch.testing.assert_close(batched, loop, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked, loop, rtol=1e-5, atol=1e-5)
    # every class prompt of image b carries ctx + pi_b right after SOS
    n_ctx = model.prompt_learner.n_ctx
    expected_ctx = model.prompt_learner.ctx + bias[1]
    for c in range(len(CLASSNAMES)):
        torch.testing.assert_close(prompts[1, c, 1:1 + n_ctx], expected_ctx)
    # the shift depends on the image
    assert not torch.allclose(bias[0], bias[1])


def test_meta_net_is_fed_the_normalised_image_feature(tiny_clip):
    model = CoCoOpModel(_cfg(N_CTX=4, CTX_INIT="a photo of a").TRAINER.COCOOP, CLASSNAMES, tiny_clip)
    images = random_images()
    with torch.no_grad():
        parts = model.inspect(images)
        unit = F.normalize(parts["image_features_raw"], dim=-1)
        torch.testing.assert_close(parts["meta_net_bias"], model.prompt_learner.meta_net(unit))
    assert model.prompt_learner.meta_net.linear1.out_features == tiny_clip.visual.output_dim // 16


@pytest.mark.parametrize("n_ctx,ctx_init,expected_n,prefix", [
    (8, "", 8, " ".join(["X"] * 8)),
    (16, "a_photo of", 3, "a photo of"),  # CTX_INIT's word count replaces N_CTX
    (2, "", 2, "X X"),
])
def test_other_context_settings_and_class_names_build_and_run(tiny_clip, n_ctx, ctx_init, expected_n, prefix):
    names = ["red_circle", "a much longer class name here", "x"]
    model = CoCoOpModel(_cfg(N_CTX=n_ctx, CTX_INIT=ctx_init).TRAINER.COCOOP, names, tiny_clip)
    learner = model.prompt_learner
    assert learner.ctx.shape == (expected_n, tiny_clip.ln_final.weight.shape[0])
    assert learner.prompt_prefix == prefix
    images = random_images(2)
    logits, terms = model.forward_train(images, torch.tensor([0, 2]))
    assert logits.shape == (2, 3)
    assert torch.isfinite(terms["ce"])
    terms["ce"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in learner.parameters())


def test_bad_n_ctx_is_a_clear_error(tiny_clip):
    with pytest.raises(Exception, match="N_CTX"):
        CoCoOpModel(_cfg(N_CTX=0, CTX_INIT="").TRAINER.COCOOP, CLASSNAMES, tiny_clip)


@pytest.mark.parametrize("prec", PRECISIONS)
def test_every_prec_runs_on_cpu(prec):
    cfg = _cfg(N_CTX=4, CTX_INIT="a photo of a")
    cfg.TRAINER.COCOOP.PREC = prec
    clip_model, precision = CoCoOp.load_backbone(cfg, "cpu")
    model = CoCoOp.build_clip_model(cfg, CLASSNAMES, clip_model)
    images, labels = random_images(), torch.tensor([0, 3, 1])
    with precision.autocast():
        logits, terms = model.forward_train(images, labels)
    terms["ce"].backward()
    assert torch.isfinite(terms["ce"]) and logits.shape == (3, 5)
    with torch.no_grad(), precision.autocast():
        assert torch.isfinite(model(images)).all()


# ------------------------------------------------------------ trainer integration
@pytest.fixture(scope="module")
def base_run(tmp_path_factory, synthetic_root):
    """A trainer on the base classes after one training step, and its checkpoint folder."""
    out = tmp_path_factory.mktemp("cocoop_base")
    return one_step_run(_trainer(synthetic_root, out, "DATASET.SUBSAMPLE_CLASSES", "base"), out)


def test_one_training_step_changes_only_learnable_params(base_run):
    assert_step_changed_only_the_prompt_learner(base_run)


def test_checkpoint_holds_only_the_prompt_learner(base_run):
    ckpt = load_checkpoint(str(base_run["out"] / "prompt_learner" / "model.pth.tar-1"))
    assert set(ckpt["state_dict"]) == {"ctx", "meta_net.linear1.weight", "meta_net.linear1.bias",
                                       "meta_net.linear2.weight", "meta_net.linear2.bias"}


def test_save_load_gives_identical_logits(base_run, tmp_path, synthetic_root):
    assert_reload_reproduces_logits(base_run, _trainer(synthetic_root, tmp_path, "DATASET.SUBSAMPLE_CLASSES", "base"))


def test_base_trained_model_evaluates_on_all_classes(base_run, tmp_path, synthetic_root):
    base_classes = base_run["trainer"].model.prompt_learner.n_cls
    other = _trainer(synthetic_root, tmp_path, "DATASET.SUBSAMPLE_CLASSES", "all")
    other.load_model(str(base_run["out"]), epoch=1)
    n_cls = other.dm.num_classes
    assert n_cls > base_classes
    assert other.model.prompt_learner.token_prefix.shape[0] == n_cls
    torch.testing.assert_close(other.model.prompt_learner.ctx, base_run["trainer"].model.prompt_learner.ctx)
    accuracy = other.test()
    assert 0.0 <= accuracy <= 100.0
