"""Parity adapter for CoCoOp (the ``cocoop.pt`` fixture)."""
from __future__ import annotations

from parity_adapters.common import ce_train_step, eval_keys, eval_outputs, load_learnables


def run(fixture, model, cfg, variants):
    learner = model.prompt_learner
    load_learnables(fixture, learner)
    images, labels = fixture["inputs.images"], fixture["inputs.labels"]
    parts = eval_outputs(model, images)
    out = {"out.meta_net_bias": parts["meta_net_bias"], **eval_keys(fixture, learner, parts)}
    out.update(ce_train_step(model, learner, images, labels))
    return out
