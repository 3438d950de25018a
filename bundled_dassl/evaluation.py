"""Dassl's ``Classification`` evaluator and its registry (Dassl's ``dassl/evaluation/``)."""
from __future__ import annotations

import os.path as osp
from collections import OrderedDict, defaultdict

import torch

from .utils import Registry, check_availability, mkdir_if_missing

__all__ = [
    "EVALUATOR_REGISTRY", "EvaluatorBase", "Classification", "build_evaluator",
    "macro_f1_score", "confusion_matrix_normalized",
]

EVALUATOR_REGISTRY = Registry("EVALUATOR")


def build_evaluator(cfg, **kwargs):
    """Instantiate the evaluator named by ``cfg.TEST.EVALUATOR`` (printed with VERBOSE)."""
    name = cfg.TEST.EVALUATOR
    check_availability(name, EVALUATOR_REGISTRY.registered_names())
    if cfg.VERBOSE:
        print(f"Loading evaluator: {name}")
    return EVALUATOR_REGISTRY.get(name)(cfg, **kwargs)


class EvaluatorBase:
    """Interface of an evaluator: ``reset``, ``process(mo, gt)``, ``evaluate``."""

    def __init__(self, cfg):
        self.cfg = cfg

    def reset(self):
        raise NotImplementedError

    def process(self, mo, gt):
        raise NotImplementedError

    def evaluate(self):
        raise NotImplementedError


def macro_f1_score(y_true: list, y_pred: list) -> float:
    """Macro F1 (in [0, 1]) averaged over the labels present in ``y_true`` only.

    Equals sklearn's ``f1_score(y_true, y_pred, average="macro",
    labels=unique(y_true))``: a class that is only predicted is not averaged
    in, but its false positives still lower the other classes' scores.
    """
    t = torch.as_tensor(y_true, dtype=torch.long)
    p = torch.as_tensor(y_pred, dtype=torch.long)
    scores = []
    for label in torch.unique(t).tolist():
        is_t, is_p = t == label, p == label
        tp = int((is_t & is_p).sum())
        fp = int((~is_t & is_p).sum())
        fn = int((is_t & ~is_p).sum())
        scores.append(2.0 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0


def confusion_matrix_normalized(y_true: list, y_pred: list) -> torch.Tensor:
    """Row-normalised confusion matrix over the sorted union of true and predicted labels.

    Rows are true labels, columns predictions; a row with no true sample is all
    zeros (as sklearn's ``confusion_matrix(..., normalize="true")``).
    """
    t = torch.as_tensor(y_true, dtype=torch.long)
    p = torch.as_tensor(y_pred, dtype=torch.long)
    labels = torch.unique(torch.cat([t, p]))  # sorted
    index = {lab: i for i, lab in enumerate(labels.tolist())}
    n = len(index)
    cmat = torch.zeros(n, n, dtype=torch.float64)
    for a, b in zip(t.tolist(), p.tolist()):
        cmat[index[a], index[b]] += 1
    row_sums = cmat.sum(dim=1, keepdim=True)
    return torch.where(row_sums > 0, cmat / row_sums.clamp(min=1), torch.zeros_like(cmat))


@EVALUATOR_REGISTRY.register()
class Classification(EvaluatorBase):
    """Accuracy, error, macro-F1 and optional per-class accuracy / confusion matrix."""

    def __init__(self, cfg, lab2cname=None, **kwargs):
        super().__init__(cfg)
        self._lab2cname = lab2cname
        self._correct = 0
        self._total = 0
        self._per_class_res = None
        self._y_true = []
        self._y_pred = []
        if cfg.TEST.PER_CLASS_RESULT:
            if lab2cname is None:
                raise ValueError(
                    "TEST.PER_CLASS_RESULT needs class names: pass lab2cname to the evaluator"
                )
            self._per_class_res = defaultdict(list)

    def reset(self):
        self._correct = 0
        self._total = 0
        self._y_true = []
        self._y_pred = []
        if self._per_class_res is not None:
            self._per_class_res = defaultdict(list)

    def process(self, mo, gt):
        """Accumulate a batch: ``mo`` logits ``[B, C]``, ``gt`` labels ``[B]``."""
        pred = mo.max(1)[1]
        matches = pred.eq(gt).float()
        self._correct += int(matches.sum().item())
        self._total += gt.shape[0]
        self._y_true.extend(gt.detach().cpu().tolist())
        self._y_pred.extend(pred.detach().cpu().tolist())
        if self._per_class_res is not None:
            for label, hit in zip(gt.detach().cpu().tolist(), matches.cpu().tolist()):
                self._per_class_res[label].append(int(hit))

    def evaluate(self):
        """Print the ``=> result`` block (one-decimal percentages) and return the OrderedDict of results."""
        if self._total == 0:
            raise ValueError(
                "Classification.evaluate() called before any process(): the evaluated split is empty"
            )
        results = OrderedDict()
        acc = 100.0 * self._correct / self._total
        err = 100.0 - acc
        macro_f1 = 100.0 * macro_f1_score(self._y_true, self._y_pred)
        results["accuracy"] = acc
        results["error_rate"] = err
        results["macro_f1"] = macro_f1
        print(
            "=> result\n"
            f"* total: {self._total:,}\n"
            f"* correct: {self._correct:,}\n"
            f"* accuracy: {acc:.1f}%\n"
            f"* error: {err:.1f}%\n"
            f"* macro_f1: {macro_f1:.1f}%"
        )

        if self._per_class_res is not None:
            print("=> per-class result")
            accs = []
            for label in sorted(self._per_class_res):
                res = self._per_class_res[label]
                correct, total = sum(res), len(res)
                class_acc = 100.0 * correct / total
                accs.append(class_acc)
                print(
                    f"* class: {label} ({self._lab2cname[label]})\t"
                    f"total: {total:,}\t"
                    f"correct: {correct:,}\t"
                    f"acc: {class_acc:.1f}%"
                )
            mean_acc = sum(accs) / len(accs)
            print(f"* average: {mean_acc:.1f}%")
            results["perclass_accuracy"] = mean_acc

        if self.cfg.TEST.COMPUTE_CMAT:
            cmat = confusion_matrix_normalized(self._y_true, self._y_pred)
            mkdir_if_missing(self.cfg.OUTPUT_DIR)
            save_path = osp.join(self.cfg.OUTPUT_DIR, "cmat.pt")
            # Deliberate change: Dassl saves a NumPy array, which torch >= 2.6
            # refuses to load by default (weights_only=True); a float64 tensor
            # with the same values loads everywhere.
            torch.save(cmat, save_path)
            print(f"Confusion matrix is saved to {save_path}")

        return results
