"""Helpers shared by the parity adapters."""
from __future__ import annotations

import torch


def load_learnables(fixture, module, aliases=None, skip=()):
    """Copy the fixture's ``param.<role>`` / ``buffer.<role>`` tensors into ``module``.

    ``aliases`` maps a fixture role to our state-dict name when they differ;
    roles starting with a ``skip`` prefix belong to modules we do not build
    (e.g. GOPro's unused meta-net).  Every
    other role must exist in ``module``.
    """
    aliases = aliases or {}
    state = module.state_dict()
    for key, value in fixture.items():
        if not key.startswith(("param.", "buffer.")):
            continue
        role = key.split(".", 1)[1]
        if any(role.startswith(prefix) for prefix in skip):
            continue
        name = aliases.get(role, role)
        if name not in state:
            raise KeyError(f"fixture key {key} has no counterpart {name!r} in {type(module).__name__}")
        if tuple(state[name].shape) != tuple(value.shape):
            raise ValueError(f"fixture key {key}: shape {tuple(value.shape)} != ours {tuple(state[name].shape)}")
        state[name] = value.clone()
    module.load_state_dict(state)


def collect_grads(module, prefix, aliases=None):
    """``{prefix.<role>: grad}`` for every parameter of ``module`` that received a gradient."""
    back = {ours: role for role, ours in (aliases or {}).items()}
    out = {}
    for name, param in module.named_parameters():
        if param.grad is not None:
            out[f"{prefix}.{back.get(name, name)}"] = param.grad.detach().clone()
    return out


def zero_grads(module):
    for param in module.parameters():
        param.grad = None


def text_token_keys(model_tokenized):
    return {
        "tokenized_prompts": model_tokenized,
        "eot_index": model_tokenized.argmax(dim=-1),
    }


def head(prompt_embeddings, fixture):
    """First K positions of the text-encoder input (``prompt_embeddings_head``)."""
    k = fixture["meta"]["prompt_embeddings_head_len"]
    return prompt_embeddings[..., :k, :]


@torch.no_grad()
def eval_outputs(model, images):
    model.eval()
    return model.inspect(images)


def eval_keys(fixture, learner, parts):
    """The evaluation keys every CLIP prompt learner's fixture holds."""
    return {
        "out.prompt_embeddings_head": head(parts["prompt_embeddings"], fixture),
        "out.image_features_raw": parts["image_features_raw"],
        "out.text_features_raw": parts["text_features_raw"],
        "out.logits": parts["logits"],
        **text_token_keys(learner.tokenized_prompts),
    }


def ce_train_step(model, learner, images, labels, prefix=""):
    """One cross-entropy backward in train mode: ``loss.ce`` and the learner's ``grad.*`` keys."""
    model.train()  # the official CE and gradients come from train mode
    zero_grads(learner)
    _, terms = model.forward_train(images, labels)
    terms["ce"].backward()
    out = {f"{prefix}loss.ce": terms["ce"].detach()}
    out.update(collect_grads(learner, f"{prefix}grad"))
    return out


#: prefix of the keys computed with the official fp16 rounding of inserted prompts
FP16_CAST = "variant_fp16_prompt_cast."


def loaded(fixture, model, **load_kwargs):
    """The model's prompt learner with the fixture's parameters loaded, and the fixture's images and labels."""
    learner = model.prompt_learner
    load_learnables(fixture, learner, **load_kwargs)
    return learner, fixture["inputs.images"], fixture["inputs.labels"]


def standard_keys(fixture, model, more_outputs=()):
    """What every prompt learner's fixture holds: the evaluation keys, ``loss.ce`` and ``grad.*``;
    plus ``out.<name>`` for each of the model's named tensors that starts with one of ``more_outputs``."""
    learner, images, labels = loaded(fixture, model)
    parts = eval_outputs(model, images)
    out = eval_keys(fixture, learner, parts)
    out.update({f"out.{k}": v for k, v in parts.items() if more_outputs and k.startswith(tuple(more_outputs))})
    out.update(ce_train_step(model, learner, images, labels))
    return out


def fp16_cast_keys(model, images, labels, outputs=("image_features_raw", "text_features_raw", "logits"),
                   extra=None):
    """``variant_fp16_prompt_cast.*`` keys: ``outputs``, ``loss.ce``, ``grad.*`` (and ``extra(prefix)``'s)
    computed with the model's ``fp16_prompt_cast`` on (the official fp16 rounding of inserted prompts)."""
    learner = model.prompt_learner
    model.fp16_prompt_cast = True
    try:
        parts = eval_outputs(model, images)
        out = {f"{FP16_CAST}out.{key}": parts[key] for key in outputs}
        out.update(ce_train_step(model, learner, images, labels, prefix=FP16_CAST))
        if extra is not None:
            out.update(extra(FP16_CAST))
    finally:
        model.fp16_prompt_cast = False
    return out
