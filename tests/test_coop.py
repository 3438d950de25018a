"""CoOp: where the class tokens go, class-specific context, CTX_INIT and random initialisation.

Built on the tiny CLIP and compared with prompts assembled by hand from CLIP's own token
embeddings.  Parity with the official CoOp: tests/test_parity.py; building, training,
checkpoints and new classes: tests/test_contract.py; the forward against the official
organisation: tests/test_performance.py.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gopro_prompts.trainers.clip_helpers import tokenize
from gopro_prompts.trainers.coop import CoOp
from gopro_prompts.user_errors import UserError
from helpers import method_cfg, random_images

#: class names of one to three tokens
CLASSNAMES = ["dog", "sea_turtle", "golden retriever", "air conditioner"]


def _model(tiny_clip, **node):
    return CoOp.build_clip_model(method_cfg("COOP", **node), CLASSNAMES, tiny_clip)


def _embedded(tiny_clip, prefix):
    """Token ids and token embeddings of "<prefix> <class name>." for every class."""
    tokens = tokenize([f"{prefix} {name.replace('_', ' ')}." for name in CLASSNAMES])
    with torch.no_grad():
        return tokens, tiny_clip.token_embedding(tokens).float()


def _zero_shot_logits(tiny_clip, tokens, images):
    """exp(logit_scale) * cos(image, text) with the frozen CLIP's own encoders."""
    with torch.no_grad():
        text = F.normalize(tiny_clip.encode_text(tokens).float(), dim=-1)
        image = F.normalize(tiny_clip.encode_image(images).float(), dim=-1)
        return tiny_clip.logit_scale.exp() * image @ text.t()


@pytest.mark.parametrize("n_ctx", [4, 3])
@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_class_token_position_places_the_class_tokens(tiny_clip, position, n_ctx):
    model = _model(tiny_clip, N_CTX=n_ctx, CTX_INIT="", CLASS_TOKEN_POSITION=position)
    learner = model.prompt_learner
    ctx = learner.ctx.detach()
    with torch.no_grad():
        prompts = learner()
    tokens, embedded = _embedded(tiny_clip, " ".join(["X"] * n_ctx))
    assert prompts.shape == (len(CLASSNAMES), prompts.shape[1], ctx.shape[-1])
    eot = tokens.argmax(-1)
    assert prompts.shape[1] == int(eot.max()) + 1  # the prompts end after the longest end-of-text
    half = n_ctx // 2
    for i in range(len(CLASSNAMES)):
        name_len = int(eot[i]) - 1 - n_ctx - 1  # SOS, context, the name, ".", EOS
        sos = embedded[i, :1]
        name = embedded[i, 1 + n_ctx:1 + n_ctx + name_len]
        rest = embedded[i, 1 + n_ctx + name_len:prompts.shape[1]]  # ".", EOS, padding: where they were
        pieces = {
            "end": [sos, ctx, name, rest],
            "middle": [sos, ctx[:half], name, ctx[half:], rest],
            "front": [sos, name, ctx, rest],
        }[position]
        assert torch.equal(prompts[i], torch.cat(pieces)), CLASSNAMES[i]
    logits, terms = model.forward_train(random_images(2), torch.tensor([0, 3]))
    assert logits.shape == (2, len(CLASSNAMES)) and torch.isfinite(terms["ce"])


def test_an_unknown_class_token_position_is_a_clear_error(tiny_clip):
    with pytest.raises(UserError, match="CLASS_TOKEN_POSITION 'last'.*end, middle, front"):
        _model(tiny_clip, CLASS_TOKEN_POSITION="last")


def test_class_specific_context_gives_each_class_its_own(tiny_clip):
    model = _model(tiny_clip, N_CTX=4, CTX_INIT="", CSC=True)
    learner = model.prompt_learner
    width = tiny_clip.ln_final.weight.shape[0]
    assert learner.ctx.shape == (len(CLASSNAMES), 4, width)
    with torch.no_grad():
        prompts = learner()
        for i in range(len(CLASSNAMES)):
            assert torch.equal(prompts[i, 1:5], learner.ctx[i])
        images = random_images()
        before = model(images)
        learner.ctx[2].add_(0.5)
        after = model(images)
    # class 2's context moves class 2's logits only
    assert (before != after).any(dim=0).tolist() == [i == 2 for i in range(len(CLASSNAMES))]


def test_unified_context_is_shared_by_every_class(tiny_clip):
    model = _model(tiny_clip, N_CTX=4, CTX_INIT="", CSC=False)
    learner = model.prompt_learner
    assert learner.ctx.shape == (4, tiny_clip.ln_final.weight.shape[0])
    with torch.no_grad():
        images = random_images()
        before = model(images)
        learner.ctx[1].add_(0.5)
        after = model(images)
    assert (before != after).any(dim=0).all()


@pytest.mark.parametrize("csc", [False, True])
def test_ctx_init_starts_from_the_phrase_and_equals_zero_shot_clip(tiny_clip, csc):
    """CTX_INIT's words set N_CTX and the context; CSC is ignored with it (as in CoOp)."""
    model = _model(tiny_clip, N_CTX=16, CTX_INIT="a photo of a", CSC=csc)
    learner = model.prompt_learner
    tokens, embedded = _embedded(tiny_clip, "a photo of a")
    assert learner.n_ctx == 4 and learner.prompt_prefix == "a photo of a"
    assert learner.ctx.shape == (4, tiny_clip.ln_final.weight.shape[0])
    assert torch.equal(learner.ctx.detach(), embedded[0, 1:5])
    with torch.no_grad():
        prompts = learner()
    assert torch.equal(prompts, embedded[:, :prompts.shape[1]])
    # untrained, the model is zero-shot CLIP with the template "a photo of a {}."
    images = random_images()
    with torch.no_grad():
        logits = model(images)
    torch.testing.assert_close(logits, _zero_shot_logits(tiny_clip, tokens, images), rtol=1e-4, atol=1e-4)


def test_random_initialisation_without_ctx_init(tiny_clip):
    model = _model(tiny_clip, N_CTX=8, CTX_INIT="")
    learner = model.prompt_learner
    assert learner.prompt_prefix == " ".join(["X"] * 8)
    ctx = learner.ctx.detach()
    assert ctx.shape == (8, tiny_clip.ln_final.weight.shape[0])
    assert 0.015 < float(ctx.std()) < 0.025 and abs(float(ctx.mean())) < 0.005  # N(0, 0.02), CoOp's init
    _, embedded = _embedded(tiny_clip, "X X X X X X X X")
    assert not torch.allclose(ctx, embedded[0, 1:9])
