"""Diversity of a set of utterances: distinct-n, self-BLEU, embedding distance. Pure functions.

Per-text variants (``self_bleu_per_text``, ``embedding_distance_per_text``) score each text against the whole
set, so their mean is the corpus value and a bootstrap over conversations can resample them.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

_TOKEN = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens: ``"Hi, you!" -> ["hi", ",", "you", "!"]``."""
    return _TOKEN.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: list[str] | list[list[str]], n: int) -> float:
    """Unique n-grams / all n-grams over the whole set (Li et al., 2016); 0 when there are none."""
    toks = [words(t) if isinstance(t, str) else t for t in texts]
    grams = [g for t in toks for g in ngrams(t, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def bleu_from_counts(
    clipped_totals: list[tuple[int, int]], c_len: int, ref_lengths: np.ndarray, epsilon: float = 0.1
) -> float:
    """Sentence BLEU from per-order ``(clipped matches, candidate n-grams)`` for n = 1..max_n.

    Uniform weights; a zero precision is smoothed to ``epsilon / max(total, 1)`` (NLTK's method1) so one missing
    order does not zero the score; brevity penalty against the closest of ``ref_lengths`` (K,), ties to the
    shorter. ``c_len`` must be > 0. Shared by self-BLEU and the novelty terms so both compute the same BLEU.
    """
    log_p = 0.0
    for clipped, total in clipped_totals:
        log_p += math.log(clipped / total if clipped else epsilon / max(total, 1))
    r = int(ref_lengths[np.lexsort((ref_lengths, np.abs(ref_lengths - c_len)))[0]])
    bp = 1.0 if c_len > r else math.exp(1 - r / c_len)
    return bp * math.exp(log_p / len(clipped_totals))


def self_bleu_per_text(texts: list[str], max_n: int = 4, epsilon: float = 0.1) -> list[float]:
    """BLEU-``max_n`` of each text with every *other* text as references (Zhu et al., 2018).

    Uniform weights; zero precisions are smoothed to ``epsilon / max(total, 1)`` (NLTK's method1); brevity
    penalty against the closest reference length. A set of one text has no references: ``[nan]``.
    """
    toks = [words(t) for t in texts]
    n_texts = len(toks)
    if n_texts < 2:
        return [math.nan] * n_texts
    # For each n-gram the largest and second-largest count over texts, so "max over the others" is O(1).
    counts = [[Counter(ngrams(t, n)) for n in range(1, max_n + 1)] for t in toks]
    top: list[dict[tuple, tuple[int, int, int]]] = [{} for _ in range(max_n)]  # gram -> (max1, argmax1, max2)
    for i, per_n in enumerate(counts):
        for k, c in enumerate(per_n):
            for g, v in c.items():
                m1, a1, m2 = top[k].get(g, (0, -1, 0))
                top[k][g] = (v, i, m1) if v > m1 else (m1, a1, max(m2, v))
    lengths = np.array([len(t) for t in toks])
    out = []
    for i, per_n in enumerate(counts):
        c_len = len(toks[i])
        if c_len == 0:
            out.append(0.0)
            continue
        clipped_totals = []
        for k, c in enumerate(per_n):
            clipped = 0
            for g, v in c.items():
                m1, a1, m2 = top[k][g]
                clipped += min(v, m2 if a1 == i else m1)
            clipped_totals.append((clipped, sum(c.values())))
        out.append(bleu_from_counts(clipped_totals, c_len, np.delete(lengths, i), epsilon))
    return out


def self_bleu(texts: list[str], max_n: int = 4) -> float:
    """Mean self-BLEU; higher means the texts repeat each other (less diverse)."""
    vals = [v for v in self_bleu_per_text(texts, max_n) if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def embedding_distance_per_text(emb: np.ndarray) -> np.ndarray:
    """(N, D) unit-norm rows -> (N,) mean cosine distance of each row to the other rows; nan for N < 2."""
    n = emb.shape[0]
    if n < 2:
        return np.full(n, np.nan)
    sim = emb @ emb.T
    return (n - 1 - (sim.sum(1) - np.diag(sim))) / (n - 1)


def embedding_diversity(emb: np.ndarray) -> float:
    """Mean pairwise cosine distance of unit-norm embeddings; higher = more diverse."""
    d = embedding_distance_per_text(emb)
    return float(d.mean()) if len(d) and not np.isnan(d).all() else math.nan
