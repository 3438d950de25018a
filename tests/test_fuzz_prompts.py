"""Issue 8: property-based test of prompt construction (trainers/prompts.build_prompt_parts).

Over N_CTX, CTX_INIT, the init style and class names (unicode, punctuation,
CLIP's special tokens, names far beyond the 77-token context), building the
prompt parts either succeeds with consistent shapes, or fails with a one-line
:class:`UserError` exactly when the input cannot be represented (no silent
truncation: README "When a run fails").
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gopro_prompts.trainers.clip_helpers import build_builtin_clip, clean_classname
from gopro_prompts.trainers.prompts import build_prompt_parts
from gopro_prompts.user_errors import UserError

CONTEXT = 77
SPECIAL = ("<|startoftext|>", "<|endoftext|>")

_words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz'-", min_size=1, max_size=12)
_phrase = st.lists(_words, min_size=1, max_size=8).map(" ".join)
_unicode = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
_long = st.lists(_words, min_size=60, max_size=90).map("_".join)  # beyond CLIP's context
_special = st.tuples(_words, st.sampled_from(SPECIAL), _words).map("".join)
# ordinary names, plus (in about a third of the cases) one that cannot be represented
_bad = st.lists(st.one_of(_long, _special), min_size=1, max_size=1)
classnames = st.tuples(st.lists(st.one_of(_phrase, _unicode), min_size=1, max_size=4),
                       st.one_of(st.just([]), st.just([]), _bad)).map(lambda pair: pair[0] + pair[1])
n_ctxs = st.one_of(st.integers(1, 16), st.integers(1, 16), st.integers(1, 4), st.just(0))
ctx_inits = st.one_of(st.just(""), _phrase, _phrase.map(lambda p: p.replace(" ", "_")), st.just(""),
                      st.lists(_words, min_size=70, max_size=80).map(" ".join))


@pytest.fixture(scope="module")
def clip_model():
    return build_builtin_clip("tiny")


def _tokens(text):
    from gopro_prompts.trainers.clip_helpers import _tokenizer

    return len(_tokenizer().encode(text))


def _expected(names, n_ctx, ctx_init, style):
    """What must happen: None (success) or a substring of the UserError message."""
    init = ctx_init.replace("_", " ").strip()
    use_init = bool(init) and (style == "coop" or n_ctx <= 4)
    if not use_init and n_ctx < 1:
        return "N_CTX must be >= 1"
    if use_init and any(tok in init for tok in SPECIAL):
        return "special token"
    if use_init and _tokens(init) > CONTEXT - 2:
        return "77-token"
    k = len(init.split(" ")) if (use_init and style == "coop") else n_ctx
    if use_init and 1 + k > _tokens(init) + 1:
        return "fewer tokens than N_CTX"
    prefix = init if use_init else " ".join(["X"] * n_ctx)
    texts = [f"{prefix} {clean_classname(name)}." for name in names]
    if any(tok in text for text in texts for tok in SPECIAL):
        return "special token"
    if any(_tokens(text) > CONTEXT - 2 for text in texts):
        return "77-token"
    return None


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=classnames, n_ctx=n_ctxs, ctx_init=ctx_inits, style=st.sampled_from(["coop", "maple"]))
def test_prompt_parts_are_consistent_or_a_clear_error(clip_model, names, n_ctx, ctx_init, style):
    expected = _expected(names, n_ctx, ctx_init, style)
    try:
        parts = build_prompt_parts(names, clip_model, n_ctx, ctx_init, style=style)
    except UserError as exc:
        message = str(exc)
        assert expected is not None, f"unexpected UserError: {message}"
        assert expected in message and "\n" not in message and len(message) < 300, message
        return
    assert expected is None, f"expected a UserError ({expected})"
    n_cls, width = len(names), clip_model.ln_final.weight.shape[0]
    assert parts.tokenized.shape == (n_cls, CONTEXT)
    eot = parts.tokenized.argmax(dim=-1)
    assert parts.seq_len == int(eot.max()) + 1 <= CONTEXT
    assert parts.token_prefix.shape == (n_cls, 1, width)
    assert parts.token_suffix.shape == (n_cls, parts.seq_len - 1 - parts.n_ctx, width)
    assert parts.name_lens == [_tokens(clean_classname(name)) for name in names]
    assert torch.isfinite(parts.token_suffix).all()
    if parts.ctx_init is not None:
        assert parts.ctx_init.shape == (parts.n_ctx, width)
        if style == "coop":
            assert parts.n_ctx == len(ctx_init.replace("_", " ").strip().split(" "))
    else:
        assert parts.prompt_prefix == " ".join(["X"] * n_ctx)
    # every prompt ends where its tokens end: EOS is the only maximal id, after all the text
    for row, end in zip(parts.tokenized, eot):
        assert int((row == row.max()).sum()) == 1 and int(row[end + 1:].abs().sum()) == 0
