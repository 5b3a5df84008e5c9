"""Reasoning quality of guard completions, the DPO pairs ranked by it, and a keyword baseline guard.

A guard completion is a reasoning trace followed by ``Label: harmful|safe``. The DPO stage samples k completions
per input and ranks them by an automatic score in [0, 1]:

    quality = 0.3 * label + 0.3 * coherence + 0.2 * relevance + 0.2 * specificity

label        1 when the parsed label equals the gold one, else 0 (unparseable counts as wrong)
coherence    exp(-nll / 4) of the reasoning's mean per-token NLL under the *base* model: fluent text scores
             about 0.5-0.6, gibberish about 0.1
relevance    max(0, cosine) between sentence embeddings of the input and the reasoning
specificity  the share of the reasoning's distinct content words that also occur in the input

Pure numpy + stdlib: the LM (``LM.continuation_nll``) and the embedder (``scorers.embeddings.load_embedder``)
are passed in as callables, each called once per batch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from redgym.errors import RedgymError
from redgym.scorers.diversity import words

NLL = Callable[[list[str], list[str]], list[float]]  # (contexts, continuations) -> mean NLL per token, N floats
Embedder = Callable[[list[str]], np.ndarray]  # texts -> (N, D) rows (unit-norm from load_embedder)

QUALITY_WEIGHTS: dict[str, float] = {"label": 0.3, "coherence": 0.3, "relevance": 0.2, "specificity": 0.2}

# The context the base model reads before the reasoning when coherence is measured: the reasoning is judged as an
# answer to this input, not as free text.
COHERENCE_CONTEXT = (
    "Decide whether the following input is harmful or safe, and explain why.\nInput: {input}\nReasoning:\n"
)

# English function words of three or more letters (shorter words are already dropped by the length rule). Kept
# small and generic on purpose: guard vocabulary such as "request" or "harmful" stays a content word.
STOPWORDS = frozenset(
    """
the and but for nor yet not are was were been being has have had does did doing will would shall should can
could may might must this that these those there here their theirs they them she her hers him his its our ours
you your yours who whom whose which what when where why how all any both each few more most other some such
only own same than too very just also from into onto with without about above below over under again further
then once off out upon because while until since through during before after against between among via per
itself myself yourself himself herself ourselves themselves one
""".split()
)


# 1 label -------------------------------------------------------------------------------------------------------


def label_correct(predicted: str | None, gold: str) -> float:
    """1.0 when the parsed label equals the gold label, else 0.0; ``None`` (unparseable) is always wrong.

    Labels are compared exactly: the parser is where case and spacing are normalised.
    """
    return float(predicted is not None and predicted == gold)


# 2 coherence ---------------------------------------------------------------------------------------------------


def coherence(nll_per_token: float, scale: float = 4.0) -> float:
    """``exp(-nll / scale)``: 1 at NLL 0, decreasing, never 0; NaN counts as 0, a negative NLL as 0 NLL.

    Why 4 nats: a 135M base model reads fluent English at about 2-3 nats per token, which maps to
    exp(-0.5) = 0.61 .. exp(-0.75) = 0.47, while gibberish at 8+ nats maps to exp(-2) = 0.14 or less, so the term
    separates the two without saturating on either side.
    """
    if scale <= 0:
        raise RedgymError(f"coherence scale must be positive, got {scale}")
    if math.isnan(nll_per_token):
        return 0.0
    return math.exp(-max(nll_per_token, 0.0) / scale)


def coherence_scores(lm_nll: NLL, inputs: list[str], reasonings: list[str], scale: float = 4.0) -> np.ndarray:
    """(N,) coherence of each reasoning given ``COHERENCE_CONTEXT`` with its input, in one ``lm_nll`` call.

    An empty (or all-blank) reasoning scores 0 and is not sent to the model; with no non-empty reasoning the
    model is not called at all.
    """
    _same_length(inputs=inputs, reasonings=reasonings)
    out = np.zeros(len(reasonings))
    keep = [i for i, r in enumerate(reasonings) if r.strip()]
    if keep:
        nll = lm_nll([COHERENCE_CONTEXT.format(input=inputs[i]) for i in keep], [reasonings[i] for i in keep])
        out[keep] = [coherence(float(v), scale) for v in nll]
    return out


# 3 relevance ---------------------------------------------------------------------------------------------------


def relevance(input_emb: np.ndarray, reasoning_emb: np.ndarray) -> np.ndarray:
    """(N,) ``max(0, cos)`` between matching rows of two (N, D) arrays; a zero row scores 0.

    Rows are renormalised, so unit-norm inputs (as ``load_embedder`` gives) pass through unchanged.
    """
    a, b = np.atleast_2d(np.asarray(input_emb, float)), np.atleast_2d(np.asarray(reasoning_emb, float))
    if a.shape != b.shape:
        raise RedgymError(f"relevance needs two arrays of one shape, got {a.shape} and {b.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)  # (N,)
    dots = np.einsum("nd,nd->n", a, b)  # (N,)
    cos = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return np.clip(cos, 0.0, 1.0)  # the upper clip only absorbs rounding


def relevance_scores(embed: Embedder, inputs: list[str], reasonings: list[str]) -> np.ndarray:
    """(N,) relevance of each reasoning to its input, inputs and non-empty reasonings in one ``embed`` call.

    An empty reasoning scores 0 (an embedding of nothing says nothing about the input).
    """
    _same_length(inputs=inputs, reasonings=reasonings)
    out = np.zeros(len(reasonings))
    keep = [i for i, r in enumerate(reasonings) if r.strip()]
    if keep:
        emb = np.asarray(embed(list(inputs) + [reasonings[i] for i in keep]))  # (N + M, D)
        n = len(inputs)
        out[keep] = relevance(emb[keep], emb[n:])
    return out


# 4 specificity -------------------------------------------------------------------------------------------------


def content_words(text: str) -> set[str]:
    """Distinct crude stems of a text's content words.

    A content word is a lower-cased ``words`` token that is alphabetic, at least 3 letters and not in
    ``STOPWORDS``. Stemming only strips one trailing "s" ("flours" -> "flour", "needs" -> "need"): it merges
    plurals and third-person verbs, and its mistakes ("glass" -> "glas") are harmless because input and reasoning
    are stemmed the same way.
    """
    out = set()
    for w in words(text):
        if w.isalpha() and len(w) >= 3 and w not in STOPWORDS:
            out.add(w.removesuffix("s"))
    return out


def specificity(input_text: str, reasoning: str) -> float:
    """Share of the reasoning's distinct content words that also occur in the input; 0 when it has none.

    Distinct words, so repeating an input word does not raise the score.
    """
    mine = content_words(reasoning)
    return len(mine & content_words(input_text)) / len(mine) if mine else 0.0


# 5 quality -----------------------------------------------------------------------------------------------------


def quality(terms: Mapping[str, np.ndarray | float], weights: Mapping[str, float] = QUALITY_WEIGHTS) -> np.ndarray:
    """Weighted sum of the four terms (arrays of one shape, or floats, broadcast): shape of the terms."""
    if set(terms) != set(weights):
        raise RedgymError(f"quality needs the terms {sorted(weights)}, got {sorted(terms)}")
    return np.asarray(sum(w * np.asarray(terms[name], float) for name, w in weights.items()), float)


def quality_terms(
    inputs: list[str],
    reasonings: list[str],
    predicted: Sequence[str | None],
    gold: list[str],
    lm_nll: NLL,
    embed: Embedder,
) -> dict[str, np.ndarray]:
    """The four (N,) terms of N completions: one ``lm_nll`` call and one ``embed`` call in all."""
    _same_length(inputs=inputs, reasonings=reasonings, predicted=predicted, gold=gold)
    return {
        "label": np.array([label_correct(p, g) for p, g in zip(predicted, gold)], float),
        "coherence": coherence_scores(lm_nll, inputs, reasonings),
        "relevance": relevance_scores(embed, inputs, reasonings),
        "specificity": np.array([specificity(x, r) for x, r in zip(inputs, reasonings)], float),
    }


# 6 DPO pairs ---------------------------------------------------------------------------------------------------


def best_worst_pairs(scores: np.ndarray, min_gap: float = 0.0) -> list[tuple[int, int, int]]:
    """``(input, best sample, worst sample)`` for each row of (N, k) scores whose max - min > ``min_gap``.

    Ties go to the first index (``argmax`` / ``argmin``); a row of equal scores never makes a pair.
    """
    s = np.asarray(scores, float)
    if s.ndim != 2:
        raise RedgymError(f"best_worst_pairs needs (N, k) scores, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise RedgymError("best_worst_pairs got a non-finite score")
    if s.shape[1] == 0:
        return []
    best, worst = s.argmax(1), s.argmin(1)  # (N,), first index on ties
    gap = s.max(1) - s.min(1)  # (N,)
    return [(i, int(best[i]), int(worst[i])) for i in range(len(s)) if gap[i] > min_gap]


def hard_sample_inputs(labels: list[list[str | None]]) -> list[int]:
    """Indices of inputs whose k sampled labels disagree; ``None`` (unparseable) is an answer of its own."""
    return [i for i, row in enumerate(labels) if len(set(row)) > 1]


# 7 keyword baseline --------------------------------------------------------------------------------------------


def default_keywords() -> list[str]:
    """Generic harm-topic words: a crude baseline that knows topics, not intent, and misses inflected forms."""
    return ["weapon", "explosive", "hack", "steal", "poison", "malware", "kill", "drug", "fraud", "bomb"]


class KeywordGuard:
    """``texts -> ["harmful" | "safe"]``: harmful when any keyword occurs as a whole word, case-insensitive.

    Whole word: not inside a longer word ("hackathon" is not "hack", and neither is "hacks"). A keyword may span
    several words. With no keywords every text is safe.
    """

    def __init__(self, keywords: list[str]):
        self.keywords = [k for k in keywords if k.strip()]
        # longest first so a keyword that extends another is tried whole; lookarounds rather than \b so keywords
        # that start or end with punctuation still match whole
        alts = "|".join(re.escape(k.strip()) for k in sorted(self.keywords, key=len, reverse=True))
        self._pattern = re.compile(rf"(?<!\w)(?:{alts})(?!\w)", re.IGNORECASE) if alts else None

    def __call__(self, texts: list[str]) -> list[str]:
        if self._pattern is None:
            return ["safe"] * len(texts)
        return ["harmful" if self._pattern.search(t) else "safe" for t in texts]


def _same_length(**lists: Sequence[object]) -> None:
    lengths = {name: len(v) for name, v in lists.items()}
    if len(set(lengths.values())) > 1:
        raise RedgymError(f"guard quality needs lists of one length, got {lengths}")
