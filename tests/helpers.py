"""Helpers shared by the tests (plain functions; the fixtures are in conftest.py)."""
from __future__ import annotations

import contextlib
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


def logged_evaluation(log_text):
    """``(total, correct, accuracy)`` of the last result block that Dassl's evaluator printed in a log."""
    import re

    blocks = re.findall(r"^\* total: ([\d,]+)\n\* correct: ([\d,]+)\n\* accuracy: ([\d.]+)%", log_text, flags=re.M)
    assert blocks, "no '* total / * correct / * accuracy' block in the log"
    total, correct, accuracy = blocks[-1]
    return int(total.replace(",", "")), int(correct.replace(",", "")), float(accuracy)


def assert_evaluated_on(log_text, n_images):
    """The last evaluation of a log covered exactly ``n_images`` images; returns its accuracy.

    For runs too short (or on a backbone too weak) to beat chance reliably: the accuracy is that
    of the expected test split, recomputed from the counts, not just any number in [0, 100].
    """
    total, correct, accuracy = logged_evaluation(log_text)
    assert total == n_images, f"evaluated {total} images, expected {n_images}"
    assert 0 <= correct <= total and f"{100.0 * correct / total:.1f}" == f"{accuracy:.1f}"
    assert accuracy == last_accuracy(log_text)
    return accuracy


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


#: what train.py's "System info" report says while :func:`env_report_skipped` is on
ENV_REPORT_STUB = "(skipped in tests)"


@contextlib.contextmanager
def env_report_skipped():
    """Skip train.py's "System info" report in this process: it queries pip and the compilers in
    subprocesses, about two seconds of every run.  (Runs in subprocesses still make it.)"""
    from gopro_prompts import train

    saved = train.collect_env_info
    train.collect_env_info = lambda: ENV_REPORT_STUB
    try:
        yield
    finally:
        train.collect_env_info = saved


def clip_trainers():
    """Names of the registered trainers that are this package's ``ClipTrainer`` subclasses."""
    from gopro_prompts.dassl_compat import TRAINER_REGISTRY
    from gopro_prompts.registry import register_all
    from gopro_prompts.trainers.base import ClipTrainer

    register_all()
    return sorted(
        name for name, cls in TRAINER_REGISTRY._obj_map.items()
        if isinstance(cls, type) and issubclass(cls, ClipTrainer)
        and cls.__module__.startswith("gopro_prompts.trainers.")
    )


def offline_trainer(trainer_name, root, out, *opts):
    """A trainer on the embedded offline default, built but not trained (no "System info" report)."""
    from gopro_prompts import train

    assert os.environ.get(train.OFFLINE_ROOT_ENV) == root, "use the synthetic_root fixture"
    with env_report_skipped():
        return train.main(["--trainer", trainer_name, "--output-dir", str(out), "--no-train",
                           "DATASET.NUM_SHOTS", "2", *opts])


def one_step_run(trainer, out):
    """One training step of ``trainer`` on its first batch, then its checkpoint saved under ``out``.

    Returns a dict: the trainer, ``out``, the registered (checkpointed) module, the names of the
    model's parameters that require gradients (every name of a shared one), its state before the step
    (:func:`model_state`) and the step's loss summary.
    """
    (name,) = trainer.get_model_names()
    registered = trainer._models[name]
    learnable = {n for n, p in trainer.model.named_parameters(remove_duplicate=False) if p.requires_grad}
    before = model_state(trainer.model)
    trainer.set_model_mode("train")
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, len(trainer.train_loader_x)
    summary = trainer.forward_backward(next(iter(trainer.train_loader_x)))
    trainer.save_model(0, str(out))
    return dict(trainer=trainer, out=out, name=name, registered=registered, learnable=learnable,
                before=before, summary=summary)


def model_state(model):
    """Every parameter and buffer of ``model`` (non-persistent buffers too), cloned, under each of
    its names (a tensor shared by two submodules appears twice)."""
    state = {n: p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}
    state.update({n: b.detach().clone() for n, b in model.named_buffers(remove_duplicate=False)})
    return state


def module_prefix(model, module):
    """The name under which ``module`` sits inside ``model`` ("" for the model itself), with a dot."""
    for name, sub in model.named_modules():
        if sub is module:
            return name + "." if name else ""
    raise AssertionError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")


def eval_logits(trainer, images):
    """The evaluation logits of ``trainer``'s model, as ``test()`` computes them (begin/end_eval around)."""
    import torch

    trainer.set_model_mode("eval")
    model = trainer.model
    with torch.inference_mode(), trainer.precision.autocast():
        begin, end = getattr(model, "begin_eval", None), getattr(model, "end_eval", None)
        if begin is not None:
            begin()
        try:
            return model(images.to(trainer.device)).float().cpu()
        finally:
            if end is not None:
                end()


def chance(n_classes):
    """Accuracy (%) of guessing among ``n_classes`` classes."""
    return 100.0 / n_classes


def assert_beats_chance(accuracy, n_classes, factor):
    """``accuracy`` (%) is at least ``factor`` times chance: the pipeline classifies, it does not guess."""
    assert accuracy >= factor * chance(n_classes), (
        f"accuracy {accuracy:.2f}% is below {factor} x chance ({chance(n_classes):.2f}% for {n_classes} classes)")


def dataset_cfg(root, name, shots=-1, seed=1, subsample="all"):
    """The backend's default config for dataset ``name`` under ``root`` (few-shot K, seed, base/new/all)."""
    from gopro_prompts.dassl_compat import get_cfg_default

    cfg = get_cfg_default()
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = shots
    cfg.SEED = seed
    return cfg


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
