"""Parity adapter for CoCoOp (shared/parity/README.md §6)."""
from __future__ import annotations

from parity_adapters.common import (
    collect_grads, eval_outputs, head, load_learnables, text_token_keys, zero_grads,
)


def run(fixture, model, cfg, variants):
    learner = model.prompt_learner
    load_learnables(fixture, learner)
    images, labels = fixture["inputs.images"], fixture["inputs.labels"]

    parts = eval_outputs(model, images)
    out = {
        "out.meta_net_bias": parts["meta_net_bias"],
        "out.prompt_embeddings_head": head(parts["prompt_embeddings"], fixture),
        "out.image_features_raw": parts["image_features_raw"],
        "out.text_features_raw": parts["text_features_raw"],
        "out.logits": parts["logits"],
        **text_token_keys(learner.tokenized_prompts),
    }

    model.train()  # the official CE and gradients come from train mode
    zero_grads(learner)
    _, terms = model.forward_train(images, labels)
    terms["ce"].backward()
    out["loss.ce"] = terms["ce"].detach()
    out.update(collect_grads(learner, "grad"))
    return out
