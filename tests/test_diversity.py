import math

import numpy as np
import pytest

from redgym.scorers.diversity import (
    distinct_n,
    embedding_distance_per_text,
    embedding_diversity,
    self_bleu,
    self_bleu_per_text,
    words,
)


def test_words_split_punctuation_and_lowercase():
    assert words("Hi, YOU there!") == ["hi", ",", "you", "there", "!"]


def test_distinct_n_by_hand():
    # unigrams a b a a c: 3 unique of 5; bigrams ab ba ac: 3 of 3
    assert distinct_n(["a b a", "a c"], 1) == pytest.approx(0.6)
    assert distinct_n(["a b a", "a c"], 2) == pytest.approx(1.0)
    assert distinct_n(["a", "b"], 2) == 0.0  # no bigrams at all


def test_self_bleu_two_texts_by_hand():
    # p1 = 3/4 (a b c of a b c d), p2 = 2/3 (ab bc of ab bc cd); equal lengths so BP = 1
    vals = self_bleu_per_text(["a b c d", "a b c e"], max_n=2)
    assert vals == pytest.approx([math.sqrt(0.75 * 2 / 3)] * 2)


def test_self_bleu_clipping_brevity_and_smoothing_by_hand():
    vals = self_bleu_per_text(["a a b", "a a", "c"], max_n=1)
    # "a a b": a clipped at 2 by "a a", b unmatched -> 2/3, closest ref length 2 < 3 so BP 1
    # "a a": both a matched -> 1; refs of length 3 and 1 tie at distance 1, the shorter wins, BP 1
    # "c": no match -> smoothed 0.1/1; closest ref length 2 > 1 so BP = exp(1 - 2)
    assert vals == pytest.approx([2 / 3, 1.0, 0.1 * math.exp(-1)])
    assert self_bleu(["a a b", "a a", "c"], max_n=1) == pytest.approx(np.mean(vals))


def test_self_bleu_identical_texts_is_one_and_single_text_is_nan():
    assert self_bleu(["the cat sat on the mat"] * 3) == pytest.approx(1.0)
    assert math.isnan(self_bleu_per_text(["alone"])[0])


def test_embedding_distance_by_hand():
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # cos(e1,e2)=0, cos(e1,e3)=1, cos(e2,e3)=0 -> mean distances 0.5, 1.0, 0.5
    assert embedding_distance_per_text(emb) == pytest.approx([0.5, 1.0, 0.5])
    assert embedding_diversity(emb) == pytest.approx(2 / 3)
    assert math.isnan(embedding_diversity(emb[:1]))
