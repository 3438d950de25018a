"""open_clip models with CLIP's architecture, as a CLIP backbone for every trainer.

``MODEL.BACKBONE.NAME open_clip:<architecture>/<pretrained tag>`` (e.g.
``open_clip:ViT-B-16/laion2b_s34b_b88k``) loads the model through the
``open_clip_torch`` package; ``open_clip:<architecture>`` with
``MODEL.BACKBONE.PATH`` loads a local open_clip checkpoint instead (offline
clusters), and open_clip's own schemas work too (``open_clip:local-dir:/folder``
with its ``open_clip_config.json``, ``open_clip:hf-hub:org/repo``).

Only models with CLIP's architecture are accepted: a ViT image tower pooled
at its class token, and the causal text transformer read at the end-of-text
token with CLIP's BPE tokenizer.  Those are exactly the parts the prompt
learners touch.  SigLIP (bidirectional text, last-token pooling, sigmoid
bias), CoCa (attentional pooling, a text decoder), Hugging Face text towers
and timm / ResNet image towers are refused with one line saying why.

:class:`OpenClipCLIP` presents the model with OpenAI's module layout
(``token_embedding``, ``transformer.resblocks``, ``ln_final``,
``text_projection``, ``visual.conv1`` ...), built from open_clip's own
modules: its residual blocks are called as they are (LayerScale, activation,
attention), only re-laid out sequence-first and given the text tower's causal
mask, because OpenAI's blocks take ``[L, N, D]`` while open_clip's usually run
batch-first.  No weight is copied.
"""
from __future__ import annotations

import difflib
from typing import Optional, Tuple

import torch
import torch.nn as nn

from gopro_prompts.dassl_compat import get_logger
from gopro_prompts.user_errors import UserError

logger = get_logger("clip")

PREFIX = "open_clip:"
#: open_clip's naming schemas for a model that is not one of its built-in architectures
SCHEMAS = ("hf-hub:", "local-dir:")
#: texts whose tokens must be the same with the model's tokenizer and with CLIP's (case, accents,
#: punctuation, HTML entities, underscores: every cleaning step CLIP's tokenizer applies)
TOKENIZER_PROBES = ("a photo of a Dog.", "  CRÈME brûlée &amp; x-ray_scan, 3 (pixels)!", "a photo of a {}.")


def is_open_clip(name: str) -> bool:
    return name.startswith(PREFIX)


def _open_clip():
    try:
        import open_clip
    except ImportError:
        raise UserError("MODEL.BACKBONE.NAME open_clip:... needs the open_clip_torch package: "
                        "pip install open_clip_torch") from None
    return open_clip


def parse_name(name: str) -> Tuple[str, Optional[str]]:
    """``open_clip:ViT-B-16/laion2b_s34b_b88k`` -> (``ViT-B-16``, ``laion2b_s34b_b88k``); the tag may be absent."""
    spec = name[len(PREFIX):].strip()
    if not spec:
        raise UserError("MODEL.BACKBONE.NAME open_clip: names no model: use open_clip:<architecture>/<pretrained tag>, "
                        "e.g. open_clip:ViT-B-16/laion2b_s34b_b88k")
    if spec.startswith(SCHEMAS):
        return spec, None
    arch, _, tag = spec.partition("/")
    return arch, (tag or None)


# ----------------------------------------------------------------------------
# architecture checks
# ----------------------------------------------------------------------------
def _config_refusal(cfg: dict) -> Optional[str]:
    """Why an open_clip model config is not CLIP's architecture (None when it is), before any download."""
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if "multimodal_cfg" in cfg:
        return "it is a CoCa model (attentional pooling and a text decoder)"
    if cfg.get("init_logit_bias") is not None:
        return "it is a SigLIP model (bidirectional text tower read at its last token, sigmoid logit bias)"
    if text.get("hf_model_name") or text.get("hf_tokenizer_name"):
        return f"its text tower is the Hugging Face model {text.get('hf_model_name') or text.get('hf_tokenizer_name')}"
    if vision.get("timm_model_name"):
        return f"its image tower is the timm model {vision['timm_model_name']}"
    if isinstance(vision.get("layers"), (list, tuple)):
        return "its image tower is a ResNet (prompt learners need a ViT)"
    return None


def _model_refusal(oc, model: nn.Module) -> Optional[str]:
    """Why a built open_clip model is not CLIP's architecture (None when it is)."""
    if getattr(model, "logit_bias", None) is not None:
        return "it has a sigmoid logit bias (SigLIP)"
    visual = getattr(model, "visual", None)
    if not isinstance(visual, oc.transformer.VisionTransformer):
        return f"its image tower is {type(visual).__name__}, not CLIP's ViT"
    if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool:
        return "its image tower is not pooled at the class token after ln_post"
    if visual.proj is None:
        return "its image tower has no output projection"
    text = model if hasattr(model, "token_embedding") else getattr(model, "text", None)
    if not isinstance(text, (oc.model.CLIP, oc.transformer.TextTransformer)):
        return f"its text tower is {type(text).__name__}, not CLIP's text transformer"
    if getattr(text, "cls_emb", None) is not None:
        return "its text tower appends a class token (CoCa)"
    mask = text.attn_mask
    if mask is None or not bool((torch.isinf(mask) == torch.ones_like(mask, dtype=torch.bool).triu(1)).all()):
        return "its text tower is not causal"
    pool = getattr(text, "text_pool_type", getattr(text, "pool_type", None))
    if pool != "argmax":
        return f"its text tower is read at {pool!r}, not at the end-of-text token"
    if not isinstance(text.text_projection, nn.Parameter):
        return "its text projection is not CLIP's projection matrix"
    return None


def _tokenizer_refusal(oc, model_name: str, context_length: int) -> Optional[str]:
    """Why the model's tokenizer is not CLIP's (None when it gives CLIP's tokens)."""
    from gopro_prompts.trainers.clip_helpers import tokenize

    tokenizer = oc.get_tokenizer(model_name)
    if not isinstance(tokenizer, oc.tokenizer.SimpleTokenizer):
        return f"its tokenizer is {type(tokenizer).__name__}, not CLIP's BPE tokenizer"
    ours = tokenize(TOKENIZER_PROBES, context_length=context_length)
    if not torch.equal(tokenizer(list(TOKENIZER_PROBES), context_length=context_length), ours):
        return "its tokenizer cleans or encodes text differently from CLIP's"
    return None


def _refused(name: str, reason: str) -> UserError:
    return UserError(f"{name} is not supported: {reason}; only models with CLIP's architecture "
                     "(ViT image tower, causal text transformer, CLIP's tokenizer) are")


def _unknown_architecture(oc, arch: str) -> UserError:
    names = oc.list_models()
    close = difflib.get_close_matches(arch, names, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return UserError(f"open_clip has no architecture {arch!r}{hint}: open_clip.list_models() lists them")


# ----------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------
def load_open_clip(name: str, path: str = "") -> nn.Module:
    """An :class:`OpenClipCLIP` in fp32 on the CPU: weights from the pretrained tag, or ``path`` when given."""
    oc = _open_clip()
    model_name, tag = parse_name(name)
    schema = model_name.startswith(SCHEMAS)
    if not schema:
        config = oc.get_model_config(model_name)
        if config is None:
            raise _unknown_architecture(oc, model_name)
        refusal = _config_refusal(config)
        if refusal:
            raise _refused(name, refusal)
        if tag and not path:
            tags = oc.list_pretrained_tags_by_model(model_name)
            if tag not in tags:
                raise UserError(f"open_clip has no pretrained tag {tag!r} for {model_name}: use one of "
                                f"{', '.join(tags) or 'none (set MODEL.BACKBONE.PATH)'}")
            tag_gelu = bool(oc.get_pretrained_cfg(model_name, tag).get("quick_gelu", False))
            if tag_gelu != bool(config.get("quick_gelu", False)):
                fixed = model_name + "-quickgelu" if tag_gelu else model_name.replace("-quickgelu", "")
                raise UserError(f"the {tag} weights of {model_name} were trained with "
                                f"{'QuickGELU' if tag_gelu else 'GELU'}: use open_clip:{fixed}/{tag}")
        elif not tag and not path:
            raise UserError(f"MODEL.BACKBONE.NAME {name} names no weights: add a pretrained tag "
                            f"(open_clip:{model_name}/<tag>, one of "
                            f"{', '.join(oc.list_pretrained_tags_by_model(model_name)) or 'none'}) "
                            "or set MODEL.BACKBONE.PATH to a local open_clip checkpoint")
    try:  # with MODEL.BACKBONE.PATH, the architecture is built first and checked before its weights are read
        model = oc.create_model(model_name, pretrained=None if (path or schema) else tag, load_weights=not path,
                                precision="fp32", device="cpu", weights_only=True)
    except Exception as exc:  # a failed download, or a local-dir / hf-hub folder without its files
        raise UserError(f"could not load open_clip {model_name}{'/' + tag if tag else ''} ({_first_line(exc)}): no "
                        "network here? Download the checkpoint where there is and set MODEL.BACKBONE.PATH to it") from None
    refusal = _model_refusal(oc, model)
    if refusal is None:
        refusal = _tokenizer_refusal(oc, model_name, int(_text_parts(model).positional_embedding.shape[0]))
    if refusal:
        raise _refused(name, refusal)
    if path:
        try:  # open_clip reads it with torch.load(weights_only=True): plain tensors only, never code
            oc.load_checkpoint(model, path, weights_only=True)
        except Exception as exc:  # not a checkpoint, or one of another architecture
            raise UserError(f"could not load {path} as open_clip {model_name} weights ({_first_line(exc)}): "
                            "MODEL.BACKBONE.PATH must be a checkpoint of that architecture") from None
        logger.info("Loaded open_clip %s weights from %s", model_name, path)
    else:
        logger.info("Loaded open_clip %s%s", model_name, f" ({tag})" if tag else "")
    return OpenClipCLIP(model)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _text_parts(model: nn.Module) -> nn.Module:
    """The module holding the text tower: the model itself (``CLIP``) or its ``text`` (``CustomTextCLIP``)."""
    return model if hasattr(model, "token_embedding") else model.text


# ----------------------------------------------------------------------------
# OpenAI's layout over open_clip's modules
# ----------------------------------------------------------------------------
class SequenceFirstBlock(nn.Module):
    """An open_clip residual block called on sequence-first ``[L, N, D]`` input, as OpenAI's blocks are.

    ``causal``: the block gets the causal attention mask for the input's length
    (the text tower's ``attn_mask``, cut to that length).  For the plain open_clip
    block without LayerScale -- the same computation as OpenAI's block -- the
    block's ``attn``, ``ln_1``, ``ln_2``, ``mlp`` and ``attn_mask`` are exposed,
    which lets :class:`~gopro_prompts.trainers.clip_helpers.TextEncoder` encode
    prompt sets with a shared prefix once (CoCoOp, GOPro).
    """

    def __init__(self, block: nn.Module, causal_mask: Optional[torch.Tensor] = None):
        super().__init__()
        oc = _open_clip()
        self.block = block
        self.batch_first = getattr(getattr(block, "attn", None), "batch_first", True)
        self.register_buffer("causal_mask", None if causal_mask is None else causal_mask.clone(), persistent=False)
        self.plain = (type(block) is oc.transformer.ResidualAttentionBlock and not hasattr(block, "ln_1_kv")
                      and isinstance(block.ls_1, nn.Identity) and isinstance(block.ls_2, nn.Identity))

    def __getattr__(self, name):
        if name in ("attn", "ln_1", "ln_2", "mlp") and self.__dict__.get("plain"):
            return getattr(self._modules["block"], name)
        if name == "attn_mask" and self.__dict__.get("plain"):
            return self._buffers["causal_mask"]
        return super().__getattr__(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = None
        if self.causal_mask is not None:
            n = x.shape[0]
            mask = self.causal_mask[:n, :n]
        if self.batch_first:
            return self.block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
        return self.block(x, attn_mask=mask)


class _Blocks(nn.Module):
    """OpenAI's ``transformer`` attribute: ``resblocks`` and ``width``, called sequence-first."""

    def __init__(self, blocks, width: int, causal_mask: Optional[torch.Tensor] = None):
        super().__init__()
        self.width = width
        self.layers = len(blocks)
        self.resblocks = nn.ModuleList(SequenceFirstBlock(b, causal_mask) for b in blocks)

    def forward(self, x):
        for block in self.resblocks:
            x = block(x)
        return x


class _VisionTower(nn.Module):
    """OpenAI's ``visual`` layout over open_clip's ``VisionTransformer`` (its modules, not copies)."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.ln_pre = visual.ln_pre
        self.transformer = _Blocks(visual.transformer.resblocks, visual.transformer.width)
        self.ln_post = visual.ln_post
        self.proj = visual.proj
        height, width = visual.image_size
        if height != width:
            raise UserError(f"open_clip image tower of size {height}x{width}: only square inputs are supported")
        self.input_resolution = int(height)
        self.output_dim = visual.output_dim
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        self.image_mean = tuple(float(v) for v in cfg.get("mean", ())) or None
        self.image_std = tuple(float(v) for v in cfg.get("std", ())) or None

    def forward(self, images):
        from gopro_prompts.trainers.clip_helpers import vit_forward

        return vit_forward(self, images)


class OpenClipCLIP(nn.Module):
    """An open_clip CLIP with OpenAI CLIP's attributes, so every encoder and trainer uses it unchanged."""

    def __init__(self, model: nn.Module):
        super().__init__()
        text = _text_parts(model)
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.transformer = _Blocks(text.transformer.resblocks, text.transformer.width, causal_mask=text.attn_mask)
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.logit_scale = model.logit_scale
        self.visual = _VisionTower(model.visual)
        self.context_length = int(self.positional_embedding.shape[0])
        self.vocab_size = int(self.token_embedding.weight.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_image(self, images):
        return self.visual(images)

    def encode_text(self, tokens):
        from gopro_prompts.trainers.clip_helpers import TextEncoder, truncation_length

        n_tokens = truncation_length(tokens)  # exact: the text mask is causal
        return TextEncoder(self)(self.token_embedding(tokens[:, :n_tokens]), tokens)

    def convert_to_fp16(self):
        """CLIP's fp16 layout: matmul weights in fp16, LayerNorms computed in fp32 (as open_clip builds fp16 models)."""
        from gopro_prompts.trainers.clip_helpers import _clip

        oc = _open_clip()
        _clip().model.convert_weights(self)  # Linear / Conv / attention weights, text_projection, proj
        for module in self.modules():
            if type(module) is oc.transformer.LayerNorm:  # computes in the input's dtype: fp16 input, fp32 weight
                module.__class__ = oc.transformer.LayerNormFp32
            elif isinstance(module, oc.transformer.LayerScale):
                module.gamma.data = module.gamma.data.half()
        return self
