"""Shared CLIP helpers used by every trainer.

One place decides how CLIP is loaded, in which precision it runs and on which
device; every trainer builds on the encoders defined here:

* :func:`load_clip` -- by name (``ViT-B/16`` ... through the ``clip`` package's
  download cache), from a local file (``MODEL.BACKBONE.PATH``: a JIT archive or
  a state dict), an open_clip model of CLIP's architecture
  (``open_clip:ViT-B-16/laion2b_s34b_b88k``, see ``open_clip_backbone.py``),
  or a built-in tiny architecture for tests and the offline demo (created
  deterministically from a seed).
* :class:`Precision` -- PREC (``fp16`` / ``fp32`` / ``amp`` / ``bf16``) resolved
  against the device: weight dtype, autocast context and grad scaler.
* :class:`TextEncoder` -- CLIP's text transformer over prompt *embeddings*,
  with optional deep prompts and exact truncation to the longest prompt.
* :class:`ImageEncoder` -- CLIP's ViT that can return the tokens of every
  residual block and accept appended (shallow / deep) prompt tokens.
* :func:`encode_class_texts` / :func:`zero_shot_classifier` -- hand-crafted
  class texts through the frozen CLIP (zero-shot CLIP, frozen teachers).

Both encoders iterate CLIP's own residual blocks; nothing of CLIP's model code
is copied.  All sizes are read from the loaded model.
"""
from __future__ import annotations

import contextlib
import copy
import os
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from gopro_prompts import resource_path
from gopro_prompts.dassl_compat import get_logger
from gopro_prompts.user_errors import UserError

logger = get_logger("clip")

#: Built-in architectures: name -> ``clip.model.CLIP`` constructor arguments.
#: ``tiny`` is the architecture of the parity fixtures' tiny CLIP.
BUILTIN_ARCHS = {
    "tiny": dict(
        embed_dim=64, image_resolution=32, vision_layers=3, vision_width=128,
        vision_patch_size=8, context_length=77, vocab_size=49408,
        transformer_width=64, transformer_heads=1, transformer_layers=3,
    ),
}

#: Built-in *pretrained* checkpoints shipped with the repository: name -> file
#: (a CLIP state dict, loaded like ``MODEL.BACKBONE.PATH``) and how to (re)make it.
BUILTIN_CHECKPOINTS = {
    "tiny-synthetic": (
        resource_path("assets", "tiny_clip_synthetic.pt"),
        "python -m gopro_prompts.tools.pretrain_tiny_clip",
    ),
}

PRECISIONS = ("fp16", "fp32", "amp", "bf16")

#: where named OpenAI weights are downloaded and looked up (clip-anytorch's default ``download_root``)
CLIP_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "clip")


#: the module name under which the ``clip-anytorch`` package is loaded: a host code base's own
#: ``clip`` (e.g. the MaPLe repository's fork, whose ``build_model`` takes two arguments) is never used
CLIP_MODULE = "gopro_prompts._clip"


def _clip():
    """OpenAI's ``clip`` package (``clip-anytorch``), loaded once under :data:`CLIP_MODULE`.

    It is located through its distribution's files, so whatever ``import clip``
    would find on ``sys.path`` (a vendored fork, or ``clip`` already imported
    by the host) plays no part.
    """
    module = sys.modules.get(CLIP_MODULE)
    if module is not None:
        return module
    import importlib.metadata
    import importlib.util
    import warnings

    try:
        init = str(importlib.metadata.distribution("clip-anytorch").locate_file("clip/__init__.py"))
    except importlib.metadata.PackageNotFoundError:
        init = ""
    if not os.path.isfile(init):
        raise UserError("the OpenAI CLIP package is not installed: pip install clip-anytorch "
                        "(it imports as clip; see requirements.txt)")
    spec = importlib.util.spec_from_file_location(
        CLIP_MODULE, init, submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[CLIP_MODULE] = module
    try:
        with warnings.catch_warnings():
            # clip imports pkg_resources, which warns on recent setuptools.
            warnings.simplefilter("ignore", UserWarning)
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(CLIP_MODULE, None)
        raise
    return module


def available_backbones() -> List[str]:
    return list(_clip().available_models()) + sorted(BUILTIN_ARCHS) + sorted(BUILTIN_CHECKPOINTS)


def build_builtin_clip(name: str, seed: int = 0) -> nn.Module:
    """A randomly initialised CLIP of a built-in architecture, deterministic per seed.

    The global RNG is left untouched (the weights come from a forked RNG).
    """
    clip = _clip()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = clip.model.CLIP(**BUILTIN_ARCHS[name])
    return model.float().eval()


def load_clip(name: str, path: str = "", device="cpu", seed: int = 0) -> nn.Module:
    """Load a CLIP model in fp32 on ``device`` (precision is applied by :class:`Precision`).

    ``path`` (``MODEL.BACKBONE.PATH``), when set, wins over the name: a JIT
    archive or a state dict (OpenAI key names), for offline clusters; with an
    ``open_clip:<architecture>`` name, that architecture's open_clip checkpoint.
    """
    from gopro_prompts.trainers import open_clip_backbone

    clip = _clip()
    if path:
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(path):
            raise UserError(
                f"CLIP weight file not found: {path} (MODEL.BACKBONE.PATH must name a CLIP "
                "JIT archive or state dict, or the open_clip checkpoint of an open_clip:<architecture> name)"
            )
    if open_clip_backbone.is_open_clip(name):
        model = open_clip_backbone.load_open_clip(name, path)
    elif path:
        model = _load_clip_file(clip, path)
        logger.info("Loaded CLIP weights from %s", path)
    elif name in BUILTIN_CHECKPOINTS:
        file, remake = BUILTIN_CHECKPOINTS[name]
        if not os.path.isfile(file):
            raise UserError(f"built-in checkpoint {name!r} is missing ({file}): regenerate it with `{remake}`")
        model = _load_clip_file(clip, file)
        logger.info("Loaded the built-in pretrained CLIP %r from %s", name, file)
    elif name in BUILTIN_ARCHS:
        model = build_builtin_clip(name, seed=seed)
        logger.info("Built the tiny random CLIP architecture %r (seed %d)", name, seed)
    elif name in clip.available_models():
        model = _load_named_clip(clip, name)
    else:
        raise UserError(
            f"Unknown backbone {name!r}: MODEL.BACKBONE.NAME must be one of "
            f"{', '.join(available_backbones())}, or open_clip:<architecture>/<pretrained tag> "
            "(or set MODEL.BACKBONE.PATH to a local CLIP file)"
        )
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device)


def _load_named_clip(clip, name):
    """``clip.load(name)`` from :data:`CLIP_CACHE`; a failed download names the cache and ``MODEL.BACKBONE.PATH``."""
    import http.client
    import urllib.error

    file_name = os.path.basename(clip.clip._MODELS[name])  # e.g. ViT-B-16.pt
    try:
        model, _ = clip.load(name, device="cpu", jit=False, download_root=CLIP_CACHE)
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UserError(
            f"could not download the CLIP weights of {name} ({reason}): no network here? Copy {file_name} into "
            f"the clip cache {CLIP_CACHE}, or set MODEL.BACKBONE.PATH /path/to/{file_name}"
        ) from None
    return model


def _load_clip_file(clip, path):
    """A CLIP state dict (OpenAI key names) or JIT archive, built like ``clip.load`` does."""
    import warnings

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a plain state dict: a JIT archive (clip.load handles both)
        state = None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if isinstance(state, dict):
        try:
            return clip.model.build_model(dict(state))
        except KeyError as exc:
            raise UserError(f"{path} is not a CLIP checkpoint (missing key {exc}); "
                            "MODEL.BACKBONE.PATH must name a CLIP JIT archive or state dict") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation
        model, _ = clip.load(path, device="cpu", jit=False)
    return model


def is_vit(clip_model: nn.Module) -> bool:
    return hasattr(clip_model.visual, "transformer")


# ----------------------------------------------------------------------------
# precision
# ----------------------------------------------------------------------------
@dataclass
class Precision:
    """PREC resolved against the device, in one place.

    ===========  ==========================  =====================================
    PREC         on CUDA                     on CPU
    ===========  ==========================  =====================================
    ``fp16``     CLIP weights in fp16        fp32 (CPU half matmuls are slow/unsafe)
    ``fp32``     fp32                        fp32
    ``amp``      fp32 weights, fp16 autocast fp32, no autocast
                 + GradScaler
    ``bf16``     fp32 weights, bf16 autocast fp32, no autocast
    ===========  ==========================  =====================================
    """

    prec: str
    device: torch.device

    def __post_init__(self):
        if self.prec not in PRECISIONS:
            raise UserError(f"PREC {self.prec!r} is not valid: use one of {', '.join(PRECISIONS)}")
        self.device = torch.device(self.device)
        self.on_cuda = self.device.type == "cuda"
        if not self.on_cuda and self.prec != "fp32":
            logger.info("PREC %s runs in fp32 on %s", self.prec, self.device.type)

    @property
    def weight_dtype(self) -> torch.dtype:
        return torch.float16 if (self.prec == "fp16" and self.on_cuda) else torch.float32

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        if not self.on_cuda:
            return None
        return {"amp": torch.float16, "bf16": torch.bfloat16}.get(self.prec)

    def autocast(self):
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def grad_scaler(self):
        if self.prec == "amp" and self.on_cuda:
            return torch.amp.GradScaler("cuda")
        return None

    def apply(self, clip_model: nn.Module) -> nn.Module:
        """Cast CLIP's weights as the precision asks (the official fp16 layout)."""
        if self.weight_dtype == torch.float16:
            if hasattr(clip_model, "convert_to_fp16"):  # an open_clip model: its LayerNorms too
                clip_model.convert_to_fp16()
            else:
                _clip().model.convert_weights(clip_model)
        return clip_model


# ----------------------------------------------------------------------------
# tokens and prompt text
# ----------------------------------------------------------------------------
_TOKENIZER = None


def _tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = _clip().simple_tokenizer.SimpleTokenizer()
    return _TOKENIZER


def clean_classname(name: str) -> str:
    """Class names with ``_`` as spaces (as every official prompt learner)."""
    return name.replace("_", " ")


def name_token_length(name: str) -> int:
    """Number of BPE tokens of a (cleaned) class name, without SOS/EOS."""
    return len(_tokenizer().encode(name))


def text_context_length(clip_model: nn.Module) -> int:
    """The text tower's context length (77 for OpenAI's CLIP), read from its positional embedding."""
    return int(clip_model.positional_embedding.shape[0])


def tokenize(texts: Sequence[str], context_length: int = 77) -> torch.Tensor:
    """CLIP tokenization (``context_length`` tokens, zero padded); too long a text is a clear error."""
    clip = _clip()
    texts = list(texts)
    for text in texts:
        # CLIP's tokenizer turns these literal strings into its SOS / EOS tokens: an EOS inside
        # a class name would silently end the prompt there (the features are read at EOS).
        special = [tok for tok in ("<|startoftext|>", "<|endoftext|>") if tok in text]
        if special:
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise UserError(
                f"the prompt {shown!r} contains {special[0]}, CLIP's special token: remove it from the "
                "class name or CTX_INIT"
            )
    try:
        return clip.tokenize(texts, context_length=context_length)
    except RuntimeError:  # "Input ... is too long for context length 77"
        limit = context_length - 2  # SOS and EOS
        for text in texts:
            n_tokens = len(_tokenizer().encode(text))
            if n_tokens > limit:
                shown = text if len(text) <= 60 else text[:57] + "..."
                raise UserError(
                    f"the prompt {shown!r} has {n_tokens} tokens, more than the {limit} that CLIP's "
                    f"{context_length}-token text context allows: shorten the class name or CTX_INIT (or lower N_CTX)"
                ) from None
        raise


def eot_positions(tokenized: torch.Tensor) -> torch.Tensor:
    """End-of-text position of each tokenized prompt (EOT has the largest id)."""
    return tokenized.argmax(dim=-1)


# ----------------------------------------------------------------------------
# encoders
# ----------------------------------------------------------------------------
class TextEncoder(nn.Module):
    """CLIP's text tower over prompt embeddings.

    ``forward(prompts, tokenized_prompts, deep_prompts=None)``:

    * ``prompts`` [N, L, D]: token embeddings (before the positional embedding);
      ``L`` may be shorter than 77 -- cutting the sequence after the longest
      end-of-text position is exact because the text mask is causal;
    * ``tokenized_prompts`` [N, >=L]: token ids, used to find the EOT position;
    * ``deep_prompts``: optional list of [n, D] (or [N, n, D]) tensors; before
      text block ``i >= 1`` the residual stream's positions ``1..n`` are
      replaced by ``deep_prompts[i-1]`` (MaPLe).

    Returns the projected EOT features [N, E] (not normalised).

    ``forward(prefixes, tokenized_prompts, suffix=suffix)`` encodes per-image
    prompt sets (CoCoOp, GOPro) whose prompts share their first P tokens:
    ``prefixes`` [B, P, D] (SOS and image b's context, the same for every
    class), ``suffix`` [C, S, D] (class c's tokens, the same for every image);
    prompt (b, c) is ``prefixes[b] + suffix[c]`` and the result is [B, C, E].
    Exact: under the causal mask positions < P never see the class tokens,
    so their states are computed once per image (not once per class) and
    every class attends to them -- the class part alone is computed B*C times.
    """

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.blocks = clip_model.transformer.resblocks
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.width = clip_model.ln_final.weight.shape[0]
        self.context_length = clip_model.positional_embedding.shape[0]

    @property
    def dtype(self):
        return self.text_projection.dtype

    def forward(self, prompts, tokenized_prompts, deep_prompts: Optional[Sequence[torch.Tensor]] = None,
                suffix: Optional[torch.Tensor] = None):
        if suffix is not None:
            if deep_prompts is not None:
                raise ValueError("TextEncoder: deep prompts and shared-prefix encoding cannot be combined")
            return self._forward_shared_prefix(prompts, suffix, tokenized_prompts)
        n_tokens = prompts.shape[1]
        x = prompts.type(self.dtype) + self.positional_embedding[:n_tokens].type(self.dtype)
        x = x.permute(1, 0, 2)  # NLD -> LND, CLIP's blocks are sequence-first
        for i, block in enumerate(self.blocks):
            if deep_prompts is not None and 1 <= i <= len(deep_prompts):
                deep = deep_prompts[i - 1].type(self.dtype)
                n = deep.shape[-2]
                if deep.dim() == 2:
                    deep = deep.unsqueeze(1).expand(n, x.shape[1], -1)
                else:
                    deep = deep.permute(1, 0, 2)
                x = torch.cat([x[:1], deep, x[1 + n:]], dim=0)
            x = block(x)
        # Only the EOT token is read: take it first, then ln_final (a per-token
        # operation, so this is exact) -- no LayerNorm over the whole sequence.
        eot = eot_positions(tokenized_prompts).to(x.device)
        feats = x[eot, torch.arange(x.shape[1], device=x.device)]
        feats = self.ln_final(feats).type(self.dtype)
        return feats @ self.text_projection

    def _forward_shared_prefix(self, prefixes, suffix, tokenized_prompts):
        """[B, P, D] prefixes x [C, S, D] suffixes -> EOT features [B, C, E] (see the class docstring)."""
        dtype = self.dtype
        n_prefix, n_suffix = prefixes.shape[1], suffix.shape[1]
        pos = self.positional_embedding[:n_prefix + n_suffix].type(dtype)
        hp = prefixes.type(dtype) + pos[:n_prefix]                        # [B, P, D]
        hs = (suffix.type(dtype) + pos[n_prefix:]).unsqueeze(0)           # [1, C, S, D] until block 0
        mask = torch.ones(n_suffix, n_prefix + n_suffix, dtype=torch.bool, device=hp.device)
        mask[:, n_prefix:] = torch.ones(n_suffix, n_suffix, dtype=torch.bool, device=hp.device).tril()
        for block in self.blocks:
            hp, hs = _shared_prefix_block(block, hp, hs, mask)
        eot = eot_positions(tokenized_prompts).to(hs.device) - n_prefix  # every EOT lies in the suffix
        feats = hs[:, torch.arange(hs.shape[1], device=hs.device), eot]   # [B, C, D]
        return self.ln_final(feats).type(dtype) @ self.text_projection


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[..., T, D] -> [N, heads, T, D / heads]."""
    t, d = x.shape[-2:]
    return x.reshape(-1, t, heads, d // heads).transpose(1, 2)


def _shared_prefix_block(block: nn.Module, hp: torch.Tensor, hs: torch.Tensor, mask: torch.Tensor):
    """One CLIP residual block (x + attn(ln_1 x), then x + mlp(ln_2 x)) over a shared prefix.

    ``hp`` [B, P, D]: the prefix states (causal attention among themselves);
    ``hs`` [B or 1, C, S, D]: the class parts, attending to their image's
    prefix and causally to their own tokens (``mask`` [S, P + S]).  The
    block's own weights are used (packed q/k/v projection, out_proj, ln_1,
    ln_2, mlp), so the result is that of ``block`` on the full sequences.
    """
    attn = block.attn
    heads = attn.num_heads
    batch, n_prefix, width = hp.shape
    n_cls, n_suffix = hs.shape[1], hs.shape[2]
    qp, kp, vp = F.linear(block.ln_1(hp), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    qs, ks, vs = F.linear(block.ln_1(hs), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    qp, kp, vp = (_split_heads(t, heads) for t in (qp, kp, vp))                        # [B, H, P, hd]
    out_p = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)
    out_p = out_p.transpose(1, 2).reshape(batch, n_prefix, width)
    qs, ks, vs = (_split_heads(t.expand(batch, n_cls, n_suffix, width), heads) for t in (qs, ks, vs))
    per_class = (batch * n_cls, heads, n_prefix, width // heads)
    k = torch.cat([kp.unsqueeze(1).expand(batch, n_cls, *kp.shape[1:]).reshape(per_class), ks], dim=2)
    v = torch.cat([vp.unsqueeze(1).expand(batch, n_cls, *vp.shape[1:]).reshape(per_class), vs], dim=2)
    out_s = F.scaled_dot_product_attention(qs, k, v, attn_mask=mask)
    out_s = out_s.transpose(1, 2).reshape(batch, n_cls, n_suffix, width)
    hp = hp + attn.out_proj(out_p)
    hs = hs + attn.out_proj(out_s)
    hp = hp + block.mlp(block.ln_2(hp))
    hs = hs + block.mlp(block.ln_2(hs))
    return hp, hs


def supports_shared_prefix(text_encoder: "TextEncoder") -> bool:
    """Whether the text blocks are CLIP's causal, packed-projection, dropout-free attention blocks."""
    for block in text_encoder.blocks:
        attn, mask = getattr(block, "attn", None), getattr(block, "attn_mask", None)
        if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim \
                or attn.in_proj_bias is None or attn.dropout or mask is None:
            return False
        masked = torch.isinf(mask)
        if not bool((masked == torch.ones_like(masked).triu(1)).all()):  # exactly the causal mask
            return False
    return True


def truncation_length(tokenized_prompts: torch.Tensor) -> int:
    """Sequence length that keeps every prompt's end-of-text token (max EOT + 1)."""
    return int(eot_positions(tokenized_prompts).max().item()) + 1


class ImageEncoder(nn.Module):
    """CLIP's image tower.

    For a ViT, ``forward(images, prompts=None, deep_prompts=None,
    return_block_tokens=False)``:

    * ``prompts`` [n, W] or [B, n, W]: tokens appended after the patch tokens,
      after the positional embedding and before ``ln_pre`` (MaPLe);
    * ``deep_prompts``: list of [n, W] (or per image [B, n, W]); before vision
      block ``i >= 1`` the last ``n`` tokens are replaced by ``deep_prompts[i-1]``;
    * ``return_block_tokens``: also return the output of every residual block,
      all tokens, as [L, B, T, W] (batch-major inside each layer).

    Returns the projected CLS feature [B, E] (and the block tokens).  ResNet
    backbones support only the plain forward.
    """

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.visual = clip_model.visual
        self.is_vit = is_vit(clip_model)
        if self.is_vit:
            self.width = self.visual.conv1.weight.shape[0]
            self.num_layers = len(self.visual.transformer.resblocks)
        self.input_resolution = self.visual.input_resolution
        self.output_dim = self.visual.output_dim

    @property
    def dtype(self):
        return self.visual.conv1.weight.dtype

    def forward(self, images, prompts=None, deep_prompts=None, return_block_tokens: bool = False):
        images = images.type(self.dtype)
        if not self.is_vit:
            if prompts is not None or deep_prompts is not None or return_block_tokens:
                raise UserError(
                    "this trainer needs a ViT CLIP backbone (prompt tokens / block outputs); "
                    "ResNet backbones support only CoOp and zero-shot CLIP"
                )
            return self.visual(images)
        return vit_forward(self.visual, images, prompts, deep_prompts, return_block_tokens)


def vit_forward(v: nn.Module, images, prompts=None, deep_prompts=None, return_block_tokens: bool = False):
    """CLIP's ViT forward over the modules of ``v`` (a CLIP ``visual``), with the prompt options of :class:`ImageEncoder`."""
    images = images.type(v.conv1.weight.dtype)
    x = v.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
    if prompts is not None:
        prompts = prompts.type(x.dtype)
        if prompts.dim() == 2:
            prompts = prompts.unsqueeze(0).expand(x.shape[0], -1, -1)
        x = torch.cat([x, prompts], dim=1)
    x = v.ln_pre(x)
    x = x.permute(1, 0, 2)
    block_tokens = []
    for i, block in enumerate(v.transformer.resblocks):
        if deep_prompts is not None and 1 <= i <= len(deep_prompts):
            deep = deep_prompts[i - 1].type(x.dtype)
            n = deep.shape[-2]
            if deep.dim() == 2:
                deep = deep.unsqueeze(1).expand(n, x.shape[1], -1)
            else:  # per image [B, n, W] -> sequence-first
                deep = deep.permute(1, 0, 2)
            x = torch.cat([x[:-n], deep], dim=0)
        x = block(x)
        if return_block_tokens:
            block_tokens.append(x.permute(1, 0, 2))
    x = x.permute(1, 0, 2)
    feats = v.ln_post(x[:, 0, :]) @ v.proj
    if return_block_tokens:
        return feats, torch.stack(block_tokens)
    return feats


def clip_logits(image_features, text_features, logit_scale):
    """``exp(logit_scale) * cos`` between images [B, E] and texts [C, E] or per image [B, C, E]."""
    image_features = F.normalize(image_features.float(), dim=-1)
    text_features = F.normalize(text_features.float(), dim=-1)
    scale = logit_scale.exp().float()
    if text_features.dim() == 3:
        return scale * torch.einsum("be,bce->bc", image_features, text_features)
    return scale * image_features @ text_features.t()


# ----------------------------------------------------------------------------
# hand-crafted class texts (zero-shot classifiers, frozen teachers)
# ----------------------------------------------------------------------------
class _Fp32TextTower(nn.Module):
    """An fp32 copy of CLIP's text tower (token embedding, blocks, ln_final, projection).

    CLIP's ``convert_weights`` leaves the token embedding in fp32: it is then shared, not copied.
    """

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        embedding = clip_model.token_embedding
        self.token_embedding = embedding if embedding.weight.dtype == torch.float32 else copy.deepcopy(embedding).float()
        self.transformer = copy.deepcopy(clip_model.transformer).float()
        self.positional_embedding = nn.Parameter(clip_model.positional_embedding.detach().float().clone(),
                                                 requires_grad=False)
        self.ln_final = copy.deepcopy(clip_model.ln_final).float()
        self.text_projection = nn.Parameter(clip_model.text_projection.detach().float().clone(),
                                            requires_grad=False)


@torch.no_grad()
def encode_class_texts(clip_model: nn.Module, classnames: Sequence[str], templates: Sequence[str],
                       fp32: bool = False) -> torch.Tensor:
    """The frozen CLIP's features of every template filled with every class name.

    Returns [T, C, E] in float32, not normalised (callers combine the templates their own way).
    ``fp32=False`` runs CLIP's ``encode_text`` in the model's own dtype (the official zero-shot
    CLIP); ``fp32=True`` computes in fp32 whatever the weights are (an fp16 model's text tower is
    upcast into a temporary copy, which equals the separate fp32 CLIP the official teachers load),
    with :class:`TextEncoder` on the prompts cut after their longest end-of-text token.
    """
    names = [clean_classname(c) for c in classnames]
    device = clip_model.token_embedding.weight.device
    tower = None
    if fp32:  # our TextEncoder, each prompt cut after its longest end-of-text (exact: the mask is causal)
        # CLIP's convert_weights (PREC fp16) leaves the token embedding in fp32: test a converted weight
        tower = _Fp32TextTower(clip_model) if clip_model.text_projection.dtype != torch.float32 else clip_model
        encoder = TextEncoder(tower)
    feats = []
    for template in templates:
        tokens = tokenize([template.format(n) for n in names], text_context_length(clip_model)).to(device)
        if tower is None:
            feats.append(clip_model.encode_text(tokens).float())
        else:
            n_tokens = truncation_length(tokens)
            feats.append(encoder(tower.token_embedding(tokens[:, :n_tokens]).float(), tokens).float())
    return torch.stack(feats)


def zero_shot_classifier(clip_model: nn.Module, classnames: Sequence[str], templates: Sequence[str],
                         fp32: bool = False) -> torch.Tensor:
    """CLIP's zero-shot class embeddings [C, E]: each template's features normalised, averaged, normalised."""
    per_template = F.normalize(encode_class_texts(clip_model, classnames, templates, fp32=fp32), dim=-1)
    return F.normalize(per_template.mean(0), dim=-1)
