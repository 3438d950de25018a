"""CoCoOp: conditional context optimization (Zhou et al., CVPR 2022).

A learned context shared by all classes, shifted per image by a small meta-net
(Linear embed -> embed/16, ReLU, Linear -> text width) fed the L2-normalised
image feature; every class prompt of image b uses the shifted context ctx + pi_b
(shared/parity/README.md §6, prompt-construction.md "Per-image context").

All per-image prompt sets of a batch go through ONE batched text-encoder call
([B*C, L, D], truncated to the longest prompt) instead of the official loop
over images; a very large B*C (e.g. evaluation batches on ImageNet) is split
by whole images into calls of at most ``CoCoOpModel.max_text_batch`` prompts,
which gives the same numbers.  Only the prompt learner is optimised and
checkpointed (as ``prompt_learner``).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from dassl_compat import TRAINER_REGISTRY
from trainers.base import ClipTrainer
from trainers.clip_helpers import ImageEncoder, TextEncoder, clip_logits
from trainers.config import register_trainer_config
from trainers.prompts import assemble_per_image, build_prompt_parts, make_context, register_class_buffers
from user_errors import UserError


@register_trainer_config("COCOOP")
def _cocoop_node(node):  # dassl-behaviour.md §a.4, official names and defaults
    node.N_CTX = 16
    node.CTX_INIT = ""
    node.PREC = "fp16"


class CoCoOpPromptLearner(nn.Module):
    """Shared context ``ctx`` [n_ctx, D] and the meta-net producing a per-image shift."""

    def __init__(self, node, classnames, clip_model):
        super().__init__()
        # prompt-construction.md: CoOp-style init (CTX_INIT's word count replaces N_CTX)
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

    def forward(self, image_features):
        """Normalised image features [B, E] -> (prompts [B, C, L, D], shift pi [B, D])."""
        bias = self.meta_net(image_features.to(self.meta_net.linear1.weight.dtype))
        ctx_shifted = self.ctx.unsqueeze(0) + bias.unsqueeze(1)  # same shift for every token
        prompts = assemble_per_image(self.token_prefix, ctx_shifted, self.token_suffix)
        return prompts, bias


class CoCoOpModel(nn.Module):
    """Frozen CLIP + CoCoOp prompt learner."""

    #: most prompts encoded in one text-encoder call (split by whole images beyond it)
    max_text_batch = 8192

    def __init__(self, cfg, classnames, clip_model):
        super().__init__()
        self.prompt_learner = CoCoOpPromptLearner(cfg.TRAINER.COCOOP, classnames, clip_model)
        self.image_encoder = ImageEncoder(clip_model)
        self.text_encoder = TextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale

    def learnable_module(self):
        return self.prompt_learner

    def encode_images(self, images):
        with torch.no_grad():  # frozen and upstream of every learnable parameter
            return self.image_encoder(images)

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
        prompts, bias = self.prompt_learner(F.normalize(image.float(), dim=-1))
        text = self.encode_prompts(prompts)
        return image, prompts, bias, text

    def forward(self, images):
        image, _, _, text = self._forward(images)
        return clip_logits(image, text, self.logit_scale)

    def forward_train(self, images, labels):
        logits = self.forward(images)
        return logits, {"ce": F.cross_entropy(logits, labels)}

    def inspect(self, images):
        """Named intermediate tensors (for parity checks and debugging)."""
        image, prompts, bias, text = self._forward(images)
        return {
            "meta_net_bias": bias,
            "prompt_embeddings": prompts,
            "image_features_raw": image,
            "text_features_raw": text,
            "logits": clip_logits(image, text, self.logit_scale),
        }


@TRAINER_REGISTRY.register()
class CoCoOp(ClipTrainer):
    """Conditional Context Optimization (CoCoOp)."""

    CFG_NODE = "COCOOP"
    MODEL_NAME = "prompt_learner"
    OFFLINE_DEFAULTS = (
        "TRAINER.COCOOP.N_CTX", 4, "TRAINER.COCOOP.CTX_INIT", "a photo of a", "TRAINER.COCOOP.PREC", "fp32",
        "OPTIM.NAME", "sgd", "OPTIM.LR", 0.002, "OPTIM.MAX_EPOCH", 3, "OPTIM.LR_SCHEDULER", "cosine",
        "OPTIM.WARMUP_EPOCH", 1, "OPTIM.WARMUP_TYPE", "constant", "OPTIM.WARMUP_CONS_LR", 1e-5,
        "DATALOADER.TRAIN_X.BATCH_SIZE", 4,
    )

    @classmethod
    def build_clip_model(cls, cfg, classnames, clip_model):
        return CoCoOpModel(cfg, classnames, clip_model)
