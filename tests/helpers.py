"""Helpers shared by the tests (plain functions; the fixtures are in conftest.py)."""
from __future__ import annotations

import os
from pathlib import Path

#: the repository, and the shared/ folder beside it (reference fixtures, vendored Dassl and CoOp)
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def last_accuracy(log_text):
    """The last ``* accuracy: xx.x%`` value of a log."""
    import re

    values = re.findall(r"^\* accuracy: ([\d.]+)%", log_text, flags=re.M)
    assert values, "no '* accuracy:' line in the log"
    return float(values[-1])


def method_cfg(node_name, **node):
    """Our default config on the tiny CLIP in fp32, with ``TRAINER.<node_name>`` keys overridden."""
    from gopro_prompts.trainers.config import default_cfg

    cfg = default_cfg()
    cfg.MODEL.BACKBONE.NAME = "tiny"
    cfg.TRAINER[node_name].PREC = "fp32"
    for key, value in node.items():
        cfg.TRAINER[node_name][key] = value
    return cfg


def perturb(module, seed=5, scale=0.05):
    """Move every learnable tensor away from its initial value (deterministically)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


def random_images(n=3, seed=2, size=32):
    import torch

    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def offline_trainer(trainer_name, root, out, *opts):
    """A trainer on the embedded offline default, built but not trained."""
    from gopro_prompts import train

    assert os.environ.get(train.OFFLINE_ROOT_ENV) == root, "use the synthetic_root fixture"
    return train.main(["--trainer", trainer_name, "--output-dir", str(out), "--no-train",
                       "DATASET.NUM_SHOTS", "2", *opts])


def one_step_run(trainer, out):
    """One training step of ``trainer`` on its first batch, then its checkpoint saved under ``out``.

    Returns the trainer, ``out``, the names of its learnable parameters, its state before the
    step and the step's loss summary.
    """
    learnable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.set_model_mode("train")
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, len(trainer.train_loader_x)
    summary = trainer.forward_backward(next(iter(trainer.train_loader_x)))
    trainer.save_model(0, str(out))
    return dict(trainer=trainer, out=out, learnable=learnable, before=before, summary=summary)


def assert_step_changed_only_the_prompt_learner(run):
    """The learnable parameters are the prompt learner's, the loss is finite, and only they moved."""
    import torch

    trainer = run["trainer"]
    assert run["learnable"] == {"prompt_learner." + n for n, _ in trainer.model.prompt_learner.named_parameters()}
    assert torch.isfinite(torch.tensor(run["summary"]["loss"]))
    after = trainer.model.state_dict()
    changed = {k for k, v in run["before"].items() if not torch.equal(v, after[k])}
    assert changed == run["learnable"]


def assert_reload_reproduces_logits(run, fresh):
    """``fresh``, a new trainer of the same setup, differs from ``run``'s until it loads its checkpoint."""
    import torch

    trainer = run["trainer"]
    images = next(iter(trainer.test_loader))["img"][:4]
    trainer.set_model_mode("eval")
    fresh.set_model_mode("eval")
    with torch.no_grad():
        expected = trainer.model(images)
        assert not torch.equal(fresh.model(images), expected)  # a fresh model differs
        fresh.load_model(str(run["out"]), epoch=1)
        assert torch.equal(fresh.model(images), expected)


_JPEG = None


def touch_jpeg(path):
    """Write a tiny valid JPEG at ``path`` (parents created): a stand-in for a dataset image."""
    global _JPEG
    if _JPEG is None:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (10, 200, 90)).save(buf, "JPEG")
        _JPEG = buf.getvalue()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_JPEG)
