"""IVLP: independent vision-language prompting (the baseline of MaPLe, Khattak et al., CVPR 2023).

Deep prompts in both CLIP branches, learned independently (no coupling between
them), as MaPLe's repository computes them (``trainers/independentVL.py`` with
the IVLP branch of its ``clip/model.py``, ``ResidualAttentionBlock_IVLP`` and
``VisionTransformer``):

* text: the context ``ctx`` [n_t, D] sits right after SOS, with MaPLe's prompt
  rule (CTX_INIT is used only when N_CTX_TEXT <= 4, and then the whole phrase
  stays in the prompt; otherwise the prompt is "X X ..." and ``ctx`` random);
  before text block i = 1 .. J_t - 1 (J_t = PROMPT_DEPTH_TEXT) positions
  1..n_t are replaced by ``text_deep_prompts[i-1]``;
* vision: ``vision_prompts_layer0`` [n_v, W] is appended after the patch tokens
  (after the positional embedding, so it gets none; before ``ln_pre``); before
  vision block i = 1 .. J_v - 1 the last n_v tokens are replaced by
  ``vision_deep_prompts[i-1]``.  PROMPT_DEPTH_VISION 0 (or N_CTX_VISION 0):
  no vision prompt at all (the official language-only config).

Blocks past a branch's depth carry the prompt positions forward.  The model is
:class:`~gopro_prompts.trainers.maple.MaPLeModel` with this prompt learner
(encoders, evaluation cache and the official fp16 prompt rounding come from
there).  Only the prompt learner is optimised and checkpointed, under the
official folder name ``VLPromptLearner``; whole-model checkpoints written by the
official code load too (:func:`convert_official_state_dict`).

Deliberate fixes of the official code: the inserted prompts are cast to the
running dtype instead of always to fp16 (``MaPLeModel.fp16_prompt_cast``
re-enables that rounding); the learnable prompts stay fp32 in every PREC (the
official ``ctx`` is created in CLIP's dtype, fp16 under PREC fp16, while its
other prompts are fp32); a prompt depth beyond the backbone's layer count is
refused instead of silently meaning "every layer".
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn

from gopro_prompts.dassl_compat import get_logger
from gopro_prompts.registry import register_trainer
from gopro_prompts.trainers.base import ClipTrainer
from gopro_prompts.trainers.clip_helpers import is_vit
from gopro_prompts.trainers.config import register_trainer_config
from gopro_prompts.trainers.maple import MaPLeModel
from gopro_prompts.trainers.prompts import build_prompt_parts, make_context, register_class_buffers
from gopro_prompts.user_errors import UserError

logger = get_logger("ivlp")


@register_trainer_config("IVLP")
def _ivlp_node(node):  # as MaPLe's train.py extend_cfg: official names and defaults
    node.N_CTX_VISION = 2
    node.N_CTX_TEXT = 2
    node.CTX_INIT = "a photo of a"
    node.PREC = "fp16"
    node.PROMPT_DEPTH_VISION = 9
    node.PROMPT_DEPTH_TEXT = 9


# ------------------------------------------------------------------ checks shared with VPT
def require_vit(clip_model, trainer_name):
    if not is_vit(clip_model):
        raise UserError(f"{trainer_name} needs a ViT CLIP backbone (it prompts the vision transformer): "
                        "set MODEL.BACKBONE.NAME to e.g. ViT-B/16")


def checked_int(node_name, key, value, low, high=None, what=""):
    """``value`` if it is an integer in [low, high], else a UserError naming TRAINER.<node_name>.<key>."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise UserError(f"TRAINER.{node_name}.{key} must be an integer {bound}{what}, got {value!r}")
    return value


def checked_depth(node_name, key, value, low, n_layers):
    # Deliberate fix: the official blocks prompt layer i when depth > i, so any depth past the
    # layer count silently means "every layer"; a depth that cannot exist is refused here.
    return checked_int(node_name, key, value, low, n_layers,
                       f" (at most the {n_layers} transformer layers of this backbone)")


def vision_prompt_parameters(n_ctx, width, depth):
    """(layer-0 vision prompt [n, W], deep vision prompts [n, W] for blocks 1 .. depth-1), all N(0, 0.02).

    ``depth`` 0 or ``n_ctx`` 0: no vision prompt, ``(None, [])``.
    """
    if depth == 0 or n_ctx == 0:
        return None, nn.ParameterList()
    layer0 = nn.Parameter(torch.empty(n_ctx, width))
    deep = nn.ParameterList([nn.Parameter(torch.empty(n_ctx, width)) for _ in range(depth - 1)])
    for prompt in [layer0, *deep]:
        nn.init.normal_(prompt, std=0.02)
    return layer0, deep


class IVLPPromptLearner(nn.Module):
    """Text context, text deep prompts and vision prompts, independent of each other.

    Built as ``IVLPPromptLearner(node, classnames, clip_model)`` from a node with N_CTX_VISION,
    N_CTX_TEXT, CTX_INIT, PROMPT_DEPTH_VISION and PROMPT_DEPTH_TEXT (``TRAINER.IVLP``; a
    subclass reading another node sets :attr:`node_name` for its error messages).
    ``forward()`` returns what :class:`MaPLeModel` expects: (text prompts [C, L, D], the layer-0
    vision prompt [n_v, W] or None, deep text prompts [n_t, D] list, deep vision prompts list).
    """

    #: the config node named in error messages
    node_name = "IVLP"

    def __init__(self, node, classnames, clip_model):
        super().__init__()
        name = self.node_name
        require_vit(clip_model, name)
        text_depth = checked_depth(name, "PROMPT_DEPTH_TEXT", node.PROMPT_DEPTH_TEXT, 1,
                                   len(clip_model.transformer.resblocks))
        vision_depth = checked_depth(name, "PROMPT_DEPTH_VISION", node.PROMPT_DEPTH_VISION, 0,
                                     len(clip_model.visual.transformer.resblocks))
        checked_int(name, "N_CTX_TEXT", node.N_CTX_TEXT, 1,
                    what=" (the text branch is always prompted: the VPT trainer prompts the vision branch only)")
        n_ctx_vision = checked_int(name, "N_CTX_VISION", node.N_CTX_VISION, 0)
        parts = build_prompt_parts(classnames, clip_model, node.N_CTX_TEXT, node.CTX_INIT, style="maple")
        width = clip_model.ln_final.weight.shape[0]
        vision_width = clip_model.visual.conv1.weight.shape[0]
        # Registered in the official named_parameters() order: prompt_learner.ctx,
        # image_encoder.VPT, its blocks' VPT_shallow, then the text blocks' VPT_shallow.
        self.ctx = make_context(parts, width)
        self.vision_prompts_layer0, self.vision_deep_prompts = vision_prompt_parameters(
            n_ctx_vision, vision_width, vision_depth)
        self.text_deep_prompts = nn.ParameterList(
            [nn.Parameter(torch.empty(parts.n_ctx, width)) for _ in range(text_depth - 1)])
        for prompt in self.text_deep_prompts:
            nn.init.normal_(prompt, std=0.02)
        register_class_buffers(self, parts)
        self.n_cls = len(classnames)
        self.n_ctx = parts.n_ctx
        self.prompt_prefix = parts.prompt_prefix
        self.text_depth = text_depth
        self.vision_depth = 0 if self.vision_prompts_layer0 is None else vision_depth
        logger.info("%s: text prompt %r, %d text context token(s), text depth %d; %s", name, parts.prompt_prefix,
                    parts.n_ctx, text_depth,
                    f"{n_ctx_vision} vision token(s), vision depth {vision_depth}" if self.vision_depth
                    else "no vision prompt")

    def text_prompts(self):
        """Layer-0 text prompts [C, L, D]: SOS, ctx, the rest of the prompt text."""
        prefix = self.token_prefix
        ctx = self.ctx.to(prefix.dtype).unsqueeze(0).expand(self.n_cls, -1, -1)
        return torch.cat([prefix, ctx, self.token_suffix], dim=1)

    def forward(self):
        return (self.text_prompts(), self.vision_prompts_layer0, list(self.text_deep_prompts),
                list(self.vision_deep_prompts))


class IVLPModel(MaPLeModel):
    """Frozen CLIP + :class:`IVLPPromptLearner` (or another learner with its ``forward()``)."""

    def __init__(self, node, classnames, clip_model, learner=IVLPPromptLearner):
        super().__init__(node, classnames, clip_model, learner=learner)


# ------------------------------------------------------------------ official checkpoints
#: parameter names in the official whole-model (``CustomCLIP``) state dict -> ours
_OFFICIAL_KEYS = (
    (re.compile(r"prompt_learner\.ctx"), lambda m: "ctx"),
    (re.compile(r"image_encoder\.VPT"), lambda m: "vision_prompts_layer0"),
    (re.compile(r"image_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow"),
     lambda m: f"vision_deep_prompts.{int(m.group(1)) - 1}"),
    (re.compile(r"text_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow"),
     lambda m: f"text_deep_prompts.{int(m.group(1)) - 1}"),
)
_OFFICIAL_PREFIXES = ("prompt_learner.", "image_encoder.", "text_encoder.")


def convert_official_state_dict(state_dict):
    """An official IVLP / VPT checkpoint (the whole ``CustomCLIP``) -> our prompt learner's names.

    The official trainers register the whole model, so its prompts sit inside CLIP's own
    modules (``image_encoder.VPT``, ``*.transformer.resblocks.<i>.VPT_shallow``, the text
    context ``prompt_learner.ctx``); everything else is frozen CLIP or class-dependent and is
    dropped, and so are empty prompts (the official code builds [0, W] vision prompts when
    N_CTX_VISION is 0; here there is then no vision prompt).  A state dict in our layout is
    returned unchanged.
    """
    if not any(key.startswith(_OFFICIAL_PREFIXES) for key in state_dict):
        return state_dict
    converted = {}
    for key, value in state_dict.items():
        for pattern, ours in _OFFICIAL_KEYS:
            match = pattern.fullmatch(key)
            if match and value.numel():
                converted[ours(match)] = value
                break
    return converted


@register_trainer
class IVLP(ClipTrainer):
    """Independent Vision-Language Prompting (IVLP)."""

    CFG_NODE = "IVLP"
    MODEL_NAME = "VLPromptLearner"
    MODEL = IVLPModel

    def convert_state_dict(self, name, state_dict):
        return convert_official_state_dict(state_dict)
