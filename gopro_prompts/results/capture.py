"""``results.json`` after the final test of any Dassl trainer.

Dassl's ``test()`` returns only the first metric (accuracy); the evaluator's
full result dict (accuracy, error rate, macro F1) is lost.  The functions here
keep it and turn it into the run's ``results.json``
(:mod:`gopro_prompts.results.record`):

* our :class:`~gopro_prompts.trainers.base.ClipTrainer` wraps its evaluator
  in a :class:`ResultKeepingEvaluator` when it is built, and calls
  :func:`write_trainer_results` from its own ``test()``;
* ``train.py`` calls :func:`attach` on every other trainer it builds (one
  registered by a ``--plugin``): its ``test()`` is wrapped, on the instance
  only, to do the same.

A test of the validation split (Dassl's model selection during training)
writes nothing; the last test of the test split wins.
"""
from __future__ import annotations

import numbers
import os.path as osp
import sys

from gopro_prompts.logs import get_logger

logger = get_logger("results")

#: the file Dassl's ``load_model`` reads when no epoch is given (``dassl/engine/trainer.py``)
BEST_MODEL_FILE = "model-best.pth.tar"


class ResultKeepingEvaluator:
    """A Dassl evaluator that keeps the full result dict of its last ``evaluate()`` (``last_results``).

    Dassl's ``SimpleTrainer.test`` (``dassl/engine/trainer.py``) calls ``reset()``, ``process()``
    and ``evaluate()`` on ``trainer.evaluator`` and returns only the first value; this wrapper,
    put in its place by :func:`keep_evaluator_results`, passes every call through unchanged and
    keeps the dict.  ``reset()`` (the start of every test) forgets the previous one.
    """

    def __init__(self, evaluator):
        self.wrapped = evaluator
        self.last_results = None

    def reset(self):
        self.last_results = None
        return self.wrapped.reset()

    def evaluate(self):
        results = self.wrapped.evaluate()
        self.last_results = dict(results)
        return results

    def __getattr__(self, name):  # process(), the counters, ...: the wrapped evaluator's
        return getattr(self.wrapped, name)


def keep_evaluator_results(trainer) -> None:
    """Make ``trainer.evaluator`` a :class:`ResultKeepingEvaluator` (once)."""
    evaluator = getattr(trainer, "evaluator", None)
    if evaluator is not None and not isinstance(evaluator, ResultKeepingEvaluator):
        trainer.evaluator = ResultKeepingEvaluator(evaluator)


def last_results(trainer):
    """The full result dict of ``trainer``'s last evaluation (None: none since the last reset)."""
    evaluator = getattr(trainer, "evaluator", None)
    return evaluator.last_results if isinstance(evaluator, ResultKeepingEvaluator) else None


def final_split(trainer, split=None) -> str:
    """The split Dassl's ``test(split)`` evaluates: ``val`` only when asked and a val loader exists."""
    requested = split or trainer.cfg.TEST.SPLIT
    return "val" if (requested == "val" and getattr(trainer, "val_loader", None) is not None) else "test"


def results_epoch(trainer, run_info):
    """The epoch the evaluated weights come from (None: nothing trained, e.g. zero-shot).

    The weights of ``model-best.pth.tar`` (Dassl's ``SimpleTrainer.after_train`` with
    ``TEST.FINAL_MODEL best_val``, or ``--eval-only`` without ``--load-epoch``) come from the
    epoch stored in that file.
    """
    names = trainer.get_model_names()
    if not names:
        return None
    if run_info.get("eval_only"):
        if run_info.get("load_epoch") is None and run_info.get("model_dir"):
            return best_model_epoch(run_info["model_dir"], names)
        return run_info.get("load_epoch")
    cfg = trainer.cfg
    if cfg.TEST.FINAL_MODEL == "best_val" and not cfg.TEST.NO_TEST:
        epoch = best_model_epoch(trainer.output_dir, names)
        if epoch is not None:
            return epoch
    start, stop = getattr(trainer, "start_epoch", 0), getattr(trainer, "max_epoch", 0)
    if start >= stop:
        return start  # a finished run resumed: no epoch ran in this process
    return getattr(trainer, "epoch", start) + 1


def best_model_epoch(directory, names):
    """The ``epoch`` stored in ``<directory>/<name>/model-best.pth.tar`` of the first model, or None."""
    from gopro_prompts.dassl_compat import load_checkpoint

    path = osp.join(directory, names[0], BEST_MODEL_FILE)
    if not osp.isfile(path):
        return None
    try:
        checkpoint = load_checkpoint(path)
    except Exception:  # unreadable: the loading itself has reported it
        return None
    epoch = checkpoint.get("epoch") if isinstance(checkpoint, dict) else None
    return int(epoch) if isinstance(epoch, numbers.Integral) else None


def command_line_run_info(argv=None):
    """The run flags of a CoOp-style ``train.py`` command line (``sys.argv`` by default).

    Inside a host code base our ``train.py`` does not set ``trainer.run_info``;
    the host's ``train.py`` (CoOp, CoCoOp, MaPLe, PromptSRC ... all share
    Dassl's flags) was called with ``--config-file``, ``--eval-only``,
    ``--model-dir`` and ``--load-epoch``, which say what the run was.  Flags it
    does not have are simply absent; a malformed value yields nothing.
    """
    import argparse

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--config-file", default="")
    parser.add_argument("--dataset-config-file", default="")
    parser.add_argument("--eval-only", action="store_true")
    parser.add_argument("--model-dir", default="")
    parser.add_argument("--load-epoch", type=int, default=None)
    try:
        args, _ = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    except (argparse.ArgumentError, ValueError, SystemExit):
        return {}
    return {"config_file": args.config_file, "dataset_config_file": args.dataset_config_file,
            "eval_only": args.eval_only, "model_dir": args.model_dir, "load_epoch": args.load_epoch}


def write_trainer_results(trainer, split, metrics):
    """Write ``results.json`` of ``trainer``'s run into its output folder; returns the path."""
    from gopro_prompts import dassl_compat
    from gopro_prompts.results.record import build_record, write_results

    info = getattr(trainer, "run_info", None)
    if info is None:  # not built by our train.py: a host code base's command line
        info = command_line_run_info()
    record = build_record(trainer.cfg, metrics, split=split, epoch=results_epoch(trainer, info),
                          run_info=info, backend=dassl_compat.BACKEND)
    return write_results(trainer.output_dir, record)


def attach(trainer) -> None:
    """Make ``trainer`` (any Dassl trainer) write ``results.json`` after each test of the test split.

    Wraps ``trainer.test`` on the instance, so Dassl's ``after_train`` (which
    calls ``self.test()``) and an ``--eval-only`` run both go through it.
    When the trainer's ``test()`` bypasses the evaluator but returns a
    number, that number is recorded as the accuracy.
    """
    from gopro_prompts.trainers import distributed

    if getattr(trainer, "_results_attached", False):
        return
    original = trainer.test

    keep_evaluator_results(trainer)

    def test(split=None, *args, **kwargs):
        if isinstance(trainer.evaluator, ResultKeepingEvaluator):
            trainer.evaluator.last_results = None  # a test() that bypasses the evaluator keeps none
        result = original(split, *args, **kwargs)
        if final_split(trainer, split) != "test" or not distributed.is_main_process():
            return result
        metrics = last_results(trainer)
        if metrics is None and isinstance(result, numbers.Real):
            metrics = {"accuracy": float(result)}
        if metrics is None:
            logger.warning("%s.test() returned no metrics: no results.json written", type(trainer).__name__)
        else:
            write_trainer_results(trainer, "test", metrics)
        return result

    trainer.test = test
    trainer._results_attached = True
