"""CoCoOp: conditional context optimization (Zhou et al., CVPR 2022).

A learned context shared by all classes, shifted per image by a small meta-net
(Linear embed -> embed/16, ReLU, Linear -> text width) fed the L2-normalised
image feature; every class prompt of image b uses the shifted context ctx + pi_b
(CoOp's ``trainers/cocoop.py`` ``PromptLearner.forward``).

All per-image prompt sets of a batch go through ONE batched text-encoder call
(truncated to the longest prompt) instead of the official loop over images;
the prompt start shared by an image's classes (SOS + its context) is encoded
once per image (exact under CLIP's causal mask, docs/performance.md); a very
large B*C (e.g. evaluation batches on ImageNet) is split by whole images into
calls of at most ``CoCoOpModel.max_text_batch`` prompts, which gives the same
numbers.  Only the prompt learner is optimised and
checkpointed (as ``prompt_learner``).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from gopro_prompts.registry import register_trainer
from gopro_prompts.trainers.base import ClipTrainer
from gopro_prompts.trainers.clip_helpers import ImageEncoder, TextEncoder, clip_logits, supports_shared_prefix
from gopro_prompts.trainers.config import register_trainer_config
from gopro_prompts.trainers.method import PromptMethod
from gopro_prompts.trainers.prompts import assemble_per_image, build_prompt_parts, make_context, register_class_buffers
from gopro_prompts.user_errors import UserError


@register_trainer_config("COCOOP")
def _cocoop_node(node):  # as CoOp's train.py extend_cfg: official names and defaults
    node.N_CTX = 16
    node.CTX_INIT = ""
    node.PREC = "fp16"


class CoCoOpPromptLearner(nn.Module):
    """Shared context ``ctx`` [n_ctx, D] and the meta-net producing a per-image shift."""

    def __init__(self, node, classnames, clip_model):
        super().__init__()
        # CoOp-style init, as CoOp's trainers/cocoop.py PromptLearner (CTX_INIT's word count replaces N_CTX)
        parts = build_prompt_parts(classnames, clip_model, node.N_CTX, node.CTX_INIT, style="coop")
        width = clip_model.ln_final.weight.shape[0]
        vis_dim = clip_model.visual.output_dim
        hidden = vis_dim // 16
        if hidden < 1:
            raise UserError(f"CoCoOp's meta-net needs an image feature size >= 16 (got {vis_dim}): "
                            "use a CLIP backbone with a larger embedding")
        # Same order of parameter creation (and RNG draws) as the official learner.
        self.ctx = make_context(parts, width)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, hidden)),
            ("relu", nn.ReLU()),
            ("linear2", nn.Linear(hidden, width)),
        ]))
        register_class_buffers(self, parts)
        self.n_cls = len(classnames)
        self.n_ctx = parts.n_ctx
        self.prompt_prefix = parts.prompt_prefix

    def shifted_context(self, image_features):
        """Normalised image features [B, E] -> (per-image context ctx + pi_b [B, n_ctx, D], pi [B, D])."""
        bias = self.meta_net(image_features.to(self.meta_net.linear1.weight.dtype))
        return self.ctx.unsqueeze(0) + bias.unsqueeze(1), bias  # same shift for every token

    def prefixes(self, ctx_shifted):
        """The prompt start shared by all classes of an image: SOS + its context [B, 1 + n_ctx, D]."""
        sos = self.token_prefix[:1].expand(ctx_shifted.shape[0], -1, -1)  # SOS, identical for every class
        return torch.cat([sos, ctx_shifted.to(sos.dtype)], dim=1)

    def forward(self, image_features):
        """Normalised image features [B, E] -> (prompts [B, C, L, D], shift pi [B, D])."""
        ctx_shifted, bias = self.shifted_context(image_features)
        prompts = assemble_per_image(self.token_prefix, ctx_shifted, self.token_suffix)
        return prompts, bias


class CoCoOpModel(PromptMethod):
    """Frozen CLIP + a per-image prompt learner (``learner(node, classnames, clip_model)``, CoCoOp's by default)."""

    #: most prompts encoded in one text-encoder call (split by whole images beyond it)
    max_text_batch = 8192

    def __init__(self, node, classnames, clip_model, learner=CoCoOpPromptLearner):
        super().__init__()
        self.prompt_learner = learner(node, classnames, clip_model)
        self.image_encoder = ImageEncoder(clip_model)
        self.text_encoder = TextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale
        #: encode each image's shared prompt start once (False: every prompt in full)
        self.shared_prefix = supports_shared_prefix(self.text_encoder)

    def learnable_module(self):
        return self.prompt_learner

    def encode_images(self, images):
        with torch.no_grad():  # frozen and upstream of every learnable parameter
            return self.image_encoder(images)

    def encode_context(self, ctx_shifted):
        """Per-image context [B, n_ctx, D] -> text features [B, C, E] of every class prompt.

        The prompt start (SOS + context) is shared by all classes of an image:
        it is encoded once per image and the class tokens attend to it
        (``TextEncoder`` shared-prefix encoding, exact under the causal mask);
        calls hold at most ``max_text_batch`` prompts (whole images).
        """
        learner = self.prompt_learner
        if not self.shared_prefix:
            prompts = assemble_per_image(learner.token_prefix, ctx_shifted, learner.token_suffix)
            return self.encode_prompts(prompts)
        n_cls = learner.token_suffix.shape[0]
        per_call = max(1, self.max_text_batch // n_cls)
        prefixes = learner.prefixes(ctx_shifted)
        feats = [self.text_encoder(chunk, learner.tokenized_prompts, suffix=learner.token_suffix)
                 for chunk in prefixes.split(per_call, dim=0)]
        return torch.cat(feats, dim=0) if len(feats) > 1 else feats[0]

    def encode_prompts(self, prompts):
        """Per-image prompts [B, C, L, D] -> text features [B, C, E] in batched calls."""
        batch, n_cls = prompts.shape[:2]
        tokenized = self.prompt_learner.tokenized_prompts
        per_call = max(1, self.max_text_batch // n_cls)  # whole images per call
        feats = []
        for start in range(0, batch, per_call):
            chunk = prompts[start:start + per_call]
            n = chunk.shape[0]
            flat = chunk.reshape(n * n_cls, *chunk.shape[2:])
            out = self.text_encoder(flat, tokenized.repeat(n, 1))
            feats.append(out.reshape(n, n_cls, -1))
        return torch.cat(feats, dim=0) if len(feats) > 1 else feats[0]

    def _forward(self, images):
        image = self.encode_images(images)
        ctx_shifted, bias = self.prompt_learner.shifted_context(F.normalize(image.float(), dim=-1))
        return image, ctx_shifted, bias, self.encode_context(ctx_shifted)

    def forward(self, images):
        image, _, _, text = self._forward(images)
        return clip_logits(image, text, self.logit_scale)

    def inspect(self, images):
        """Named intermediate tensors (for parity checks and debugging)."""
        image, ctx_shifted, bias, text = self._forward(images)
        learner = self.prompt_learner
        return {
            "meta_net_bias": bias,
            "prompt_embeddings": assemble_per_image(learner.token_prefix, ctx_shifted, learner.token_suffix),
            "image_features_raw": image,
            "text_features_raw": text,
            "logits": clip_logits(image, text, self.logit_scale),
        }


@register_trainer
class CoCoOp(ClipTrainer):
    """Conditional Context Optimization (CoCoOp)."""

    CFG_NODE = "COCOOP"
    MODEL_NAME = "prompt_learner"
    MODEL = CoCoOpModel
