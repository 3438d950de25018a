"""Parity adapter for KgCoOp (the ``kgcoop.pt`` fixture).

Primary keys: the hand-crafted text features computed in fp32 (our model's buffer).
``loss.total`` / ``grad_total.ctx`` come from the contract path (``model.total_loss`` with the
model's own ``loss_weights``, then ``model.backward``).  With ``variants``, the
``variant_fp16_zs_text.*`` keys swap in the features the published code stores: encoded by an
fp16 copy of the same CLIP, normalised and kept in fp16.
"""
from __future__ import annotations

from parity_adapters.common import collect_grads, eval_keys, eval_outputs, load_learnables, zero_grads

from gopro_prompts.trainers.clip_helpers import _clip, encode_class_texts, load_clip, tokenize

VARIANT = "variant_fp16_zs_text."


def _kg_keys(model, learner, images, labels, prefix=""):
    """CE gradients (primary only), then the total loss and its gradients as the trainer's step computes them."""
    model.train()
    out = {}
    zero_grads(learner)
    _, terms = model.forward_train(images, labels)
    if not prefix:
        terms["ce"].backward(retain_graph=True)
        out["loss.ce"] = terms["ce"].detach()
        out.update(collect_grads(learner, "grad"))
        zero_grads(learner)
    total = model.total_loss(terms)
    model.backward(total, terms)
    out[f"{prefix}loss.kg"] = terms["kg"].detach()
    out[f"{prefix}loss.total"] = total.detach()
    out.update(collect_grads(learner, f"{prefix}grad_total"))
    return out


def run(fixture, model, cfg, variants):
    learner = model.prompt_learner
    load_learnables(fixture, learner)
    images, labels = fixture["inputs.images"], fixture["inputs.labels"]
    assert model.loss_weights["kg"] == fixture["meta"]["kg_weight_W"]

    parts = eval_outputs(model, images)
    zs_tokens = tokenize(model.zs_prompts)
    out = {
        **eval_keys(fixture, learner, parts),
        "tokenized_prompts_zs": zs_tokens,
        "eot_index_zs": zs_tokens.argmax(dim=-1),
        "out.text_features_zs": parts["text_features_zs"],
        "out.kg_cos": parts["kg_cos"],
    }
    out.update(_kg_keys(model, learner, images, labels))

    if variants:
        clip16 = load_clip("", cfg.MODEL.BACKBONE.PATH)
        _clip().model.convert_weights(clip16)  # the published CLIP's fp16 (LayerNorms stay fp32)
        raw = encode_class_texts(clip16, fixture["meta"]["classnames"], [fixture["meta"]["zs_template"]])[0].half()
        fp32_teacher = model.text_features_zs
        model.text_features_zs = raw / raw.norm(dim=-1, keepdim=True)  # fp16, as the official stores it
        try:
            parts = eval_outputs(model, images)
            out[f"{VARIANT}out.text_features_zs"] = parts["text_features_zs"].float()
            out[f"{VARIANT}out.kg_cos"] = parts["kg_cos"]
            out.update(_kg_keys(model, learner, images, labels, prefix=VARIANT))
        finally:
            model.text_features_zs = fp32_teacher
    return out
