"""Zero-shot CLIP (ZeroshotCLIP, ZeroshotCLIP2): logits by hand on the tiny CLIP, the template
ensemble, and nothing learnable to train or checkpoint.

Evaluation on new classes: tests/test_contract.py; accuracy against chance on the generated
dataset: tests/test_train_cli.py.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gopro_prompts.trainers.clip_helpers import tokenize
from gopro_prompts.trainers.config import default_cfg
from gopro_prompts.trainers.zsclip import ZeroshotCLIP, ZeroshotCLIP2
from helpers import offline_trainer, random_images

CLASSNAMES = ["dog", "sea_turtle", "forklift", "golden retriever", "air conditioner"]
#: the templates of CoOp's trainers/zsclip.py and trainers/imagenet_templates.py, written out here
PETS = "a photo of a {}, a type of pet."
IMAGENET_TEMPLATES_SELECT = ["itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                             "a {} in a video game.", "art of the {}.", "a photo of the small {}."]


def _cfg(dataset):
    cfg = default_cfg()
    cfg.DATASET.NAME = dataset
    cfg.MODEL.BACKBONE.NAME = "tiny"
    cfg.TRAINER.COOP.PREC = "fp32"  # the node the zero-shot trainers read PREC from
    return cfg


def _text_features(clip, template):
    """The frozen CLIP's features of ``template`` filled with every class name (not normalised)."""
    tokens = tokenize([template.format(name.replace("_", " ")) for name in CLASSNAMES])
    with torch.no_grad():
        return clip.encode_text(tokens).float()


def _logits(clip, images, text):
    with torch.no_grad():
        image = clip.encode_image(images).float()
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return clip.logit_scale.exp() * image @ text.t()


@pytest.mark.parametrize("dataset,template", [
    ("OxfordPets", PETS),
    ("DescribableTextures", "{} texture."),
    ("SyntheticShapes", "a photo of a {}."),  # a dataset without a template of its own
])
def test_zeroshot_clip_logits_equal_a_hand_computation(tiny_clip, dataset, template):
    model = ZeroshotCLIP.build_clip_model(_cfg(dataset), CLASSNAMES, tiny_clip)
    images = random_images()
    with torch.no_grad():
        logits = model(images)
    expected = _logits(tiny_clip, images, _text_features(tiny_clip, template))
    assert logits.shape == (3, len(CLASSNAMES))
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dataset,templates", [
    ("OxfordPets", IMAGENET_TEMPLATES_SELECT + [PETS]),  # the dataset's template joins the ensemble
    ("ImageNet", IMAGENET_TEMPLATES_SELECT),             # ... except on ImageNet
])
def test_zeroshot_clip2_averages_the_normalised_features_of_its_templates(tiny_clip, dataset, templates):
    model = ZeroshotCLIP2.build_clip_model(_cfg(dataset), CLASSNAMES, tiny_clip)
    images = random_images()
    with torch.no_grad():
        logits = model(images)
    per_template = [_text_features(tiny_clip, t) for t in templates]
    normalised = torch.stack([F.normalize(t, dim=-1) for t in per_template]).mean(0)
    torch.testing.assert_close(logits, _logits(tiny_clip, images, normalised), rtol=1e-5, atol=1e-5)
    # averaging the raw features instead weighs the templates by their norms: other logits
    raw = torch.stack(per_template).mean(0)
    assert not torch.allclose(logits, _logits(tiny_clip, images, raw), rtol=1e-4, atol=1e-4)


def test_nothing_is_learnable_or_checkpointed(tmp_path, synthetic_root):
    trainer = offline_trainer("ZeroshotCLIP2", synthetic_root, tmp_path / "run")
    model = trainer.model
    assert model.learnable_module() is None
    assert not any(p.requires_grad for p in model.parameters())
    assert trainer.get_model_names() == []
    assert "text_features" not in model.state_dict()  # class-dependent: rebuilt, never saved
    trainer.save_model(0, str(tmp_path / "checkpoint"))
    assert not list((tmp_path / "checkpoint").rglob("*"))
