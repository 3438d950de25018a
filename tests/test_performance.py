"""Issue 7: the optimised forwards compute exactly what the official organisation computes.

On the tiny CLIP, for CoCoOp and GOPro (and CoOp / MaPLe), our batched,
truncated path and :mod:`tests.reference_paths` (per-image loop, 77-token
prompts, all GOPro views at test) give equal logits, losses and gradients;
the truncation length is the longest end-of-text position + 1; evaluation
runs in inference mode; forwards make no host <-> device round trips.
"""
from __future__ import annotations

import ast
import inspect
import textwrap

import pytest
import torch

from gopro_prompts.registry import register_all
from gopro_prompts.dassl_compat import TRAINER_REGISTRY
from gopro_prompts.trainers.clip_helpers import (
    TextEncoder, eot_positions, supports_shared_prefix, tokenize, truncation_length,
)
from gopro_prompts.trainers.config import default_cfg
from gopro_prompts.trainers.prompts import assemble_per_image, build_prompt_parts
from helpers import assert_beats_chance, env_report_skipped
from tests.reference_paths import full_length_suffix, reference_for

register_all()  # our datasets and trainers in the backend's registries

#: class names of very different token lengths (the longest decides the truncation)
NAMES = ["dog", "sea turtle", "forklift", "golden retriever", "air conditioner",
         "greater swiss mountain dog", "ibis"]


def _build(name, tiny_clip, **node_opts):
    cfg = default_cfg()
    cfg.TRAINER.NAME = name
    cls = TRAINER_REGISTRY.get(name)
    node = cls.node(cfg)
    for key, value in node_opts.items():
        node[key] = value
    torch.manual_seed(0)
    model = cls.build_clip_model(cfg, NAMES, tiny_clip)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.learnable_module().parameters():
        p.requires_grad_(True)
    # move every learnable tensor away from its init so that nothing is trivially zero
    with torch.no_grad():
        for p in model.learnable_module().parameters():
            p.add_(0.05 * torch.randn_like(p))
    return cfg, model


def _inputs(name, batch=3):
    gen = torch.Generator().manual_seed(5)
    views = [torch.randn(batch, 3, 32, 32, generator=gen) for _ in range(3 if name == "GOPro" else 1)]
    labels = torch.tensor([0, 5, 3, 1][:batch])
    return (views if name == "GOPro" else views[0]), labels, views


def _run(forward, model, inputs, labels):
    learnable = model.learnable_module()
    learnable.zero_grad(set_to_none=True)
    logits, terms = forward(inputs, labels)
    sum(terms.values()).backward()
    grads = {k: p.grad.clone() for k, p in learnable.named_parameters() if p.grad is not None}
    return logits.detach(), {k: t.detach() for k, t in terms.items()}, grads


def _close(actual, expected, rel=1e-4):
    """|a - e| <= rel * max|e| (+ a tiny floor): the noise of a different summation order."""
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    assert diff <= rel * scale + 1e-7, f"max diff {diff:.3g} vs scale {scale:.3g}"


# ----------------------------------------------------------------------------
# truncation
# ----------------------------------------------------------------------------
def test_truncation_length_is_longest_eot_plus_one(tiny_clip):
    texts = [f"a photo of a {n}." for n in NAMES]
    tokens = tokenize(texts)
    longest = max(len([t for t in row.tolist() if t != 0]) for row in tokens)  # SOS .. EOT
    assert truncation_length(tokens) == longest == int(eot_positions(tokens).max()) + 1
    parts = build_prompt_parts(NAMES, tiny_clip, 4, "a photo of a")
    assert parts.seq_len == longest < tokens.shape[1]
    assert 1 + parts.n_ctx + parts.token_suffix.shape[1] == parts.seq_len
    assert parts.tokenized.shape[1] == 77  # the full token ids are kept (EOT positions)


def test_truncated_text_encoding_equals_full_length(tiny_clip):
    """Cutting after the longest EOT is exact: CLIP's text mask is causal."""
    parts = build_prompt_parts(NAMES, tiny_clip, 4, "a photo of a", truncate=False)
    embed = tiny_clip.token_embedding(parts.tokenized)
    encoder = TextEncoder(tiny_clip)
    full = encoder(embed, parts.tokenized)
    cut = encoder(embed[:, :truncation_length(parts.tokenized)], parts.tokenized)
    _close(cut, full)


def test_full_length_suffix_rebuilds_the_official_prompt(tiny_clip):
    _, model = _build("CoCoOp", tiny_clip, CTX_INIT="a photo of a")
    learner = model.prompt_learner
    full = full_length_suffix(learner, tiny_clip.token_embedding.weight[0])
    official = build_prompt_parts(NAMES, tiny_clip, 4, "a photo of a", truncate=False).token_suffix
    assert learner.token_suffix.shape[1] < full.shape[1]
    assert full.shape == official.shape == (len(NAMES), 77 - 1 - 4, official.shape[-1])
    torch.testing.assert_close(full, official, rtol=0, atol=0)


# ----------------------------------------------------------------------------
# optimised path == reference path
# ----------------------------------------------------------------------------
def _model_and_reference(name, tiny_clip):
    """Our model of ``name`` on the tiny CLIP (MaPLe prompting all 3 layers) and its reference path."""
    opts = {"PROMPT_DEPTH": 3} if name == "MaPLe" else {}
    _, model = _build(name, tiny_clip, **opts)
    return model, reference_for(name, model, tiny_clip)


@pytest.mark.parametrize("name", ["CoCoOp", "GOPro", "CoOp", "MaPLe"])
def test_train_logits_losses_and_gradients_equal_the_reference(name, tiny_clip):
    model, ref = _model_and_reference(name, tiny_clip)
    inputs, labels, _ = _inputs(name)
    model.learnable_module().train()
    ours = _run(model.forward_train, model, inputs, labels)
    theirs = _run(ref.train_forward, model, inputs, labels)
    _close(ours[0], theirs[0])
    assert set(ours[1]) == set(theirs[1]) and ours[1]
    for key in theirs[1]:
        _close(ours[1][key], theirs[1][key])
    assert set(ours[2]) == set(theirs[2]) and ours[2]
    grad_scale = max(g.abs().max().item() for g in theirs[2].values())
    for key in theirs[2]:  # analytically-zero gradients (rho.bias, BN-cancelled bias) are noise
        diff = (ours[2][key] - theirs[2][key]).abs().max().item()
        assert diff <= 1e-4 * grad_scale, f"grad {key}: {diff:.3g} (scale {grad_scale:.3g})"


@pytest.mark.parametrize("name", ["CoCoOp", "GOPro", "CoOp", "MaPLe"])
def test_eval_logits_equal_the_reference(name, tiny_clip):
    model, ref = _model_and_reference(name, tiny_clip)
    _, _, views = _inputs(name)
    model.learnable_module().eval()
    expected = ref.eval_forward(views[0], views[1:])
    with torch.inference_mode():
        if hasattr(model, "begin_eval"):
            model.begin_eval()
        ours = model(views[0])
        if hasattr(model, "end_eval"):
            model.end_eval()
    _close(ours, expected)


def test_chunked_text_encoding_gives_the_same_numbers(tiny_clip):
    """Bounded-memory chunks (whole images per call) change nothing."""
    _, cocoop = _build("CoCoOp", tiny_clip)
    images = _inputs("CoCoOp")[0]
    with torch.no_grad():
        one_call = cocoop(images)
        cocoop.max_text_batch = len(NAMES)  # one image per call
        _close(cocoop(images), one_call, rel=1e-6)
    _, gopro = _build("GOPro", tiny_clip)
    _, _, views = _inputs("GOPro")
    gopro.eval()
    with torch.no_grad():
        one_call = gopro(views[0])
        gopro.text_batch_size = 2 * len(NAMES)
        _close(gopro(views[0]), one_call, rel=1e-6)


def test_gopro_evaluation_encodes_only_the_original_view(tiny_clip):
    _, model = _build("GOPro", tiny_clip)
    calls = []
    handle = model.image_encoder.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    text_calls = []
    handle2 = model.text_encoder.register_forward_hook(
        lambda m, a, kw, o: text_calls.append((a[0].shape, kw.get("suffix"), o.shape)), with_kwargs=True)
    model.eval()
    with torch.inference_mode():
        model(torch.randn(2, 3, 32, 32))
    handle.remove()
    handle2.remove()
    assert calls == [2]
    # one batched call: 2 images' prompt starts (SOS + 4 context tokens) x every class's truncated suffix
    assert len(text_calls) == 1
    prefixes, suffix, out = text_calls[0]
    assert tuple(prefixes[:2]) == (2, 5) and suffix.shape[0] == len(NAMES)
    assert prefixes[1] + suffix.shape[1] == model.learner.tokenized_prompts.argmax(-1).max() + 1 < 77
    assert tuple(out[:2]) == (2, len(NAMES))


def test_shared_prefix_encoding_equals_full_prompts(tiny_clip):
    """Encoding each image's prompt start once is exact (causal mask): features and gradients."""
    parts = build_prompt_parts(NAMES, tiny_clip, 4, "a photo of a")
    encoder = TextEncoder(tiny_clip)
    assert supports_shared_prefix(encoder)
    gen = torch.Generator().manual_seed(3)
    ctx = (parts.ctx_init + 0.2 * torch.randn(3, 1, parts.ctx_init.shape[-1], generator=gen)).requires_grad_()
    full = assemble_per_image(parts.token_prefix, ctx, parts.token_suffix).flatten(0, 1)
    expected = encoder(full, parts.tokenized.repeat(3, 1)).view(3, len(NAMES), -1)
    (grad_expected,) = torch.autograd.grad(expected.square().sum(), ctx)
    prefixes = torch.cat([parts.token_prefix[:1].expand(3, -1, -1), ctx], dim=1)
    shared = encoder(prefixes, parts.tokenized, suffix=parts.token_suffix)
    (grad_shared,) = torch.autograd.grad(shared.square().sum(), ctx)
    _close(shared, expected, rel=1e-5)
    _close(grad_shared, grad_expected, rel=1e-5)


def test_shared_prefix_falls_back_without_a_causal_mask(tiny_clip):
    import copy

    encoder = TextEncoder(copy.deepcopy(tiny_clip))
    encoder.blocks[1].attn_mask = None  # not CLIP's causal text block: encode every prompt in full
    assert not supports_shared_prefix(encoder)


def test_frozen_encoders_keep_no_activations(tiny_clip):
    """The image features leave the frozen encoder without an autograd graph (CoCoOp, GOPro)."""
    for name in ("CoCoOp", "GOPro"):
        _, model = _build(name, tiny_clip)
        images = torch.randn(2, 3, 32, 32)
        out = model.encode_images(images)
        feats = out[0] if isinstance(out, tuple) else out
        assert feats.grad_fn is None and not feats.requires_grad


# ----------------------------------------------------------------------------
# evaluation mode and host <-> device traffic
# ----------------------------------------------------------------------------
def test_trainer_test_runs_in_inference_mode(tmp_path, synthetic_root):
    from gopro_prompts import train

    with env_report_skipped():
        trainer = train.main(["--trainer", "CoOp", "--output-dir", str(tmp_path),
                              "--no-train", "DATASET.NUM_SHOTS", "1"])
    seen = []
    forward = trainer.model.forward

    def spy(images):
        seen.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
        return forward(images)

    trainer.model.forward = spy
    accuracy = trainer.test()
    assert seen and all(mode == (True, False) for mode in seen)
    # untrained CoOp with CTX_INIT "a photo of a" is CLIP's zero-shot classifier: 47.5% (chance 8.3%)
    assert_beats_chance(accuracy, trainer.dm.num_classes, factor=3)
    # training still works after an inference-mode evaluation (no inference tensors leak)
    trainer.model.forward = forward
    batch = next(iter(trainer.train_loader_x))
    trainer.batch_idx, trainer.num_batches = 0, 2
    summary = trainer.forward_backward(batch)
    assert set(summary) == {"loss", "acc"} and all(isinstance(v, float) for v in summary.values())


FORWARDS = [
    ("gopro_prompts.trainers.coop", "CoOpModel"), ("gopro_prompts.trainers.cocoop", "CoCoOpModel"), ("gopro_prompts.trainers.maple", "MaPLeModel"),
    ("gopro_prompts.trainers.gopro", "GOProModel"), ("gopro_prompts.trainers.clip_helpers", "TextEncoder"),
    ("gopro_prompts.trainers.clip_helpers", "ImageEncoder"), ("gopro_prompts.trainers.clip_helpers", "_shared_prefix_block"),
]
METHODS = ("forward", "forward_train", "encode_text", "encode_prompts", "encode_context", "_forward",
           "text_features", "image_features", "encode_images", "_forward_shared_prefix")
HOST_SYNC = ("item", "cpu", "tolist", "numpy")


@pytest.mark.parametrize("module_name, name", FORWARDS)
def test_forwards_make_no_host_round_trips(module_name, name):
    import importlib

    obj = getattr(importlib.import_module(module_name), name)
    fns = [obj] if inspect.isfunction(obj) else [obj.__dict__[m] for m in METHODS if m in obj.__dict__]
    assert fns
    for fn in fns:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        calls = [n.func.attr for n in ast.walk(tree)
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
        bad = sorted(set(calls) & set(HOST_SYNC))
        assert not bad, f"{name}.{fn.__name__} calls {bad}: a host <-> device round trip in the forward"


def test_benchmark_script_runs_and_reports_every_field(tmp_path):
    """tests/benchmark.py end to end on the tiny architecture (a smoke test, not a timing)."""
    import json

    from tests import benchmark as bench
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        bench.main(["--arch", "tiny", "--classes", "5", "--trainers", "GOPro", "--repeats", "1",
                    "--eval-batch", "2", "--in-process", "--threads", "1", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)  # --threads is process-wide
    record = json.loads(out.read_text())["trainers"]["GOPro"]
    for path_name in ("ours", "reference"):
        assert {"train_s_per_step", "eval_s_per_img", "peak_mem_mb"} <= set(record[path_name])
    assert record["speedup_train"] > 0 and record["speedup_eval"] > 0
    assert record["max_rel_diff"]["logits"] < 1e-4 and record["max_rel_diff"]["loss"] < 1e-4
    assert set(record["max_abs_diff"]["losses"]) == {"ce", "sem", "con", "total"}
    assert record["seq_len"] < record["context_length"] == 77
