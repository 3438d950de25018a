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

import math
import os
import os.path as osp
import random
import re
from typing import Dict

import numpy as np
import torch

from gopro_prompts.dassl_compat import (
    DataManager, TrainerX, build_lr_scheduler, build_optimizer, compute_accuracy, get_logger,
    load_checkpoint, load_pretrained_weights, save_checkpoint,
)
from gopro_prompts.bundled_dassl.utils import atomic_write, read_checkpoint_pointer
from gopro_prompts.bundled_dassl.safe_pickle import UnsafeCheckpointError
from gopro_prompts.trainers import distributed, preemption
from gopro_prompts.trainers.data import DatasetWrapper
from gopro_prompts.trainers.clip_helpers import PRECISIONS, Precision, load_clip
from gopro_prompts.run_lock import pid_exists
from gopro_prompts.run_folder import changed_config_error, config_changes
from gopro_prompts.user_errors import UserError

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
    #: dataset wrapper given to Dassl's DataManager (ours names an unreadable image file)
    DATASET_WRAPPER = DatasetWrapper

    # pre-emption state (trainers/preemption.py): the replay plan of a resumed pre-empted epoch,
    # the RNG states at the start of the current epoch and at the entry of a validation test,
    # the loss summaries of the current epoch's steps, and whether Dassl's after_epoch is running
    _replay = None
    _epoch_rng = None
    _val_entry_rng = None
    _epoch_summaries = None
    _in_after_epoch = False

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
        dm = DataManager(self.cfg, dataset_wrapper=self.DATASET_WRAPPER)
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u
        self.val_loader = dm.val_loader
        self.test_loader = dm.test_loader
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname
        self.dm = dm
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
        if self._epoch_summaries is None:  # a step outside Dassl's loop (no before_epoch), e.g. a benchmark
            self._epoch_summaries = []
        self._epoch_summaries.append(summary)
        self._stop_if_preempted(self.batch_idx + 1)
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

    # ------------------------------------------------------------- pre-emption
    # trainers/preemption.py: a signal is acted on after the current step, after the current
    # checkpoint write or before the next evaluation batch; the mid-epoch checkpoint lets a
    # re-run continue from that exact step (bit-identical on CPU with a fixed seed).

    def before_train(self):
        preemption.defer()
        super().before_train()

    def before_epoch(self):
        super().before_epoch()
        replay = self._replay
        if replay is not None and replay["epoch"] == self.epoch:
            # the loader must draw the same shuffling and augmentation as the interrupted epoch
            restore_rng_state(replay["epoch_rng"] if replay["steps_done"] else replay["rng"])
            if not replay["steps_done"]:
                self._replay = None
        self._epoch_rng = capture_rng_state()
        self._epoch_summaries = []
        self._stop_if_preempted(0, self._epoch_rng)

    def after_epoch(self):
        self._in_after_epoch = True
        try:
            super().after_epoch()
        finally:
            self._in_after_epoch = False

    def after_train(self):
        remove_preempt_checkpoint(self.output_dir)  # the last end-of-epoch checkpoint supersedes it
        super().after_train()

    def method_state(self) -> dict:
        """Training state of the method beyond its learnable weights and optimiser (plain data).

        For example a running average of prompts over epochs.  Saved in every checkpoint (end of
        epoch and pre-emption) and given back to :meth:`load_method_state` on resume.  Default: none.
        """
        return {}

    def load_method_state(self, state: dict) -> None:
        """Restore what :meth:`method_state` returned (called when a run resumes)."""

    def _replay_step(self):
        """A step already done before the pre-emption: its batch was loaded (the data pipeline's
        random draws are repeated), the model is not touched, its logged summary is returned."""
        replay = self._replay
        summary = replay["summaries"][self.batch_idx]
        self._epoch_summaries.append(summary)
        if self.batch_idx + 1 == replay["steps_done"]:
            restore_rng_state(replay["rng"])  # exactly the state after the interrupted step
            self._replay = None
            logger.info("Replayed the data of the %d steps done before the pre-emption; training continues",
                        replay["steps_done"])
        signum = preemption.pending()
        if signum is not None:  # the state is still the one the pre-emption checkpoint holds
            raise preemption.Preempted(signum, saved=replay["path"], where="while resuming")
        return summary

    def _stop_if_preempted(self, steps_done, rng_state=None):
        """On a pending signal: save the state after ``steps_done`` steps of this epoch, then stop.

        ``rng_state``: the RNG states to save (default: the current ones).
        """
        signum = preemption.pending()
        if signum is None:
            return
        rng_state = rng_state if rng_state is not None else capture_rng_state()
        where = f"at epoch {self.epoch + 1}/{self.max_epoch}, after step {steps_done}/{self.num_batches}"
        if self._replay is not None:
            raise preemption.Preempted(signum, saved=self._replay["path"], where=where)
        path = None
        if distributed.is_main_process():
            path = self._save_preempted(steps_done, rng_state, signum)
        raise preemption.Preempted(signum, saved=path, where=where)

    def _save_preempted(self, steps_done, rng_state, signum):
        state = {
            "format": preemption.PREEMPT_FORMAT,
            "epoch": self.epoch,  # the interrupted epoch (0-based); `epoch` epochs are complete
            "steps_done": steps_done,
            "num_batches": self.num_batches,
            "models": {
                name: {
                    "state_dict": self._models[name].state_dict(),
                    "optimizer": self._optims[name].state_dict() if self._optims[name] is not None else None,
                    "scheduler": self._scheds[name].state_dict() if self._scheds[name] is not None else None,
                }
                for name in self.get_model_names()
            },
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "method_state": self.method_state(),
            "rng_state": rng_state,
            "epoch_rng_state": self._epoch_rng,
            "summaries": list(self._epoch_summaries or [])[:steps_done],
            "best_result": float(self.best_result),
            "trainer": type(self).__name__,
            "backbone": backbone_id(self.cfg),
            "config": self.cfg.dump(),
            "signal": int(signum),
        }
        path = osp.join(self.output_dir, preemption.PREEMPT_FILE)
        atomic_write(path, lambda tmp: torch.save(state, tmp))
        print(f"Pre-emption checkpoint saved to {path}")
        return path

    def _resume_preempted(self, path, checkpoint):
        """Load a pre-emption checkpoint; the epoch it interrupted restarts with a replay of its steps."""
        epoch, steps = checkpoint["epoch"], checkpoint["steps_done"]
        print(f"Found a pre-emption checkpoint at {path} (will resume epoch {epoch + 1} after step {steps})")
        for name in self.get_model_names():
            entry = checkpoint["models"][name]
            origin = {"state_dict": entry["state_dict"], "trainer": checkpoint.get("trainer"),
                      "backbone": checkpoint.get("backbone")}
            self._models[name].load_state_dict(self._checked_state_dict(name, origin, path, resuming=True))
            if self._optims[name] is not None and entry.get("optimizer") is not None:
                self._optims[name].load_state_dict(entry["optimizer"])
            if self._scheds[name] is not None and entry.get("scheduler") is not None:
                self._scheds[name].load_state_dict(entry["scheduler"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self._restore_loop_state(checkpoint, path)
        self._replay = {"path": path, "epoch": epoch, "steps_done": steps, "summaries": checkpoint["summaries"],
                        "epoch_rng": checkpoint["epoch_rng_state"], "rng": checkpoint["rng_state"]}
        return epoch

    # -------------------------------------------------------------- evaluation
    def model_inference(self, images):
        signum = preemption.pending()  # before each evaluation batch
        if signum is not None:
            if self._in_after_epoch and self._val_entry_rng is not None:  # Dassl's per-epoch validation
                self._stop_if_preempted(self.num_batches, self._val_entry_rng)
            raise preemption.Preempted(signum, where="during the final evaluation")
        with self.precision.autocast():
            return self.model(images)

    def test(self, split=None):
        """Dassl's test() in inference mode, with the model's begin_eval / end_eval around it.

        Inference mode (stricter than Dassl's no_grad): no autograd
        bookkeeping at all.  Under torchrun each rank evaluates a shard and
        rank 0 evaluates the gathered logits (trainers/distributed.py).
        """
        self._capture_evaluator_results()
        preemption.defer()  # a signal now ends the run before the next batch, not inside one
        self._val_entry_rng = capture_rng_state() if self._in_after_epoch else None
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
        requested = split or self.cfg.TEST.SPLIT
        final_split = "val" if (requested == "val" and self.val_loader is not None) else "test"
        if final_split == "test" and self._last_results is not None and distributed.is_main_process():
            self._write_results(final_split)
        return result

    def _test_sharded(self, split=None):
        """Dassl's test loop (dassl-behaviour.md §b.8) over this rank's shard; rank 0 evaluates all."""
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

    def save_model(self, *args, **kwargs):
        """Checkpoints are written by rank 0 only; the other ranks wait for them (torchrun)."""
        if distributed.is_main_process():
            self.write_checkpoint(*args, **kwargs)  # the checkpoint section below
        distributed.barrier()

    def _capture_evaluator_results(self):
        """Keep the evaluator's full result dict (Dassl's test() returns only accuracy)."""
        from gopro_prompts.results_capture import capture_evaluator_results

        capture_evaluator_results(self)

    def _write_results(self, split):
        from gopro_prompts.results_capture import write_trainer_results

        write_trainer_results(self, split, self._last_results)

    # -------------------------------------------------------------- checkpoint
    # dassl-behaviour.md §b.3, §b.9, §f.4.  Deliberate fixes of Dassl defects
    # (docs/when_a_run_fails.md): every file is written atomically (temp file +
    # rename); a checkpoint also holds the RNG states and best_result, so a
    # resumed run repeats an uninterrupted one, and the config, trainer and
    # backbone it was made with, which loading checks.  All of it is plain data
    # (``torch.load(weights_only=True)`` reads it) and only the learnable module:
    # class-dependent buffers are non-persistent, so base -> new still works.

    def write_checkpoint(self, epoch, directory, is_best=False, val_result=None, model_name=""):
        """Save every registered module to ``directory/<name>/`` (§b.9 keys plus ours)."""
        extra = {
            "rng_state": capture_rng_state(),
            "method_state": self.method_state(),
            "best_result": float(self.best_result),
            "trainer": type(self).__name__,
            "backbone": backbone_id(self.cfg),
            "config": self.cfg.dump(),
        }
        for name in self.get_model_names():
            optim, sched = self._optims[name], self._scheds[name]
            state = {
                "state_dict": self._models[name].state_dict(),
                "epoch": epoch + 1,
                "optimizer": optim.state_dict() if optim is not None else None,
                "scheduler": sched.state_dict() if sched is not None else None,
                "val_result": val_result,
                **extra,
            }
            save_checkpoint(state, osp.join(directory, name), is_best=is_best, model_name=model_name)

    def resume_model_if_exist(self, directory):
        """Resume from the last complete checkpoint in ``directory`` (§b.3); returns the start epoch.

        Prints Dassl's lines.  Deliberate fixes: a folder without a complete
        checkpoint (a run killed during its first save) trains from scratch; a
        missing, empty or unreadable pointer falls back to the newest readable
        ``model.pth.tar-N``; the RNG states and best_result are restored; a
        checkpoint of another trainer, backbone or class count is refused.
        """
        names = self.get_model_names()
        found = {}
        if names and all(osp.isdir(osp.join(directory, name)) for name in names):
            for name in names:
                found[name] = find_complete_checkpoint(osp.join(directory, name))
        complete = bool(names) and len(found) == len(names) and all(item is not None for item in found.values())
        preempted = read_preempt_checkpoint(directory, names)
        if preempted is not None:
            done = min(item[1]["epoch"] for item in found.values()) if complete else 0
            if preempted[1]["epoch"] >= done:  # it is ahead of (or as far as) the last finished epoch
                return self._resume_preempted(*preempted)
            logger.info("Ignoring %s: the run went on to save a later end-of-epoch checkpoint", preempted[0])
        if not complete:
            print("No checkpoint found, train from scratch")
            return 0

        print(f"Found checkpoint at {directory} (will resume training)")
        start_epoch, checkpoint, path = 0, None, ""
        for name in names:
            path, checkpoint = found[name]
            print(f'Loading checkpoint from "{path}"')
            state_dict = self._checked_state_dict(name, checkpoint, path, resuming=True)
            self._models[name].load_state_dict(state_dict, strict=True)
            print("Loaded model weights")
            optim, sched = self._optims[name], self._scheds[name]
            if optim is not None and checkpoint.get("optimizer") is not None:
                optim.load_state_dict(checkpoint["optimizer"])
                print("Loaded optimizer")
            if sched is not None and checkpoint.get("scheduler") is not None:
                sched.load_state_dict(checkpoint["scheduler"])
                print("Loaded scheduler")
            start_epoch = checkpoint["epoch"]
            print(f"Previous epoch: {start_epoch}")
        self._restore_loop_state(checkpoint, path)
        return start_epoch

    def _restore_loop_state(self, checkpoint, path):
        """RNG states and best_result of a resumed checkpoint; a checkpoint of another config is refused."""
        changes = config_changes(checkpoint.get("config"), self.cfg)
        if changes:  # the folder is another experiment's: resuming it would mix the two
            run_dir = osp.dirname(path) if osp.basename(path) == preemption.PREEMPT_FILE else osp.dirname(osp.dirname(path))
            raise changed_config_error(f"checkpoint {path}", changes, run_dir or ".")
        if checkpoint.get("best_result") is not None:
            self.best_result = checkpoint["best_result"]
        if checkpoint.get("method_state"):
            self.load_method_state(checkpoint["method_state"])
        if checkpoint.get("rng_state") is None:
            logger.warning(
                "%s has no random-number-generator state (written by Dassl or the official code): "
                "the resumed run continues but will not repeat an uninterrupted run exactly", path,
            )
            return
        restore_rng_state(checkpoint["rng_state"])
        logger.info("Restored the random number generator states of %s", path)

    def load_model(self, directory, epoch=None):
        """Load learnable weights; class-dependent tensors stay those of the current classes."""
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in self.get_model_names():
            model_path = osp.join(directory, name, model_file)
            if not osp.exists(model_path):
                raise FileNotFoundError(missing_model_message(directory, name, model_file))
            checkpoint = load_checkpoint(model_path)
            if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "epoch" not in checkpoint:
                raise UserError(
                    f'"{model_path}" is not a Dassl checkpoint (no "state_dict" and "epoch" entries): '
                    "point --model-dir at the output folder of a training run of this trainer"
                )
            state_dict = self._checked_state_dict(name, checkpoint, model_path, resuming=False)
            print(f'Loading weights to {name} from "{model_path}" (epoch = {checkpoint["epoch"]})')
            self._models[name].load_state_dict(state_dict, strict=True)

    def _checked_state_dict(self, name, checkpoint, path, resuming):
        """The checkpoint's state dict for module ``name``, after every compatibility check."""
        trainer_name = type(self).__name__
        check_checkpoint_origin(checkpoint, path, trainer_name, backbone_id(self.cfg), resuming=resuming)
        state_dict = self.convert_state_dict(name, checkpoint["state_dict"])
        state_dict = {key: value for key, value in state_dict.items()
                      if key.split(".")[-1] not in self.CLASS_DEPENDENT_KEYS}
        check_state_dict_compatible(self._models[name], state_dict, path, trainer_name)
        return state_dict

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


# ----------------------------------------------------------------------------
# checkpoint helpers
# ----------------------------------------------------------------------------
_NUMBERED = re.compile(r"^model\.pth\.tar-(\d+)$")
#: temp files of bundled_dassl.utils' atomic writes: ``.<final name>.<pid>-<hex>.tmp``
_TEMP = re.compile(r"^\..+\.(\d+)-[0-9a-f]+\.tmp$")


def backbone_id(cfg) -> str:
    """The backbone a run uses, as stored in its checkpoints: the name, else the file name."""
    backbone = cfg.MODEL.BACKBONE
    return backbone.NAME or osp.basename(backbone.PATH)


def capture_rng_state() -> dict:
    """Python, NumPy, torch and CUDA generator states as plain data (weights_only-loadable)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only when the GPU count matches)."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if torch.cuda.is_available() and cuda:
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            logger.warning("The checkpoint holds %d CUDA generator states but %d GPUs are visible: "
                           "CUDA generators are not restored", len(cuda), torch.cuda.device_count())


def find_complete_checkpoint(fdir):
    """``(path, checkpoint)`` of the last complete checkpoint in ``fdir``, or None.

    The file named by the ``checkpoint`` pointer (§b.3) when it reads; else
    the newest readable ``model.pth.tar-N`` (a pointer lost or truncated by a
    non-atomic writer, e.g. real Dassl's).  Leftover temp files of writes cut
    short by a kill are removed first.
    """
    _remove_dead_temp_files(fdir)
    named = read_pointer(fdir)
    numbered = sorted(
        (name for name in os.listdir(fdir) if _NUMBERED.match(name)),
        key=lambda name: int(_NUMBERED.match(name).group(1)), reverse=True,
    )
    unusable = []
    for name in ([named] if named else []) + [n for n in numbered if n != named]:
        path = osp.join(fdir, name)
        checkpoint = _read_checkpoint(path)
        if checkpoint is None:
            unusable.append(name)
            continue
        if name != named:
            logger.warning(
                'The "checkpoint" pointer in %s is %s: resuming from %s, the newest readable checkpoint',
                fdir, f"unusable ({named} does not load)" if named else "missing or empty", name,
            )
        return path, checkpoint
    if unusable:
        logger.warning("No complete checkpoint in %s (unreadable: %s): training from scratch",
                       fdir, ", ".join(unusable))
    return None


def read_pointer(fdir) -> str:
    """The file named by Dassl's ``checkpoint`` pointer in ``fdir``, or "" when unusable.

    A pointer that is not UTF-8 text or names a file outside its folder
    (``read_checkpoint_pointer``) is ignored with a warning naming it; the
    caller then falls back to the numbered files.
    """
    try:
        return read_checkpoint_pointer(fdir)
    except (ValueError, OSError) as exc:
        logger.warning("Ignoring it: %s", exc)
        return ""


def _load_if_readable(path):
    """The content of the checkpoint file ``path``, or None when it is missing, truncated or corrupt.

    A file that pickles a class loading would have to execute is not skipped
    but refused (``UnsafeCheckpointError`` propagates): someone put it there.
    """
    if not osp.isfile(path):
        return None
    try:
        return load_checkpoint(path)
    except UnsafeCheckpointError:
        raise
    except Exception:  # truncated or corrupt: load_checkpoint printed which file
        return None


def _read_checkpoint(path):
    """The checkpoint at ``path`` if it is a complete, readable one, else None."""
    checkpoint = _load_if_readable(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "epoch" not in checkpoint:
        return None
    return checkpoint


def _remove_dead_temp_files(fdir):
    """Delete temp files of atomic writes whose writer process is gone."""
    for name in os.listdir(fdir):
        match = _TEMP.match(name)
        if match and not _pid_alive(int(match.group(1))):
            try:
                os.remove(osp.join(fdir, name))
                logger.info("Removed %s, left by a checkpoint write that was cut short", osp.join(fdir, name))
            except OSError:
                pass


def _pid_alive(pid: int) -> bool:
    # our own temp files are never left behind while we run
    return pid != os.getpid() and pid_exists(pid)


def read_preempt_checkpoint(directory, names):
    """``(path, checkpoint)`` of the pre-emption checkpoint in ``directory`` for modules ``names``, or None.

    A file that does not read, or is not one of ours for these modules, is ignored with a warning
    (the run then resumes from its end-of-epoch checkpoints); one that pickles code is refused.
    """
    path = osp.join(directory, preemption.PREEMPT_FILE)
    if not osp.isfile(path):
        return None
    checkpoint = _load_if_readable(path)
    if checkpoint is None:
        logger.warning("Ignoring the unreadable pre-emption checkpoint %s", path)
        return None
    if (not isinstance(checkpoint, dict) or checkpoint.get("format") != preemption.PREEMPT_FORMAT
            or set(checkpoint.get("models") or ()) != set(names)):
        logger.warning("Ignoring %s: it is not a pre-emption checkpoint of this trainer's modules %s", path, names)
        return None
    return path, checkpoint


def remove_preempt_checkpoint(directory):
    path = osp.join(directory, preemption.PREEMPT_FILE)
    if osp.isfile(path):
        os.remove(path)
        logger.info("Removed %s: training finished, the end-of-epoch checkpoints hold its result", path)


def missing_model_message(directory, name, model_file):
    """Why ``--model-dir`` has no ``<name>/<model_file>`` and what to pass instead."""
    folder = osp.join(directory, name)
    path = osp.join(folder, model_file)
    if not osp.isdir(directory):
        return (f'Model not found at "{path}": --model-dir {directory} does not exist; '
                "point it at the output folder of a training run")
    if not osp.isdir(folder):
        return (f'Model not found at "{path}": {directory} has no {name}/ folder, so it is not the output '
                "folder of a finished training run of this trainer; check --model-dir and --trainer")
    names = os.listdir(folder)
    epochs = sorted(int(_NUMBERED.match(n).group(1)) for n in names if _NUMBERED.match(n))
    hints = [f"--load-epoch {' or '.join(map(str, epochs))}"] if epochs else []
    if "model-best.pth.tar" in names:
        hints.append("no --load-epoch for model-best.pth.tar")
    hint = f"use {' or '.join(hints)}" if hints else "the run saved no checkpoint (did it finish?)"
    return f'Model not found at "{path}": check --model-dir and --load-epoch ({hint})'


def check_checkpoint_origin(checkpoint, path, trainer_name, backbone, resuming=False):
    """Refuse a checkpoint made by another trainer or with another backbone (when it says so).

    Checkpoints of Dassl / the official code carry no such fields and are not checked here.
    """
    fix = ("use another --output-dir (this one holds that run) or the same settings to resume it"
           if resuming else "point --model-dir at a run made with the same trainer and backbone")
    made_by = checkpoint.get("trainer")
    if made_by and made_by != trainer_name:
        raise UserError(
            f"checkpoint {path} was made by the {made_by} trainer, not {trainer_name}: {fix}"
        )
    made_with = checkpoint.get("backbone")
    if made_with and backbone and made_with != backbone:
        raise UserError(
            f"checkpoint {path} was made with backbone {made_with}, but this run uses {backbone} "
            f"(MODEL.BACKBONE): {fix}"
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
        expected = own[key]
        if tuple(value.shape) == tuple(expected.shape):
            continue
        if key.split(".")[-1] == "ctx" and value.dim() == 3 and expected.dim() == 3:
            raise UserError(
                f"checkpoint {path}: class-specific context (CSC) for {value.shape[0]} classes, but this "
                f"dataset has {expected.shape[0]}: a CSC checkpoint only evaluates on the classes it was "
                "trained on (use DATASET.SUBSAMPLE_CLASSES of its run, or train with CSC False)"
            )
        if key.split(".")[-1] == "ctx" and value.dim() != expected.dim():
            made = "class-specific (CSC True)" if value.dim() == 3 else "shared (CSC False)"
            raise UserError(
                f"checkpoint {path} holds a {made} context, {tuple(value.shape)}, but this run expects "
                f"{tuple(expected.shape)}: set CSC (and N_CTX, CTX_INIT) as in the run that made it"
            )
        raise UserError(
            f"checkpoint {path}: {key} has shape {tuple(value.shape)} but the {trainer_name} model "
            f"expects {tuple(expected.shape)}; was it made with another backbone or N_CTX?"
        )
