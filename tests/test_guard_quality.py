import math

import numpy as np
import pytest

from redgym.errors import RedgymError
from redgym.guard.quality import (
    COHERENCE_CONTEXT,
    QUALITY_WEIGHTS,
    KeywordGuard,
    best_worst_pairs,
    coherence,
    coherence_scores,
    content_words,
    default_keywords,
    hard_sample_inputs,
    label_correct,
    quality,
    quality_terms,
    relevance,
    relevance_scores,
    specificity,
)

INPUT = "bread recipe with flour"
REASONING = "the recipe needs flour"


class FakeNLL:
    """A stand-in for ``LM.continuation_nll``: a fixed NLL per continuation, every call recorded."""

    def __init__(self, nll: dict[str, float]):
        self.nll, self.calls = nll, []

    def __call__(self, contexts, continuations):
        self.calls.append((list(contexts), list(continuations)))
        return [self.nll[c] for c in continuations]


class FakeEmbed:
    """A stand-in for the MiniLM embedder: fixed 2-D vectors per text, every call recorded."""

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors, self.calls = vectors, []

    def __call__(self, texts):
        self.calls.append(list(texts))
        return np.array([self.vectors[t] for t in texts], float)


# 1 label


def test_label_correct():
    assert label_correct("harmful", "harmful") == 1.0
    assert label_correct("safe", "harmful") == 0.0
    assert label_correct(None, "safe") == 0.0  # unparseable is wrong


# 2 coherence


def test_coherence_by_hand():
    # exp(-nll / 4): nll 0 -> 1; nll 2 -> exp(-0.5) = 0.60653; nll 8 -> exp(-2) = 0.13534
    assert coherence(0.0) == 1.0
    assert coherence(2.0) == pytest.approx(0.60653066)
    assert coherence(8.0) == pytest.approx(0.13533528)
    assert coherence(3.0) == pytest.approx(math.exp(-0.75))  # ~0.47: fluent text sits at 0.47-0.61
    assert coherence(2.0, scale=2.0) == pytest.approx(math.exp(-1))
    assert coherence(-0.1) == 1.0 and coherence(float("nan")) == 0.0
    assert coherence(1.0) > coherence(2.0) > coherence(8.0) > 0
    with pytest.raises(RedgymError):
        coherence(1.0, scale=0)


def test_coherence_scores_one_batched_call_empty_is_zero():
    nll = FakeNLL({"first reason": 0.0, "second reason": 8.0})
    out = coherence_scores(nll, ["input a", "input b", "input c"], ["first reason", "  ", "second reason"])
    assert out == pytest.approx([1.0, 0.0, math.exp(-2)])
    assert len(nll.calls) == 1
    contexts, continuations = nll.calls[0]
    # the blank reasoning is never sent; each context is the instruction with its own input
    assert continuations == ["first reason", "second reason"]
    assert contexts == [COHERENCE_CONTEXT.format(input="input a"), COHERENCE_CONTEXT.format(input="input c")]
    assert "input a" in contexts[0]
    # nothing to score: no call at all
    assert coherence_scores(nll, ["x"], [""]) == pytest.approx([0.0]) and len(nll.calls) == 1


def test_coherence_scores_with_a_real_tiny_lm(tiny_lm):
    # the callable contract is LM.continuation_nll's: positive finite NLL -> a score strictly inside (0, 1)
    out = coherence_scores(tiny_lm.continuation_nll, ["what are you doing"], ["we could go to the park"])
    assert out.shape == (1,) and 0 < out[0] < 1


# 3 relevance


def test_relevance_by_hand():
    inputs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    reasons = np.array([[0.6, 0.8], [0.6, 0.8], [-1.0, 0.0], [1.0, 0.0]])
    # cos: (1,0).(0.6,0.8) = 0.6; (0,1).(0.6,0.8) = 0.8; (1,0).(-1,0) = -1 -> max(0, -1) = 0; zero row -> 0
    assert relevance(inputs, reasons) == pytest.approx([0.6, 0.8, 0.0, 0.0])
    # rows are renormalised: (2,0) against (3,4) is still cos 0.6
    assert relevance(np.array([[2.0, 0.0]]), np.array([[3.0, 4.0]])) == pytest.approx([0.6])
    with pytest.raises(RedgymError):
        relevance(np.zeros((2, 2)), np.zeros((3, 2)))


def test_relevance_scores_one_embed_call_empty_is_zero():
    embed = FakeEmbed({"in a": [1, 0], "in b": [0, 1], "reason a": [0.6, 0.8], "reason b": [0.6, 0.8]})
    out = relevance_scores(embed, ["in a", "in b", "in a"], ["reason a", "reason b", ""])
    assert out == pytest.approx([0.6, 0.8, 0.0])
    assert embed.calls == [["in a", "in b", "in a", "reason a", "reason b"]]


# 4 specificity


def test_content_words_and_stemming():
    # "with" is a stopword; "the" too; "needs" -> "need" (one trailing s stripped); "is", "it" are under 3 letters;
    # "42" is not alphabetic
    assert content_words(INPUT) == {"bread", "recipe", "flour"}
    assert content_words(REASONING) == {"recipe", "need", "flour"}
    assert content_words("It is 42 Cups!") == {"cup"}


def test_specificity_by_hand():
    # reasoning {recipe, need, flour} vs input {bread, recipe, flour}: recipe and flour shared -> 2/3
    assert specificity(INPUT, REASONING) == pytest.approx(2 / 3)
    # "The flours are fine": {flour, fine} ("are" a stopword); "flours" -> "flour" matches the input -> 1/2
    assert specificity("bread with flour", "The flours are fine") == pytest.approx(1 / 2)
    # distinct words: repeating an input word is still 1/1, no more
    assert specificity("bread with flour", "flour flour flour") == 1.0
    # no content words at all -> 0
    assert specificity(INPUT, "It is what it is.") == 0.0
    assert specificity(INPUT, "") == 0.0


# 5 quality


def test_quality_weights_sum_to_one():
    assert QUALITY_WEIGHTS == {"label": 0.3, "coherence": 0.3, "relevance": 0.2, "specificity": 0.2}
    assert sum(QUALITY_WEIGHTS.values()) == pytest.approx(1.0)


def test_quality_by_hand():
    # 0.3*0 + 0.3*0.5 + 0.2*1 + 0.2*0.25 = 0 + 0.15 + 0.2 + 0.05 = 0.4
    assert quality({"label": 0.0, "coherence": 0.5, "relevance": 1.0, "specificity": 0.25}) == pytest.approx(0.4)
    # arrays and floats broadcast: label [1, 0] -> 0.4 + 0.3 and 0.4
    terms = {"label": np.array([1.0, 0.0]), "coherence": 0.5, "relevance": 1.0, "specificity": 0.25}
    assert quality(terms) == pytest.approx([0.7, 0.4])
    with pytest.raises(RedgymError):
        quality({"label": 1.0})


def test_quality_terms_of_one_full_example_two_model_calls():
    # the second completion is unparseable and off-topic
    inputs, reasonings = [INPUT, INPUT], [REASONING, "weather looks nice"]
    nll = FakeNLL({REASONING: 2.0, "weather looks nice": 8.0})
    embed = FakeEmbed({INPUT: [1, 0], REASONING: [0.6, 0.8], "weather looks nice": [0, 1]})
    terms = quality_terms(inputs, reasonings, ["safe", None], ["safe", "safe"], nll, embed)
    assert len(nll.calls) == 1 and len(embed.calls) == 1
    # first: label 1; coherence exp(-2/4) = 0.606531; relevance cos((1,0),(0.6,0.8)) = 0.6; specificity 2/3
    # second: label 0 (unparseable); coherence exp(-8/4) = 0.135335; relevance cos((1,0),(0,1)) = 0;
    #         specificity {weather, look, nice} vs {bread, recipe, flour} = 0/3
    assert terms["label"] == pytest.approx([1.0, 0.0])
    assert terms["coherence"] == pytest.approx([0.60653066, 0.13533528])
    assert terms["relevance"] == pytest.approx([0.6, 0.0])
    assert terms["specificity"] == pytest.approx([2 / 3, 0.0])
    # quality: 0.3*1 + 0.3*0.606531 + 0.2*0.6 + 0.2*(2/3) = 0.3 + 0.181959 + 0.12 + 0.133333 = 0.735292
    #          0.3*0 + 0.3*0.135335 + 0 + 0                                                  = 0.040601
    assert quality(terms) == pytest.approx([0.7352925, 0.0406006], abs=1e-6)
    with pytest.raises(RedgymError):
        quality_terms(inputs, reasonings, ["safe"], ["safe", "safe"], nll, embed)


# 6 DPO pairs


def test_best_worst_pairs_gap_and_ties():
    scores = np.array(
        [
            [0.2, 0.9, 0.5],  # gap 0.7: best 1, worst 0
            [0.5, 0.5, 0.5],  # gap 0: never a pair
            [0.7, 0.1, 0.1],  # gap 0.6: best 0, worst tie 1/2 -> first, 1
            [0.4, 0.45, 0.4],  # gap 0.05: kept only when min_gap < 0.05
            [0.9, 0.9, 0.1],  # gap 0.8: best tie 0/1 -> first, 0; worst 2
        ]
    )
    assert best_worst_pairs(scores, min_gap=0.1) == [(0, 1, 0), (2, 0, 1), (4, 0, 2)]
    assert best_worst_pairs(scores) == [(0, 1, 0), (2, 0, 1), (3, 1, 0), (4, 0, 2)]
    assert best_worst_pairs(np.zeros((2, 1))) == []  # one sample: no pair
    with pytest.raises(RedgymError):
        best_worst_pairs(np.array([0.1, 0.2]))


def test_hard_sample_inputs():
    labels = [
        ["safe", "safe"],  # agree
        ["safe", "harmful"],  # disagree -> hard
        [None, None],  # agree (both unparseable)
        ["safe", None],  # None is its own answer -> hard
        ["harmful", "harmful", "harmful"],  # agree
    ]
    assert hard_sample_inputs(labels) == [1, 3]


# 7 keyword baseline


def test_keyword_guard_whole_words_case_insensitive():
    guard = KeywordGuard(["hack", "red team"])
    texts = [
        "Notes from the hackathon",
        "The word HACK appears here.",
        "They wrote about a hack.",
        "Three hacks",
        "The red team met today",
        "The red teams met",
        "A quiet afternoon",
    ]
    # "hackathon" and "hacks" are longer words, not "hack"; a multi-word keyword matches whole too
    assert guard(texts) == ["safe", "harmful", "harmful", "safe", "harmful", "safe", "safe"]
    assert KeywordGuard([])(["anything at all"]) == ["safe"]
    assert guard([]) == []


def test_default_keywords():
    kws = default_keywords()
    assert len(kws) == len(set(kws)) >= 5 and all(k == k.lower() and k.isalpha() for k in kws)
    guard = KeywordGuard(kws)
    assert guard(["A bread recipe with flour", "A story about a Bomb squad"]) == ["safe", "harmful"]
