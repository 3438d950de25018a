"""Multi-GPU training through ``torch.distributed`` (launched with ``torchrun``).

    torchrun --nproc_per_node=N train.py --trainer GOPro ... (the usual arguments)

One process per GPU.  ``train.py`` calls :func:`init_from_env`, which joins the
process group when ``torchrun``'s environment (``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK``) is present; a plain ``python train.py`` never touches
``torch.distributed``.  Under a process group our trainers
(:class:`trainers.base.ClipTrainer`)

* wrap ``model.forward_train`` in ``DistributedDataParallel``: only the
  learnable module has trainable parameters, so only its gradients are
  all-reduced (averaged) -- frozen CLIP is never synchronised after the
  initial broadcast.  This replaces the ``nn.DataParallel`` of the official
  trainers;
* draw the training batches with a ``DistributedSampler`` (a disjoint shard
  per rank, reshuffled every epoch from ``SEED``): each process trains on
  ``DATALOADER.TRAIN_X.BATCH_SIZE`` images, so one optimiser step sees
  ``N x BATCH_SIZE`` images and the gradient is that of the mean loss over
  them (see docs/multi_gpu.md for the batch semantics);
* evaluate on a strided shard per rank and gather the logits on rank 0,
  which runs Dassl's evaluator over the whole split (identical accuracy);
* write logs, TensorBoard, checkpoints and ``results.json`` on rank 0 only.

With world size 1 the training order is the plain run's (no sampler is
swapped in), so a one-process ``torchrun`` gives the plain path's results.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler

from gopro_prompts.bundled_dassl.engine import eval_split_loader
from gopro_prompts.dassl_compat import get_logger
from gopro_prompts.user_errors import UserError

logger = get_logger("distributed")

#: environment variables ``torchrun`` sets for every process
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    #: True when this module created the process group (and must destroy it)
    owns_group: bool = False


_INFO = DistInfo()


def launched_by_torchrun(environ=None) -> bool:
    env = os.environ if environ is None else environ
    return all(key in env for key in TORCHRUN_ENV)


def init_from_env(use_cuda: bool = True) -> DistInfo:
    """Join the process group described by torchrun's environment (no-op without it).

    Backend: NCCL when CUDA is used, gloo otherwise (CPU runs and tests).  On
    CUDA the process is bound to GPU ``LOCAL_RANK``.
    """
    global _INFO
    if not launched_by_torchrun():
        return _INFO
    rank, world, local = (int(os.environ[key]) for key in TORCHRUN_ENV)
    cuda = use_cuda and torch.cuda.is_available()
    if cuda:
        if local >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) are visible: "
                "use torchrun --nproc_per_node <= the number of GPUs"
            )
        torch.cuda.set_device(local)
    if dist.is_initialized():  # set up by the caller: use it as it is
        _INFO = DistInfo(dist.get_rank(), dist.get_world_size(), local, dist.get_backend(), False)
        return _INFO
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    _INFO = DistInfo(rank, world, local, backend, True)
    logger.info("torch.distributed: rank %d of %d (local rank %d, backend %s)", rank, world, local, backend)
    return _INFO


def cleanup() -> None:
    """Leave the process group if :func:`init_from_env` created it."""
    global _INFO
    if _INFO.owns_group and dist.is_initialized():
        dist.destroy_process_group()
    _INFO = DistInfo()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def local_device(device: torch.device) -> torch.device:
    """The GPU of this process (``cuda:LOCAL_RANK``) under a process group, else ``device``."""
    device = torch.device(device)
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", torch.cuda.current_device())
    return device


# ----------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------
class TrainForward(nn.Module):
    """``forward(inputs, labels)`` = ``model.forward_train``: the call DDP must see."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs, labels):
        return self.model.forward_train(inputs, labels)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` over the model's training forward.

    Only parameters with ``requires_grad`` (the learnable module) take part in
    the gradient all-reduce.  ``find_unused_parameters``: a loss term can be
    absent for a batch (GOPro skips L_con on a batch of one image), leaving
    its parameters without a gradient.  ``broadcast_buffers=False``: the
    class-dependent prompt buffers are identical on every rank and can be
    large; BatchNorm running statistics stay per rank (rank 0's are saved).
    """
    device = torch.device(device)
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # newer torch names the switch forward_sync_buffers (broadcast_buffers is deprecated there)
    no_buffer_sync = ({"forward_sync_buffers": False}
                      if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
                      else {"broadcast_buffers": False})
    return ddp(TrainForward(model), device_ids=device_ids, find_unused_parameters=True, **no_buffer_sync)


# ----------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------
def _rebuild(loader: DataLoader, sampler, drop_last: bool) -> DataLoader:
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
        drop_last=drop_last, pin_memory=loader.pin_memory, collate_fn=loader.collate_fn,
        worker_init_fn=loader.worker_init_fn,
    )


def shard_train_loader(loader: DataLoader, seed: int, rank: Optional[int] = None,
                       world_size: Optional[int] = None) -> DataLoader:
    """The train loader with a ``DistributedSampler``: a disjoint, shuffled shard per rank.

    ``drop_last`` follows Dassl's rule (``build_data_loader``) on the shard:
    drop the last partial batch unless the shard is smaller than one batch).
    Call ``loader.sampler.set_epoch(epoch)`` every epoch.
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    sampler = DistributedSampler(loader.dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=max(int(seed), 0), drop_last=False)
    drop_last = len(sampler) >= loader.batch_size
    return _rebuild(loader, sampler, drop_last)


def shard_eval_loader(loader: DataLoader, rank: Optional[int] = None,
                      world_size: Optional[int] = None) -> DataLoader:
    """Evaluation shard of this rank: samples ``rank, rank + N, ...`` (no padding, no repeats)."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    indices = list(range(rank, len(loader.dataset), world_size))
    return _rebuild(loader, indices, drop_last=False)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle a ``DistributedSampler`` for ``epoch`` (no-op for other samplers)."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


# ----------------------------------------------------------------------------
# collectives
# ----------------------------------------------------------------------------
def gather_to_main(obj: Any) -> Optional[List[Any]]:
    """Every rank's ``obj`` on rank 0 (in rank order); None on the other ranks."""
    if not is_distributed():
        return [obj]
    out = [None] * get_world_size() if is_main_process() else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------
# the trainer side (mixed into trainers.base.ClipTrainer)
# ----------------------------------------------------------------------------
class DistributedMixin:
    """DistributedDataParallel training, sharded evaluation and rank-0 TensorBoard for ClipTrainer."""

    def _setup_parallel(self):
        """DistributedDataParallel under torchrun, else one device.

        Replaces the official trainers' ``nn.DataParallel``: the registered
        (checkpointed) module stays the plain learnable module.
        """
        self._train_forward = self.model.forward_train
        if not is_distributed():
            n_gpus = torch.cuda.device_count() if self.device.type == "cuda" else 0
            if n_gpus > 1:
                logger.info(
                    "%d GPUs are visible but this run uses one: launch with `torchrun --nproc_per_node=%d "
                    "train.py ...` to train on all of them (DistributedDataParallel)", n_gpus, n_gpus,
                )
            return
        self._train_forward = wrap_ddp(self.model, self.device)
        world = get_world_size()
        if world > 1:
            self.train_loader_x = shard_train_loader(self.train_loader_x, seed=self.cfg.SEED)
        logger.info(
            "DistributedDataParallel over %d process(es): %d training images per process and step "
            "(%d per optimiser step)", world, self.train_loader_x.batch_size,
            world * self.train_loader_x.batch_size,
        )

    def run_epoch(self):
        set_epoch(self.train_loader_x, self.epoch)  # reshuffle the DDP shards
        return super().run_epoch()

    def _test_sharded(self, split=None):
        """Dassl's test loop (``dassl/engine/trainer.py`` ``SimpleTrainer.test``) over this rank's shard; rank 0 evaluates all."""
        from tqdm import tqdm

        main = is_main_process()
        self.set_model_mode("eval")
        self.evaluator.reset()
        split, data_loader = eval_split_loader(self, split)
        print(f"Evaluate on the *{split}* set")

        outputs, labels = [], []
        for batch in tqdm(shard_eval_loader(data_loader), disable=not main):
            inputs, label = self.parse_batch_test(batch)
            outputs.append(self.model_inference(inputs).float().cpu())
            labels.append(label.cpu())
        shard = (torch.cat(outputs), torch.cat(labels)) if outputs else None
        gathered = gather_to_main(shard)
        result = None
        if main:
            for item in gathered:
                if item is not None:
                    self.evaluator.process(*item)
            results = self.evaluator.evaluate()
            for key, value in results.items():
                self.write_scalar(f"{split}/{key}", value, self.epoch)
            result = list(results.values())[0]
        return broadcast_from_main(result)

    def init_writer(self, log_dir):
        """TensorBoard on rank 0 only (every rank under a plain run)."""
        if is_main_process():
            super().init_writer(log_dir)
