"""Parity adapter for ProGrad (the ``prograd.pt`` fixture).

``grad.ctx`` and ``grad_kl.ctx`` are the gradients of each loss term alone; ``grad_prograd.ctx``
is what the optimiser steps with, written by the model's own ``backward`` through
``training_step`` (an optimiser with learning rate 0 leaves the parameters as they are).
"""
from __future__ import annotations

import torch

from gopro_prompts.trainers.clip_helpers import tokenize
from gopro_prompts.trainers.method import training_step
from parity_adapters.common import collect_grads, eval_keys, eval_outputs, load_learnables, zero_grads


def run(fixture, model, cfg, variants):
    learner = model.prompt_learner
    load_learnables(fixture, learner)
    images, labels = fixture["inputs.images"], fixture["inputs.labels"]

    parts = eval_outputs(model, images)
    zs_tokens = tokenize(model.zs_prompts)
    out = {
        **eval_keys(fixture, learner, parts),
        "out.text_features_zs": parts["text_features_zs"],
        "out.zs_logits": parts["zs_logits"],
        "tokenized_prompts_zs": zs_tokens,
        "eot_index_zs": zs_tokens.argmax(dim=-1),
    }

    model.train()  # the official losses and gradients come from train mode
    for term in ("ce", "kl"):
        zero_grads(learner)
        _, terms = model.forward_train(images, labels)
        terms[term].backward()
        out[f"loss.{term}"] = terms[term].detach()
        out.update(collect_grads(learner, "grad" if term == "ce" else f"grad_{term}"))

    zero_grads(learner)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    optim = torch.optim.SGD(learner.parameters(), lr=0.0)
    training_step(model, images, labels, optim)
    out.update(collect_grads(learner, "grad_prograd"))
    after = learner.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the recording step moved a parameter"
    return out
