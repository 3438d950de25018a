"""CoOp: learned context vectors for CLIP's text prompts (Zhou et al., IJCV 2022).

Unified or class-specific (CSC) context, class token at the end, middle or
front, CTX_INIT or random initialisation (as CoOp's ``trainers/coop.py`` ``PromptLearner``).  Only the
prompt learner is optimised and checkpointed (as ``prompt_learner``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gopro_prompts.registry import register_trainer
from gopro_prompts.trainers.base import ClipTrainer
from gopro_prompts.trainers.clip_helpers import ImageEncoder, TextEncoder, clip_logits
from gopro_prompts.trainers.config import register_trainer_config
from gopro_prompts.trainers.method import PromptMethod
from gopro_prompts.trainers.prompts import build_prompt_parts, make_context, register_class_buffers
from gopro_prompts.user_errors import UserError

POSITIONS = ("end", "middle", "front")


@register_trainer_config("COOP")
def _coop_node(node):  # as CoOp's train.py extend_cfg: official names and defaults
    node.N_CTX = 16
    node.CSC = False
    node.CTX_INIT = ""
    node.PREC = "fp16"
    node.CLASS_TOKEN_POSITION = "end"
    node.W = 1.0  # KgCoOp's weight of its knowledge-guidance term (read from this node, as KgCoOp does)
    node.ALPHA = 1.0  # declared by KgCoOp's train.py and never read; kept so its configs merge


class CoOpPromptLearner(nn.Module):
    def __init__(self, node, classnames, clip_model):
        super().__init__()
        if node.CLASS_TOKEN_POSITION not in POSITIONS:
            raise UserError(
                f"TRAINER.COOP.CLASS_TOKEN_POSITION {node.CLASS_TOKEN_POSITION!r} is not valid: "
                f"use one of {', '.join(POSITIONS)}"
            )
        parts = build_prompt_parts(classnames, clip_model, node.N_CTX, node.CTX_INIT, style="coop")
        width = clip_model.ln_final.weight.shape[0]
        # CSC applies only to random initialisation (CoOp ignores it when CTX_INIT is given).
        class_specific = bool(node.CSC) and parts.ctx_init is None
        self.ctx = make_context(parts, width, n_cls=len(classnames) if class_specific else None)
        register_class_buffers(self, parts)
        self.n_cls = len(classnames)
        self.n_ctx = parts.n_ctx
        self.name_lens = parts.name_lens
        self.position = node.CLASS_TOKEN_POSITION
        self.prompt_prefix = parts.prompt_prefix

    def forward(self):
        """Prompt embeddings [C, L, D] for every class."""
        prefix, suffix = self.token_prefix, self.token_suffix
        ctx = self.ctx.to(prefix.dtype)
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        if self.position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        prompts = []
        half = self.n_ctx // 2
        for i, name_len in enumerate(self.name_lens):
            cls_tok, rest = suffix[i:i + 1, :name_len], suffix[i:i + 1, name_len:]
            ctx_i = ctx[i:i + 1]
            if self.position == "middle":
                pieces = [prefix[i:i + 1], ctx_i[:, :half], cls_tok, ctx_i[:, half:], rest]
            else:  # front
                pieces = [prefix[i:i + 1], cls_tok, ctx_i, rest]
            prompts.append(torch.cat(pieces, dim=1))
        return torch.cat(prompts, dim=0)


class CoOpModel(PromptMethod):
    """Frozen CLIP + a prompt learner whose ``forward()`` gives every class's prompt [C, L, D].

    ``node`` is the method's config node; ``learner`` the prompt-learner class, built as
    ``learner(node, classnames, clip_model)`` (CoOp's by default; variants bring their own).
    """

    def __init__(self, node, classnames, clip_model, learner=CoOpPromptLearner):
        super().__init__()
        self.prompt_learner = learner(node, classnames, clip_model)
        self.image_encoder = ImageEncoder(clip_model)
        self.text_encoder = TextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale
        self._eval_text_features = None

    def learnable_module(self):
        return self.prompt_learner

    def text_features(self):
        prompts = self.prompt_learner()
        return self.text_encoder(prompts, self.prompt_learner.tokenized_prompts)

    def encode_images(self, images):
        with torch.no_grad():  # frozen: keep no activations
            return self.image_encoder(images)

    def forward(self, images):
        text = self._eval_text_features
        if text is None:
            text = self.text_features()
        return clip_logits(self.encode_images(images), text, self.logit_scale)

    def forward_train(self, images, labels):
        logits = clip_logits(self.encode_images(images), self.text_features(), self.logit_scale)
        return logits, {"ce": F.cross_entropy(logits, labels)}

    @torch.no_grad()
    def begin_eval(self):
        """Class prompts do not depend on the image: encode them once per evaluation."""
        self._eval_text_features = self.text_features()

    def end_eval(self):
        self._eval_text_features = None

    def inspect(self, images):
        """Named intermediate tensors (for parity checks and debugging)."""
        prompts = self.prompt_learner()
        text = self.text_encoder(prompts, self.prompt_learner.tokenized_prompts)
        image = self.image_encoder(images)
        return {
            "prompt_embeddings": prompts,
            "image_features_raw": image,
            "text_features_raw": text,
            "logits": clip_logits(image, text, self.logit_scale),
        }


@register_trainer
class CoOp(ClipTrainer):
    """Context Optimization (CoOp)."""

    CFG_NODE = "COOP"
    MODEL_NAME = "prompt_learner"
    MODEL = CoOpModel
