"""ProGrad: prompt-aligned gradient for CLIP prompt learning (Zhu et al., ICCV 2023).

As Prompt-align's ``ProGrad.public/trainers/prograd.py`` (``PromptLearner``, ``CLIP``, ``ProGradLoss``)
and its Dassl fork's ``TrainerBase.prograd_backward_and_update``:

* **Learned prompt**: CoOp's learner (``TRAINER.COOP``) under ProGrad's CTX_INIT rule.  A truthy
  CTX_INIT (``True``, or any text: the text itself is not used) takes the phrase of ProGrad's
  template for ``DATASET.NAME`` (:data:`TEMPLATES` without its `` {}.``); with w words in it,
  N_CTX must be at least w, the prompt reads ``"X" * (N_CTX - w)``, the phrase, the class name and
  ".", and the N_CTX context vectors after SOS start as zeros (the X positions) followed by the
  phrase's first w token embeddings.  An empty CTX_INIT gives CoOp's random context of N_CTX
  tokens (class-specific with CSC).  The words are counted on spaces while the prompt is
  tokenized, so a phrase with a comma ("a type of pet, a photo of a") keeps its last word as a
  fixed token after the context, as in the official code.
* **Teacher**: the frozen CLIP on the dataset's template, computed in fp32 and L2-normalised
  (a non-persistent buffer, rebuilt with the class names, never checkpointed).  Its image
  features are the model's own frozen ones: the official runs a second, fp32 CLIP, which gives
  the same features under PREC fp32 and amp and differs by fp16 rounding under PREC fp16.
* **Losses** (``LOSS.NAME`` "prograd"): ``ce`` = CE(logits, labels) and ``kl`` = mean over the batch
  of sum_c -q log p * T^2, q = softmax(teacher logits / T), p = softmax(logits / T), T = ``LOSS.T``.
  ``kl`` keeps the official value: despite its name it is a soft cross-entropy (a true KL would
  subtract the teacher's entropy: the same gradient, a different number).
* **Update** (:meth:`ProGradModel.backward`): per trainable tensor, the gradients of ``ce`` and
  ``kl``; when their cosine is negative the CE gradient loses ``LOSS.LAMBDA`` times its component
  along the KL gradient, otherwise it is used as it is.  The KL gradient itself is never added.

Only ``prompt_learner`` (its ``ctx``) is optimised and checkpointed.
"""
from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from gopro_prompts.dassl_compat import get_logger
from gopro_prompts.registry import register_trainer
from gopro_prompts.trainers import distributed
from gopro_prompts.trainers.base import ClipTrainer
from gopro_prompts.trainers.clip_helpers import clean_classname, clip_logits, encode_class_texts
from gopro_prompts.trainers.coop import CoOp, CoOpModel, CoOpPromptLearner
from gopro_prompts.trainers.method import Terms, learnable_parameters
from gopro_prompts.trainers.zsclip import CUSTOM_TEMPLATES
from gopro_prompts.user_errors import UserError

logger = get_logger("prograd")

#: ProGrad's per-dataset templates (its ``trainers/prograd.py`` ``CUSTOM_TEMPLATES``): the teacher's
#: prompt, and with a truthy CTX_INIT the phrase that initialises the context.  Several differ from
#: CoOp's zero-shot templates (OxfordPets, OxfordFlowers, FGVCAircraft, DescribableTextures, Food101).
TEMPLATES = {
    **CUSTOM_TEMPLATES,  # the same as CoOp's for the other datasets
    "OxfordPets": "a type of pet, a photo of a {}.",
    "OxfordFlowers": "a type of flower, a photo of a {}.",
    "FGVCAircraft": "a type of aircraft, a photo of a {}.",
    "DescribableTextures": "a texture of {}.",
    "Food101": "a type of food, a photo of {}.",
}
#: the template of a dataset the table does not name (the official raises KeyError there)
DEFAULT_TEMPLATE = "a photo of a {}."
#: the one loss the official trainer accepts
LOSS_NAME = "prograd"


def dataset_template(dataset_name: str) -> str:
    """ProGrad's template for ``dataset_name``; :data:`DEFAULT_TEMPLATE` (logged) for another dataset."""
    template = TEMPLATES.get(dataset_name)
    if template is None:
        # Deliberate fix: the official looks the name up without a fallback (KeyError for any other
        # dataset, e.g. a generated or plugin one); here CLIP's generic prompt is used instead.
        logger.warning("ProGrad has no template for DATASET.NAME %r: using %r", dataset_name, DEFAULT_TEMPLATE)
        template = DEFAULT_TEMPLATE
    return template


def template_phrase(template: str) -> str:
    """The context phrase of a template: the template without " {}." (underscores as spaces)."""
    return template.replace(" {}.", "").replace("_", " ")


def prograd_learner(node, classnames, clip_model, template: str = DEFAULT_TEMPLATE) -> CoOpPromptLearner:
    """CoOp's prompt learner under ProGrad's CTX_INIT rule (see the module docstring).

    A truthy CTX_INIT becomes CoOp's CTX_INIT "X ... X <phrase>" of exactly N_CTX words: CoOp then
    builds ProGrad's prompt text, tokens and fixed prefix / suffix, and its context starts from
    that text's token embeddings; the X positions are then set to zero, as ProGrad initialises them.
    """
    ctx_init = ""
    n_pad = 0
    if node.CTX_INIT:
        phrase = template_phrase(template)
        n_words = len(phrase.split(" "))
        if node.N_CTX < n_words:
            raise UserError(
                f"TRAINER.COOP.N_CTX {node.N_CTX} is smaller than the {n_words} words of ProGrad's phrase "
                f"{phrase!r} (CTX_INIT True): set TRAINER.COOP.N_CTX {n_words} or more, or CTX_INIT False"
            )
        if isinstance(node.CTX_INIT, str):
            logger.info("ProGrad: CTX_INIT %r means the dataset's phrase %r (the text itself is not used)",
                        node.CTX_INIT, phrase)
        n_pad = node.N_CTX - n_words
        ctx_init = " ".join(["X"] * n_pad + [phrase])
    # Deliberate fix: CLASS_TOKEN_POSITION "middle" raises NameError in the official learner's forward;
    # CoOp's learner, used here, supports it.
    learner = CoOpPromptLearner(SimpleNamespace(**{**node, "CTX_INIT": ctx_init}), classnames, clip_model)
    if n_pad:
        with torch.no_grad():
            learner.ctx[:n_pad].zero_()
    return learner


def prograd_kl(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """ProGrad's ``kl_loss``: mean over the batch of sum_c -q log p * T^2 (a soft cross-entropy).

    q = softmax(teacher_logits / T), p = softmax(logits / T).
    """
    q = F.softmax(teacher_logits.float() / temperature, dim=-1)
    log_p = F.log_softmax(logits.float() / temperature, dim=-1)
    return (-q * log_p * temperature * temperature).sum(1).mean()


def prograd_project(g_ce: torch.Tensor, g_kl: torch.Tensor, lam: float) -> torch.Tensor:
    """The ProGrad update of one tensor from its CE and KL gradients.

    When the cosine of the flattened gradients is negative: g_ce - lam (g_ce . k) k with
    k = g_kl / |g_kl|; otherwise g_ce.  A zero or non-finite gradient gives a NaN cosine, which
    counts as no conflict (as the official ``<`` comparison).  No host synchronisation.
    """
    a, b = g_ce.reshape(-1), g_kl.reshape(-1)
    b_hat = b / torch.linalg.norm(b)
    a_hat = a / torch.linalg.norm(a)
    conflict = torch.dot(a_hat, b_hat) < 0
    projected = a - lam * torch.dot(a, b_hat) * b_hat
    return torch.where(conflict, projected, a).view_as(g_ce)


def _mean_over_ranks(grads: Sequence[torch.Tensor]) -> list:
    """Every tensor averaged over the processes (one all-reduce), as DDP averages gradients."""
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= distributed.get_world_size()
    out, start = [], 0
    for g in grads:
        out.append(flat[start:start + g.numel()].view_as(g))
        start += g.numel()
    return out


def check_loss_node(loss_node) -> None:
    """LOSS.NAME must be "prograd" (the official trainer refuses anything else) and LOSS.T positive."""
    if loss_node.NAME != LOSS_NAME:
        raise UserError(
            f"LOSS.NAME {loss_node.NAME!r} is not supported by ProGrad, whose official trainer implements only "
            f"{LOSS_NAME!r}: set LOSS.NAME {LOSS_NAME} (as configs/trainers/ProGrad/*.yaml do)"
        )
    if not float(loss_node.T) > 0:
        raise UserError(f"LOSS.T {loss_node.T!r} is not valid: the distillation temperature must be > 0 (e.g. 1.0)")


class ProGradModel(CoOpModel):
    """CoOp's model with ProGrad's prompt rule, a frozen zero-shot teacher and the projected update.

    ``loss_weights``: the logged ``loss`` is the CE, the objective whose (projected) gradient is
    followed; the official logs only ``xe_loss`` and ``kl_loss``, logged here as ``ce`` and ``kl``.
    :meth:`backward` does not use the weighted total; ``kl``'s weight 0 still turns a non-finite
    ``kl`` into a non-finite total (0 * NaN = NaN), which stops the step with a clear error.
    """

    def __init__(self, node, classnames, clip_model, dataset_name: str, loss_node):
        check_loss_node(loss_node)
        template = dataset_template(dataset_name)
        super().__init__(node, classnames, clip_model,
                         learner=functools.partial(prograd_learner, template=template))
        self.temperature = float(loss_node.T)
        self.lam = float(loss_node.LAMBDA)
        self.zs_template = template
        self.zs_prompts = [template.format(clean_classname(c)) for c in classnames]
        teacher = encode_class_texts(clip_model, classnames, [template], fp32=True)[0]
        self.register_buffer("text_features_zs", teacher / teacher.norm(dim=-1, keepdim=True), persistent=False)
        self.loss_weights = {"ce": 1.0, "kl": 0.0}

    def zs_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for (raw) image features."""
        return clip_logits(image_features, self.text_features_zs, self.logit_scale)

    def forward_train(self, images, labels):
        image = self.encode_images(images)
        logits = clip_logits(image, self.text_features(), self.logit_scale)
        with torch.no_grad():
            teacher = self.zs_logits(image)
        return logits, {"ce": F.cross_entropy(logits, labels), "kl": prograd_kl(logits, teacher, self.temperature)}

    def backward(self, loss: torch.Tensor, terms: Terms, scale: Optional[Callable] = None) -> None:
        """Write the ProGrad update into ``.grad`` of every trainable tensor (``loss`` is not used).

        With a grad scaler both terms are scaled alike, which leaves the projection unchanged (the
        scaler unscales the result); a non-finite KL gradient then makes the update non-finite, so
        that the scaler skips the step and lowers its scale.  Under torch.distributed both gradients
        are first averaged over the processes (autograd.grad bypasses DDP's all-reduce), so the
        projection is that of the whole batch's gradients, as the official single-process run.
        """
        params = learnable_parameters(self)
        if not params:
            return
        ce, kl = terms["ce"], terms["kl"]
        if scale is not None:
            # Deliberate fix: the official PREC amp branch hands the (ce, kl) pair to scaler.scale and
            # cannot run; here both terms are scaled and the projection is made on the scaled gradients.
            ce, kl = scale(ce), scale(kl)
        g_kl = torch.autograd.grad(kl, params, retain_graph=True, allow_unused=True)
        g_ce = torch.autograd.grad(ce, params, allow_unused=True)
        g_kl = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_kl)]
        g_ce = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_ce)]
        if distributed.is_distributed():
            averaged = _mean_over_ranks(g_ce + g_kl)
            g_ce, g_kl = averaged[:len(params)], averaged[len(params):]
        for p, a, b in zip(params, g_ce, g_kl):
            g = prograd_project(a, b, self.lam)
            if scale is not None:
                g = g + 0.0 * b.sum()  # exact for a finite KL gradient; NaN everywhere otherwise
            p.grad = g

    @torch.no_grad()
    def inspect(self, images):
        parts = super().inspect(images)
        return {**parts, "text_features_zs": self.text_features_zs,
                "zs_logits": self.zs_logits(parts["image_features_raw"])}


@register_trainer
class ProGrad(ClipTrainer):
    """Prompt-aligned gradient (ProGrad) on CoOp's prompts."""

    CFG_NODE = CoOp.CFG_NODE
    MODEL_NAME = "prompt_learner"

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        check_loss_node(cfg.LOSS)

    @classmethod
    def build_clip_model(cls, cfg, classnames, clip_model):
        return ProGradModel(cls.node(cfg), classnames, clip_model, cfg.DATASET.NAME, cfg.LOSS)
