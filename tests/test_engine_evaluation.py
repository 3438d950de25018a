"""bundled_dassl.evaluation and metrics (Dassl's ``dassl/evaluation/``, ``dassl/metrics/``)."""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gopro_prompts.bundled_dassl.config import get_cfg_default
from gopro_prompts.bundled_dassl.evaluation import (
    EVALUATOR_REGISTRY,
    Classification,
    EvaluatorBase,
    build_evaluator,
    macro_f1_score,
)
from gopro_prompts.bundled_dassl.metrics import compute_accuracy

pytestmark = pytest.mark.bundled_only(
    reason="tests gopro_prompts.bundled_dassl.evaluation and .metrics directly: "
           "the same code on every leg, so the bundled leg runs it")


def _cfg(tmp_path=None, **test_keys):
    cfg = get_cfg_default()
    for k, v in test_keys.items():
        setattr(cfg.TEST, k, v)
    if tmp_path is not None:
        cfg.OUTPUT_DIR = str(tmp_path)
    return cfg


def _logits(preds, num_classes):
    return torch.nn.functional.one_hot(torch.as_tensor(preds), num_classes).float()


def test_build_evaluator_prints_and_checks_name(capsys):
    ev = build_evaluator(_cfg(), lab2cname={0: "a"})
    assert isinstance(ev, Classification) and isinstance(ev, EvaluatorBase)
    assert capsys.readouterr().out == "Loading evaluator: Classification\n"
    cfg = _cfg()
    cfg.VERBOSE = False
    build_evaluator(cfg)
    assert capsys.readouterr().out == ""
    assert EVALUATOR_REGISTRY.registered_names() == ["Classification"]
    with pytest.raises(ValueError, match=r"but got \[Clasification\] \(do you mean \[Classification\]\?\)"):
        build_evaluator(_cfg(EVALUATOR="Clasification"))


def test_result_block_with_thousands_separators(capsys):
    # 1,881 samples, 1,725 correct (OxfordPets-sized test set).
    ev = Classification(_cfg())
    labels = torch.arange(1881) % 37
    preds = labels.clone()
    preds[:156] = (preds[:156] + 1) % 37
    for start in range(0, 1881, 100):  # several batches
        ev.process(_logits(preds[start:start + 100], 37), labels[start:start + 100])
    res = ev.evaluate()
    out = capsys.readouterr().out
    expected_f1 = 100 * macro_f1_score(labels.tolist(), preds.tolist())
    assert out == (
        "=> result\n* total: 1,881\n* correct: 1,725\n* accuracy: 91.7%\n* error: 8.3%\n"
        f"* macro_f1: {expected_f1:.1f}%\n"
    )
    assert list(res) == ["accuracy", "error_rate", "macro_f1"]
    assert res["accuracy"] == pytest.approx(100 * 1725 / 1881)
    assert res["error_rate"] == pytest.approx(100 - 100 * 1725 / 1881)
    assert res["macro_f1"] == pytest.approx(expected_f1)


def test_macro_f1_ignores_class_only_predicted(capsys):
    ev = Classification(_cfg())
    # class 2 is predicted once but never a true label
    ev.process(_logits([0, 2, 1, 1], 3), torch.tensor([0, 0, 1, 1]))
    res = ev.evaluate()
    # class 0: TP 1, FP 0, FN 1 -> 2/3; class 1: F1 1 -> mean 5/6 (not 5/9 with class 2)
    assert res["macro_f1"] == pytest.approx(100 * 5 / 6)
    assert "* macro_f1: 83.3%" in capsys.readouterr().out


def _f1_by_counts(y_true, y_pred):
    labels = sorted(set(y_true))
    f1s = []
    for c in labels:
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred))
        fp = sum(t != c and p == c for t, p in zip(y_true, y_pred))
        fn = sum(t == c and p != c for t, p in zip(y_true, y_pred))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn)
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return sum(f1s) / len(f1s)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 6)), min_size=1, max_size=40))
def test_macro_f1_equals_precision_recall_definition(pairs):
    y_true, y_pred = [t for t, _ in pairs], [p for _, p in pairs]
    assert macro_f1_score(y_true, y_pred) == pytest.approx(_f1_by_counts(y_true, y_pred))


def test_per_class_result_lines(capsys):
    lab2cname = {1: "cat", 0: "dog", 2: "sea turtle"}
    ev = Classification(_cfg(PER_CLASS_RESULT=True), lab2cname=lab2cname)
    ev.process(_logits([0, 0, 1, 1, 2, 0], 3), torch.tensor([0, 0, 1, 2, 2, 2]))
    res = ev.evaluate()
    out = capsys.readouterr().out
    assert out.endswith(
        "=> per-class result\n"
        "* class: 0 (dog)\ttotal: 2\tcorrect: 2\tacc: 100.0%\n"
        "* class: 1 (cat)\ttotal: 1\tcorrect: 1\tacc: 100.0%\n"
        "* class: 2 (sea turtle)\ttotal: 3\tcorrect: 1\tacc: 33.3%\n"
        "* average: 77.8%\n"
    )
    assert list(res) == ["accuracy", "error_rate", "macro_f1", "perclass_accuracy"]
    assert res["perclass_accuracy"] == pytest.approx((100 + 100 + 100 / 3) / 3)
    with pytest.raises(ValueError, match="lab2cname"):
        Classification(_cfg(PER_CLASS_RESULT=True))


def test_reset_clears_everything(capsys):
    ev = Classification(_cfg(PER_CLASS_RESULT=True), lab2cname={0: "a", 1: "b"})
    ev.process(_logits([1, 1], 2), torch.tensor([0, 0]))
    ev.reset()
    ev.process(_logits([1], 2), torch.tensor([1]))
    res = ev.evaluate()
    assert res["accuracy"] == 100.0 and res["perclass_accuracy"] == 100.0
    assert "* total: 1\n" in capsys.readouterr().out
    ev.reset()
    with pytest.raises(ValueError, match="empty"):
        ev.evaluate()


def test_confusion_matrix_saved(tmp_path, capsys):
    ev = Classification(_cfg(tmp_path, COMPUTE_CMAT=True))
    # labels 0,1 true; 3 only predicted -> union [0, 1, 3]
    ev.process(_logits([0, 3, 1, 1, 0], 4), torch.tensor([0, 0, 1, 1, 1]))
    ev.evaluate()
    path = os.path.join(str(tmp_path), "cmat.pt")
    assert f"Confusion matrix is saved to {path}\n" in capsys.readouterr().out
    cmat = torch.load(path, weights_only=True)
    expected = torch.tensor([[0.5, 0.0, 0.5], [1 / 3, 2 / 3, 0.0], [0.0, 0.0, 0.0]],
                            dtype=torch.float64)
    torch.testing.assert_close(cmat, expected)


def test_argmax_ties_take_first_index():
    ev = Classification(_cfg())
    ev.process(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([0]))
    assert ev._y_pred == [0]


# ----------------------------------------------------------------------------- compute_accuracy
def test_compute_accuracy_topk_and_tuple_input():
    output = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    target = torch.tensor([1, 1, 0, 2])
    top1, top2 = compute_accuracy(output, target, topk=(1, 2))
    assert top1.shape == (1,) and top2.shape == (1,)
    assert top1.item() == pytest.approx(25.0)
    assert top2.item() == pytest.approx(50.0)
    (acc,) = compute_accuracy((output, "aux"), target)
    assert acc.item() == pytest.approx(25.0)
    assert compute_accuracy(output, target, topk=(3,))[0].item() == pytest.approx(100.0)
