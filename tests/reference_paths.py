"""Reference paths: each method computed the way its official code does.

Used by ``tests/benchmark.py`` (the cost to beat) and by the tests (our
optimised forwards must give the same logits, losses and gradients).  A
reference path runs on *our* model's modules and weights, so both paths
compute the same function, but with the official organisation of the work
(the forwards of CoOp's ``trainers/coop.py`` and ``trainers/cocoop.py``, MaPLe's
``trainers/maple.py`` and GOPro's official trainer):

* every text prompt is the full 77-token sequence (no truncation);
* the text encoder is CLIP's: ``ln_final`` over all tokens, then the EOT token;
* CoCoOp / GOPro encode the class prompts in a Python loop over the images;
* CoOp / MaPLe encode the class prompts at every batch, evaluation included;
* GOPro runs its three views one after the other, at test time too (the
  official defect D3; the extra views' logits are discarded);
* frozen encoders run without ``torch.no_grad`` (frozen weights, as in the
  official forwards), evaluation runs under ``torch.no_grad`` (Dassl's
  ``test()``), never under inference mode.

``reference_for(trainer_name, model, clip_model)`` returns an object with
``train_forward(inputs, labels) -> (logits, {term: loss})`` and
``eval_forward(images, extra_views=None) -> logits``.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from gopro_prompts.trainers.clip_helpers import clip_logits

__all__ = ["REFERENCES", "reference_for", "full_length_suffix", "official_text_encode"]


# ----------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------
def full_length_suffix(learner: nn.Module, pad_embedding: torch.Tensor) -> torch.Tensor:
    """``learner.token_suffix`` padded back to the 77-token context.

    Our learners keep the suffix only up to the longest end-of-text; the
    official suffix continues with the embedding of the padding token (id 0).
    """
    tokenized = learner.tokenized_prompts
    suffix = learner.token_suffix
    context = tokenized.shape[1]
    kept = 1 + learner.n_ctx + suffix.shape[1]  # SOS + context + suffix
    if bool((tokenized[:, kept:] != 0).any()):
        raise ValueError("the truncated suffix drops non-padding tokens: cannot rebuild the full prompt")
    pad = pad_embedding.to(suffix.dtype).expand(suffix.shape[0], context - kept, -1)
    return torch.cat([suffix, pad], dim=1)


@contextlib.contextmanager
def full_length_prompts(learner: nn.Module, pad_embedding: torch.Tensor):
    """Temporarily give ``learner`` its full 77-token suffix (so its own forward builds official prompts)."""
    truncated = learner.token_suffix
    learner.token_suffix = full_length_suffix(learner, pad_embedding)
    try:
        yield
    finally:
        learner.token_suffix = truncated


def official_text_encode(text_encoder: nn.Module, prompts: torch.Tensor, tokenized: torch.Tensor,
                         deep_prompts: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """CLIP's text tower as the official TextEncoder runs it (CoOp's ``TextEncoder.forward``).

    ``prompts`` [N, 77, D] + positional embedding -> blocks (MaPLe: positions
    1..n replaced by the deep prompt before blocks 1..J-1) -> ``ln_final`` on
    every token -> the EOT token -> ``text_projection``.
    """
    enc = text_encoder
    dtype = enc.dtype
    x = prompts.type(dtype) + enc.positional_embedding.type(dtype)
    x = x.permute(1, 0, 2)
    for i, block in enumerate(enc.blocks):
        if deep_prompts is not None and 1 <= i <= len(deep_prompts):
            deep = deep_prompts[i - 1].type(dtype)
            n = deep.shape[-2]
            deep = deep.unsqueeze(1).expand(n, x.shape[1], -1) if deep.dim() == 2 else deep.permute(1, 0, 2)
            x = torch.cat([x[:1], deep, x[1 + n:]], dim=0)
        x = block(x)
    x = x.permute(1, 0, 2)
    x = enc.ln_final(x).type(dtype)
    x = x[torch.arange(x.shape[0], device=x.device), tokenized.argmax(dim=-1)]
    return x @ enc.text_projection


# ----------------------------------------------------------------------------
# per method
# ----------------------------------------------------------------------------
class _Reference:
    """Common state: the model, the padding-token embedding, the learner."""

    learner_attr = "prompt_learner"

    def __init__(self, model: nn.Module, pad_embedding: torch.Tensor):
        self.model = model
        self.learner = getattr(model, self.learner_attr)
        self.pad = pad_embedding.detach()

    def prompts_context(self):
        return full_length_prompts(self.learner, self.pad.to(self.learner.token_suffix.device))

    def logits(self, images) -> torch.Tensor:
        raise NotImplementedError

    def train_forward(self, inputs, labels):
        logits = self.logits(inputs)
        return logits, {"ce": F.cross_entropy(logits, labels)}

    @torch.no_grad()  # Dassl's test(): no_grad, not inference mode
    def eval_forward(self, images, extra_views=None):
        return self.logits(images)


class CoOpReference(_Reference):
    """Official CoOp: image encoder, then all class prompts (77 tokens) at every batch."""

    def logits(self, images):
        m = self.model
        image = m.image_encoder(images)
        with self.prompts_context():
            prompts = self.learner()
        text = official_text_encode(m.text_encoder, prompts, self.learner.tokenized_prompts)
        return clip_logits(image, text, m.logit_scale)


class CoCoOpReference(_Reference):
    """Official CoCoOp: per image, the text encoder runs on that image's class prompts."""

    def logits(self, images):
        m = self.model
        image = m.image_encoder(images)
        with self.prompts_context():
            prompts, _ = self.learner(F.normalize(image.float(), dim=-1))
        tokenized = self.learner.tokenized_prompts
        rows = []
        for prompts_i, image_i in zip(prompts, image):
            text_i = official_text_encode(m.text_encoder, prompts_i, tokenized)
            rows.append(clip_logits(image_i.unsqueeze(0), text_i, m.logit_scale))
        return torch.cat(rows)


class MaPLeReference(_Reference):
    """Official MaPLe: prompts of both branches and the text features at every batch."""

    def logits(self, images):
        m = self.model
        with self.prompts_context():
            prompts, vision_prompt, deep_text, deep_vision = self.learner()
        n_cls = prompts.shape[0]
        deep = [m._cast(p, n_cls) for p in deep_text] or None
        text = official_text_encode(m.text_encoder, prompts, self.learner.tokenized_prompts, deep)
        image = m.image_features(images, vision_prompt, deep_vision)
        return clip_logits(image, text, m.logit_scale)


class GOProReference(_Reference):
    """Official GOPro: the three views one by one, per-image text loop, all views at test."""

    learner_attr = "learner"

    def __init__(self, model, pad_embedding):
        super().__init__(model, pad_embedding)
        if model.proj_in_ce or model.learner.text_proj is not None:
            raise NotImplementedError("the GOPro reference path covers the official computation "
                                      "(PROJ_IN_CE and TEXT_PROJ off)")

    def view(self, images, view_index: int):
        """One view: (image features [B, E], normalised per-image text features [B, C, E])."""
        from gopro_prompts.trainers.gopro import layer_statistics

        m, learner = self.model, self.learner
        feats, tokens = m.image_encoder(images, return_block_tokens=True)
        mu, sigma = layer_statistics(tokens.detach())
        style = learner.style_proj((mu + sigma) / 2)
        content = learner.content_proj(mu)
        mix = (style + content) / 2                                               # [B, L, D]
        shift = learner.rho(view_index)(mix.transpose(1, 2)).transpose(1, 2)      # [B, 1|M, D]
        ctx = learner.ctx.float().unsqueeze(0) + shift
        with self.prompts_context():
            prompts = learner.prompts(ctx)                                        # [B, C, 77, D]
        tokenized = learner.tokenized_prompts
        text = torch.stack([
            F.normalize(official_text_encode(m.text_encoder, p, tokenized).float(), dim=-1) for p in prompts
        ])
        return feats.float(), text

    def train_forward(self, inputs, labels):
        from gopro_prompts.trainers.gopro import nt_xent

        m = self.model
        views = m._views(inputs)
        (f1, t1), (f2, t2), (_, t3) = (self.view(v, i) for i, v in enumerate(views))
        logits = clip_logits(f1, t1, m.logit_scale)
        terms: Dict[str, torch.Tensor] = {
            "ce": F.cross_entropy(logits, labels),
            "sem": F.mse_loss(t1, t2) + F.mse_loss(t1, t3),
        }
        if f1.shape[0] >= 2:
            z1 = m.learner.sim_proj(F.normalize(f1, dim=-1))
            z2 = m.learner.sim_proj(F.normalize(f2, dim=-1))
            terms["con"] = nt_xent(z1, z2, m.temperature)
        return logits, terms

    @torch.no_grad()
    def eval_forward(self, images, extra_views=None):
        """All three views, as the official evaluation does; the logits are the original view's."""
        f1, t1 = self.view(images, 0)
        for i, extra in enumerate(extra_views or (), start=1):
            self.view(extra, i)  # computed and discarded (defect D3)
        return clip_logits(f1, t1, self.model.logit_scale)


class _OfficialTextEncoder(nn.Module):
    """Our text encoder's weights run as the official TextEncoder runs them (77 tokens, ln_final on all)."""

    def __init__(self, ours: nn.Module):
        super().__init__()
        self.ours = ours

    def forward(self, prompts, tokenized_prompts, deep_prompts=None, suffix=None):
        if suffix is not None:
            raise NotImplementedError("the official text encoders have no shared-prefix encoding")
        return official_text_encode(self.ours, prompts, tokenized_prompts, deep_prompts)


class ModelReference(_Reference):
    """The model's own forwards with the official text path (VPT, IVLP, KgCoOp, ProGrad, PromptSRC).

    Their official forwards differ from ours only in the text encoder's organisation: every
    class prompt at its full 77 tokens through ``ln_final`` on every token, at every batch
    (evaluation included: nothing cached).  So this path swaps in that encoder and the
    full-length prompts and runs the model's own ``forward_train`` / ``forward`` (same loss
    terms, same gradient combination in ``backward``).  VPT encodes no text: for it only the
    evaluation mode differs (no_grad instead of inference mode, nothing cached).
    """

    @contextlib.contextmanager
    def official_text_path(self):
        model = self.model
        if getattr(self.learner, "token_suffix", None) is None:
            yield
            return
        ours = model.text_encoder
        model.text_encoder = _OfficialTextEncoder(ours)
        try:
            with self.prompts_context():
                yield
        finally:
            model.text_encoder = ours

    def train_forward(self, inputs, labels):
        with self.official_text_path():
            return self.model.forward_train(inputs, labels)

    @torch.no_grad()
    def eval_forward(self, images, extra_views=None):
        with self.official_text_path():
            return self.model(images)


REFERENCES = {"CoOp": CoOpReference, "CoCoOp": CoCoOpReference, "MaPLe": MaPLeReference,
              "GOPro": GOProReference, "VPT": ModelReference, "IVLP": ModelReference,
              "KgCoOp": ModelReference, "ProGrad": ModelReference, "PromptSRC": ModelReference}


def reference_for(trainer_name: str, model: nn.Module, clip_model: nn.Module) -> _Reference:
    """The reference path of ``trainer_name`` on ``model`` (``clip_model`` gives the padding embedding)."""
    if trainer_name not in REFERENCES:
        raise ValueError(f"no reference path for {trainer_name!r}: choose one of {', '.join(REFERENCES)}")
    pad = clip_model.token_embedding.weight[0]
    return REFERENCES[trainer_name](model, pad)
