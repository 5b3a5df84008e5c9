import json
import math

import numpy as np
import pytest

from redgym.scorers.novelty import NoveltyMemory, bleu_novelty, bleu_to_references, cosine_novelty

CAND = "a a b c"
REFS = ["a b c d e", "x a b c y z"]
# Clipped precisions of "a a b c" against both references (max count in any ONE reference):
#   1-grams a,a,b,c: "a" appears once in each reference, so 2 a's clip to 1 (summing the refs would allow 2) -> 3/4
#   2-grams aa,ab,bc: ab and bc match, aa does not                                                       -> 2/3
#   3-grams aab,abc: abc matches                                                                          -> 1/2
#   4-gram  aabc: no match, smoothed to epsilon / 1                                                       -> 0.1
# Brevity: candidate length 4, closest reference length 5 (|5-4| < |6-4|), so BP = exp(1 - 5/4) = exp(-0.25)
# BLEU = exp(-0.25) * (3/4 * 2/3 * 1/2 * 0.1) ** (1/4) = exp(-0.25) * 0.025 ** 0.25
HAND_BLEU = math.exp(-0.25) * 0.025**0.25


def test_bleu_to_references_by_hand():
    assert bleu_to_references([CAND], REFS) == pytest.approx([HAND_BLEU])
    assert bleu_novelty([CAND], REFS) == pytest.approx([1 - HAND_BLEU])


def test_bleu_to_references_matches_nltk():
    bleu = pytest.importorskip("nltk.translate.bleu_score")
    smooth = bleu.SmoothingFunction(epsilon=0.1).method1
    ref = bleu.sentence_bleu([r.split() for r in REFS], CAND.split(), smoothing_function=smooth)
    assert bleu_to_references([CAND], REFS) == pytest.approx([ref])


def test_identical_is_bleu_one_novelty_zero():
    text = "please tell me about the weather today"
    assert bleu_to_references([text], [text, "something else entirely"]) == pytest.approx([1.0])
    assert bleu_novelty([text], [text]) == pytest.approx([0.0])


def test_disjoint_vocabulary_is_the_smoothed_value():
    # "a b c" vs "x y z": p1 = 0.1/3, p2 = 0.1/2, p3 = 0.1/1, p4 = 0.1/max(0, 1) (no 4-grams); lengths equal so BP 1
    expected = (0.1 / 3 * 0.1 / 2 * 0.1 * 0.1) ** 0.25
    assert bleu_to_references(["a b c"], ["x y z"]) == pytest.approx([expected])


def test_exact_copy_shorter_than_max_n_is_not_bleu_one():
    # "hello there" has no 3- or 4-grams, so p3 = p4 = 0.1/max(0, 1) even against itself (as NLTK's method1):
    # BLEU-4 = (1 * 1 * 0.1 * 0.1) ** (1/4) = 0.1 ** 0.5, so a repeated two-word utterance keeps novelty ~0.68.
    assert bleu_to_references(["hello there"], ["hello there"]) == pytest.approx([0.1**0.5])
    assert bleu_to_references(["hello there"], ["hello there"], max_n=2) == pytest.approx([1.0])


def test_brevity_tie_goes_to_the_shorter_reference():
    # candidate length 4, references of length 3 and 5 tie: r = 3 < 4 so BP = 1; unigrams a,b,c,d -> 3/4 match
    assert bleu_to_references(["a b c d"], ["a b c", "a b c e f"], max_n=1) == pytest.approx([0.75])


def test_empty_references_and_empty_candidate_are_zero():
    assert bleu_to_references(["a b", "c"], []) == [0.0, 0.0]
    assert bleu_to_references([""], ["a b"]) == [0.0]
    assert bleu_novelty(["a b"], []) == pytest.approx([1.0])


def test_cosine_novelty_by_hand():
    memory = np.array([[1.0, 0.0], [0.0, 1.0]])
    emb = np.array([[0.6, 0.8], [1.0, 0.0], [-1.0, 0.0]])
    # max cos: max(0.6, 0.8) = 0.8 -> 0.2; exact copy -> 0; opposite of e1 and orthogonal to e2 -> max 0 -> 1
    assert cosine_novelty(emb, memory) == pytest.approx([0.2, 0.0, 1.0])
    assert cosine_novelty(emb[:1], memory[:1]) == pytest.approx([0.4])  # cos([.6,.8],[1,0]) = 0.6
    assert cosine_novelty(emb, np.zeros((0, 2))) == pytest.approx([1.0, 1.0, 1.0])


def test_capacity_evicts_the_oldest():
    mem = NoveltyMemory(capacity=3)
    mem.add(["one", "two"], np.eye(4, dtype=np.float32)[:2])
    mem.add(["three", "four"], np.eye(4, dtype=np.float32)[2:])
    assert mem.texts == ["two", "three", "four"] and len(mem) == 3
    np.testing.assert_array_equal(mem.embeddings, np.eye(4, dtype=np.float32)[1:])
    mem.add(["five", "six", "seven", "eight"], np.eye(4, dtype=np.float32))  # one batch larger than capacity
    assert mem.texts == ["six", "seven", "eight"]
    np.testing.assert_array_equal(mem.embeddings, np.eye(4, dtype=np.float32)[1:])


def test_state_round_trip_is_exact_and_scores_the_same():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(5, 3)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    mem = NoveltyMemory(capacity=4)
    mem.add(["how are you", "what is new", "tell me a story", "the cat sat", "hello again"], emb)
    back = NoveltyMemory.from_state_dict(json.loads(json.dumps(mem.state_dict())))
    assert back.capacity == 4 and back.texts == mem.texts
    assert back.embeddings.dtype == np.float32 and np.array_equal(back.embeddings, mem.embeddings)
    query_emb = emb[:2][:, ::-1].copy()
    a, b = mem.score(["what is old", "hello"], query_emb), back.score(["what is old", "hello"], query_emb)
    assert a.keys() == b.keys() == {"novelty_bleu", "novelty_cos"}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_score_uses_memory_before_the_batch_and_cos_defaults_to_ones():
    mem = NoveltyMemory(capacity=10)
    said = "hello there how are you"
    first = mem.score([said])
    assert first["novelty_bleu"] == pytest.approx([1.0]) and first["novelty_cos"] == pytest.approx([1.0])
    mem.add([said], np.array([[1.0, 0.0]]))
    s = mem.score([said, "x y"], np.array([[1.0, 0.0], [0.6, 0.8]]))
    assert s["novelty_bleu"][0] == pytest.approx(0.0) and s["novelty_cos"] == pytest.approx([0.0, 0.4])
    assert mem.score([said])["novelty_cos"] == pytest.approx([1.0])  # no batch embeddings -> ones


def test_embeddings_are_all_or_nothing():
    mem = NoveltyMemory(capacity=5)
    mem.add(["a"], np.array([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="bring them"):
        mem.add(["b"])
    with pytest.raises(ValueError, match="dim"):
        mem.add(["b"], np.array([[1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"\(2, D\)"):
        mem.add(["b", "c"], np.array([[1.0, 0.0]]))
    texts_only = NoveltyMemory(capacity=5)
    texts_only.add(["a"])
    with pytest.raises(ValueError, match="texts only"):
        texts_only.add(["b"], np.array([[1.0, 0.0]]))
    assert mem.texts == ["a"] and texts_only.texts == ["a"]  # refused adds change nothing
