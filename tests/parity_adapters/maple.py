"""Parity adapter for MaPLe (the ``maple.pt`` fixture).

Primary keys: pure fp32.  With ``variants``, the ``variant_fp16_prompt_cast.*``
keys are computed with ``MaPLeModel.fp16_prompt_cast`` on (the official fp16
rounding of the inserted prompts).
"""
from __future__ import annotations

from parity_adapters.common import fp16_cast_keys, standard_keys


def run(fixture, model, cfg, variants):
    out = standard_keys(fixture, model, more_outputs=("vision_prompts_layer0", "vision_deep_prompts."))
    if variants:
        out.update(fp16_cast_keys(model, fixture["inputs.images"], fixture["inputs.labels"]))
    return out
