"""Properties that must hold for any input (hypothesis), beside the worked examples of the other test files."""

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from redgym.scorers.novelty import NoveltyMemory, bleu_to_references

word = st.sampled_from(["the", "park", "rain", "music", "films", "we", "could", "go", "damn", "nice"])
sentence = st.lists(word, min_size=1, max_size=12).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(st.lists(sentence, min_size=1, max_size=5), st.lists(sentence, max_size=5))
def test_bleu_is_a_share_and_a_long_enough_repeat_scores_one(candidates, references):
    scores = bleu_to_references(candidates, references)
    assert all(0.0 <= s <= 1.0 + 1e-12 for s in scores)
    long = [c for c in candidates if len(c.split()) >= 4]
    if long:
        assert np.allclose(bleu_to_references(long, long), 1.0)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.lists(st.lists(sentence, min_size=1, max_size=4), max_size=6))
def test_the_memory_keeps_the_newest_texts_up_to_capacity_and_survives_json(capacity, batches):
    mem = NoveltyMemory(capacity)
    said: list[str] = []
    for batch in batches:
        emb = np.random.default_rng(len(said)).normal(size=(len(batch), 3)).astype(np.float32)
        mem.add(batch, emb / np.linalg.norm(emb, axis=1, keepdims=True))
        said += batch
    assert mem.texts == said[-capacity:] if said else mem.texts == []
    back = NoveltyMemory.from_state_dict(json.loads(json.dumps(mem.state_dict())))
    assert back.texts == mem.texts
    assert (back.embeddings is None and mem.embeddings is None) or np.array_equal(back.embeddings, mem.embeddings)
