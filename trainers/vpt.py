"""VPT: deep visual prompt tuning of CLIP's image encoder (Jia et al., ECCV 2022), as MaPLe's baseline.

As MaPLe's repository computes it (``trainers/vpt.py`` with the IVLP branch of
its ``clip/model.py``): the vision branch of IVLP alone, with a frozen text side.

* vision: ``vision_prompts_layer0`` [n, W] is appended after the patch tokens
  (after the positional embedding, before ``ln_pre``); before vision block
  i = 1 .. J - 1 (J = PROMPT_DEPTH_VISION >= 1) the last n tokens are
  replaced by ``vision_deep_prompts[i-1]``;
* text: the hand-crafted prompts "a photo of a {class}." encoded once by the
  frozen CLIP, in fp32 (the official loader returns an fp32 CLIP), when the
  model is built for its classes: a non-persistent buffer, rebuilt for the
  evaluated classes (base -> new), never checkpointed.

The prompt is hard-coded in the official code (``FixedEmbeddings``) and so it
is here: TRAINER.VPT.CTX_INIT is accepted, so that the official configs merge,
and ignored (a warning says so when it names another phrase).  Nothing is
initialised from it (the text side is not learned), and the published VPT
figures used this prompt.

PREC: the official loader ends with ``model.float()``, so the published runs
computed everything in fp32 whatever PREC said.  Here PREC means what it means
for every trainer (fp16: fp16 CLIP weights on CUDA); the frozen text features
are computed in fp32 in every precision.  Use PREC fp32 to repeat the official
computation exactly.

Only the vision prompts are optimised and checkpointed, under the official
folder name ``prompt_learner``; whole-model checkpoints written by the official
code load too.

Deliberate fixes of the official code: PREC amp trains (the official amp branch
calls the model without ``training=True``, gets logits back and cannot
backpropagate them); a CTX_INIT that the official code would silently ignore is
reported; the inserted prompts are cast to the running dtype, not always to fp16
(``MaPLeModel.fp16_prompt_cast`` re-enables that rounding); a prompt depth beyond
the backbone's layer count is refused.
"""
from __future__ import annotations

import torch.nn as nn

from gopro_prompts.dassl_compat import get_logger
from gopro_prompts.registry import register_trainer
from gopro_prompts.trainers.base import ClipTrainer
from gopro_prompts.trainers.clip_helpers import clean_classname, encode_class_texts, text_context_length, tokenize
from gopro_prompts.trainers.config import register_trainer_config
from gopro_prompts.trainers.ivlp import (
    checked_depth, checked_int, convert_official_state_dict, require_vit, vision_prompt_parameters,
)
from gopro_prompts.trainers.maple import MaPLeModel

logger = get_logger("vpt")

#: the frozen text prompt (hard-coded in the official ``trainers/vpt.py``, ``FixedEmbeddings``)
PROMPT_PREFIX = "a photo of a"
TEMPLATE = PROMPT_PREFIX + " {}."


@register_trainer_config("VPT")
def _vpt_node(node):  # as MaPLe's train.py extend_cfg: official names and defaults
    node.N_CTX_VISION = 2
    node.CTX_INIT = "a photo of a"  # read by no code: the frozen prompt is fixed (see the module docstring)
    node.PREC = "fp16"
    node.PROMPT_DEPTH_VISION = 1


class VPTPromptLearner(nn.Module):
    """The vision prompts: ``vision_prompts_layer0`` [n, W] and ``vision_deep_prompts`` (J - 1 of them)."""

    def __init__(self, node, classnames, clip_model):
        super().__init__()
        require_vit(clip_model, "VPT")
        depth = checked_depth("VPT", "PROMPT_DEPTH_VISION", node.PROMPT_DEPTH_VISION, 1,
                              len(clip_model.visual.transformer.resblocks))
        n_ctx = checked_int("VPT", "N_CTX_VISION", node.N_CTX_VISION, 1)
        width = clip_model.visual.conv1.weight.shape[0]
        self.vision_prompts_layer0, self.vision_deep_prompts = vision_prompt_parameters(n_ctx, width, depth)
        self.n_ctx = n_ctx
        self.vision_depth = depth

    def forward(self):
        """(no text prompts, layer-0 vision prompt, no deep text prompts, deep vision prompts)."""
        return None, self.vision_prompts_layer0, [], list(self.vision_deep_prompts)


class VPTModel(MaPLeModel):
    """Frozen CLIP with prompted vision branch and the frozen hand-crafted text features."""

    def __init__(self, node, classnames, clip_model, learner=VPTPromptLearner):
        super().__init__(node, classnames, clip_model, learner=learner)
        ctx_init = (node.CTX_INIT or "").replace("_", " ").strip()
        if ctx_init != PROMPT_PREFIX:  # Deliberate fix: the official code ignores it silently
            logger.warning("TRAINER.VPT.CTX_INIT %r is ignored: VPT's frozen text prompt is always %r "
                           "(as in the official trainers/vpt.py)", node.CTX_INIT, TEMPLATE.format("<class>"))
        tokens = tokenize([TEMPLATE.format(clean_classname(name)) for name in classnames],
                          text_context_length(clip_model))
        features = encode_class_texts(clip_model, classnames, [TEMPLATE], fp32=True)[0]
        self.register_buffer("tokenized_prompts", tokens, persistent=False)
        self.register_buffer("frozen_text_features", features, persistent=False)

    def text_features(self, prompts, deep_text):
        """The frozen class features [C, E] (fp32, not normalised): no text encoder runs."""
        return self.frozen_text_features


@register_trainer
class VPT(ClipTrainer):
    """Deep Visual Prompt Tuning (VPT) with CLIP's frozen hand-crafted classifier."""

    CFG_NODE = "VPT"
    MODEL_NAME = "prompt_learner"
    MODEL = VPTModel

    def convert_state_dict(self, name, state_dict):
        return convert_official_state_dict(state_dict)
