"""MaPLe: multi-modal prompt learning (Khattak et al., CVPR 2023).

Deep prompts in both CLIP branches, coupled text -> vision (as MaPLe's
``trainers/maple.py`` ``MultiModalPromptLearner``):

* layer 0: the text context ``ctx`` [n, D] sits in the prompt right after SOS;
  ``ctx_to_vision_proj(ctx)`` [n, W] is appended to the image tokens (after the
  positional embedding, before ``ln_pre``);
* before block i = 1 .. J-1 (J = ``PROMPT_DEPTH``): text positions 1..n are
  replaced by ``compound_prompts_text[i-1]`` and the last n image tokens by
  ``visual_prompt_proj[i-1](compound_prompts_text[i-1])``; blocks >= J carry
  the tokens forward.  J = 1 is shallow prompting only.

The prompt text follows MaPLe's init rule (``MultiModalPromptLearner.__init__``: CTX_INIT is
used only when N_CTX <= 4, and then the whole phrase stays in the prompt).
Only the prompt learner is optimised and checkpointed, under the official
folder name ``MultiModalPromptLearner``; whole-model checkpoints written by the
official code load too (their prompt-learner part is taken).

Deliberate fixes of the official code: every PREC runs (the
official ctx->vision projection is always fp16 and crashes in fp32), widths
come from the loaded CLIP (not 512/768), and the inserted prompts are cast to
the running dtype instead of always to fp16.  ``MaPLeModel.fp16_prompt_cast``
re-enables that fp16 rounding to reproduce the official numbers in fp32.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from gopro_prompts.registry import register_trainer
from gopro_prompts.trainers.base import ClipTrainer
from gopro_prompts.trainers.clip_helpers import ImageEncoder, TextEncoder, clip_logits, is_vit
from gopro_prompts.trainers.config import register_trainer_config
from gopro_prompts.trainers.method import PromptMethod
from gopro_prompts.trainers.prompts import build_prompt_parts, make_context, register_class_buffers
from gopro_prompts.user_errors import UserError


@register_trainer_config("MAPLE")
def _maple_node(node):  # as MaPLe's train.py extend_cfg: official names and defaults
    node.N_CTX = 2
    node.CTX_INIT = "a photo of a"
    node.PREC = "fp16"
    node.PROMPT_DEPTH = 9


def _check_depth(depth, clip_model):
    """1 <= PROMPT_DEPTH <= the number of layers of either branch."""
    if not is_vit(clip_model):
        raise UserError("MaPLe needs a ViT CLIP backbone (it prompts the vision transformer): "
                        "set MODEL.BACKBONE.NAME to e.g. ViT-B/16")
    n_layers = min(len(clip_model.transformer.resblocks), len(clip_model.visual.transformer.resblocks))
    if not isinstance(depth, int) or not 1 <= depth <= n_layers:
        raise UserError(
            f"TRAINER.MAPLE.PROMPT_DEPTH must be an integer between 1 and {n_layers} (the number of "
            f"transformer layers of this backbone), got {depth!r}"
        )


class MaPLePromptLearner(nn.Module):
    """Text context, its vision coupling and the deep prompts of both branches."""

    def __init__(self, node, classnames, clip_model):
        super().__init__()
        depth = node.PROMPT_DEPTH
        _check_depth(depth, clip_model)
        parts = build_prompt_parts(classnames, clip_model, node.N_CTX, node.CTX_INIT, style="maple")
        width = clip_model.ln_final.weight.shape[0]
        vision_width = clip_model.visual.conv1.weight.shape[0]
        n_ctx = parts.n_ctx
        # Parameters are created (and the RNG drawn) in the official order.
        self.ctx = make_context(parts, width)
        self.ctx_to_vision_proj = nn.Linear(width, vision_width)
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(torch.empty(n_ctx, width)) for _ in range(depth - 1)]
        )
        for prompt in self.compound_prompts_text:
            nn.init.normal_(prompt, std=0.02)
        # The official code deep-copies ONE Linear for every layer: all couplings start equal.
        coupling = nn.Linear(width, vision_width)
        self.visual_prompt_proj = nn.ModuleList([copy.deepcopy(coupling) for _ in range(depth - 1)])
        register_class_buffers(self, parts)
        self.n_cls = len(classnames)
        self.n_ctx = n_ctx
        self.depth = depth
        self.prompt_prefix = parts.prompt_prefix

    def text_prompts(self):
        """Layer-0 text prompts [C, L, D]: SOS, ctx, the rest of the prompt text."""
        prefix = self.token_prefix
        ctx = self.ctx.to(prefix.dtype).unsqueeze(0).expand(self.n_cls, -1, -1)
        return torch.cat([prefix, ctx, self.token_suffix], dim=1)

    def forward(self):
        """(text prompts [C, L, D], vision prompt [n, W], deep text [n, D] list, deep vision [n, W] list)."""
        deep_text = list(self.compound_prompts_text)
        deep_vision = [proj(prompt) for proj, prompt in zip(self.visual_prompt_proj, deep_text)]
        return self.text_prompts(), self.ctx_to_vision_proj(self.ctx), deep_text, deep_vision


def _fp16_round(x):
    """Round to fp16 and back, as the official casts do (gradients are rounded too)."""
    return x.half().to(x.dtype)


class MaPLeModel(PromptMethod):
    """Frozen CLIP + a deep prompt learner for both branches.

    ``learner(node, classnames, clip_model)`` (MaPLe's by default) is a module with
    ``tokenized_prompts`` whose ``forward()`` returns (text prompts [C, L, D], the layer-0
    vision prompt [n, W] or None, deep text prompts, deep vision prompts): the text prompts
    replace positions 1..n before text block i >= 1, the vision prompts are appended to the
    image tokens and replace the last n of them before vision block i >= 1.
    """

    #: reproduce the official fp16 casts of the inserted prompts (the fixture's ``variant_*`` keys)
    fp16_prompt_cast = False

    def __init__(self, node, classnames, clip_model, learner=MaPLePromptLearner):
        super().__init__()
        self.prompt_learner = learner(node, classnames, clip_model)
        self.image_encoder = ImageEncoder(clip_model)
        self.text_encoder = TextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale
        self._eval_cache = None

    def learnable_module(self):
        return self.prompt_learner

    def _cast(self, prompts, copies):
        """Official variant: expand to ``copies`` and round each copy to fp16."""
        if not self.fp16_prompt_cast or prompts is None:
            return prompts
        return _fp16_round(prompts.unsqueeze(0).expand(copies, -1, -1))

    def text_features(self, prompts, deep_text):
        n_cls = prompts.shape[0]
        deep = [self._cast(p, n_cls) for p in deep_text]
        return self.text_encoder(prompts, self.prompt_learner.tokenized_prompts, deep or None)

    def image_features(self, images, vision_prompt, deep_vision):
        batch = images.shape[0]
        return self.image_encoder(
            images, prompts=self._cast(vision_prompt, batch),
            deep_prompts=[self._cast(p, batch) for p in deep_vision] or None,
        )

    def _forward(self, images):
        prompts, vision_prompt, deep_text, deep_vision = self.prompt_learner()
        text = self.text_features(prompts, deep_text)
        image = self.image_features(images, vision_prompt, deep_vision)
        return prompts, vision_prompt, deep_vision, image, text

    def forward(self, images):
        if self._eval_cache is not None:
            vision_prompt, deep_vision, text = self._eval_cache
            image = self.image_features(images, vision_prompt, deep_vision)
            return clip_logits(image, text, self.logit_scale)
        *_, image, text = self._forward(images)
        return clip_logits(image, text, self.logit_scale)

    @torch.no_grad()
    def begin_eval(self):
        """Text features and vision prompts do not depend on the image: compute them once."""
        prompts, vision_prompt, deep_text, deep_vision = self.prompt_learner()
        self._eval_cache = (vision_prompt, deep_vision, self.text_features(prompts, deep_text))

    def end_eval(self):
        self._eval_cache = None

    def inspect(self, images):
        """Named intermediate tensors (for parity checks and debugging)."""
        prompts, vision_prompt, deep_vision, image, text = self._forward(images)
        out = {
            "prompt_embeddings": prompts,
            "vision_prompts_layer0": vision_prompt,
            "image_features_raw": image,
            "text_features_raw": text,
            "logits": clip_logits(image, text, self.logit_scale),
        }
        for i, prompt in enumerate(deep_vision):
            out[f"vision_deep_prompts.{i}"] = prompt
        return out


#: official prompt-learner names (MaPLe's ``MultiModalPromptLearner``) -> ours
_OFFICIAL_NAMES = (("proj.", "ctx_to_vision_proj."), ("compound_prompt_projections.", "visual_prompt_proj."))


@register_trainer
class MaPLe(ClipTrainer):
    """Multi-modal Prompt Learning (MaPLe)."""

    CFG_NODE = "MAPLE"
    MODEL_NAME = "MultiModalPromptLearner"
    MODEL = MaPLeModel

    def convert_state_dict(self, name, state_dict):
        """Official MaPLe checkpoints hold the whole CustomCLIP: keep its prompt learner, renamed."""
        if not any(key.startswith("prompt_learner.") for key in state_dict):
            return state_dict
        converted = {}
        for key, value in state_dict.items():
            if not key.startswith("prompt_learner."):
                continue  # frozen CLIP weights: ours come from the backbone
            key = key[len("prompt_learner."):]
            for official, ours in _OFFICIAL_NAMES:
                if key.startswith(official):
                    key = ours + key[len(official):]
            converted[key] = value
        return converted
