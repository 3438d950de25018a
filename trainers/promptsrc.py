"""PromptSRC: prompting with self-regulating constraints (Khattak et al., ICCV 2023).

The prompted model is IVLP (:mod:`gopro_prompts.trainers.ivlp`): independent deep
prompts in the text and vision branches of a frozen CLIP.  PromptSRC adds, as
PromptSRC's ``trainers/promptsrc.py`` (``VLPromptLearner``, ``CustomCLIP.forward``,
``PromptSRC.forward_backward``) computes them:

* a frozen **text teacher**: each class name in the 60 OpenAI ImageNet templates,
  encoded by the frozen CLIP in fp32; the teacher feature z of a class is the mean
  of the *raw* per-template features (the official code does not normalise them
  before averaging), L2-normalised afterwards.  Computed once, when the model is
  built for its classes (a non-persistent buffer, never checkpointed);
* a frozen **image teacher**: the frozen CLIP image encoder without prompts, in
  fp32, run once per training step (features v0);
* the training objective ``ce + scl_logits + scl_text + scl_image`` with t, v the
  normalised prompted text / image features and z, v0 the teachers':
  ``scl_text = mean|t - z| * TEXT_LOSS_WEIGHT``, ``scl_image = mean|v - v0| *
  IMAGE_LOSS_WEIGHT`` and ``scl_logits = KL(q || p)`` summed over the batch and
  divided by B*C (not by B, as the official code), q = softmax of the teacher
  logits exp(logit_scale) v0 z^T, p = softmax of the prompted logits.  The
  weights are inside the terms (what is logged is each term's share of the loss);
* **Gaussian prompt aggregation** (GPA): epoch e = 1..E gets the weight
  w_e = g(e) / sum g, g a Gaussian of mean GPA_MEAN and std GPA_STD; the running
  sum (w_1 S_1 + w_2 S_2) + ... of the learnable tensors S_e at the end of each
  epoch replaces the learnable prompts after the last epoch, so the aggregate is
  what is evaluated and checkpointed.  The running sum travels in every
  checkpoint (:meth:`PromptSRCModel.extra_state`), so a resumed run continues it.

Only the prompt learner is optimised and checkpointed, under the official folder
name ``VLPromptLearner``; whole-model checkpoints written by the official code
load too.

Deliberate fixes of the official code:

* every PREC runs: the published code crashes under PREC fp32 (its image teacher
  keeps fp16 weights, and its teacher logits multiply fp32 by ``.half()``
  features); here both teachers compute in fp32 whatever PREC says (with fp16
  CLIP weights the image teacher is one fp32 copy of the vision tower, made once;
  the official image teacher runs in fp16 under PREC fp16);
* GPA averages only the learnable tensors: the official averages the whole state
  dict, the frozen CLIP and teachers included, which drifts those frozen weights
  by ~2e-7 relative (its weights sum to 1 only up to rounding);
* the GPA weights are normalised in log space (the same values): the official
  divides the Gaussian's values directly, which is 0 / 0 when every epoch lies
  ~38 std or more from GPA_MEAN;
* IVLP's fixes (prompts cast to the running dtype, not always to fp16;
  ``MaPLeModel.fp16_prompt_cast`` re-enables that rounding).
"""
from __future__ import annotations

import copy
import math
import numbers
from types import SimpleNamespace
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from gopro_prompts.dassl_compat import get_logger
from gopro_prompts.registry import register_trainer
from gopro_prompts.trainers.base import ClipTrainer
from gopro_prompts.trainers.clip_helpers import ImageEncoder, encode_class_texts
from gopro_prompts.trainers.config import register_trainer_config
from gopro_prompts.trainers.ivlp import IVLPPromptLearner, convert_official_state_dict
from gopro_prompts.trainers.maple import MaPLeModel
from gopro_prompts.user_errors import UserError

logger = get_logger("promptsrc")

#: the 60 prompt templates of OpenAI's ImageNet prompt-engineering notebook, in its order
#: (PromptSRC's ``trainers/imagenet_templates.py`` ``IMAGENET_TEMPLATES``)
IMAGENET_TEMPLATES = (
    "a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.",
    "the embroidered {}.", "a photo of a hard to see {}.", "a bright photo of a {}.",
    "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.",
    "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.", "a close-up photo of a {}.",
    "a black and white photo of the {}.", "a painting of the {}.", "a painting of a {}.",
    "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.",
    "a good photo of the {}.", "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.",
    "a doodle of a {}.", "a close-up photo of the {}.", "the origami {}.", "the {} in a video game.",
    "a sketch of a {}.", "a doodle of the {}.", "a origami {}.", "a low resolution photo of a {}.",
    "the toy {}.", "a rendition of the {}.", "a photo of the clean {}.", "a photo of a large {}.",
    "a rendition of a {}.", "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.",
    "a cartoon {}.", "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.",
)


@register_trainer_config("PROMPTSRC")
def _promptsrc_node(node):  # as PromptSRC's train.py extend_cfg: official names and defaults
    node.N_CTX_VISION = 4
    node.N_CTX_TEXT = 4
    node.CTX_INIT = "a photo of a"
    node.PREC = "fp16"
    node.PROMPT_DEPTH_VISION = 9
    node.PROMPT_DEPTH_TEXT = 9
    node.TEXT_LOSS_WEIGHT = 25
    node.IMAGE_LOSS_WEIGHT = 10
    node.GPA_MEAN = 15
    node.GPA_STD = 1


def _number(key, value, positive=False):
    """``value`` as a float if it is a finite real number (> 0 with ``positive``, else >= 0 for weights)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and positive:
        ok = value > 0
    elif ok and key.endswith("_WEIGHT"):
        ok = value >= 0
    if not ok:
        need = "a number > 0" if positive else ("a number >= 0" if key.endswith("_WEIGHT") else "a finite number")
        raise UserError(f"TRAINER.PROMPTSRC.{key} must be {need}, got {value!r}")
    return float(value)


def gpa_epoch_weights(mean: float, std: float, max_epoch: int) -> torch.Tensor:
    """GPA weights of epochs 1..max_epoch [max_epoch], float64: a Gaussian over the epochs, normalised.

    w_e = g(e) / sum_e' g(e') with g(x) = exp(-(x - mean)^2 / (2 std^2)) (the Gaussian's constant
    cancels).  Deliberate fix: normalised in log space, so no epoch far from ``mean`` turns the
    sum into 0 (the official ``PromptSRC.get_gauss`` values, divided directly, would be 0 / 0).
    """
    if max_epoch < 1:
        raise ValueError(f"max_epoch must be >= 1, got {max_epoch}")
    epochs = torch.arange(1, max_epoch + 1, dtype=torch.float64)
    log_g = -0.5 * ((epochs - mean) / std) ** 2
    g = torch.exp(log_g - log_g.max())
    return g / g.sum()


def text_teacher_features(clip_model, classnames, templates=IMAGENET_TEMPLATES):
    """The frozen text teacher: (per-template features [T, C, E], their mean [C, E]), fp32, raw.

    The mean is over the raw features (PromptSRC's ``VLPromptLearner.__init__`` normalises only
    the mean); computed in fp32 whatever the dtype of ``clip_model``'s weights.
    """
    per_template = encode_class_texts(clip_model, classnames, templates, fp32=True)
    return per_template, per_template.mean(0)


class PromptSRCPromptLearner(IVLPPromptLearner):
    """IVLP's prompt learner read from ``TRAINER.PROMPTSRC`` (the official ``VLPromptLearner`` prompts)."""

    node_name = "PROMPTSRC"


class PromptSRCModel(MaPLeModel):
    """IVLP's prompted CLIP with PromptSRC's frozen teachers, losses and prompt aggregation."""

    def __init__(self, node, classnames, clip_model, learner=PromptSRCPromptLearner):
        text_weight = _number("TEXT_LOSS_WEIGHT", node.TEXT_LOSS_WEIGHT)
        image_weight = _number("IMAGE_LOSS_WEIGHT", node.IMAGE_LOSS_WEIGHT)
        gpa_mean = _number("GPA_MEAN", node.GPA_MEAN)
        gpa_std = _number("GPA_STD", node.GPA_STD, positive=True)
        super().__init__(node, classnames, clip_model, learner=learner)
        self.text_loss_weight, self.image_loss_weight = text_weight, image_weight
        self.gpa_mean, self.gpa_std = gpa_mean, gpa_std
        # the weights are inside the terms (as the official losses), so every term has weight 1
        self.loss_weights = {}

        _, ensemble = text_teacher_features(clip_model, classnames)
        self.register_buffer("zs_text_features_raw", ensemble, persistent=False)
        # The image teacher: CLIP's vision tower without prompts, in fp32.  With fp32 weights it
        # is the prompted model's own encoder (no copy); with fp16 weights one fp32 copy.
        self.image_teacher = None
        if self.image_encoder.dtype != torch.float32:
            visual = copy.deepcopy(clip_model.visual).float()
            self.image_teacher = ImageEncoder(SimpleNamespace(visual=visual))
        # GPA: the running weighted sum of the learnable tensors (fp32), the last epoch (0-based)
        # added to it, the max_epoch it was made for, how many epochs and how much weight it holds
        self._gpa_sum: Optional[Dict[str, torch.Tensor]] = None
        self._gpa_epoch = -1
        self._gpa_max_epoch: Optional[int] = None
        self._gpa_count = 0
        self._gpa_weight_sum = 0.0
        logger.info("PromptSRC: fp32 teachers (text: the %d ImageNet templates, image: %s); loss weights "
                    "text %g, image %g; GPA mean %g, std %g", len(IMAGENET_TEMPLATES),
                    "an fp32 copy of the vision tower" if self.image_teacher is not None else "the frozen vision tower",
                    text_weight, image_weight, gpa_mean, gpa_std)

    # ------------------------------------------------------------------ teachers
    def teacher_image_features(self, images):
        """The frozen image teacher's features [B, E] (fp32, raw; no gradient, autocast off)."""
        encoder = self.image_teacher if self.image_teacher is not None else self.image_encoder
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            return encoder(images.float()).float()

    def teacher_logits(self, zs_image, zs_text):
        """exp(logit_scale) * v0 z^T from the normalised teacher features (fp32, autocast off)."""
        with torch.autocast(zs_image.device.type, enabled=False):
            return self.logit_scale.exp().float() * zs_image @ zs_text.t()

    # ------------------------------------------------------------------ training
    def forward_train(self, images, labels):
        *_, image, text = self._forward(images)
        image = F.normalize(image.float(), dim=-1)
        text = F.normalize(text.float(), dim=-1)
        logits = self.logit_scale.exp().float() * image @ text.t()
        with torch.no_grad():
            zs_image = F.normalize(self.teacher_image_features(images), dim=-1)
            zs_text = F.normalize(self.zs_text_features_raw.float(), dim=-1)
            zs_logits = self.teacher_logits(zs_image, zs_text)
        kl = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(zs_logits, dim=1),
                      reduction="sum", log_target=True)
        terms = {
            "ce": F.cross_entropy(logits, labels),
            # the official divides the summed KL by B * C (logits.numel()), not by the batch size B
            "scl_logits": kl / logits.numel(),
            "scl_text": F.l1_loss(text, zs_text) * self.text_loss_weight,
            "scl_image": F.l1_loss(image, zs_image) * self.image_loss_weight,
        }
        return logits, terms

    def inspect(self, images):
        """MaPLeModel's named tensors plus the teachers' (raw features and the teacher logits)."""
        out = super().inspect(images)
        zs_image = self.teacher_image_features(images)
        out["zs_text_features_ensemble_raw"] = self.zs_text_features_raw
        out["zs_image_features_raw"] = zs_image
        out["zs_logits"] = self.teacher_logits(F.normalize(zs_image, dim=-1),
                                               F.normalize(self.zs_text_features_raw.float(), dim=-1))
        return out

    # ------------------------------------------------------- Gaussian prompt aggregation
    def _learnable_tensors(self):
        """The floating-point tensors of the learnable module's state dict (what is checkpointed)."""
        return {name: t for name, t in self.learnable_module().state_dict().items() if t.is_floating_point()}

    @torch.no_grad()
    def end_epoch(self, epoch: int, max_epoch: int) -> None:
        """Add w_{epoch+1} x the learnable tensors to the GPA sum; after the last epoch load the sum.

        Idempotent for an epoch already added (a run resumed inside that epoch's evaluation calls
        it again).
        """
        if not 0 <= epoch < max_epoch:
            raise ValueError(f"epoch {epoch} is outside 0..{max_epoch - 1}")
        if epoch <= self._gpa_epoch:
            return
        if self._gpa_max_epoch not in (None, max_epoch):
            raise UserError(f"the Gaussian prompt aggregation of this run was made for OPTIM.MAX_EPOCH "
                            f"{self._gpa_max_epoch}, not {max_epoch}: resume with the run's own MAX_EPOCH")
        if epoch != self._gpa_epoch + 1:
            logger.warning(
                "PromptSRC: the Gaussian prompt aggregation lacks epochs %d-%d (resumed from a checkpoint "
                "without its running sum); the aggregate is renormalised over the epochs it has",
                self._gpa_epoch + 2, epoch)
        weight = float(gpa_epoch_weights(self.gpa_mean, self.gpa_std, max_epoch)[epoch])
        current = self._learnable_tensors()
        if self._gpa_sum is None:
            self._gpa_sum = {name: t.float() * weight for name, t in current.items()}
        else:  # the official order: the previous sum, then this epoch's weighted tensors
            self._gpa_sum = {name: self._gpa_sum[name] + t.float() * weight for name, t in current.items()}
        self._gpa_epoch, self._gpa_max_epoch = epoch, max_epoch
        self._gpa_count += 1
        self._gpa_weight_sum += weight
        if epoch == max_epoch - 1:
            self._load_aggregate(current)

    def _load_aggregate(self, current):
        """Copy the GPA sum into the learnable tensors (renormalised if epochs are missing from it)."""
        partial = self._gpa_count < self._gpa_max_epoch and self._gpa_weight_sum > 0
        for name, tensor in current.items():
            total = self._gpa_sum[name]
            tensor.copy_(total / self._gpa_weight_sum if partial else total)
        logger.info("PromptSRC: the learnable prompts are now their Gaussian aggregate over the %d epochs "
                    "(GPA_MEAN %g, GPA_STD %g)", self._gpa_max_epoch, self.gpa_mean, self.gpa_std)

    def extra_state(self) -> dict:
        if self._gpa_sum is None:
            return {}
        return {"gpa": {
            "epoch": self._gpa_epoch,
            "max_epoch": self._gpa_max_epoch,
            "count": self._gpa_count,
            "weight_sum": self._gpa_weight_sum,
            "sum": {name: t.detach().cpu().clone() for name, t in self._gpa_sum.items()},
        }}

    def load_extra_state(self, state: dict) -> None:
        gpa = (state or {}).get("gpa")
        if not gpa:
            return
        tensors = self._learnable_tensors()
        if set(gpa["sum"]) != set(tensors):
            raise UserError("the checkpoint's Gaussian prompt aggregation holds other tensors than this "
                            "model's prompt learner: resume with the run's own config")
        self._gpa_sum = {name: t.to(device=tensors[name].device, dtype=torch.float32)
                         for name, t in gpa["sum"].items()}
        self._gpa_epoch = int(gpa["epoch"])
        self._gpa_max_epoch = int(gpa["max_epoch"])
        self._gpa_count = int(gpa["count"])
        self._gpa_weight_sum = float(gpa["weight_sum"])


@register_trainer
class PromptSRC(ClipTrainer):
    """PromptSRC: IVLP prompts with self-regulating constraints and Gaussian prompt aggregation."""

    CFG_NODE = "PROMPTSRC"
    MODEL_NAME = "VLPromptLearner"
    MODEL = PromptSRCModel

    def convert_state_dict(self, name, state_dict):
        """Official PromptSRC checkpoints hold the whole CustomCLIP: keep its prompts, renamed."""
        return convert_official_state_dict(state_dict)
