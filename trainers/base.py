"""Base trainer shared by every CLIP method.

A method subclasses :class:`ClipTrainer` and provides only what is specific to
it: its config node (``CFG_NODE``), the name it registers its learnable module
under (``MODEL_NAME``) and :meth:`ClipTrainer.build_clip_model`, which returns
an ``nn.Module`` with

* ``learnable_module()`` -- the one module that is optimised and checkpointed
  (frozen CLIP is never saved);
* ``forward(images)`` -- the evaluation forward, returning logits [B, C];
* ``forward_train(inputs, labels)`` -- the training forward, returning
  ``(logits, {term_name: loss})``: losses come back as named terms and are
  weighted by :meth:`ClipTrainer.loss_weights`;
* optionally ``begin_eval()`` / ``end_eval()`` -- called around ``test()``
  (e.g. to encode image-independent class prompts once per evaluation).

Class-dependent tensors (token prefix / suffix, tokenized prompts) are
non-persistent buffers rebuilt from the dataset's class names: they are never
saved, and :meth:`ClipTrainer.load_model` drops them from checkpoints written
by the official code, so a model trained on base classes evaluates on new ones.
"""
from __future__ import annotations

import os.path as osp
from typing import Dict

import torch

from dassl_compat import (
    TrainerX, build_lr_scheduler, build_optimizer, compute_accuracy, get_logger,
    load_checkpoint, load_pretrained_weights,
)
from trainers.clip_helpers import PRECISIONS, Precision, load_clip
from user_errors import UserError

logger = get_logger("trainer")

#: seed of the built-in tiny CLIP: the same "pretrained" backbone for every run
BUILTIN_CLIP_SEED = 0


class ClipTrainer(TrainerX):
    """Common build / train / evaluate / checkpoint logic of our CLIP trainers."""

    #: name of the trainer's config node under TRAINER (e.g. "COOP")
    CFG_NODE = ""
    #: name the learnable module is registered under (checkpoint sub-folder)
    MODEL_NAME = "prompt_learner"
    #: checkpoint keys that depend on the class names; dropped when loading
    CLASS_DEPENDENT_KEYS = ("token_prefix", "token_suffix", "tokenized_prompts")
    #: opts applied by train.py's embedded offline default (a small schedule)
    OFFLINE_DEFAULTS = ()

    # ------------------------------------------------------------------ config
    @classmethod
    def node(cls, cfg):
        return cfg.TRAINER[cls.CFG_NODE]

    def check_cfg(self, cfg):
        prec = self.node(cfg).PREC
        if prec not in PRECISIONS:
            raise UserError(
                f"TRAINER.{self.CFG_NODE}.PREC {prec!r} is not valid: use one of {', '.join(PRECISIONS)}"
            )

    # ------------------------------------------------------------------- model
    @classmethod
    def build_clip_model(cls, cfg, classnames, clip_model):
        """Return the method's model around a frozen ``clip_model``."""
        raise NotImplementedError

    @classmethod
    def load_backbone(cls, cfg, device="cpu"):
        """Load the frozen CLIP named by ``MODEL.BACKBONE`` in the precision PREC asks for."""
        backbone = cfg.MODEL.BACKBONE
        precision = Precision(cls.node(cfg).PREC, device)
        print(f"Loading CLIP (backbone: {backbone.NAME or backbone.PATH})")
        clip_model = load_clip(backbone.NAME, backbone.PATH, device="cpu", seed=BUILTIN_CLIP_SEED)
        return precision.apply(clip_model), precision

    def build_model(self):
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        clip_model, self.precision = self.load_backbone(cfg, self.device)
        check_input_size(cfg, clip_model)
        print(f"Building custom CLIP ({type(self).__name__})")
        self.model = self.build_clip_model(cfg, classnames, clip_model)
        learnable = self.model.learnable_module()
        print("Turning off gradients in both the image and the text encoder")
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in learnable.parameters():
            p.requires_grad_(True)
        n_params = sum(p.numel() for p in learnable.parameters())
        print(f"# learnable params: {n_params:,}")
        if cfg.MODEL.INIT_WEIGHTS:
            load_pretrained_weights(learnable, cfg.MODEL.INIT_WEIGHTS)
        self.model.to(self.device)
        self.optim = build_optimizer(learnable, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model(self.MODEL_NAME, learnable, self.optim, self.sched)
        self.scaler = self.precision.grad_scaler()

    # ---------------------------------------------------------------- training
    def loss_weights(self) -> Dict[str, float]:
        """Weight of each named loss term (default 1)."""
        return {}

    def parse_batch_train(self, batch):
        images = batch["img"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        return images, labels

    def parse_batch_test(self, batch):
        images = batch["img"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        return images, labels

    def forward_backward(self, batch):
        inputs, labels = self.parse_batch_train(batch)
        with self.precision.autocast():
            logits, terms = self.model.forward_train(inputs, labels)
        weights = self.loss_weights()
        loss = sum(weights.get(name, 1.0) * term.float() for name, term in terms.items())
        self._check_finite(loss, terms)

        if self.scaler is not None:
            self.optim.zero_grad()
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optim)
            self.scaler.update()
        else:
            self.model_backward_and_update(loss)

        summary = {"loss": loss.item()}
        if len(terms) > 1:
            summary.update({name: term.item() for name, term in terms.items()})
        summary["acc"] = compute_accuracy(logits, labels)[0].item()
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    def _check_finite(self, loss, terms):
        if torch.isfinite(loss).all():
            return
        if self.scaler is not None:
            return  # the grad scaler skips the step and lowers its scale
        bad = [f"{name}={term.item()}" for name, term in terms.items() if not torch.isfinite(term).all()]
        raise FloatingPointError(
            f"non-finite loss at epoch {self.epoch + 1} batch {self.batch_idx + 1} "
            f"({', '.join(bad) or f'loss={loss.item()}'}): lower OPTIM.LR or use PREC fp32; "
            "the last saved checkpoint is intact"
        )

    # -------------------------------------------------------------- evaluation
    def model_inference(self, images):
        with self.precision.autocast():
            return self.model(images)

    def test(self, split=None):
        self._capture_evaluator_results()
        begin = getattr(self.model, "begin_eval", None)
        if begin is not None:
            begin()
        try:
            result = super().test(split=split)
        finally:
            end = getattr(self.model, "end_eval", None)
            if end is not None:
                end()
        requested = split or self.cfg.TEST.SPLIT
        final_split = "val" if (requested == "val" and self.val_loader is not None) else "test"
        if final_split == "test" and self._last_results is not None:
            self._write_results(final_split)
        return result

    def _capture_evaluator_results(self):
        """Keep the evaluator's full result dict (Dassl's test() returns only accuracy)."""
        self._last_results = None
        evaluator = self.evaluator
        if getattr(evaluator, "_captured_by_trainer", False):
            return
        evaluate = evaluator.evaluate

        def evaluate_and_keep():
            results = evaluate()
            self._last_results = dict(results)
            return results

        evaluator.evaluate = evaluate_and_keep
        evaluator._captured_by_trainer = True

    def _write_results(self, split):
        import dassl_compat
        from run_results import build_record, write_results

        info = getattr(self, "run_info", {}) or {}
        if not self.get_model_names():
            epoch = None  # nothing trained (zero-shot)
        elif info.get("eval_only"):
            epoch = info.get("load_epoch")
        elif self.start_epoch >= self.max_epoch:
            epoch = self.start_epoch  # a finished run resumed: no epoch ran in this process
        else:
            epoch = self.epoch + 1
        record = build_record(self.cfg, self._last_results, split=split, epoch=epoch, run_info=info,
                              backend=dassl_compat.BACKEND)
        write_results(self.output_dir, record)

    # -------------------------------------------------------------- checkpoint
    def load_model(self, directory, epoch=None):
        """Load learnable weights; class-dependent tensors stay those of the current classes."""
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in self.get_model_names():
            model_path = osp.join(directory, name, model_file)
            if not osp.exists(model_path):
                raise FileNotFoundError(
                    f'Model not found at "{model_path}": check --model-dir and --load-epoch '
                    f"(the run saves <output-dir>/{name}/model.pth.tar-<epoch>)"
                )
            checkpoint = load_checkpoint(model_path)
            state_dict = self.convert_state_dict(name, checkpoint["state_dict"])
            for key in list(state_dict):
                if key.split(".")[-1] in self.CLASS_DEPENDENT_KEYS:
                    del state_dict[key]
            module = self._models[name]
            check_state_dict_compatible(module, state_dict, model_path, type(self).__name__)
            print(f'Loading weights to {name} from "{model_path}" (epoch = {checkpoint["epoch"]})')
            module.load_state_dict(state_dict, strict=True)

    def convert_state_dict(self, name, state_dict):
        """Hook: map a loaded state dict to our parameter names (default: unchanged).

        A trainer overrides it to read checkpoints written by the official code
        with other names or layout (e.g. MaPLe's whole-model checkpoints).
        """
        return state_dict


def check_input_size(cfg, clip_model):
    """A ViT only accepts its own input resolution: say so before a shape error deep inside."""
    resolution = clip_model.visual.input_resolution
    if hasattr(clip_model.visual, "transformer") and tuple(cfg.INPUT.SIZE) != (resolution, resolution):
        raise UserError(
            f"INPUT.SIZE {tuple(cfg.INPUT.SIZE)} does not match the backbone's input resolution "
            f"{resolution}: add INPUT.SIZE \"({resolution}, {resolution})\" to the opts"
        )


def check_state_dict_compatible(module, state_dict, path, trainer_name):
    """Fail with one clear message when a checkpoint does not fit ``module``."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise UserError(
            f"checkpoint {path} does not match the {trainer_name} model (made by another trainer "
            f"or config?): missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for key, value in state_dict.items():
        if tuple(value.shape) != tuple(own[key].shape):
            hint = ""
            if key.split(".")[-1] == "ctx" and value.dim() == 3:
                hint = (f" (class-specific context for {value.shape[0]} classes, but the dataset has "
                        f"{own[key].shape[0]}: CSC checkpoints only evaluate on their own classes)")
            raise UserError(
                f"checkpoint {path}: {key} has shape {tuple(value.shape)} but the {trainer_name} model "
                f"expects {tuple(own[key].shape)}{hint}; was it made with another backbone or N_CTX?"
            )
