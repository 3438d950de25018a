"""Parity adapter for GOPro (the ``gopro.pt`` fixture).

Eval-mode outputs per view, every loss term in eval and train mode, the
BatchNorm buffers after one train-mode forward, the CE-only gradients and the
total-loss gradients in both modes.  The fixture's own second / third views
(``inputs.view2_images`` / ``view3_images``) replace the random augmentations.
Every train-mode pass starts from the stored ``buffer.*`` running statistics.
"""
from __future__ import annotations

import torch

from parity_adapters.common import (
    collect_grads, eval_outputs, head, load_learnables, text_token_keys, zero_grads,
)

#: the official, never-used CoCoOp meta-net: we do not build it, so its fixture keys are skipped
SKIP = ("meta_net_unused",)


def _load(fixture, learner):
    load_learnables(fixture, learner, skip=SKIP)


def _total(terms, weights):
    return sum(weights[name] * term for name, term in terms.items())


def run(fixture, model, cfg, variants):
    learner = model.learner
    node = cfg.TRAINER.GOPRO
    weights = {"ce": node.W_CE, "sem": node.W_SEM, "con": node.W_CON}
    views = [fixture["inputs.images"], fixture["inputs.view2_images"], fixture["inputs.view3_images"]]
    labels = fixture["inputs.labels"]
    _load(fixture, learner)

    # -- eval-mode outputs of each view
    v1 = eval_outputs(model, views[0])
    out = {
        "out.vision_layer_tokens": v1["vision_layer_tokens"],
        "out.style_feat": v1["style_feat"],
        "out.content_feat": v1["content_feat"],
        "out.style_content_mix": v1["style_content_mix"],
        "out.ctx_shift": v1["ctx_shift"],
        "out.prompt_embeddings_head": head(v1["prompt_embeddings"], fixture),
        "out.image_features_raw": v1["image_features_raw"],
        "out.text_features_per_image": v1["text_features_per_image"],
        "out.logits": v1["logits"],
        "out.sim_proj.view1.eval": v1["sim_proj"],
        **text_token_keys(learner.tokenized_prompts),
    }
    for i, images in ((2, views[1]), (3, views[2])):
        vi = eval_outputs(model, images)
        out[f"out.view{i}.image_features_raw"] = vi["image_features_raw"]
        out[f"out.view{i}.text_features_per_image"] = vi["text_features_per_image"]
        if i == 2:
            out["out.sim_proj.view2.eval"] = vi["sim_proj"]

    # -- eval mode: CE-only gradients, then the total loss and its gradients
    model.eval()
    zero_grads(learner)
    _, terms = model.forward_train(views, labels)
    terms["ce"].backward(retain_graph=True)
    out.update(collect_grads(learner, "grad"))
    out["loss.ce"] = terms["ce"].detach()
    out["loss.sem"] = terms["sem"].detach()
    out["loss.con.eval"] = terms["con"].detach()
    zero_grads(learner)
    total = _total(terms, weights)
    total.backward()
    out["loss.total.eval"] = total.detach()
    out.update(collect_grads(learner, "grad_total_eval"))

    # -- train mode, from the stored BatchNorm buffers
    _load(fixture, learner)
    model.train()
    zero_grads(learner)
    _, terms = model.forward_train(views, labels)
    total = _total(terms, weights)
    total.backward()
    out["loss.con.train"] = terms["con"].detach()
    out["loss.total.train"] = total.detach()
    out.update(collect_grads(learner, "grad_total_train"))
    bn = learner.sim_proj.bn
    out["buffer_after_one_train_forward.sim_proj.bn.running_mean"] = bn.running_mean.detach().clone()
    out["buffer_after_one_train_forward.sim_proj.bn.running_var"] = bn.running_var.detach().clone()

    # sim_proj outputs in train mode (batch statistics; fresh buffers again)
    _load(fixture, learner)
    with torch.no_grad():
        out["out.sim_proj.view1.train"] = model.project_image(v1["image_features_raw"])
        out["out.sim_proj.view2.train"] = model.project_image(out["out.view2.image_features_raw"])
    model.eval()
    _load(fixture, learner)
    return out
