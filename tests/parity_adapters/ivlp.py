"""Parity adapter for IVLP (the ``ivlp.pt`` fixture).

Our prompt learner's parameters carry the fixture's role names (``ctx``,
``vision_prompts_layer0``, ``vision_deep_prompts.{i}``, ``text_deep_prompts.{i}``),
so they load and report gradients without aliases.  Primary keys: pure fp32.
With ``variants``, the ``variant_fp16_prompt_cast.*`` keys are computed with
``MaPLeModel.fp16_prompt_cast`` on (the official fp16 rounding of every
inserted prompt).
"""
from __future__ import annotations

from parity_adapters.common import fp16_cast_keys, standard_keys


def run(fixture, model, cfg, variants):
    out = standard_keys(fixture, model)
    if variants:
        out.update(fp16_cast_keys(model, fixture["inputs.images"], fixture["inputs.labels"]))
    return out
