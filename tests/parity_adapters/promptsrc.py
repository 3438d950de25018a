"""Parity adapter for PromptSRC (the ``promptsrc.pt`` fixture).

Primary keys: pure fp32.  ``out.zs_text_features_per_template_raw`` comes from the
trainer's own text-teacher function on the fixture's CLIP (``cfg.MODEL.BACKBONE.PATH``).
``loss.*`` and ``grad_total.*`` come from one training forward and the model's total
loss; ``grad.*`` from the CE alone.  The ``gpa.*`` keys drive the model's
``end_epoch`` with the fixture's per-epoch snapshots as the learnable values at the end
of each epoch.  With ``variants``, the ``variant_fp16_prompt_cast.*`` keys are computed
with ``MaPLeModel.fp16_prompt_cast`` on (the official fp16 rounding of the inserted prompts).
"""
from __future__ import annotations

import torch

from parity_adapters.common import ce_train_step, collect_grads, eval_keys, eval_outputs, fp16_cast_keys, loaded, zero_grads

LOSSES = ("ce", "scl_text", "scl_image", "scl_logits")


def _total_step(model, learner, images, labels, prefix=""):
    """Every loss term, the total and the total's gradients (train mode)."""
    model.train()
    zero_grads(learner)
    _, terms = model.forward_train(images, labels)
    total = model.total_loss(terms)
    total.backward()
    out = {f"{prefix}loss.{name}": terms[name].detach() for name in LOSSES}
    out[f"{prefix}loss.total"] = total.detach()
    out.update(collect_grads(learner, f"{prefix}grad_total"))
    zero_grads(learner)
    return out


def _text_teacher_per_template(cfg, classnames):
    from gopro_prompts.trainers.promptsrc import PromptSRC, text_teacher_features

    clip_model, _ = PromptSRC.load_backbone(cfg, "cpu")
    per_template, _ = text_teacher_features(clip_model, classnames)
    return per_template


@torch.no_grad()
def _gpa(fixture, model, learner):
    """Drive end_epoch with the fixture's snapshots; the weights and the aggregate it leaves."""
    from gopro_prompts.trainers.promptsrc import gpa_epoch_weights

    meta = fixture["meta"]
    max_epoch = meta["max_epoch"]
    roles = [key[len("gpa.snapshots."):] for key in fixture if key.startswith("gpa.snapshots.")]
    params = dict(learner.named_parameters())
    for epoch in range(max_epoch):
        for role in roles:
            params[role].copy_(fixture[f"gpa.snapshots.{role}"][epoch])
        model.end_epoch(epoch, max_epoch)
    out = {f"gpa.aggregated.{role}": params[role].detach().clone() for role in roles}
    out["gpa.epoch_weights"] = gpa_epoch_weights(model.gpa_mean, model.gpa_std, max_epoch).float()
    return out


def run(fixture, model, cfg, variants):
    learner, images, labels = loaded(fixture, model)
    parts = eval_outputs(model, images)
    out = {
        **eval_keys(fixture, learner, parts),
        "out.zs_text_features_ensemble_raw": parts["zs_text_features_ensemble_raw"],
        "out.zs_image_features_raw": parts["zs_image_features_raw"],
        "out.zs_logits": parts["zs_logits"],
        "out.zs_text_features_per_template_raw": _text_teacher_per_template(cfg, fixture["meta"]["classnames"]),
    }
    out.update(ce_train_step(model, learner, images, labels))
    out.update(_total_step(model, learner, images, labels))
    if variants:
        out.update(fp16_cast_keys(model, images, labels,
                                  extra=lambda prefix: _total_step(model, learner, images, labels, prefix=prefix)))

    out.update(_gpa(fixture, model, learner))  # last: it overwrites the learnable values
    return out
