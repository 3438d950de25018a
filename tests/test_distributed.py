"""Multi-GPU code path (trainers/distributed.py), exercised on CPU with gloo.

A one-process ``torchrun`` (RANK=0, WORLD_SIZE=1) goes through the
DistributedDataParallel wrapper, the sharded evaluation and the rank-0-only
writes, and must give the plain run's numbers; the samplers and the rank-0
guards are checked without a process group.
"""
from __future__ import annotations

import socket
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, RandomSampler

from gopro_prompts import train
from gopro_prompts.trainers import distributed

FAST = ["OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "2", "SEED", "3"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_env(monkeypatch, rank=0, world=1):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))


def _state(trainer):
    name = trainer.get_model_names()[0]
    return {k: v.detach().clone() for k, v in trainer._models[name].state_dict().items()}


def test_ddp_world_size_one_trains_like_the_plain_path(tmp_path, synthetic_root, monkeypatch):
    argv = ["--trainer", "CoOp", *FAST]
    plain = train.main([*argv[:2], "--output-dir", str(tmp_path / "plain"), *argv[2:]])
    assert not isinstance(plain._train_forward, torch.nn.parallel.DistributedDataParallel)

    _torchrun_env(monkeypatch)
    ddp = train.main([*argv[:2], "--output-dir", str(tmp_path / "ddp"), *argv[2:]])
    assert isinstance(ddp._train_forward, torch.nn.parallel.DistributedDataParallel)
    assert not dist.is_initialized()  # train.main leaves the process group it joined

    ours, theirs = _state(ddp), _state(plain)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-6, atol=1e-7, msg=key)
    log_plain = (tmp_path / "plain" / "log.txt").read_text()
    log_ddp = (tmp_path / "ddp" / "log.txt").read_text()
    assert "DistributedDataParallel over 1 process(es)" in log_ddp
    acc = [line for line in log_plain.splitlines() if line.startswith("* accuracy")]
    assert acc and acc == [line for line in log_ddp.splitlines() if line.startswith("* accuracy")]
    name = plain.get_model_names()[0]
    assert (tmp_path / "ddp" / name / "model.pth.tar-1").is_file()
    assert (tmp_path / "ddp" / "results.json").is_file()


def test_train_shards_are_disjoint_cover_the_data_and_reshuffle():
    data = list(range(11))
    loader = DataLoader(data, batch_size=2, sampler=RandomSampler(data), drop_last=True)
    shards = [distributed.shard_train_loader(loader, seed=1, rank=r, world_size=2) for r in range(2)]
    seen = [[int(i) for batch in shard for i in batch] for shard in shards]
    # DistributedSampler pads 11 -> 12 with one repeat: 6 indices (3 full batches) per rank
    assert [len(s) for s in seen] == [6, 6]
    assert set(seen[0]) | set(seen[1]) == set(data)
    assert len(set(seen[0]) & set(seen[1])) <= 1
    first = [int(i) for batch in shards[0] for i in batch]
    distributed.set_epoch(shards[0], 1)
    second = [int(i) for batch in shards[0] for i in batch]
    assert first != second  # reshuffled every epoch
    assert shards[0].drop_last and shards[0].batch_size == 2


def test_small_train_shard_keeps_its_partial_batch():
    data = list(range(3))
    loader = DataLoader(data, batch_size=4, sampler=RandomSampler(data), drop_last=False)
    shard = distributed.shard_train_loader(loader, seed=0, rank=0, world_size=2)
    assert not shard.drop_last and len(shard) == 1  # Dassl's rule: smaller than one batch -> keep it


def test_eval_shards_cover_every_sample_once_in_order():
    data = list(range(10))
    loader = DataLoader(data, batch_size=3)
    shards = [[int(i) for b in distributed.shard_eval_loader(loader, rank=r, world_size=3) for i in b]
              for r in range(3)]
    assert sorted(sum(shards, [])) == data
    assert shards[1] == [1, 4, 7]


def test_without_torchrun_nothing_is_distributed(monkeypatch):
    for key in distributed.TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    info = distributed.init_from_env()
    assert info.world_size == 1 and not distributed.is_distributed()
    assert distributed.gather_to_main(5) == [5] and distributed.broadcast_from_main(7) == 7


def test_other_ranks_write_no_checkpoint_and_print_nothing(tmp_path, synthetic_root, monkeypatch, capsys):
    trainer = train.main(["--trainer", "CoOp", "--output-dir", str(tmp_path / "t"),
                          "--no-train", *FAST])
    monkeypatch.setattr(distributed, "is_main_process", lambda: False)
    trainer.save_model(0, str(tmp_path / "ckpt"))
    assert not (tmp_path / "ckpt").exists()
    trainer._writer = None
    trainer.init_writer(str(tmp_path / "tb"))
    assert trainer._writer is None and not (tmp_path / "tb").exists()

    capsys.readouterr()
    with train._quiet_unless_main(distributed.DistInfo(rank=1, world_size=2)):
        print("rank 1 says hello")
    with train._quiet_unless_main(distributed.DistInfo(rank=0, world_size=2)):
        print("rank 0 says hello")
    out = capsys.readouterr().out
    assert "rank 1" not in out and "rank 0 says hello" in out


def _frozen_model(trainer_cls, cfg, names, clip_model):
    model = trainer_cls.build_clip_model(cfg, names, clip_model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.learnable_module().parameters():
        p.requires_grad_(True)
    return model


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("batch", [1, 2])
def test_ddp_wrapper_gives_the_plain_gradients_of_the_learnable_module_only(batch, tiny_clip, monkeypatch):
    """GOPro through DDP: a batch of one has no L_con, so sim_proj gets no gradient (find_unused)."""
    from gopro_prompts.trainers.config import default_cfg
    from gopro_prompts.trainers.gopro import GOPro

    cfg = default_cfg()
    torch.manual_seed(0)
    model = _frozen_model(GOPro, cfg, ["dog", "cat", "sea turtle"], tiny_clip)
    learner = model.learnable_module()
    views = [torch.randn(batch, 3, 32, 32) for _ in range(3)]
    labels = torch.arange(batch)
    _torchrun_env(monkeypatch)
    distributed.init_from_env(use_cuda=False)
    try:
        wrapped = distributed.wrap_ddp(model, torch.device("cpu"))
        for _ in range(2):  # a second step checks that the reducer was ready again
            learner.zero_grad(set_to_none=True)
            _, terms = wrapped(views, labels)
            sum(terms.values()).backward()
        ddp_grads = _grads(learner)
        learner.zero_grad(set_to_none=True)
        _, terms = model.forward_train(views, labels)
        sum(terms.values()).backward()
        plain_grads = _grads(learner)
    finally:
        distributed.cleanup()
    assert not dist.is_initialized()
    assert ddp_grads.keys() == plain_grads.keys()
    assert any(k.startswith("sim_proj") for k in plain_grads) == (batch >= 2)
    for key in plain_grads:
        torch.testing.assert_close(ddp_grads[key], plain_grads[key], msg=key)
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("learner."))
