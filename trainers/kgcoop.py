"""KgCoOp: CoOp whose prompts stay close to CLIP's hand-crafted ones (Yao et al., CVPR 2023).

As KgCoOp's ``trainers/kgcoop.py``: CoOp's learned context (read from ``TRAINER.COOP``) plus
``kg`` = 1 - mean over classes of the cosine between the learned prompt's text feature and the
frozen CLIP's feature of the dataset's hand-crafted prompt, weighted by ``TRAINER.COOP.W``.
KgCoOp's own context rule: any truthy CTX_INIT (``True`` or a string) means the phrase
"a photo of a" (n_ctx 4; the CTX_INIT text and N_CTX are ignored); an empty one a random
context of N_CTX tokens (class-specific with CSC).  The class tokens always come last, as the
official code places them whatever CLASS_TOKEN_POSITION says: any other position is refused
here rather than silently ignored.  The official learner's unused ``meta_net``,
``bias_vectors`` and ``Adapter`` are not built.  Only ``prompt_learner`` (its ``ctx``) is
optimised and checkpointed; the hand-crafted features are a non-persistent buffer.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from gopro_prompts.dassl_compat import get_logger
from gopro_prompts.registry import register_trainer
from gopro_prompts.trainers.base import ClipTrainer
from gopro_prompts.trainers.clip_helpers import clean_classname, clip_logits, encode_class_texts
from gopro_prompts.trainers.coop import CoOp, CoOpModel, CoOpPromptLearner
from gopro_prompts.trainers.zsclip import CUSTOM_TEMPLATES, DEFAULT_TEMPLATE
from gopro_prompts.user_errors import UserError

logger = get_logger("kgcoop")

#: KgCoOp's per-dataset hand-crafted prompts: CoOp's, except for the textures
TEMPLATES = {**CUSTOM_TEMPLATES, "DescribableTextures": "a photo of a {}, a type of texture."}
PHRASE = "a photo of a"


def kgcoop_learner(node, classnames, clip_model):
    """CoOp's prompt learner under KgCoOp's CTX_INIT rule (see the module docstring)."""
    if node.CLASS_TOKEN_POSITION != "end":
        raise UserError(f"TRAINER.COOP.CLASS_TOKEN_POSITION {node.CLASS_TOKEN_POSITION!r} is not supported by "
                        "KgCoOp, which always puts the class tokens at the end: set it to end")
    return CoOpPromptLearner(SimpleNamespace(**{**node, "CTX_INIT": PHRASE if node.CTX_INIT else ""}),
                             classnames, clip_model)


class KgCoOpModel(CoOpModel):
    """CoOp's model plus the frozen hand-crafted text features of ``dataset_name``'s template and the kg term."""

    def __init__(self, node, classnames, clip_model, dataset_name):
        super().__init__(node, classnames, clip_model, learner=kgcoop_learner)
        # Deliberate fix: KgCoOp's PromptLearner encodes them with an fp16 CLIP whatever PREC says; here in fp32.
        template = TEMPLATES.get(dataset_name, DEFAULT_TEMPLATE)  # the official has no fallback (KeyError)
        self.zs_prompts = [template.format(clean_classname(c)) for c in classnames]
        logger.info("KgCoOp hand-crafted prompts for %s: %r, ...", dataset_name, self.zs_prompts[0])
        teacher = encode_class_texts(clip_model, classnames, [template], fp32=True)[0]
        self.register_buffer("text_features_zs", teacher / teacher.norm(dim=-1, keepdim=True), persistent=False)
        self.loss_weights = {"kg": float(node.W)}

    def kg_cosines(self, text):
        """Per-class cosine between learned and hand-crafted features (each normalised, as the official)."""
        teacher = self.text_features_zs
        return F.cosine_similarity(text / text.norm(dim=-1, keepdim=True),
                                   teacher / teacher.norm(dim=-1, keepdim=True), dim=1, eps=1e-7)

    def forward_train(self, images, labels):
        text = self.text_features()
        logits = clip_logits(self.encode_images(images), text, self.logit_scale)
        return logits, {"ce": F.cross_entropy(logits, labels), "kg": 1.0 - self.kg_cosines(text).mean()}

    @torch.no_grad()
    def inspect(self, images):
        parts = super().inspect(images)
        return {**parts, "text_features_zs": self.text_features_zs,
                "kg_cos": self.kg_cosines(parts["text_features_raw"])}


@register_trainer
class KgCoOp(ClipTrainer):
    """Knowledge-guided Context Optimization (KgCoOp)."""

    CFG_NODE = CoOp.CFG_NODE
    MODEL_NAME = "prompt_learner"

    @classmethod
    def build_clip_model(cls, cfg, classnames, clip_model):
        return KgCoOpModel(cls.node(cfg), classnames, clip_model, cfg.DATASET.NAME)
