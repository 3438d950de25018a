"""Parity adapter for MaPLe (the ``maple.pt`` fixture).

Primary keys: pure fp32.  With ``variants``, the ``variant_fp16_prompt_cast.*``
keys are computed with ``MaPLeModel.fp16_prompt_cast`` on (the official fp16
rounding of the inserted prompts).
"""
from __future__ import annotations

from parity_adapters.common import ce_train_step, eval_keys, eval_outputs, load_learnables

VARIANT = "variant_fp16_prompt_cast."


def run(fixture, model, cfg, variants):
    learner = model.prompt_learner
    load_learnables(fixture, learner)
    images, labels = fixture["inputs.images"], fixture["inputs.labels"]

    parts = eval_outputs(model, images)
    out = {
        **eval_keys(fixture, learner, parts),
        "out.vision_prompts_layer0": parts["vision_prompts_layer0"],
        **{f"out.{k}": v for k, v in parts.items() if k.startswith("vision_deep_prompts.")},
    }
    out.update(ce_train_step(model, learner, images, labels))

    if variants:
        model.fp16_prompt_cast = True
        try:
            parts = eval_outputs(model, images)
            for key in ("image_features_raw", "text_features_raw", "logits"):
                out[f"{VARIANT}out.{key}"] = parts[key]
            out.update(ce_train_step(model, learner, images, labels, prefix=VARIANT))
        finally:
            model.fp16_prompt_cast = False
    return out
