"""Classification metrics, checked against numbers worked out by hand and against sklearn.metrics."""

import math

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score

from redgym.eval.classification import (
    accuracy,
    bootstrap_ci,
    classification_summary,
    cohen_kappa,
    confusion_matrix,
    macro_f1,
    per_class_f1,
    plot_confusion,
)

NONE = "<unparseable>"  # how sklearn sees None: a label outside `labels`, so never anyone's false positive

# Two classes; one 'pos' item came back unparseable.
#          true pos row: pos 3, neg 1, None 1      true neg row: pos 1, neg 4
Y2 = ["pos"] * 5 + ["neg"] * 5
P2 = ["pos", "pos", "pos", "neg", None, "neg", "neg", "neg", "neg", "pos"]

# Three classes (a true/false/neither judge):
#   T row: T 2, F 1, N 0, None 1     F row: T 0, F 2, N 1     N row: T 1, F 0, N 1, None 1
L3 = ["true", "false", "neither"]
Y3 = ["true"] * 4 + ["false"] * 3 + ["neither"] * 3
P3 = ["true", "true", "false", None, "false", "false", "neither", "neither", "true", None]


def sk(values):
    return [NONE if v is None else v for v in values]


def test_confusion_matrices_by_hand():
    assert confusion_matrix(Y2, P2, ["pos", "neg"]).tolist() == [[3, 1, 1], [1, 4, 0]]
    assert confusion_matrix(Y3, P3, L3).tolist() == [[2, 1, 0, 1], [0, 2, 1, 0], [1, 0, 1, 1]]
    with pytest.raises(ValueError, match="'maybe'"):
        confusion_matrix(["true"], ["maybe"], L3)
    with pytest.raises(ValueError, match="not one of"):
        confusion_matrix([None], ["true"], L3)  # a true label is never unparseable


def test_two_class_f1_and_accuracy_by_hand():
    # pos: tp 3, fp 1, fn 2 (one of them unparseable) -> 6/9;  neg: tp 4, fp 1, fn 1 -> 8/10
    f1 = per_class_f1(Y2, P2, ["pos", "neg"])
    assert f1 == pytest.approx({"pos": 2 / 3, "neg": 0.8}, abs=1e-12)
    assert macro_f1(Y2, P2, ["pos", "neg"]) == pytest.approx((2 / 3 + 0.8) / 2, abs=1e-12)
    assert accuracy(Y2, P2) == 0.7
    assert macro_f1(Y2, P2, ["pos", "neg"]) == pytest.approx(
        f1_score(sk(Y2), sk(P2), labels=["pos", "neg"], average="macro"), abs=1e-12
    )


def test_three_class_f1_by_hand_and_against_sklearn():
    # true: tp 2, fp 1, fn 2 -> 4/7;  false: tp 2, fp 1, fn 1 -> 2/3;  neither: tp 1, fp 1, fn 2 -> 2/5
    assert per_class_f1(Y3, P3, L3) == pytest.approx({"true": 4 / 7, "false": 2 / 3, "neither": 2 / 5}, abs=1e-12)
    assert macro_f1(Y3, P3, L3) == pytest.approx(172 / 315, abs=1e-12)
    assert macro_f1(Y3, P3, L3) == pytest.approx(f1_score(sk(Y3), sk(P3), labels=L3, average="macro"), abs=1e-12)
    assert accuracy(Y3, P3) == 0.5


def test_unparseable_is_a_miss_but_never_a_false_positive():
    """Turning a wrong label into None must leave the other class's precision (so its F1) untouched or better."""
    wrong = ["pos", "neg"]
    unparsed = ["pos", None]
    truth = ["pos", "pos"]
    assert per_class_f1(truth, wrong, wrong)["pos"] == per_class_f1(truth, unparsed, wrong)["pos"] == 2 / 3
    assert math.isnan(per_class_f1(truth, unparsed, wrong)["neg"])  # never true, never predicted: undefined
    assert per_class_f1(truth, wrong, wrong)["neg"] == 0.0  # a real false positive
    assert macro_f1(["pos", "neg"], [None, None], ["pos", "neg"]) == 0.0


def test_absent_class_is_left_out_of_the_macro_average_like_sklearns_nan_option():
    y, p = ["a", "a", "b"], ["a", "b", "b"]
    labels = ["a", "b", "c"]
    assert math.isnan(per_class_f1(y, p, labels)["c"])
    assert macro_f1(y, p, labels) == pytest.approx(
        f1_score(y, p, labels=labels, average="macro", zero_division=np.nan), abs=1e-12
    )
    assert macro_f1(y, p, labels) == pytest.approx((2 / 3 + 2 / 3) / 2, abs=1e-12)


def test_cohen_kappa_by_hand_and_against_sklearn():
    # 50 items: both yes 20, a yes / b no 5, a no / b yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b, ["yes", "no"]) == pytest.approx(0.4, abs=1e-12)
    assert cohen_kappa(a, b, ["yes", "no"]) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    assert cohen_kappa(a, a, ["yes", "no"]) == 1.0
    assert cohen_kappa(Y3, P3, L3) == pytest.approx(cohen_kappa_score(sk(Y3), sk(P3)), abs=1e-12)


def test_bootstrap_ci_brackets_the_estimate_and_is_seeded():
    y = ["a"] * 100
    p = ["a"] * 50 + ["b"] * 50
    lo, hi = bootstrap_ci(accuracy, y, p, n=1000, seed=0)
    # binomial sd of a 0.5 rate over 100 items is 0.05, so the 95% interval is about 0.40 .. 0.60
    assert 0.37 < lo < 0.45 and 0.55 < hi < 0.63
    assert bootstrap_ci(accuracy, y, p, n=1000, seed=0) == (lo, hi)
    assert bootstrap_ci(accuracy, y, p, n=1000, seed=1) != (lo, hi)
    assert bootstrap_ci(accuracy, y, y, n=200) == (1.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_ci(accuracy, [], []))


def test_summary_collects_every_number():
    s = classification_summary(Y3, P3, L3, n_boot=300, seed=0)
    assert s["n"] == 10 and s["unparseable"] == 2 and s["unparseable_rate"] == 0.2
    assert s["accuracy"]["value"] == 0.5 and s["macro_f1"]["value"] == pytest.approx(172 / 315)
    for key in ("accuracy", "macro_f1"):
        lo, hi = s[key]["ci95"]
        assert lo <= s[key]["value"] <= hi and lo < hi and s[key]["higher_is_better"] is True
    assert s["per_class_f1"] == pytest.approx({"true": 4 / 7, "false": 2 / 3, "neither": 2 / 5})
    assert s["confusion_matrix"] == [[2, 1, 0, 1], [0, 2, 1, 0], [1, 0, 1, 1]]
    assert s["labels"] == L3


def test_plot_confusion_writes_a_png(tmp_path):
    path = plot_confusion(confusion_matrix(Y3, P3, L3), L3, tmp_path / "plots" / "confusion.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
