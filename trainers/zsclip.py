"""Zero-shot CLIP: hand-crafted prompts, nothing to train.

``ZeroshotCLIP`` uses the dataset's template (CoOp's ``trainers/zsclip.py`` ``CUSTOM_TEMPLATES``);
``ZeroshotCLIP2`` averages the normalised features of CLIP's ImageNet template
ensemble (plus the dataset template, except on ImageNet).  Text features are
computed once at build time.  ``train()`` just evaluates (there is nothing to
train), and ``--eval-only`` without ``--model-dir`` evaluates the model as built.
"""
from __future__ import annotations

import torch

from gopro_prompts.registry import register_trainer
from gopro_prompts.trainers.base import ClipTrainer, check_input_size
from gopro_prompts.trainers.clip_helpers import ImageEncoder, clip_logits, zero_shot_classifier
from gopro_prompts.trainers.method import PromptMethod

CUSTOM_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}
DEFAULT_TEMPLATE = "a photo of a {}."

IMAGENET_TEMPLATES_SELECT = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


def dataset_template(dataset_name):
    return CUSTOM_TEMPLATES.get(dataset_name, DEFAULT_TEMPLATE)


class ZeroShotModel(PromptMethod):
    """Frozen CLIP with class text features from fixed templates (averaged when several)."""

    def __init__(self, classnames, clip_model, templates):
        super().__init__()
        self.image_encoder = ImageEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale
        text = zero_shot_classifier(clip_model, classnames, templates)
        self.register_buffer("text_features", text, persistent=False)
        self.templates = tuple(templates)

    def learnable_module(self):
        return None

    @torch.no_grad()
    def forward(self, images):
        return clip_logits(self.image_encoder(images), self.text_features, self.logit_scale)


@register_trainer
class ZeroshotCLIP(ClipTrainer):
    """CLIP with the dataset's hand-crafted prompt."""

    CFG_NODE = "COOP"  # the official scripts run it with CoOp's configs (PREC)
    MODEL_NAME = ""

    @classmethod
    def templates(cls, cfg):
        return [dataset_template(cfg.DATASET.NAME)]

    @classmethod
    def build_clip_model(cls, cfg, classnames, clip_model):
        return ZeroShotModel(classnames, clip_model, cls.templates(cfg))

    def build_model(self):
        clip_model, self.precision = self.load_backbone(self.cfg, self.device)
        check_input_size(self.cfg, clip_model)
        # encode the class prompts on the run's device (fp16 weights on CUDA; never fp16 on the CPU)
        clip_model.to(self.device)
        self.model = self.build_clip_model(self.cfg, self.dm.dataset.classnames, clip_model)
        print(f"Prompt templates: {list(self.model.templates)}")
        self.model.to(self.device)
        self.scaler = None

    def train(self, *args, **kwargs):
        """Nothing to train: evaluate the model as built."""
        print(f"{type(self).__name__} has no learnable parameters: evaluating only")
        self.set_model_mode("eval")
        return self.test()


@register_trainer
class ZeroshotCLIP2(ZeroshotCLIP):
    """CLIP with an ensemble of ImageNet templates (+ the dataset template)."""

    @classmethod
    def templates(cls, cfg):
        templates = list(IMAGENET_TEMPLATES_SELECT)
        if cfg.DATASET.NAME != "ImageNet":
            templates.append(dataset_template(cfg.DATASET.NAME))
        return templates
