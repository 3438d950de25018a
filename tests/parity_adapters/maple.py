"""Parity adapter for MaPLe (shared/parity/README.md §7).

Primary keys: pure fp32.  With ``variants``, the ``variant_fp16_prompt_cast.*``
keys are computed with ``MaPLeModel.fp16_prompt_cast`` on (the official fp16
rounding of the inserted prompts).
"""
from __future__ import annotations

from parity_adapters.common import (
    collect_grads, eval_outputs, head, load_learnables, text_token_keys, zero_grads,
)

VARIANT = "variant_fp16_prompt_cast."


def _train_step(model, learner, images, labels, prefix=""):
    model.train()  # the official CE and gradients come from train mode
    zero_grads(learner)
    _, terms = model.forward_train(images, labels)
    terms["ce"].backward()
    out = {f"{prefix}loss.ce": terms["ce"].detach()}
    out.update(collect_grads(learner, f"{prefix}grad"))
    return out


def run(fixture, model, cfg, variants):
    learner = model.prompt_learner
    load_learnables(fixture, learner)
    images, labels = fixture["inputs.images"], fixture["inputs.labels"]

    parts = eval_outputs(model, images)
    out = {
        "out.prompt_embeddings_head": head(parts["prompt_embeddings"], fixture),
        "out.image_features_raw": parts["image_features_raw"],
        "out.text_features_raw": parts["text_features_raw"],
        "out.logits": parts["logits"],
        "out.vision_prompts_layer0": parts["vision_prompts_layer0"],
        **{f"out.{k}": v for k, v in parts.items() if k.startswith("vision_deep_prompts.")},
        **text_token_keys(learner.tokenized_prompts),
    }
    out.update(_train_step(model, learner, images, labels))

    if variants:
        model.fp16_prompt_cast = True
        try:
            parts = eval_outputs(model, images)
            for key in ("image_features_raw", "text_features_raw", "logits"):
                out[f"{VARIANT}out.{key}"] = parts[key]
            out.update(_train_step(model, learner, images, labels, prefix=VARIANT))
        finally:
            model.fp16_prompt_cast = False
    return out
