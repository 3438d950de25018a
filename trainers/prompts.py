"""Turning class names and CTX_INIT into learnable text prompts.

Implements the official prompt construction of CoOp, CoCoOp, MaPLe and GOPro
(``PromptLearner.__init__`` in CoOp's ``trainers/coop.py`` / ``cocoop.py``, MaPLe's
``MultiModalPromptLearner.__init__``): the context initialisation rules,
the prompt text, its tokenization, and the fixed prefix (SOS) / suffix (class
tokens, ".", EOS) embeddings that are rebuilt from the class names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn as nn

from gopro_prompts.trainers.clip_helpers import (
    clean_classname,
    name_token_length,
    text_context_length,
    tokenize,
    truncation_length,
)
from gopro_prompts.user_errors import UserError


@dataclass
class PromptParts:
    ctx_init: Optional[torch.Tensor]  # [n_ctx, D] from CTX_INIT, or None (random init)
    n_ctx: int
    prompt_prefix: str                 # the text the context stands for ("a photo of a" / "X X X X")
    tokenized: torch.Tensor            # [C, the text context length]
    token_prefix: torch.Tensor         # [C, 1, D]  (SOS)
    token_suffix: torch.Tensor         # [C, L - 1 - n_ctx, D] (class, ".", EOS, padding)
    name_lens: List[int]
    seq_len: int                       # truncated length L = longest EOT + 1


def build_prompt_parts(classnames, clip_model, n_ctx: int, ctx_init: str, style: str = "coop",
                       truncate: bool = True) -> PromptParts:
    """Prompt pieces for ``classnames``.

    ``style`` selects the official init rule:

    * ``"coop"`` (CoOp, CoCoOp, GOPro): a given ``ctx_init`` of k words sets
      n_ctx = k, the context is its token embeddings at positions 1..k;
    * ``"maple"``: ``ctx_init`` is used only when n_ctx <= 4 and then only its
      first n_ctx positions are learnable; the whole phrase stays the prompt
      text (its remaining words are fixed tokens).
    """
    if ctx_init is True:
        raise UserError(
            "CTX_INIT True (\"the dataset's template phrase\", as KgCoOp's and ProGrad's configs use it) "
            "applies to KgCoOp and ProGrad only: give this trainer the phrase itself, e.g. CTX_INIT \"a photo of a\""
        )
    if n_ctx < 1 and not ctx_init:
        raise UserError(f"N_CTX must be >= 1 (got {n_ctx}) when CTX_INIT is empty")
    names = [clean_classname(n) for n in classnames]
    embedding = clip_model.token_embedding
    context_length = text_context_length(clip_model)
    dtype = embedding.weight.dtype
    init = ctx_init.replace("_", " ").strip() if ctx_init else ""
    use_init = bool(init) and (style == "coop" or n_ctx <= 4)
    if use_init:
        if style == "coop":
            n_ctx = len(init.split(" "))
        init_tokens = tokenize([init], context_length)
        with torch.no_grad():
            init_embed = embedding(init_tokens.to(embedding.weight.device)).type(dtype)
        if 1 + n_ctx > int(init_tokens.argmax(-1)):
            raise UserError(
                f"CTX_INIT {init!r} has fewer tokens than N_CTX={n_ctx}: use a longer CTX_INIT "
                "or a smaller N_CTX"
            )
        ctx_vectors = init_embed[0, 1:1 + n_ctx, :].clone()
        prompt_prefix = init
    else:
        ctx_vectors = None
        prompt_prefix = " ".join(["X"] * n_ctx)

    texts = [f"{prompt_prefix} {name}." for name in names]
    tokenized = tokenize(texts, context_length)
    seq_len = truncation_length(tokenized) if truncate else tokenized.shape[1]
    with torch.no_grad():
        embedded = embedding(tokenized.to(embedding.weight.device)).type(dtype)
    return PromptParts(
        ctx_init=ctx_vectors,
        n_ctx=n_ctx,
        prompt_prefix=prompt_prefix,
        tokenized=tokenized,
        token_prefix=embedded[:, :1, :].float(),
        token_suffix=embedded[:, 1 + n_ctx:seq_len, :].float(),
        name_lens=[name_token_length(n) for n in names],
        seq_len=seq_len,
    )


def make_context(parts: PromptParts, width: int, n_cls: Optional[int] = None) -> nn.Parameter:
    """The learnable context: from CTX_INIT, else N(0, 0.02) ([n_cls, n_ctx, D] when class-specific)."""
    if parts.ctx_init is not None and n_cls is None:
        return nn.Parameter(parts.ctx_init.float().clone())
    shape = (n_cls, parts.n_ctx, width) if n_cls is not None else (parts.n_ctx, width)
    vectors = torch.empty(*shape)
    nn.init.normal_(vectors, std=0.02)
    return nn.Parameter(vectors)


def register_class_buffers(module: nn.Module, parts: PromptParts) -> None:
    """Class-dependent tensors as non-persistent buffers: rebuilt, never checkpointed."""
    module.register_buffer("token_prefix", parts.token_prefix, persistent=False)
    module.register_buffer("token_suffix", parts.token_suffix, persistent=False)
    module.register_buffer("tokenized_prompts", parts.tokenized, persistent=False)


def assemble_per_image(prefix, ctx, suffix):
    """Per-image context [B, n_ctx, D] -> prompts [B, C, L, D] (every class of image b uses ctx[b])."""
    batch, n_cls = ctx.shape[0], prefix.shape[0]
    ctx = ctx.unsqueeze(1).expand(batch, n_cls, -1, -1)
    prefix = prefix.unsqueeze(0).expand(batch, -1, -1, -1)
    suffix = suffix.unsqueeze(0).expand(batch, -1, -1, -1)
    return torch.cat([prefix, ctx.to(prefix.dtype), suffix], dim=2)
