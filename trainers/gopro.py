"""GOPro: generate and ensemble prompts over CLIP's layers (Singha, Jha, Banerjee, BMVC 2023).

The computation of the official implementation (mainaksingha01/GOPro
``e284586``), checked against the parity fixture ``gopro.pt`` by ``tests/parity.py``:

1. the frozen CLIP image encoder returns the tokens of every residual block,
   detached; per block, mu = token mean and sigma = population std (fp32, the
   official epsilon placement);
2. style_i = S_i((mu_i + sigma_i) / 2), content_i = C_i(mu_i), one Linear(W -> D)
   pair per block; mix_i = (style_i + content_i) / 2;
3. rho = Linear(#blocks -> 1) mixes the blocks into one shift per image, added
   to every learned context token ("a photo of a"); per image, the prompts of
   all classes go through the frozen text encoder (as in CoCoOp);
4. three views per training image (made by the data pipeline,
   :mod:`trainers.gopro_views`); losses returned by name:
   ``ce`` (original view), ``sem`` (MSE between the normalised per-image text
   features of the original and each extra view), ``con`` (SimCLR NT-Xent
   between P_v = Linear + BatchNorm1d applied to the normalised image
   features of the original and the MoCo view), weighted W_CE / W_SEM / W_CON;
5. evaluation runs the original view only.

Paper-vs-code switches under ``TRAINER.GOPRO`` (defaults = official code):
``RHO_PER_VIEW``, ``SHIFT_PER_TOKEN``, ``TEXT_PROJ``, ``PROJ_IN_CE``
(P1-P6 in docs/gopro.md).  Deliberate fixes of the official code are marked
"Deliberate fix" below and in :mod:`trainers.gopro_views`; their labels D1-D9
are listed in docs/gopro.md.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from gopro_prompts.registry import register_trainer
from gopro_prompts.dassl_compat import get_logger
from gopro_prompts.trainers.base import ClipTrainer
from gopro_prompts.trainers.clip_helpers import ImageEncoder, TextEncoder, clip_logits, is_vit, supports_shared_prefix
from gopro_prompts.trainers.config import register_trainer_config
from gopro_prompts.trainers.gopro_views import GOProDatasetWrapper
from gopro_prompts.trainers.method import PromptMethod
from gopro_prompts.trainers.prompts import assemble_per_image, build_prompt_parts, make_context, register_class_buffers
from gopro_prompts.user_errors import UserError

logger = get_logger("gopro")

#: epsilon added to the sum of squared deviations before dividing by T (the official code's placement)
STD_EPS = 2.3e-8
#: the self-similarity mask of the official SimCLR loss
SELF_MASK = 1e9
#: the three views, in the order of the batch keys img / img2 / img3
VIEW_KEYS = ("img", "img2", "img3")


@register_trainer_config("GOPRO")
def _gopro_node(node):
    """TRAINER.GOPRO: official keys (N_CTX, CTX_INIT, PREC) and the effective loss settings (D8)."""
    node.N_CTX = 4
    node.CTX_INIT = "a photo of a"
    node.PREC = "fp16"
    # losses (official weights 1 / 1 / 0.1): total = W_CE * ce + W_SEM * sem + W_CON * con
    node.W_CE = 1.0
    node.W_SEM = 1.0
    node.W_CON = 0.1
    node.CON_TEMPERATURE = 0.1
    # paper-vs-code switches (P1-P6 in docs/gopro.md); the defaults are the official computation
    node.RHO_PER_VIEW = False     # P4: separate rho for the MoCo / AugMix views
    node.SHIFT_PER_TOKEN = False  # P6: a distinct shift for each context token
    node.TEXT_PROJ = False        # P1: a learnable text projector P_t as well
    node.PROJ_IN_CE = False       # P2: classify with the projected features
    # memory: max prompts per text-encoder call, whole images (0 = one call)
    node.TEXT_BATCH_SIZE = 0


# ----------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------
def layer_statistics(block_tokens: torch.Tensor):
    """Per-block token statistics in fp32 (as the official code).

    ``block_tokens`` [L, B, T, W] -> ``(mu, sigma)``, each [L, B, W], with
    sigma = sqrt((sum_t (x_t - mu)^2 + 2.3e-8) / T): the population std, the
    epsilon added before dividing by T.
    """
    x = block_tokens.float()
    n_tokens = x.shape[2]
    mu = x.sum(dim=2) / n_tokens
    sq_dev = ((x - mu.unsqueeze(2)) ** 2).sum(dim=2)
    sigma = torch.sqrt((sq_dev + STD_EPS) / n_tokens)
    return mu, sigma


class LayerBank(nn.Module):
    """One Linear(in -> out) per vision block, named ``layer0 .. layer{L-1}``."""

    def __init__(self, n_layers: int, in_dim: int, out_dim: int):
        super().__init__()
        self.n_layers = n_layers
        for i in range(n_layers):
            self.add_module(f"layer{i}", nn.Linear(in_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[L, B, in] -> [B, L, out]."""
        return torch.stack([getattr(self, f"layer{i}")(x[i]) for i in range(self.n_layers)], dim=1)


class Projector(nn.Module):
    """Linear(E -> E) + BatchNorm1d(E): the image projector P_v (``sim_proj``) / text projector P_t."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(x))


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR NT-Xent between paired rows of ``a`` and ``b`` (the official form).

    Both sides are L2-normalised; row i of each side is classified among the
    other side's rows (target i) and its own side's rows with itself masked by
    -1e9, all divided by ``temperature``; the two directions are averaged.
    """
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    n = a.shape[0]
    target = torch.arange(n, device=a.device)
    mask = torch.eye(n, device=a.device, dtype=a.dtype) * SELF_MASK
    logits_aa = a @ a.t() / temperature - mask
    logits_bb = b @ b.t() / temperature - mask
    logits_ab = a @ b.t() / temperature
    logits_ba = b @ a.t() / temperature
    loss_a = F.cross_entropy(torch.cat([logits_ab, logits_aa], dim=1), target)
    loss_b = F.cross_entropy(torch.cat([logits_ba, logits_bb], dim=1), target)
    return (loss_a + loss_b) / 2


def _fp32_region(device: torch.device):
    """Autocast off: statistics, projectors and losses run in fp32 (whatever PREC says)."""
    return torch.autocast(device_type=device.type, enabled=False)


class GOProLearner(nn.Module):
    """Everything GOPro learns, under the fixture's role names.

    ``ctx`` [M, D]; ``style_proj.layer{i}`` / ``content_proj.layer{i}``
    (Linear W -> D per vision block); ``layer_mix_rho`` (Linear L -> 1, or
    L -> M with SHIFT_PER_TOKEN; ``layer_mix_rho_view2/3`` with RHO_PER_VIEW);
    ``sim_proj`` (P_v: ``linear``, ``bn``); ``text_proj`` with TEXT_PROJ.
    Class-dependent prompt pieces are non-persistent buffers.  Deliberate fix
    (D8): the official, never-used CoCoOp meta-net is not built.
    """

    def __init__(self, node, classnames: Sequence[str], clip_model: nn.Module):
        super().__init__()
        parts = build_prompt_parts(classnames, clip_model, node.N_CTX, node.CTX_INIT, style="coop")
        if node.CTX_INIT and node.N_CTX != parts.n_ctx:
            # Deliberate fix (D8): the official code overrides N_CTX silently.
            logger.warning(
                "TRAINER.GOPRO.N_CTX=%d is ignored: CTX_INIT %r sets %d context tokens (one per word, "
                "as the official code does); set N_CTX %d or CTX_INIT \"\" to silence this warning",
                node.N_CTX, parts.prompt_prefix, parts.n_ctx, parts.n_ctx,
            )
        print(f'Initial context: "{parts.prompt_prefix}"')
        print(f"Number of context words (tokens): {parts.n_ctx}")
        visual = clip_model.visual
        text_width = clip_model.ln_final.weight.shape[0]
        vision_width = visual.conv1.weight.shape[0]
        n_layers = len(visual.transformer.resblocks)
        embed_dim = visual.output_dim

        self.ctx = make_context(parts, text_width)
        self.style_proj = LayerBank(n_layers, vision_width, text_width)
        self.content_proj = LayerBank(n_layers, vision_width, text_width)
        n_shift = parts.n_ctx if node.SHIFT_PER_TOKEN else 1
        self.layer_mix_rho = nn.Linear(n_layers, n_shift)
        self.rho_per_view = bool(node.RHO_PER_VIEW)
        if self.rho_per_view:
            self.layer_mix_rho_view2 = nn.Linear(n_layers, n_shift)
            self.layer_mix_rho_view3 = nn.Linear(n_layers, n_shift)
        self.sim_proj = Projector(embed_dim)
        self.text_proj = Projector(embed_dim) if node.TEXT_PROJ else None
        register_class_buffers(self, parts)
        self.n_cls = len(classnames)
        self.n_ctx = parts.n_ctx
        self.n_layers = n_layers

    def rho(self, view: int) -> nn.Linear:
        if view == 0 or not self.rho_per_view:
            return self.layer_mix_rho
        return getattr(self, f"layer_mix_rho_view{view + 1}")

    def generate(self, block_tokens: torch.Tensor, views: int = 1) -> Dict[str, torch.Tensor]:
        """Per-image context from the block tokens of ``views`` stacked views.

        ``block_tokens`` [L, V*B, T, W] (view-major) -> dict with ``style``,
        ``content``, ``mix`` [V*B, L, D], ``shift`` [V*B, 1 or M, D] and
        ``ctx`` [V*B, M, D] = ctx + shift (fp32, autocast off).
        """
        with _fp32_region(block_tokens.device):
            mu, sigma = layer_statistics(block_tokens.detach())
            style = self.style_proj((mu + sigma) / 2)
            content = self.content_proj(mu)
            mix = (style + content) / 2
            per_view = mix.transpose(1, 2).chunk(views, dim=0)  # [B, D, L] each
            shift = torch.cat([self.rho(v)(m) for v, m in enumerate(per_view)]).transpose(1, 2)
            ctx = self.ctx.float().unsqueeze(0) + shift
        return {"style": style, "content": content, "mix": mix, "shift": shift, "ctx": ctx}

    def prompts(self, ctx: torch.Tensor) -> torch.Tensor:
        """Per-image context [N, M, D] -> prompt embeddings [N, C, L, D]."""
        return assemble_per_image(self.token_prefix, ctx, self.token_suffix)

    def prefixes(self, ctx: torch.Tensor) -> torch.Tensor:
        """The prompt start shared by all classes of an image: SOS + its context [N, 1 + M, D]."""
        sos = self.token_prefix[:1].expand(ctx.shape[0], -1, -1)  # SOS, identical for every class
        return torch.cat([sos, ctx.to(sos.dtype)], dim=1)


# ----------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------
class GOProModel(PromptMethod):
    """Frozen CLIP + :class:`GOProLearner`.

    ``forward(images)`` is the evaluation forward (original view, one
    per-image text encoding, logits); ``forward_train((view1, view2, view3),
    labels)`` returns ``(logits of view 1, {"ce", "sem", "con"[, "con_text"]})``.
    """

    def __init__(self, node, classnames, clip_model, learner=GOProLearner):
        super().__init__()
        if not is_vit(clip_model):
            raise UserError(
                "GOPro needs a ViT CLIP backbone (it reads the tokens of every vision block): "
                "set MODEL.BACKBONE.NAME to ViT-B/16, ViT-B/32 or ViT-L/14"
            )
        self.learner = learner(node, classnames, clip_model)
        # total = W_CE * ce + W_SEM * sem + W_CON * (con + con_text)
        self.loss_weights = {"ce": node.W_CE, "sem": node.W_SEM, "con": node.W_CON, "con_text": node.W_CON}
        self.image_encoder = ImageEncoder(clip_model)
        self.text_encoder = TextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale
        self.temperature = float(node.CON_TEMPERATURE)
        self.proj_in_ce = bool(node.PROJ_IN_CE)
        self.text_batch_size = int(node.TEXT_BATCH_SIZE)
        #: encode each image's shared prompt start once (False: every prompt in full)
        self.shared_prefix = supports_shared_prefix(self.text_encoder)
        self._warned_small_batch = False

    def learnable_module(self):
        return self.learner

    # ------------------------------------------------------------- encoders
    def encode_images(self, images):
        """Frozen image encoder: features [N, E] and detached block tokens [L, N, T, W]."""
        with torch.no_grad():
            feats, tokens = self.image_encoder(images, return_block_tokens=True)
        return feats.float(), tokens

    def encode_text(self, ctx: torch.Tensor) -> torch.Tensor:
        """Per-image context [N, M, D] -> L2-normalised text features [N, C, E] of every class.

        One batched text-encoder call (truncated to the longest end-of-text),
        or calls of at most TEXT_BATCH_SIZE prompts (whole images).  The
        prompt start shared by an image's classes (SOS + context) is encoded
        once per image and the class tokens attend to it (``TextEncoder``
        shared-prefix encoding, exact under CLIP's causal mask).
        """
        learner = self.learner
        n, n_cls = ctx.shape[0], learner.token_suffix.shape[0]
        per_call = n if self.text_batch_size <= 0 else max(1, self.text_batch_size // n_cls)
        outs = []
        for chunk in ctx.split(per_call, dim=0):
            if self.shared_prefix:
                out = self.text_encoder(learner.prefixes(chunk), learner.tokenized_prompts,
                                        suffix=learner.token_suffix)
            else:
                prompts = learner.prompts(chunk)
                flat = prompts.reshape(-1, *prompts.shape[2:])
                out = self.text_encoder(flat, learner.tokenized_prompts.repeat(chunk.shape[0], 1))
            outs.append(out.float().view(chunk.shape[0], n_cls, -1))
        return F.normalize(torch.cat(outs), dim=-1)

    # ---------------------------------------------------------- projections
    def project_image(self, image_features):
        """P_v on the L2-normalised image features (fp32)."""
        with _fp32_region(image_features.device):
            return self.learner.sim_proj(F.normalize(image_features.float(), dim=-1))

    def project_text(self, text_features):
        """P_t on text features [..., E] (only with TEXT_PROJ)."""
        shape = text_features.shape
        with _fp32_region(text_features.device):
            return self.learner.text_proj(text_features.float().reshape(-1, shape[-1])).view(shape)

    def class_logits(self, image_features, text_features, projected_image=None):
        """Logits of one view: exp(logit_scale) * cos(image, per-image class text).

        Official: unprojected features.  PROJ_IN_CE (paper P2): P_v(image)
        (and P_t(text) with TEXT_PROJ).
        """
        if not self.proj_in_ce:
            return clip_logits(image_features, text_features, self.logit_scale)
        if projected_image is None:
            projected_image = self.project_image(image_features)
        if self.learner.text_proj is not None:
            text_features = self.project_text(text_features)
        return clip_logits(projected_image, text_features, self.logit_scale)

    # -------------------------------------------------------------- forwards
    def forward(self, images):
        """Evaluation: the original view only, one per-image text encoding (D3 fixed)."""
        feats, tokens = self.encode_images(images)
        ctx = self.learner.generate(tokens)["ctx"]
        text = self.encode_text(ctx)
        return self.class_logits(feats, text)

    @staticmethod
    def _views(inputs):
        if isinstance(inputs, dict):
            missing = [k for k in VIEW_KEYS if k not in inputs]
            if missing:
                raise UserError(
                    f"GOPro's training batch lacks {missing}: build the train loader with "
                    "GOProDatasetWrapper (the GOPro trainer does this in build_data_loader)"
                )
            inputs = [inputs[k] for k in VIEW_KEYS]
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 3:
            raise UserError("GOPro's forward_train takes three views (original, MoCo v3, AugMix)")
        return list(inputs)

    def forward_train(self, inputs, labels):
        """Three views -> (view-1 logits, named loss terms); BatchNorm follows the module mode."""
        views = self._views(inputs)
        batch = views[0].shape[0]
        feats, tokens = self.encode_images(torch.cat(views))
        ctx = self.learner.generate(tokens, views=3)["ctx"]
        # all views' per-image prompt sets in one text-encoder call (3*B images x C classes)
        text = self.encode_text(ctx)
        f1, f2, _ = feats.split(batch)
        t1, t2, t3 = text.split(batch)

        terms = {}
        z1 = z2 = None
        use_con = batch >= 2
        if use_con:
            z1 = self.project_image(f1)  # BatchNorm update 1 (train mode)
            z2 = self.project_image(f2)  # BatchNorm update 2
        elif self.proj_in_ce and self.training:
            raise UserError(
                "TRAINER.GOPRO.PROJ_IN_CE needs training batches of at least 2 images (BatchNorm): "
                "raise DATALOADER.TRAIN_X.BATCH_SIZE or use more shots"
            )
        logits = self.class_logits(f1, t1, projected_image=z1)
        with _fp32_region(logits.device):
            terms["ce"] = F.cross_entropy(logits.float(), labels)
            terms["sem"] = F.mse_loss(t1, t2) + F.mse_loss(t1, t3)
            if use_con:
                terms["con"] = nt_xent(z1, z2, self.temperature)
                if self.learner.text_proj is not None:
                    rows = torch.arange(batch, device=labels.device)
                    g1 = self.project_text(t1[rows, labels])
                    g2 = self.project_text(t2[rows, labels])
                    terms["con_text"] = nt_xent(g1, g2, self.temperature)
            else:
                self._warn_small_batch(batch)
        return logits, terms

    def _warn_small_batch(self, batch):
        if not self._warned_small_batch:
            logger.warning(
                "GOPro: a training batch of %d image(s) cannot form SimCLR pairs or BatchNorm "
                "statistics, so L_con is skipped for it (raise DATALOADER.TRAIN_X.BATCH_SIZE or the "
                "number of shots to avoid this); further such batches are skipped silently", batch,
            )
            self._warned_small_batch = True

    # ------------------------------------------------------------ inspection
    @torch.no_grad()
    def inspect(self, images) -> Dict[str, torch.Tensor]:
        """Named intermediate tensors of one view (parity checks, debugging)."""
        feats, tokens = self.encode_images(images)
        gen = self.learner.generate(tokens)
        prompts = self.learner.prompts(gen["ctx"])
        text = self.encode_text(gen["ctx"])
        shift = gen["shift"]
        return {
            "vision_layer_tokens": tokens,
            "style_feat": gen["style"],
            "content_feat": gen["content"],
            "style_content_mix": gen["mix"],
            "ctx_shift": shift.squeeze(1) if shift.shape[1] == 1 else shift,
            "prompt_embeddings": prompts,
            "image_features_raw": feats,
            "text_features_per_image": text,
            "sim_proj": self.project_image(feats),
            "logits": self.class_logits(feats, text),
        }


# ----------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------
@register_trainer
class GOPro(ClipTrainer):
    """GOPro: per-image prompts from CLIP's layer statistics, trained on three views."""

    CFG_NODE = "GOPRO"
    MODEL_NAME = "gopro"
    DATASET_WRAPPER = GOProDatasetWrapper
    MODEL = GOProModel

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        node = self.node(cfg)
        for key in ("W_CE", "W_SEM", "W_CON"):
            if node[key] < 0:
                raise UserError(f"TRAINER.GOPRO.{key} must be >= 0 (got {node[key]})")
        if node.CON_TEMPERATURE <= 0:
            raise UserError(f"TRAINER.GOPRO.CON_TEMPERATURE must be > 0 (got {node.CON_TEMPERATURE})")
        if node.TEXT_BATCH_SIZE < 0:
            raise UserError(f"TRAINER.GOPRO.TEXT_BATCH_SIZE must be >= 0 (0 = one call; got {node.TEXT_BATCH_SIZE})")
        batch = cfg.DATALOADER.TRAIN_X.BATCH_SIZE
        if batch < 2 and (node.W_CON > 0 or node.PROJ_IN_CE):
            # Deliberate fix (D9): the official BatchNorm1d crashes on a batch of one.
            raise UserError(
                f"GOPro trains its image projector (BatchNorm) with a SimCLR loss, which needs at least "
                f"2 images per batch, but DATALOADER.TRAIN_X.BATCH_SIZE is {batch}: set it to 2 or more "
                "(official: 4), or TRAINER.GOPRO.W_CON 0.0"
            )

    def build_data_loader(self):
        """Dassl's DataManager with :class:`GOProDatasetWrapper` (the three training views)."""
        super().build_data_loader()  # with DATASET_WRAPPER
        for line in self.dm.train_loader_x.dataset.describe():
            logger.info("GOPro %s", line)
        self._log_samples_used(self.dm)

    def _log_samples_used(self, dm):
        """Say how many training samples an epoch uses; warn when drop_last discards some (D9)."""
        loader = dm.train_loader_x
        n_items = len(loader.dataset)
        used = len(loader) * loader.batch_size if loader.drop_last else n_items
        logger.info("GOPro: %d of %d training samples used per epoch (batch %d, drop_last=%s)",
                    used, n_items, loader.batch_size, loader.drop_last)
        if used < n_items:
            logger.warning(
                "drop_last discards %d of %d training samples every epoch (Dassl's train loader): "
                "choose DATALOADER.TRAIN_X.BATCH_SIZE dividing the training-set size to use them all",
                n_items - used, n_items,
            )

    def parse_batch_train(self, batch):
        views = tuple(v.to(self.device, non_blocking=True) for v in GOProModel._views(batch))
        labels = batch["label"].to(self.device, non_blocking=True)
        return views, labels
