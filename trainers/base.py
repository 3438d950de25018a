"""Base trainer shared by every CLIP method.

A method subclasses :class:`ClipTrainer` and provides only what is specific to
it: its config node (``CFG_NODE``), the name it registers its learnable module
under (``MODEL_NAME``) and its model class (``MODEL``, a
:class:`~gopro_prompts.trainers.method.PromptMethod` built from the config node,
the class names and the frozen CLIP; override :meth:`ClipTrainer.build_clip_model`
when it needs more).  The trainer drives the model only through that contract
(``trainers/method.py``) and runs :func:`~gopro_prompts.trainers.method.training_step`.

Class-dependent tensors (token prefix / suffix, tokenized prompts) are
non-persistent buffers rebuilt from the dataset's class names: they are never
saved, and :meth:`ClipTrainer.load_model` drops them from checkpoints written
by the official code, so a model trained on base classes evaluates on new ones.

Checkpoints (writing, resuming, loading, their checks) are in
``trainers/checkpoints.py``, pre-emption (SIGTERM / SIGUSR1) in
``trainers/preemption.py``, multi-process training and evaluation in
``trainers/distributed.py``: each is a mixin of :class:`ClipTrainer`.
"""
from __future__ import annotations

import torch

from gopro_prompts.dassl_compat import (
    DataManager, TrainerX, build_lr_scheduler, build_optimizer, compute_accuracy, get_logger,
    load_pretrained_weights,
)
from gopro_prompts.results import capture as results_capture
from gopro_prompts.bundled_dassl.engine import expose_data_manager
from gopro_prompts.trainers import distributed, preemption
from gopro_prompts.trainers.checkpoints import CheckpointMixin
from gopro_prompts.trainers.clip_helpers import PRECISIONS, Precision, load_clip
from gopro_prompts.trainers.data import DatasetWrapper
from gopro_prompts.trainers.distributed import DistributedMixin
from gopro_prompts.trainers.method import freeze_all_but_learnable, training_step
from gopro_prompts.trainers.preemption import PreemptionMixin
from gopro_prompts.user_errors import UserError

logger = get_logger("trainer")

#: seed of the built-in tiny CLIP: the same "pretrained" backbone for every run
BUILTIN_CLIP_SEED = 0


class ClipTrainer(PreemptionMixin, CheckpointMixin, DistributedMixin, TrainerX):
    """Common build / train / evaluate / checkpoint logic of our CLIP trainers."""

    #: name of the trainer's config node under TRAINER (e.g. "COOP")
    CFG_NODE = ""
    #: name the learnable module is registered under (checkpoint sub-folder)
    MODEL_NAME = "prompt_learner"
    #: dataset wrapper given to Dassl's DataManager (ours names an unreadable image file)
    DATASET_WRAPPER = DatasetWrapper
    #: the method's model: ``MODEL(config_node, classnames, clip_model)`` (a PromptMethod)
    MODEL = None

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
        """Return the method's model around a frozen ``clip_model`` (default: ``MODEL`` on the config node)."""
        if cls.MODEL is None:
            raise NotImplementedError(f"{cls.__name__} sets neither MODEL nor build_clip_model")
        return cls.MODEL(cls.node(cfg), classnames, clip_model)

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
        clip_model.to(self.device)  # class texts (prompts, frozen teachers) are encoded on the run's device
        print(f"Building custom CLIP ({type(self).__name__})")
        self.model = self.build_clip_model(cfg, classnames, clip_model)
        print("Turning off gradients in both the image and the text encoder")
        learnable = freeze_all_but_learnable(self.model)
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

    # ---------------------------------------------------------------- training
    def parse_batch_train(self, batch):
        images = batch["img"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        return images, labels

    def parse_batch_test(self, batch):
        images = batch["img"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        return images, labels

    def forward_backward(self, batch):
        if self._replay is not None:
            return self._replay_step()
        inputs, labels = self.parse_batch_train(batch)
        step = training_step(
            self.model, inputs, labels, self.optim, self.precision, self.scaler,
            forward=getattr(self, "_train_forward", None),
            where=f"at epoch {self.epoch + 1} batch {self.batch_idx + 1}",
        )
        # one device -> host copy for every logged number (not one per .item())
        acc = compute_accuracy(step.logits, labels)[0]
        values = torch.stack([step.loss, *(t.float() for t in step.terms.values()),
                              torch.as_tensor(acc, dtype=torch.float32, device=step.loss.device).reshape(())]).tolist()
        summary = {"loss": values[0]}
        if len(step.terms) > 1:
            summary.update(zip(step.terms, values[1:-1]))
        summary["acc"] = values[-1]
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        self.record_step(summary)  # trainers/preemption.py
        return summary

    def after_epoch(self):
        """The model's end-of-epoch hook, then Dassl's ``after_epoch`` (evaluation, checkpoint)."""
        self.model.end_epoch(self.epoch, self.max_epoch)
        super().after_epoch()

    def method_state(self) -> dict:
        return self.model.extra_state()

    def load_method_state(self, state: dict) -> None:
        self.model.load_extra_state(state)

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
            self.model.begin_eval()
            try:
                if distributed.is_distributed():
                    result = self._test_sharded(split)
                else:
                    result = super().test(split=split)
            finally:
                self.model.end_eval()
        metrics = results_capture.last_results(self)
        if results_capture.final_split(self, split) == "test" and metrics is not None and distributed.is_main_process():
            results_capture.write_trainer_results(self, "test", metrics)
        return result

def check_input_size(cfg, clip_model):
    """A ViT only accepts its own input resolution: say so before a shape error deep inside (and warn when
    INPUT.PIXEL_MEAN / PIXEL_STD differ from the normalisation an open_clip model was trained with)."""
    resolution = clip_model.visual.input_resolution
    if hasattr(clip_model.visual, "transformer") and tuple(cfg.INPUT.SIZE) != (resolution, resolution):
        raise UserError(
            f"INPUT.SIZE {tuple(cfg.INPUT.SIZE)} does not match the backbone's input resolution "
            f"{resolution}: add INPUT.SIZE \"({resolution}, {resolution})\" to the opts"
        )
    # open_clip models carry the normalisation they were trained with; Dassl's transforms use INPUT.PIXEL_*
    for key, expected in (("PIXEL_MEAN", getattr(clip_model.visual, "image_mean", None)),
                          ("PIXEL_STD", getattr(clip_model.visual, "image_std", None))):
        given = tuple(float(v) for v in cfg.INPUT[key])
        if expected is not None and (len(given) != len(expected)
                                     or any(abs(a - b) > 1e-6 for a, b in zip(given, expected))):
            logger.warning("INPUT.%s %s differs from the %s the backbone was trained with: add INPUT.%s \"%s\" "
                           "to the opts", key, list(given), list(expected), key, list(expected))
