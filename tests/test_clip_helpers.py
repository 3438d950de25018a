"""The shared CLIP helpers against the `clip` package's own forward passes."""
from __future__ import annotations

import pytest
import torch

from gopro_prompts.trainers.clip_helpers import (
    ImageEncoder, Precision, TextEncoder, available_backbones, clip_logits, load_clip, tokenize,
    truncation_length,
)
from gopro_prompts.user_errors import UserError

TEXTS = ["a photo of a dog.", "a photo of a golden retriever.", "X X X X air conditioner."]


def test_text_encoder_equals_encode_text(tiny_clip):
    tokens = tokenize(TEXTS)
    with torch.no_grad():
        expected = tiny_clip.encode_text(tokens)
        embeddings = tiny_clip.token_embedding(tokens)
        got = TextEncoder(tiny_clip)(embeddings, tokens)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_truncated_text_encoder_is_exact(tiny_clip):
    tokens = tokenize(TEXTS)
    length = truncation_length(tokens)
    assert length == int(tokens.argmax(-1).max()) + 1
    with torch.no_grad():
        embeddings = tiny_clip.token_embedding(tokens)
        full = TextEncoder(tiny_clip)(embeddings, tokens)
        cut = TextEncoder(tiny_clip)(embeddings[:, :length], tokens)
    torch.testing.assert_close(cut, full, rtol=1e-5, atol=1e-6)
    # cutting one token too many loses the EOT of the longest prompt
    with pytest.raises(IndexError):
        TextEncoder(tiny_clip)(embeddings[:, :length - 1], tokens)


def test_image_encoder_equals_encode_image_and_exposes_blocks(tiny_clip):
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    encoder = ImageEncoder(tiny_clip)
    with torch.no_grad():
        expected = tiny_clip.encode_image(images)
        plain = encoder(images)
        feats, blocks = encoder(images, return_block_tokens=True)
    torch.testing.assert_close(plain, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-6)
    width = tiny_clip.visual.conv1.weight.shape[0]
    assert blocks.shape == (len(tiny_clip.visual.transformer.resblocks), 2, 17, width)
    # the last block's CLS token, through ln_post and proj, is the feature
    last = tiny_clip.visual.ln_post(blocks[-1][:, 0]) @ tiny_clip.visual.proj
    torch.testing.assert_close(last, expected, rtol=1e-5, atol=1e-6)


def test_image_encoder_prompts_change_features(tiny_clip):
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    width = tiny_clip.visual.conv1.weight.shape[0]
    encoder = ImageEncoder(tiny_clip)
    prompts = torch.randn(2, width)
    deep = [torch.randn(2, width), torch.randn(2, width)]
    with torch.no_grad():
        plain = encoder(images)
        shallow = encoder(images, prompts=prompts)
        deeper = encoder(images, prompts=prompts, deep_prompts=deep)
        _, blocks = encoder(images, prompts=prompts, deep_prompts=deep, return_block_tokens=True)
    assert blocks.shape[2] == 17 + 2
    assert not torch.allclose(plain, shallow)
    assert not torch.allclose(shallow, deeper)


def test_logits_shapes_and_scale(tiny_clip):
    img = torch.randn(3, 64)
    txt = torch.randn(5, 64)
    logits = clip_logits(img, txt, tiny_clip.logit_scale)
    assert logits.shape == (3, 5)
    assert logits.abs().max() <= tiny_clip.logit_scale.exp() + 1e-4
    per_image = clip_logits(img, txt.expand(3, 5, 64), tiny_clip.logit_scale)
    torch.testing.assert_close(per_image, logits)


def test_unknown_backbone_lists_valid_ones():
    with pytest.raises(UserError) as exc:
        load_clip("ViT-B/17")
    assert "ViT-B/16" in str(exc.value) and "tiny" in str(exc.value)
    assert "tiny" in available_backbones()


def test_load_from_local_state_dict(tmp_path, tiny_clip):
    path = tmp_path / "clip.pt"
    torch.save(tiny_clip.state_dict(), path)
    loaded = load_clip("", str(path))
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        # build_model rounds weights through fp16, as the official loaders do
        torch.testing.assert_close(loaded.encode_image(images), tiny_clip.encode_image(images), rtol=2e-2, atol=2e-2)
    with pytest.raises(UserError, match="not found"):
        load_clip("", str(tmp_path / "missing.pt"))


def test_builtin_tiny_clip_is_deterministic_and_keeps_global_rng():
    state = torch.random.get_rng_state()
    a = load_clip("tiny", seed=3)
    assert torch.equal(state, torch.random.get_rng_state())
    b = load_clip("tiny", seed=3)
    c = load_clip("tiny", seed=4)
    assert torch.equal(a.token_embedding.weight, b.token_embedding.weight)
    assert not torch.equal(a.token_embedding.weight, c.token_embedding.weight)
    assert not any(p.requires_grad for p in a.parameters())


@pytest.mark.parametrize("prec,dtype", [("fp32", torch.float32), ("fp16", torch.float32),
                                        ("amp", torch.float32), ("bf16", torch.float32)])
def test_precision_on_cpu_is_fp32(prec, dtype):
    p = Precision(prec, "cpu")
    assert p.weight_dtype == dtype
    assert p.autocast_dtype is None
    assert p.grad_scaler() is None


def test_precision_on_cuda_table():
    assert Precision("fp16", "cuda").weight_dtype == torch.float16
    assert Precision("amp", "cuda").autocast_dtype == torch.float16
    assert Precision("bf16", "cuda").autocast_dtype == torch.bfloat16
    assert Precision("fp32", "cuda").autocast_dtype is None
    with pytest.raises(UserError, match="PREC"):
        Precision("fp8", "cpu")
