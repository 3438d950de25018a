"""Trainer engine of the bundled Dassl-compatible backend.

Reproduces the observable behaviour of Dassl 0.6.3's ``dassl.engine``
(``dassl/engine/build.py`` and ``dassl/engine/trainer.py``): the trainer registry and
``build_trainer``, ``TrainerBase`` (model registry, checkpoint helpers,
TensorBoard writer, the generic epoch loop), ``SimpleTrainer`` (construction
order, checkpoint policy, ``test()``) and ``TrainerX`` (the labeled-only
``run_epoch`` with its printed iteration lines).

Lines that Dassl ``print``s are printed verbatim (users and parsers grep them).
Deliberate fixes of Dassl defects are marked ``# Deliberate fix``.
``TrainerXU`` and ``SimpleNet`` are not provided: prompt learners never use
them.
"""
from __future__ import annotations

import datetime
import os.path as osp
import time
from collections import OrderedDict

import numpy as np
import torch
from tqdm import tqdm

from .data import DataManager
from .evaluation import build_evaluator
from .utils import (
    AverageMeter,
    MetricMeter,
    Registry,
    check_availability,
    load_checkpoint,
    mkdir_if_missing,
    model_checkpoint_state,
    resume_from_checkpoint,
    save_checkpoint,
    tolist_if_not,
)

__all__ = ["TRAINER_REGISTRY", "build_trainer", "expose_data_manager", "TrainerBase", "SimpleTrainer", "TrainerX"]

TRAINER_REGISTRY = Registry("TRAINER")

_BEST_FILE = "model-best.pth.tar"


def expose_data_manager(trainer, dm) -> None:
    """Set the attributes Dassl's ``SimpleTrainer.build_data_loader`` sets from a ``DataManager``.

    Any trainer on either backend may call it (e.g. one that builds its DataManager with
    another dataset wrapper): the names are Dassl's.
    """
    trainer.train_loader_x = dm.train_loader_x
    trainer.train_loader_u = dm.train_loader_u
    trainer.val_loader = dm.val_loader
    trainer.test_loader = dm.test_loader
    trainer.num_classes = dm.num_classes
    trainer.num_source_domains = dm.num_source_domains
    trainer.lab2cname = dm.lab2cname
    trainer.dm = dm


def eval_split_loader(trainer, split=None):
    """``(split, loader)`` evaluated by ``test(split)``: ``TEST.SPLIT`` by default, the test set when
    ``val`` has no loader (as Dassl's ``SimpleTrainer.test``)."""
    if split is None:
        split = trainer.cfg.TEST.SPLIT
    if split == "val" and trainer.val_loader is not None:
        return split, trainer.val_loader
    return "test", trainer.test_loader


def build_trainer(cfg):
    """Instantiate the trainer named ``cfg.TRAINER.NAME`` (as Dassl's ``build_trainer``)."""
    available = TRAINER_REGISTRY.registered_names()
    check_availability(cfg.TRAINER.NAME, available)
    if cfg.VERBOSE:
        print(f"Loading trainer: {cfg.TRAINER.NAME}")
    return TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)


class TrainerBase:
    """Model registry, checkpoint helpers, TensorBoard writer and the epoch loop.

    As Dassl's ``dassl/engine/trainer.py`` ``TrainerBase``.
    """

    def __init__(self):
        self._models = OrderedDict()
        self._optims = OrderedDict()
        self._scheds = OrderedDict()
        self._writer = None

    # ------------------------------------------------------------------ models
    def register_model(self, name="model", model=None, optim=None, sched=None):
        """Register ``model`` (with its optimizer and scheduler) under ``name``."""
        # As Dassl: registering before the base constructor ran is an AttributeError.
        for attr, what in (("_models", "model"), ("_optims", "optim"), ("_scheds", "sched")):
            if self.__dict__.get(attr) is None:
                raise AttributeError(f"Cannot assign {what} before super().__init__() call")
        assert name not in self._models, "Found duplicate model names"
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names=None):
        """All registered names in order, or ``names`` as a list after checking each exists."""
        registered = list(self._models.keys())
        if names is None:
            return registered
        names = tolist_if_not(names)
        for name in names:
            assert name in registered, f'Model "{name}" is not registered (registered: {registered})'
        return names

    def set_model_mode(self, mode="train", names=None):
        """Switch the registered modules to train or eval mode (any other mode is a KeyError)."""
        for name in self.get_model_names(names):
            if mode == "train":
                self._models[name].train()
            elif mode in ("test", "eval"):
                self._models[name].eval()
            else:
                raise KeyError(mode)

    def update_lr(self, names=None):
        """Step every registered scheduler that is not None (trainers call it; the engine never does)."""
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def get_current_lr(self, names=None):
        """LR of the first param group of the first (given or registered) model's optimizer."""
        name = self.get_model_names(names)[0]
        return self._optims[name].param_groups[0]["lr"]

    # ------------------------------------------------------------- checkpoints
    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name=""):
        """Save every registered model to ``directory/<name>/``.

        The stored ``epoch`` is ``epoch + 1`` (completed epochs).  Files are
        written by ``utils.save_checkpoint`` (atomic; it prints
        ``Checkpoint saved to ...`` and updates the ``checkpoint`` pointer).
        """
        for name in self.get_model_names():
            state = model_checkpoint_state(self._models[name], self._optims[name], self._scheds[name],
                                           epoch + 1, val_result)
            save_checkpoint(state, osp.join(directory, name), is_best=is_best, model_name=model_name)

    def resume_model_if_exist(self, directory):
        """Resume every registered model from ``directory`` if possible, as Dassl.

        Returns the epoch to start from (the stored epoch of the last model,
        or 0 when there is nothing to resume).
        """
        names = self.get_model_names()
        # Deliberate fix: Dassl prints "Found checkpoint" and then crashes for a
        # trainer without registered models; there is nothing to resume.
        if not names or any(not osp.exists(osp.join(directory, n)) for n in names):
            print("No checkpoint found, train from scratch")
            return 0

        print(f"Found checkpoint at {directory} (will resume training)")
        start_epoch = 0
        for name in names:
            # A folder without the `checkpoint` pointer file raises a clear
            # FileNotFoundError in utils.resume_from_checkpoint (deliberate fix).
            start_epoch = resume_from_checkpoint(
                osp.join(directory, name), self._models[name], self._optims[name], self._scheds[name]
            )
        return start_epoch

    def load_model(self, directory, epoch=None):
        """Load ``model-best.pth.tar`` (epoch None) or ``model.pth.tar-<epoch>`` strictly, as Dassl."""
        if not directory:
            print(
                "Note that load_model() is skipped as no pretrained model is given "
                "(ignore this if it's done on purpose)"
            )
            return

        model_file = _BEST_FILE if epoch is None else f"model.pth.tar-{epoch}"
        for name in self.get_model_names():
            model_path = osp.join(directory, name, model_file)
            if not osp.exists(model_path):
                # Deliberate fix: the message also says how to fix it.
                raise FileNotFoundError(
                    f"No model at {model_path}: check the model directory and the epoch to load "
                    f"(the run must have saved that checkpoint)"
                )
            checkpoint = load_checkpoint(model_path)
            stored_epoch = checkpoint["epoch"]
            val_result = checkpoint["val_result"]
            # Deliberate fix: Dassl formats val_result with .1f and raises
            # TypeError for every regular checkpoint (val_result=None).
            val_text = "None" if val_result is None else f"{val_result:.1f}"
            print(
                f"Load {model_path} to {name} (epoch={stored_epoch}, val_result={val_text})"
            )
            self._models[name].load_state_dict(checkpoint["state_dict"])

    # ---------------------------------------------------------------- writer
    def init_writer(self, log_dir):
        """Open a TensorBoard ``SummaryWriter`` at ``log_dir`` unless one is open."""
        if self.__dict__.get("_writer") is None:
            # Imported lazily: TensorBoard is only needed when training.
            from torch.utils.tensorboard import SummaryWriter

            print(f"Initialize tensorboard (log_dir={log_dir})")
            self._writer = SummaryWriter(log_dir=log_dir)

    def close_writer(self):
        """Close the TensorBoard writer, if any."""
        if self._writer is not None:
            self._writer.close()

    def write_scalar(self, tag, scalar_value, global_step=None):
        """Write a scalar; a silent no-op without a writer (eval-only runs)."""
        if self._writer is not None:
            self._writer.add_scalar(tag, scalar_value, global_step)

    # ------------------------------------------------------------------- loop
    def train(self, start_epoch, max_epoch):
        """Generic loop: before_train, the epochs, after_train (as Dassl's ``TrainerBase.train``)."""
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        self.before_train()  # may move self.start_epoch (resume)
        for self.epoch in range(self.start_epoch, self.max_epoch):
            self.before_epoch()
            self.run_epoch()
            self.after_epoch()
        self.after_train()

    def before_train(self):
        pass

    def after_train(self):
        pass

    def before_epoch(self):
        pass

    def after_epoch(self):
        pass

    def run_epoch(self):
        raise NotImplementedError(f"{type(self).__name__} must implement run_epoch()")

    def test(self):
        raise NotImplementedError(f"{type(self).__name__} must implement test()")

    def parse_batch_train(self, batch):
        raise NotImplementedError(f"{type(self).__name__} must implement parse_batch_train()")

    def parse_batch_test(self, batch):
        raise NotImplementedError(f"{type(self).__name__} must implement parse_batch_test()")

    def forward_backward(self, batch):
        raise NotImplementedError(f"{type(self).__name__} must implement forward_backward()")

    def model_inference(self, input):
        """Logits for one batch of inputs: ``self.model(input)``."""
        return self.model(input)

    # ------------------------------------------------------ optimisation steps
    def detect_anomaly(self, loss):
        """Raise FloatingPointError if any element of ``loss`` is not finite."""
        if not torch.isfinite(loss).all():
            raise FloatingPointError("Loss is infinite or NaN!")

    def model_zero_grad(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss):
        self.detect_anomaly(loss)
        loss.backward()

    def model_update(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss, names=None):
        """zero_grad -> NaN check -> backward -> optimizer step."""
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)


class SimpleTrainer(TrainerBase):
    """Generic trainer: data, model, evaluator, checkpoint policy and test (as Dassl's ``SimpleTrainer``)."""

    def __init__(self, cfg):
        super().__init__()
        # Dassl's construction order: check_cfg, device, counters, data, model, evaluator.
        self.check_cfg(cfg)

        if torch.cuda.is_available() and cfg.USE_CUDA:
            self.device = torch.device("cuda")
        else:
            self.device = torch.device("cpu")

        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR

        self.cfg = cfg
        self.build_data_loader()
        self.build_model()
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)
        self.best_result = -np.inf

    def check_cfg(self, cfg):
        """Hook to validate the config before anything is built (no-op by default)."""

    def build_data_loader(self):
        """Build the DataManager and expose its loaders and dataset facts."""
        expose_data_manager(self, DataManager(self.cfg))

    def build_model(self):
        """Not available in the bundled engine (it has no SimpleNet)."""
        raise NotImplementedError(
            f"{type(self).__name__}.build_model(): the bundled Dassl engine has no SimpleNet; "
            "a trainer must override build_model() to build its model, optimizer and scheduler "
            "and call self.register_model(...) (as the prompt-learning trainers do)"
        )

    def train(self):
        """Train from ``start_epoch`` to ``max_epoch``."""
        super().train(self.start_epoch, self.max_epoch)

    def before_train(self):
        """Resume if possible, open TensorBoard, start the clock (as Dassl's ``before_train``)."""
        directory = self.cfg.RESUME if self.cfg.RESUME else self.cfg.OUTPUT_DIR
        self.start_epoch = self.resume_model_if_exist(directory)

        writer_dir = osp.join(self.output_dir, "tensorboard")
        mkdir_if_missing(writer_dir)
        self.init_writer(writer_dir)

        self.time_start = time.time()

    def after_train(self):
        """Deploy the final model, test it and print the elapsed time (as Dassl)."""
        print("Finish training")

        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                print("Deploy the model with the best val performance")
                self.load_model(self.output_dir)
            else:
                print("Deploy the last-epoch model")
            self.test()

        elapsed = round(time.time() - self.time_start)
        print(f"Elapsed: {datetime.timedelta(seconds=elapsed)}")

        self.close_writer()

    def after_epoch(self):
        """Validate for best_val, then save periodic / last-epoch checkpoints (as Dassl)."""
        last_epoch = (self.epoch + 1) == self.max_epoch
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        meet_checkpoint_freq = freq > 0 and (self.epoch + 1) % freq == 0

        if not self.cfg.TEST.NO_TEST and self.cfg.TEST.FINAL_MODEL == "best_val":
            curr_result = self.test(split="val")
            if curr_result > self.best_result:
                self.best_result = curr_result
                self.save_model(
                    self.epoch, self.output_dir, val_result=curr_result, model_name=_BEST_FILE
                )

        if meet_checkpoint_freq or last_epoch:
            self.save_model(self.epoch, self.output_dir)

    @torch.no_grad()
    def test(self, split=None):
        """Evaluate on ``split`` (default ``TEST.SPLIT``) and return the accuracy (the first result)."""
        self.set_model_mode("eval")
        self.evaluator.reset()
        split, data_loader = eval_split_loader(self, split)
        print(f"Evaluate on the *{split}* set")

        for batch in tqdm(data_loader):  # tqdm writes to stderr: never in log.txt
            input, label = self.parse_batch_test(batch)
            output = self.model_inference(input)
            self.evaluator.process(output, label)

        results = self.evaluator.evaluate()
        for key, value in results.items():
            self.write_scalar(f"{split}/{key}", value, self.epoch)

        return list(results.values())[0]

    def parse_batch_test(self, batch):
        """``(img, label)`` moved to the device."""
        return batch["img"].to(self.device), batch["label"].to(self.device)


class TrainerX(SimpleTrainer):
    """Trainer using labeled data only: as Dassl's ``TrainerX.run_epoch``."""

    def run_epoch(self):
        """One pass over ``train_loader_x`` with meters, printed lines and TensorBoard scalars."""
        self.set_model_mode("train")
        losses = MetricMeter()
        batch_time = AverageMeter()
        data_time = AverageMeter()

        print_freq = self.cfg.TRAIN.PRINT_FREQ
        # Deliberate fix: Dassl dies with ZeroDivisionError on PRINT_FREQ 0.
        if print_freq <= 0:
            raise ValueError(
                f"TRAIN.PRINT_FREQ must be a positive integer, got {print_freq}: "
                "set TRAIN.PRINT_FREQ to e.g. 5"
            )

        self.num_batches = len(self.train_loader_x)
        end = time.time()

        for self.batch_idx, batch in enumerate(self.train_loader_x):
            data_time.update(time.time() - end)
            loss_summary = self.forward_backward(batch)
            batch_time.update(time.time() - end)
            losses.update(loss_summary)

            meet_freq = (self.batch_idx + 1) % print_freq == 0
            only_few_batches = self.num_batches < print_freq
            if meet_freq or only_few_batches:
                batches_left = self.num_batches - self.batch_idx - 1
                batches_left += (self.max_epoch - self.epoch - 1) * self.num_batches
                eta = datetime.timedelta(seconds=int(batch_time.avg * batches_left))
                print(
                    f"epoch [{self.epoch + 1}/{self.max_epoch}] "
                    f"batch [{self.batch_idx + 1}/{self.num_batches}] "
                    f"time {batch_time.val:.3f} ({batch_time.avg:.3f}) "
                    f"data {data_time.val:.3f} ({data_time.avg:.3f}) "
                    f"{losses} "
                    f"lr {self.get_current_lr():.4e} "
                    f"eta {eta}"
                )

            n_iter = self.epoch * self.num_batches + self.batch_idx
            for name, meter in losses.meters.items():
                self.write_scalar("train/" + name, meter.avg, n_iter)
            self.write_scalar("train/lr", self.get_current_lr(), n_iter)

            end = time.time()

    def parse_batch_train(self, batch):
        """``(img, label, domain)`` moved to the device (as Dassl's ``TrainerX``)."""
        input = batch["img"].to(self.device)
        label = batch["label"].to(self.device)
        domain = batch["domain"].to(self.device)
        return input, label, domain
