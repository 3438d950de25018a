"""CoCoOp: parity, the batched per-image text path, the meta-net, context settings, PREC.

Building, training, checkpoints and new classes: tests/test_contract.py (every trainer)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gopro_prompts.trainers.cocoop import CoCoOpModel
from helpers import method_cfg, perturb, random_images

CLASSNAMES = ["dog", "sea_turtle", "forklift", "golden retriever", "air conditioner"]


def _cfg(**node):
    return method_cfg("COCOOP", **node)


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


def test_the_learnable_module_is_the_context_and_the_meta_net(tiny_clip):
    """What a CoCoOp checkpoint holds (tests/test_contract.py checks that it is exactly this module)."""
    model = CoCoOpModel(_cfg(N_CTX=4, CTX_INIT="a photo of a").TRAINER.COCOOP, CLASSNAMES, tiny_clip)
    assert model.learnable_module() is model.prompt_learner
    assert set(model.learnable_module().state_dict()) == {
        "ctx", "meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight", "meta_net.linear2.bias"}
