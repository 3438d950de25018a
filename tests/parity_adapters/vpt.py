"""Parity adapter for VPT (the ``vpt.pt`` fixture).

The vision prompts carry the fixture's role names; the text features are the
model's frozen hand-crafted ones (``out.text_features_raw``), and the
tokenized prompts those it encoded.  Primary keys: pure fp32; with
``variants``, ``variant_fp16_prompt_cast.*`` with the official fp16 rounding of
the inserted vision prompts (``MaPLeModel.fp16_prompt_cast``).
"""
from __future__ import annotations

from parity_adapters.common import ce_train_step, eval_outputs, fp16_cast_keys, loaded, text_token_keys


def run(fixture, model, cfg, variants):
    learner, images, labels = loaded(fixture, model)
    parts = eval_outputs(model, images)
    out = {f"out.{key}": parts[key] for key in ("image_features_raw", "text_features_raw", "logits")}
    out.update(text_token_keys(model.tokenized_prompts))
    out.update(ce_train_step(model, learner, images, labels))
    if variants:
        out.update(fp16_cast_keys(model, images, labels, outputs=("image_features_raw", "logits")))
    return out
