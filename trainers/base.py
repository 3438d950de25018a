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

Checkpoints (writing, resuming, loading, their checks) are in
``trainers/checkpoints.py``; pre-emption (SIGTERM / SIGUSR1) in
``trainers/preemption.py``; both are mixed into :class:`ClipTrainer`.
"""
from __future__ import annotations

import math
from typing import Dict

import torch

from gopro_prompts.dassl_compat import (
    DataManager, TrainerX, build_lr_scheduler, build_optimizer, compute_accuracy, get_logger,
    load_pretrained_weights,
)
from gopro_prompts import results_capture
from gopro_prompts.bundled_dassl.engine import expose_data_manager
from gopro_prompts.trainers import distributed, preemption
from gopro_prompts.trainers.checkpoints import CheckpointMixin
from gopro_prompts.trainers.clip_helpers import PRECISIONS, Precision, load_clip
from gopro_prompts.trainers.data import DatasetWrapper
from gopro_prompts.trainers.preemption import PreemptionMixin
from gopro_prompts.user_errors import UserError

logger = get_logger("trainer")

#: seed of the built-in tiny CLIP: the same "pretrained" backbone for every run
BUILTIN_CLIP_SEED = 0


class ClipTrainer(PreemptionMixin, CheckpointMixin, TrainerX):
    """Common build / train / evaluate / checkpoint logic of our CLIP trainers."""

    #: name of the trainer's config node under TRAINER (e.g. "COOP")
    CFG_NODE = ""
    #: name the learnable module is registered under (checkpoint sub-folder)
    MODEL_NAME = "prompt_learner"
    #: dataset wrapper given to Dassl's DataManager (ours names an unreadable image file)
    DATASET_WRAPPER = DatasetWrapper

    def __init__(self, cfg):
        super().__init__(cfg)  # Dassl's SimpleTrainer: data, model, then the evaluator
        results_capture.keep_evaluator_results(self)  # results.json gets every metric, not only the first

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

    # -------------------------------------------------------------------- data
    def build_data_loader(self):
        """Dassl's ``SimpleTrainer.build_data_loader`` with :attr:`DATASET_WRAPPER` (same attributes)."""
        expose_data_manager(self, DataManager(self.cfg, dataset_wrapper=self.DATASET_WRAPPER))
        for loader in (self.train_loader_x, self.train_loader_u, self.val_loader, self.test_loader):
            if loader is not None and loader.num_workers > 0:  # workers leave SIGTERM / SIGUSR1 to us
                loader.worker_init_fn = preemption.chain_worker_init(loader.worker_init_fn)

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
        self.device = distributed.local_device(self.device)  # cuda:LOCAL_RANK under torchrun
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
        self._setup_parallel()

    def _setup_parallel(self):
        """DistributedDataParallel under torchrun (trainers/distributed.py), else one device.

        Replaces the official trainers' ``nn.DataParallel``: the registered
        (checkpointed) module stays the plain learnable module.
        """
        self._train_forward = self.model.forward_train
        if not distributed.is_distributed():
            n_gpus = torch.cuda.device_count() if self.device.type == "cuda" else 0
            if n_gpus > 1:
                logger.info(
                    "%d GPUs are visible but this run uses one: launch with `torchrun --nproc_per_node=%d "
                    "train.py ...` to train on all of them (DistributedDataParallel)", n_gpus, n_gpus,
                )
            return
        self._train_forward = distributed.wrap_ddp(self.model, self.device)
        world = distributed.get_world_size()
        if world > 1:
            self.train_loader_x = distributed.shard_train_loader(self.train_loader_x, seed=self.cfg.SEED)
        logger.info(
            "DistributedDataParallel over %d process(es): %d training images per process and step "
            "(%d per optimiser step)", world, self.train_loader_x.batch_size,
            world * self.train_loader_x.batch_size,
        )

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

    def run_epoch(self):
        distributed.set_epoch(self.train_loader_x, self.epoch)  # reshuffle the DDP shards
        return super().run_epoch()

    def forward_backward(self, batch):
        if self._replay is not None:
            return self._replay_step()
        inputs, labels = self.parse_batch_train(batch)
        with self.precision.autocast():
            forward = getattr(self, "_train_forward", None) or self.model.forward_train
            logits, terms = forward(inputs, labels)
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

        # one device -> host copy for every logged number (not one per .item())
        acc = compute_accuracy(logits.detach(), labels)[0]
        values = torch.stack([loss.detach(), *(t.detach().float() for t in terms.values()),
                              torch.as_tensor(acc, dtype=torch.float32, device=loss.device).reshape(())]).tolist()
        summary = {"loss": values[0]}
        if len(terms) > 1:
            summary.update(zip(terms, values[1:-1]))
        summary["acc"] = values[-1]
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        self.record_step(summary)  # trainers/preemption.py
        return summary

    def _check_finite(self, loss, terms):
        if self.scaler is not None:
            return  # the grad scaler skips the step and lowers its scale
        if math.isfinite(loss.item()):
            return
        bad = [f"{name}={term.item()}" for name, term in terms.items() if not torch.isfinite(term).all()]
        raise FloatingPointError(
            f"non-finite loss at epoch {self.epoch + 1} batch {self.batch_idx + 1} "
            f"({', '.join(bad) or f'loss={loss.item()}'}): lower OPTIM.LR or use PREC fp32; "
            "the last saved checkpoint is intact"
        )

    # -------------------------------------------------------------- evaluation
    def model_inference(self, images):
        self.check_before_eval_batch()  # trainers/preemption.py
        with self.precision.autocast():
            return self.model(images)

    def test(self, split=None):
        """Dassl's test() in inference mode, with the model's begin_eval / end_eval around it.

        Inference mode (stricter than Dassl's no_grad): no autograd
        bookkeeping at all.  Under torchrun each rank evaluates a shard and
        rank 0 evaluates the gathered logits (trainers/distributed.py).
        """
        self.begin_test()  # trainers/preemption.py
        with torch.inference_mode():
            begin = getattr(self.model, "begin_eval", None)
            if begin is not None:
                begin()
            try:
                if distributed.is_distributed():
                    result = self._test_sharded(split)
                else:
                    result = super().test(split=split)
            finally:
                end = getattr(self.model, "end_eval", None)
                if end is not None:
                    end()
        metrics = results_capture.last_results(self)
        if results_capture.final_split(self, split) == "test" and metrics is not None and distributed.is_main_process():
            results_capture.write_trainer_results(self, "test", metrics)
        return result

    def _test_sharded(self, split=None):
        """Dassl's test loop (``dassl/engine/trainer.py`` ``SimpleTrainer.test``) over this rank's shard; rank 0 evaluates all."""
        from tqdm import tqdm

        main = distributed.is_main_process()
        self.set_model_mode("eval")
        self.evaluator.reset()
        if split is None:
            split = self.cfg.TEST.SPLIT
        if split == "val" and self.val_loader is not None:
            data_loader = self.val_loader
        else:
            split = "test"
            data_loader = self.test_loader
        print(f"Evaluate on the *{split}* set")

        outputs, labels = [], []
        for batch in tqdm(distributed.shard_eval_loader(data_loader), disable=not main):
            inputs, label = self.parse_batch_test(batch)
            outputs.append(self.model_inference(inputs).float().cpu())
            labels.append(label.cpu())
        shard = (torch.cat(outputs), torch.cat(labels)) if outputs else None
        gathered = distributed.gather_to_main(shard)
        result = None
        if main:
            for item in gathered:
                if item is not None:
                    self.evaluator.process(*item)
            results = self.evaluator.evaluate()
            for key, value in results.items():
                self.write_scalar(f"{split}/{key}", value, self.epoch)
            result = list(results.values())[0]
        return distributed.broadcast_from_main(result)

    def init_writer(self, log_dir):
        """TensorBoard on rank 0 only (every rank under a plain run)."""
        if distributed.is_main_process():
            super().init_writer(log_dir)


def check_input_size(cfg, clip_model):
    """A ViT only accepts its own input resolution: say so before a shape error deep inside."""
    resolution = clip_model.visual.input_resolution
    if hasattr(clip_model.visual, "transformer") and tuple(cfg.INPUT.SIZE) != (resolution, resolution):
        raise UserError(
            f"INPUT.SIZE {tuple(cfg.INPUT.SIZE)} does not match the backbone's input resolution "
            f"{resolution}: add INPUT.SIZE \"({resolution}, {resolution})\" to the opts"
        )
