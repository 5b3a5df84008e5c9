"""Agreement metrics for a classifier or an LM judge against reference labels, with item-bootstrap CIs.

Predictions may be ``None``: an output that could not be parsed into a label. It is kept apart rather than
dropped, since dropping would flatter a judge that fails on hard items: it sits in an extra last column of the
confusion matrix, counts as a miss for its true class (recall) and as a false positive for no class (precision).
A class that is neither true nor predicted anywhere has an undefined F1 (``nan``); ``macro_f1`` averages the
defined ones (sklearn's ``zero_division=np.nan``), which keeps bootstrap resamples that miss a rare class honest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from redgym.eval.plots import plt, save

Label = str | None
Metric = Callable[[Sequence[str], Sequence[Label]], float]


def _codes(values: Sequence[Label], labels: list[str], allow_none: bool) -> np.ndarray:
    """Labels -> column indices (N,); ``None`` -> ``len(labels)``; any other name is a caller bug."""
    index = {label: i for i, label in enumerate(labels)}
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if v is None and allow_none:
            out[i] = len(labels)
        elif v in index:
            out[i] = index[v]
        else:
            raise ValueError(f"label {v!r} is not one of {labels}")
    return out


def confusion_matrix(y_true: Sequence[str], y_pred: Sequence[Label], labels: list[str]) -> np.ndarray:
    """(C, C + 1) counts: row = true label, column = predicted label, last column = unparseable (``None``)."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    c = len(labels)
    t, p = _codes(y_true, labels, allow_none=False), _codes(y_pred, labels, allow_none=True)
    return np.bincount(t * (c + 1) + p, minlength=c * (c + 1)).reshape(c, c + 1)


def _f1_from_cm(cm: np.ndarray) -> np.ndarray:
    """(C,) F1 per class from a (C, C + 1) matrix; nan where the class is neither true nor predicted."""
    tp = np.diag(cm[:, :-1]).astype(np.float64)
    fp = cm[:, :-1].sum(axis=0) - tp  # real predictions only: the unparseable column is nobody's false positive
    fn = cm.sum(axis=1) - tp  # includes the unparseable column
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def per_class_f1(y_true: Sequence[str], y_pred: Sequence[Label], labels: list[str]) -> dict[str, float]:
    return dict(zip(labels, _f1_from_cm(confusion_matrix(y_true, y_pred, labels)).tolist()))


def macro_f1(y_true: Sequence[str], y_pred: Sequence[Label], labels: list[str]) -> float:
    f1 = _f1_from_cm(confusion_matrix(y_true, y_pred, labels))
    return float(np.nanmean(f1)) if np.isfinite(f1).any() else math.nan


def accuracy(y_true: Sequence[str], y_pred: Sequence[Label]) -> float:
    """Share of exact matches; an unparseable prediction is wrong."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    return float(np.mean([t == p for t, p in zip(y_true, y_pred)])) if len(y_true) else math.nan


def cohen_kappa(a: Sequence[Label], b: Sequence[Label], labels: list[str]) -> float:
    """Chance-corrected agreement of two raters; ``None`` (no answer) is one more category for either rater."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} ratings against {len(b)}")
    c = len(labels) + 1
    table = np.bincount(_codes(a, labels, True) * c + _codes(b, labels, True), minlength=c * c).reshape(c, c)
    n = table.sum()
    if n == 0:
        return math.nan
    p_observed = np.trace(table) / n
    p_chance = float((table.sum(axis=1) / n) @ (table.sum(axis=0) / n))
    return float((p_observed - p_chance) / (1 - p_chance)) if p_chance < 1 else math.nan


def bootstrap_ci(
    metric: Metric, y_true: Sequence[str], y_pred: Sequence[Label], n: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of ``metric(y_true, y_pred)`` over ``n`` resamples of the items."""
    if not len(y_true):
        return (math.nan, math.nan)
    draws = np.random.default_rng(seed).integers(0, len(y_true), size=(n, len(y_true)))
    stats = np.array([metric([y_true[i] for i in idx], [y_pred[i] for i in idx]) for idx in draws])
    stats = stats[~np.isnan(stats)]
    if not len(stats):
        return (math.nan, math.nan)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return (float(lo), float(hi))


def classification_summary(
    y_true: Sequence[str], y_pred: Sequence[Label], labels: list[str], n_boot: int = 1000, seed: int = 0
) -> dict:
    """Everything a report needs: accuracy and macro-F1 with CIs (same resamples), per-class F1, unparseables."""
    cm = confusion_matrix(y_true, y_pred, labels)
    n = len(y_true)
    unparseable = int(cm[:, -1].sum())

    def macro(t: Sequence[str], p: Sequence[Label]) -> float:
        return macro_f1(t, p, labels)

    return {
        "n": n,
        "accuracy": {
            "value": accuracy(y_true, y_pred),
            "ci95": list(bootstrap_ci(accuracy, y_true, y_pred, n_boot, seed)),
            "higher_is_better": True,
        },
        "macro_f1": {
            "value": macro(y_true, y_pred),
            "ci95": list(bootstrap_ci(macro, y_true, y_pred, n_boot, seed)),
            "higher_is_better": True,
        },
        "per_class_f1": per_class_f1(y_true, y_pred, labels),
        "unparseable": unparseable,
        "unparseable_rate": unparseable / n if n else math.nan,
        "labels": list(labels),
        "confusion_matrix": cm.tolist(),  # rows: labels (true); columns: labels + ["unparseable"] (predicted)
    }


def plot_confusion(cm: np.ndarray, labels: list[str], path: str | Path) -> Path:
    """Save a (C, C) or (C, C + 1) count matrix as an annotated heat map PNG."""
    cm = np.asarray(cm)
    columns = list(labels) + (["unparseable"] if cm.shape[1] == len(labels) + 1 else [])
    fig, ax = plt.subplots(figsize=(1.2 * len(columns) + 2, 1.0 * len(labels) + 1.5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = cm.max() / 2 if cm.size else 0
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(int(v)), ha="center", va="center", color="white" if v > threshold else "black")
    path = Path(path)
    save(fig, path)
    return path
