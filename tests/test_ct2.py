"""The CTranslate2 engine (models/ct2.py): the same tokens as ``LM.generate`` when greedy, the same log-probs
within float tolerance, and a conversion cache that is reused, rebuilt when damaged, and fails in one line."""

import pytest
import torch

from redgym.errors import RedgymError
from redgym.models import LM, SamplingParams, load_model

ct2mod = pytest.importorskip("redgym.models.ct2")
pytest.importorskip("ctranslate2")

CONTEXTS = [
    "hello there how are you today\n",
    "we could go to the park\ni like old films and loud music\n",
    "damn that is a lot of rain\n",
    "do you like music\n",
]
# The engine's repetition penalty skips a context's first token (its start token): these begin with a word that
# recurs, so both penalise the same tokens.
RECURRING = [
    "you and you are fine\n",
    "we could go to the park\nwe like old films and loud music\n",
    "the weather is nice again the park\n",
    "do you like music or films do you\n",
]


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REDGYM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def peaky_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with its output layer scaled up: a random model's next-token distribution is nearly uniform
    (near-ties that float rounding decides); a trained one's is peaked, and so is this one's."""
    model, tok = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    path = tmp_path_factory.mktemp("peaky")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture()
def pair(peaky_model_dir, cache):
    model, tok = load_model(str(peaky_model_dir), dtype="float32", device="cpu")
    return (
        LM(model, tok, "tiny", "plain", max_context_tokens=64),
        ct2mod.ct2_lm(model, tok, str(peaky_model_dir), "plain", 64),
    )


@pytest.mark.parametrize("penalty,contexts", [(1.0, CONTEXTS), (1.3, RECURRING)])
def test_greedy_tokens_match_transformers(pair, penalty, contexts):
    hf, engine = pair
    p = SamplingParams(max_new_tokens=12, min_new_tokens=2, temperature=0, repetition_penalty=penalty)
    a, b = hf.generate(contexts, p), engine.generate(contexts, p)
    assert b.token_ids == a.token_ids  # the repetition penalty covers the context in both
    assert all(len(ids) >= 2 for ids in b.token_ids) and max(len(ids) for ids in b.token_ids) <= 12
    assert b.texts == a.texts
    assert b.sample_logprobs is None


def test_logprobs_match_transformers_where_no_mask_or_penalty_applies(pair):
    hf, engine = pair
    p = SamplingParams(max_new_tokens=12, min_new_tokens=0, temperature=0, repetition_penalty=1.0)
    a, b = hf.generate(CONTEXTS, p), engine.generate(CONTEXTS, p)
    assert b.token_ids == a.token_ids
    for x, y in zip(a.logprobs, b.logprobs):  # the model's own distribution (temperature 1) in both
        assert torch.allclose(torch.tensor(y), torch.tensor(x), atol=1e-4)


@pytest.mark.parametrize("penalty", [1.1, 1.0])  # the token-by-token and the prefill way (see CT2LM._sample)
def test_sampling_respects_lengths_and_is_seeded_by_the_engine(pair, penalty):
    _, engine = pair
    p = SamplingParams(
        max_new_tokens=5, min_new_tokens=3, temperature=0.7, top_p=0.9, top_k=20, repetition_penalty=penalty
    )
    g = engine.generate(CONTEXTS * 4, p)
    stop = set(engine.stop_ids)
    for ids in g.token_ids:
        assert 3 <= len(ids) <= 5
        assert not stop & set(ids[:3])  # no stop token before min_new_tokens
    assert len({tuple(i) for i in g.token_ids}) > 1  # it samples


def test_prefill_keeps_min_new_tokens_for_every_context_length(peaky_model_dir, cache):
    """Without a penalty the engine prefills up to the shortest context: a longer one's minimum and maximum still
    count from its own end, and greedy tokens still equal transformers' (a model whose stop token's logit is
    scaled up, so some contexts want to stop at once)."""
    model, tok = load_model(str(peaky_model_dir), dtype="float32", device="cpu")
    stop = tok.convert_tokens_to_ids("</s>")
    with torch.no_grad():
        model.lm_head.weight[stop] *= 6.0
    hf = LM(model, tok, "tiny", "plain", max_context_tokens=64)
    engine = ct2mod.ct2_lm(model, tok, "stoppy", "plain", 64)
    contexts = CONTEXTS + RECURRING
    lengths = {}
    for min_new in (0, 3):
        p = SamplingParams(max_new_tokens=7, min_new_tokens=min_new, temperature=0, repetition_penalty=1.0)
        a, b = hf.generate(contexts, p), engine.generate(contexts, p)
        assert b.token_ids == a.token_ids
        assert all(stop not in ids[:min_new] for ids in b.token_ids)
        lengths[min_new] = sorted(len(ids) for ids in b.token_ids)
    print(lengths)
    assert lengths[0][0] <= 2 < lengths[3][0]  # some reply stops at once, unless told otherwise


def test_identical_contexts_are_one_start(pair, monkeypatch):
    """G samples of a prompt (or K replies to a turn) are one start for the engine: k sampled hypotheses when it
    prefills, one greedy answer repeated; with a penalty (nothing prefilled, nothing shared) one row each."""
    hf, engine = pair
    calls = []
    real = engine.generator.generate_batch

    class Spy:  # ctranslate2.Generator's attributes are read-only: wrap it
        def generate_batch(self, starts, **kw):
            calls.append((len(starts), kw["num_hypotheses"]))
            return real(starts, **kw)

    monkeypatch.setattr(engine, "generator", Spy())
    rows = [c for c in CONTEXTS[:2] for _ in range(8)]
    # the full distribution (top_p 1), eight draws: on this peaked model the likeliest reply has p ~ 0.25 under
    # the default top_p 0.7, so four draws were all the same about once in 250 runs (it flaked in CI)
    full = SamplingParams(max_new_tokens=6, temperature=1.0, top_p=1.0, repetition_penalty=1.0)
    sampled = engine.generate(rows, full)
    assert calls == [(2, 8)] and len(sampled.token_ids) == 16
    assert len({tuple(ids) for ids in sampled.token_ids[:8]}) > 1  # eight draws, not one repeated
    calls.clear()
    greedy = SamplingParams(max_new_tokens=6, min_new_tokens=2, temperature=0)
    g = engine.generate(rows, greedy)
    assert calls == [(2, 1)] and g.token_ids == hf.generate(rows, greedy).token_ids
    calls.clear()
    engine.generate(rows, SamplingParams(max_new_tokens=6, temperature=1.0, repetition_penalty=1.3))
    assert calls == [(16, 1)]


def test_conversion_is_cached_reused_and_rebuilt_when_damaged(tiny_model_dir, cache, monkeypatch, caplog):
    calls = []
    real = ct2mod.convert
    monkeypatch.setattr(ct2mod, "convert", lambda s, t: (calls.append(t), real(s, t)))
    model, tok = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    ct2mod.ct2_lm(model, tok, str(tiny_model_dir))
    ct2mod.ct2_lm(model, tok, str(tiny_model_dir))
    assert len(calls) == 1 and (calls[0] / "model.bin").is_file()
    assert calls[0].parent == cache / "ct2"
    assert not [p for p in calls[0].parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    (calls[0] / "model.bin").write_bytes(b"not a model")
    engine = ct2mod.ct2_lm(model, tok, str(tiny_model_dir))
    assert len(calls) == 2 and "converting again" in caplog.text
    assert engine.generate(CONTEXTS[:1], SamplingParams(temperature=0)).token_ids[0]


def test_a_changed_source_converts_anew(tiny_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    before = ct2mod.source_key(copy)
    (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")
    assert ct2mod.source_key(copy) != before


def test_an_unconvertible_model_fails_in_one_line(tmp_path, cache):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(RedgymError, match="could not convert") as e:
        ct2mod.load_generator(bad, "bad", "float32", "cpu")
    assert "\n" not in str(e.value)
    with pytest.raises(RedgymError, match="compute_type"):
        ct2mod.load_generator(bad, "bad", "float16", "cpu")
