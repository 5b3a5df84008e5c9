"""How much of a defender's toxicity is echo: the split of its mean toxicity by whether the adversary turn it answers
is itself toxic, and which part of that split moves between seeds.

Over exchanges (adversary turn, defender reply), with p the share of adversary turns above the threshold,
``after_toxic`` the defender's mean toxicity after those turns and ``after_clean`` after the others,

    defender_toxicity = p * after_toxic + (1 - p) * after_clean.

A trained adversary that raises defender toxicity only through p (more toxic turns, answered as often as before) is
echo; a rise of ``after_clean`` is the stealthy kind (``defender_toxicity_clean_adversary`` in the reports).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EchoSplit:
    p_toxic: float  # share of adversary turns above the threshold
    after_toxic: float  # mean defender toxicity after a toxic adversary turn (NaN when there is none)
    after_clean: float  # ... after a clean one (NaN when there is none)

    @property
    def parts(self) -> tuple[float, float]:
        """(p * after_toxic, (1 - p) * after_clean): what the exchanges after toxic and after clean adversary turns
        add to the defender's mean toxicity (0 for a side with no exchange, whose mean is NaN)."""
        return (
            self.p_toxic * self.after_toxic if self.p_toxic > 0 else 0.0,
            (1.0 - self.p_toxic) * self.after_clean if self.p_toxic < 1 else 0.0,
        )

    @property
    def defender_toxicity(self) -> float:
        return float(sum(self.parts))


def echo_split(tox_adversary: np.ndarray, tox_defender: np.ndarray, threshold: float = 0.5) -> EchoSplit:
    """The split over exchanges given as equal-shaped arrays of the adversary turn's and the reply's toxicity."""
    a, d = np.asarray(tox_adversary, float).ravel(), np.asarray(tox_defender, float).ravel()
    if a.shape != d.shape or not a.size:
        raise ValueError("echo_split needs equal-shaped, non-empty score arrays")
    toxic = a > threshold
    mean = lambda m: float(d[m].mean()) if m.any() else math.nan  # noqa: E731
    return EchoSplit(float(toxic.mean()), mean(toxic), mean(~toxic))


def seed_spread_shares(splits: list[EchoSplit]) -> dict[str, float]:
    """Which factor carries the seed-to-seed spread of defender toxicity: for each of p_toxic, after_toxic and
    after_clean, the variance across seeds of the defender toxicity with only that factor varying (the other two
    at their across-seed means), as a share of the variance of the actual values. The shares need not sum to 1
    (the factors co-vary); NaN with fewer than two seeds or no spread."""
    names = ("p_toxic", "after_toxic", "after_clean")
    x = np.array([[getattr(s, n) for n in names] for s in splits], dtype=float)  # (S, 3)
    total = np.array([s.defender_toxicity for s in splits]).var()
    if len(splits) < 2 or not total > 0 or np.isnan(x).any():
        return dict.fromkeys(names, math.nan)
    centre = x.mean(0)
    out = {}
    for j, name in enumerate(names):
        y = np.tile(centre, (len(splits), 1))
        y[:, j] = x[:, j]
        out[name] = float((y[:, 0] * y[:, 1] + (1 - y[:, 0]) * y[:, 2]).var() / total)
    return out


def one_reply_icc(replies: np.ndarray) -> float:
    """One-way intra-class correlation ICC(1) of an (n, K) array of K reply scores for each of n turns: the share
    of one reply's variance that belongs to its turn rather than to reply-to-reply noise (the mean of K replies
    then has reliability K * icc / (1 + (K - 1) * icc)). NaN with fewer than 2 turns, K < 2 or no variance."""
    x = np.asarray(replies, dtype=float)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        return math.nan
    n, k = x.shape
    means = x.mean(1)
    msb = k * means.var(ddof=1)  # between turns
    msw = ((x - means[:, None]) ** 2).sum() / (n * (k - 1))  # within a turn
    denom = msb + (k - 1) * msw
    return float((msb - msw) / denom) if denom > 0 else math.nan


def gain_shares(before: EchoSplit, after: EchoSplit) -> tuple[float, float]:
    """How a change of defender toxicity from ``before`` to ``after`` divides between the exchanges after toxic
    adversary turns (echo: p * after_toxic) and after clean ones ((1 - p) * after_clean); the two shares sum to 1.
    NaN when the toxicity did not change."""
    (tb, cb), (ta, ca) = before.parts, after.parts
    gain = (ta + ca) - (tb + cb)
    if gain == 0:
        return math.nan, math.nan
    return (ta - tb) / gain, (ca - cb) / gain
