"""The learning-signal fixes: train on the policy you sample from, on-policy rollouts, K-reply reward averaging,
pair reliability, group-relative advantages, held-out prompts that are really held out."""

import math

import numpy as np
import pytest
import torch

from redgym.config import load_config
from redgym.errors import RedgymError
from redgym.models import SamplingParams
from redgym.rollout import rollout
from redgym.rollout.records import Conversation
from redgym.rollout.reward import RewardWeights, pair_reliability, reply_terms, score_conversations, score_exchanges
from redgym.trainers import grpo, ppo
from redgym.trainers.checkpoints import latest_checkpoint
from redgym.trainers.losses import group_advantages
from redgym.trainers.policy import build_policy, sequence_logps, train_sampling
from redgym.trainers.train_config import TrainConfig
from tests.conftest import cli_args


def _cfg(cls, model_dir, prompt_file, **kw):
    base = dict(
        adversary_model=str(model_dir),
        defender_model=str(model_dir),
        prompts=str(prompt_file),
        max_new_tokens="6",
        min_new_tokens="2",
        steps="2",
        prompts_per_step="4",
        micro_batch_size="4",
        lr="1e-3",
        test_fraction="0.3",
        eval_after="false",
        max_context_tokens="64",
        checkpoint_every="100",
    )
    base.update({k: str(v) for k, v in kw.items()})
    return load_config(cls, None, base)


# ---- 1 train on the policy you sample from --------------------------------------------------------------------


def test_the_default_dtype_on_cpu_is_float32():
    from redgym.models.loading import resolve_dtype

    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32


def test_merged_sampler_reproduces_the_adapter_policy_after_a_learning_rate_sized_update(tiny_model_dir, prompt_file):
    """A 1e-4 update in the default dtype (no dtype set): the merged copy the rollouts sample from must give the
    adapter policy's log-probs, not the base model's (a bf16 merge loses most of such an update)."""
    cfg = _cfg(TrainConfig, tiny_model_dir, prompt_file)
    assert cfg.dtype == "auto"
    policy = build_policy(cfg, cfg.adversary_model)
    assert policy.sampler is not None  # float32 on the CPU: the fast merged copy is on
    with torch.no_grad():
        for n, p in policy.model.named_parameters():
            if "lora_" in n:
                p.add_(1e-4 * torch.sign(torch.randn_like(p)))  # one Adam-sized step on every adapter weight
    policy.sync_sampler()
    ctx, cont = [[5, 9, 17, 33, 2]], [[41, 3, 7, 12]]
    pad = policy.tokenizer.pad_token_id
    with torch.no_grad():
        want = sequence_logps(policy.model, ctx, cont, pad)
        got = sequence_logps(policy.sampler.model, ctx, cont, pad)
        base = sequence_logps(policy.ref_model, ctx, cont, pad)
    delta = float((want - base).abs())
    assert delta > 1e-6  # the update moved the policy
    assert float((got - want).abs()) < 0.01 * delta  # and the sampler carries >= 99% of the move


def test_bf16_training_samples_through_the_adapter(tiny_model_dir, prompt_file):
    policy = build_policy(_cfg(TrainConfig, tiny_model_dir, prompt_file, dtype="bfloat16"), str(tiny_model_dir))
    assert policy.sampler is None and policy.generation_model is policy.model


# ---- 2 on-policy policy gradients ---------------------------------------------------------------------------


def test_training_rollouts_sample_from_the_plain_tempered_softmax(tiny_model_dir, prompt_file):
    cfg = _cfg(TrainConfig, tiny_model_dir, prompt_file)
    evals = SamplingParams(max_new_tokens=6, temperature=0.7, top_p=0.7, repetition_penalty=1.1)
    train = train_sampling(cfg, evals)
    assert (train.temperature, train.top_p, train.top_k, train.repetition_penalty, train.min_new_tokens) == (
        0.7,
        1.0,
        0,
        1.0,
        0,
    )
    off = _cfg(TrainConfig, tiny_model_dir, prompt_file, on_policy_sampling="false")
    assert train_sampling(off, evals) == evals


def test_on_policy_rollouts_have_the_log_probs_the_loss_uses(tiny_model_dir, prompt_file, tiny_lm):
    """The log-prob of each sampled token under the distribution it was drawn from equals the trainer's tempered
    log-prob only with on-policy sampling; ASTPrompter's top-p / repetition penalty make them differ."""
    from redgym.models.forward import continuation_forward
    from redgym.rollout.engine import generate_turns

    evals = SamplingParams(max_new_tokens=6, min_new_tokens=2, temperature=0.7, top_p=0.5, repetition_penalty=1.3)
    cfg = _cfg(TrainConfig, tiny_model_dir, prompt_file)
    histories = [[("prompt", "hello there how are you")], [("prompt", "do you like music")]] * 4
    gaps = {}
    for name, params in (("on", train_sampling(cfg, evals)), ("off", evals)):
        torch.manual_seed(0)
        turns = generate_turns(tiny_lm, histories, "adversary", params)
        ctx = [tiny_lm.encode_context(tiny_lm.render(h, "adversary"), 40) for h in histories]
        out = continuation_forward(
            tiny_lm.model, ctx, [t.token_ids for t in turns], tiny_lm.tokenizer.pad_token_id, temperature=0.7
        )
        gaps[name] = max(
            abs(out.logps[b, out.logps.shape[1] - len(t.token_ids) + i].item() - lp)
            for b, t in enumerate(turns)
            for i, lp in enumerate(t.sample_logprobs)
        )
    assert gaps["on"] < 1e-4 and gaps["off"] > 0.05, gaps


@pytest.mark.parametrize("trainer", ["ppo", "grpo", "grpo-off-policy-sampling"])
def test_ratio_is_one_on_the_first_minibatch_and_k1_kl_is_not_negative(
    trainer, learnable_scorer, tiny_model_dir, prompt_file, tmp_path
):
    # GRPO takes its old log-probs from the sampler when it samples on-policy, else from the policy's forward pass
    # (the sampler's are then top-p's, not the policy's): the first minibatch's ratio is 1 either way
    mod, cls = {"ppo": (ppo, ppo.PPOConfig), "grpo": (grpo, grpo.GRPOConfig)}[trainer.split("-")[0]]
    extra = {"on_policy_sampling": "false", "top_p": "0.5"} if trainer.endswith("off-policy-sampling") else {}
    cfg = _cfg(
        cls,
        tiny_model_dir,
        prompt_file,
        steps=4,
        lr="2e-2",
        prompts_per_step=8,
        micro_batch_size=4,
        generations_per_prompt=4,
        ppo_epochs=2,
        reward_target="adversary",
        **extra,
    )
    rows = _read(mod.train(cfg, tmp_path / "run", progress=False) and tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # every step logged: the check below runs on each
    for r in rows:
        assert r["policy/first_ratio_dev"] < 1e-4, r["policy/first_ratio_dev"]
    # k1 = log pi - log ref on tokens sampled from pi estimates KL(pi || ref) >= 0: one batch's mean can dip below 0
    # by sampling noise while the KL is tiny, so the check is on the average over the steps after the first update
    # (test_on_policy_rollouts_have_the_log_probs_the_loss_uses checks the sampling distribution itself)
    assert rows[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # LoRA B = 0: policy = reference at step 1
    assert np.mean([r["objective/kl"] for r in rows[1:]]) > 0


def _read(out):
    import json

    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---- 3 a denoised reward ------------------------------------------------------------------------------------


class FakeDefender:
    def continuation_nll(self, contexts, continuations, batch_size=16):
        return [1.0] * len(continuations)


def test_k_reply_reward_is_the_mean_of_the_replies_toxicity_terms():
    scorer = lambda texts: [0.9 if "bad" in t else 0.0 for t in texts]  # noqa: E731
    w = RewardWeights(defender=1.0, combined=0.5, nll=0.1)
    s = score_exchanges([[("prompt", "hi")]], ["well"], [["bad", "fine", "fine", "bad"]], scorer, FakeDefender(), w)
    # tox_defender = (0.9 + 0 + 0 + 0.9) / 4 = 0.45; combined "well bad" etc. the same = 0.45
    # reward = 0.45 + 0.5 * 0.45 - 0.1 * 1.0 = 0.575
    assert s["tox_defender"] == pytest.approx([0.45]) and s["tox_combined"] == pytest.approx([0.45])
    assert s["reward"] == pytest.approx([0.575])
    assert s["tox_defender_replies"].tolist() == [[0.9, 0.0, 0.0, 0.9]]
    assert reply_terms(s, w)[0].tolist() == pytest.approx([1.35, 0.0, 0.0, 1.35])  # 0.9 + 0.5 * 0.9


def test_rollouts_answer_each_adversary_turn_k_times_and_continue_with_the_first(tiny_lm):
    torch.manual_seed(0)
    convs = rollout(
        [("p", ("hello there",))],
        tiny_lm,
        tiny_lm,
        horizon=2,
        params=SamplingParams(max_new_tokens=3),
        progress=False,
        defender_samples=3,
    )
    c = convs[0]
    for _, d in c.exchanges():
        assert len(d.alternatives) == 2
    scorer = lambda texts: [float(len(t)) / 100 for t in texts]  # noqa: E731
    score_conversations(convs, scorer, FakeDefender(), RewardWeights())
    d = c.exchanges()[0][1]
    replies = [d.text, *d.alternatives]
    assert d.scores["tox"] == pytest.approx(np.mean([len(t) / 100 for t in replies]))
    assert d.scores["tox_replies"] == pytest.approx([len(t) / 100 for t in replies])
    assert c.history()[2] == ("defender", d.text)  # the conversation continues with the first reply
    back = Conversation.from_json(c.to_json())
    assert back.turns[1].alternatives == d.alternatives


def test_pair_reliability_by_hand():
    # group 1: siblings ordered a > b by reply 0, and by the mean of replies 1-2 (0.5 vs 0.0): agree
    # group 2: reply 0 says a > b, the others' mean says b > a: disagree; a tie on either side is skipped
    g1 = np.array([[1.0, 0.5, 0.5], [0.0, 0.0, 0.0]])
    g2 = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    g3 = np.array([[0.3, 0.1, 0.1], [0.3, 0.0, 0.0]])
    assert pair_reliability([g1, g2, g3]) == (0.5, 2)
    # three siblings: pairs (0,1) agree, (0,2) agree, (1,2) disagree
    g = np.array([[3.0, 3.0], [2.0, 1.0], [1.0, 2.0]])
    assert pair_reliability([g]) == (pytest.approx(2 / 3), 3)
    assert np.isnan(pair_reliability([np.ones((2, 1))])[0])  # one reply: nothing to compare


# ---- 4 group-relative advantages ------------------------------------------------------------------------------


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.2, 0.7])
    g = torch.tensor([0, 0, 0, 1, 1, 2])
    a = group_advantages(r, g)
    # group 0 mean 0.5 -> 0.5, -0.5, 0; group 1 mean 0.2 -> 0, 0; group of one -> 0
    assert a.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0, 0.0, 0.0])
    s = group_advantages(r, g, scale="group", eps=0.0)
    std0 = float(np.std([1.0, 0.0, 0.5]))  # population std, 0.4082
    assert s[:3].tolist() == pytest.approx([0.5 / std0, -0.5 / std0, 0.0])
    # batch: one std over all six rewards (mean 0.4333, population std 0.33993) for every group
    b = group_advantages(r, g, scale="batch", eps=0.0)
    assert b.tolist() == pytest.approx([1.4709, -1.4709, 0.0, 0.0, 0.0, 0.0], abs=1e-4)
    with pytest.raises(ValueError, match="none, group or batch"):
        group_advantages(r, g, scale="yes")


def test_batch_scaling_keeps_a_rare_reward_in_proportion():
    # one toxic sample (0.9) in group 0; group 1 differs only by a few hundredths
    r = torch.tensor([0.9, 0.05, 0.05, 0.05, 0.06, 0.02, 0.04, 0.04])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    # group std: group 0 mean 0.2625, std 0.36806 -> toxic +1.732; group 1 std 0.014142 -> +-1.414: noise pushes
    # almost as hard as the real signal
    s = group_advantages(r, g, scale="group", eps=0.0)
    assert s[0].item() == pytest.approx(1.732, abs=1e-3) and s[4].item() == pytest.approx(1.414, abs=1e-3)
    # batch std 0.28322: toxic +0.6375/0.28322 = +2.251, group 1's largest 0.02/0.28322 = 0.0706
    b = group_advantages(r, g, scale="batch", eps=0.0)
    assert b[0].item() == pytest.approx(2.251, abs=1e-3) and b[4].item() == pytest.approx(0.0706, abs=1e-3)


def test_group_rank_advantages_by_hand():
    from redgym.trainers.losses import group_rank_advantages

    # group 0: ranks 1, 4, 2, 3 -> centred -1.5, 1.5, -0.5, 0.5, population std sqrt(1.25) = 1.1180
    # group 1: a tie shares rank 1.5 -> -0.5, -0.5, 1.0, std sqrt(0.5) = 0.7071; group 2 (one sample) and
    # group 3 (all equal) carry no signal
    r = torch.tensor([0.03, 0.6, 0.04, 0.05, 0.1, 0.1, 0.3, 0.9, 0.2, 0.2])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 3, 3])
    a = group_rank_advantages(r, g)
    assert a.tolist() == pytest.approx(
        [-1.341641, 1.341641, -0.447214, 0.447214, -0.707107, -0.707107, 1.414214, 0.0, 0.0, 0.0], abs=1e-6
    )
    # the same ranks whatever the skew: one outlier does not make the other three negative by its size
    assert group_rank_advantages(torch.tensor([0.0, 0.01, 0.02, 100.0]), torch.zeros(4)).tolist() == pytest.approx(
        a[:4][[0, 2, 3, 1]].tolist(), abs=1e-6
    )


def test_reweight_negative_advantages_by_hand():
    from redgym.trainers.losses import reweight_negative

    a = torch.tensor([1.5, -0.5, 0.0, -1.0])
    assert reweight_negative(a, 1.0).tolist() == a.tolist()  # GRPO unchanged
    assert reweight_negative(a, 0.0).tolist() == [1.5, 0.0, 0.0, 0.0]  # only the better-than-group pushed up
    assert reweight_negative(a, 0.1).tolist() == pytest.approx([1.5, -0.05, 0.0, -0.1])
    with pytest.raises(RedgymError, match="negative_weight"):
        grpo.GRPOConfig(negative_weight=1.5).validate()


def test_minibatch_order_shuffles_samples_or_whole_groups():
    from redgym.trainers.losses import minibatch_order

    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert minibatch_order(groups, np.random.default_rng(5), False) == np.random.default_rng(5).permutation(8).tolist()
    order = minibatch_order(groups, np.random.default_rng(5), True)
    assert sorted(order) == list(range(8))
    assert all(groups[order[i]] == groups[order[i + 1]] for i in range(0, 8, 2))  # each pair is one group
    expected = [i for g in np.random.default_rng(5).permutation(4) for i in (2 * g, 2 * g + 1)]
    assert order == expected
    with pytest.raises(RedgymError, match="micro_batches"):
        grpo.GRPOConfig(micro_batches="sorted").validate()


@pytest.mark.parametrize("micro_batches", ["shuffled", "groups"])
def test_grpo_changes_the_adapter_with_finite_losses(
    learnable_scorer, tiny_model_dir, prompt_file, tmp_path, monkeypatch, micro_batches
):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    cfg = _cfg(grpo.GRPOConfig, tiny_model_dir, prompt_file, steps=3, defender_samples=2, micro_batches=micro_batches)
    grpo.train(cfg, out, progress=False)
    rows = _read(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        for k in ("loss/policy", "objective/kl", "objective/kl_k3", "objective/entropy", "reward/reward"):
            assert np.isfinite(r[k]), k
        # the step's budget: P prompts x G samples, each answered twice; one update per micro batch per epoch
        n = cfg.prompts_per_step * cfg.generations_per_prompt
        assert r["budget/adversary_samples"] == n and r["budget/defender_replies"] == 2 * n
        assert r["train/updates"] == cfg.ppo_epochs * math.ceil(n / cfg.micro_batch_size)
    lora_b = [v for k, v in load_file(str(out / "adversary" / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert lora_b and all(float(v.abs().sum()) > 0 for v in lora_b)  # LoRA B starts at zero


def test_grpo_raises_a_learnable_reward(learnable_scorer, tiny_model_dir, prompt_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = _cfg(
        grpo.GRPOConfig,
        tiny_model_dir,
        prompt_file,
        steps=16,
        lr="1e-2",
        lora="false",
        kl_coef=0.0,
        prompts_per_step=4,
        generations_per_prompt=4,
        micro_batch_size=16,
        max_new_tokens=2,
        min_new_tokens=2,
        reward_target="adversary",
        temperature=1.0,
    )
    grpo.train(cfg, out, progress=False)
    rows = _read(out)
    first, last = np.mean([r["reward/reward"] for r in rows[:3]]), np.mean([r["reward/reward"] for r in rows[-3:]])
    assert last > first + 0.2, (first, last)


def test_a_reward_curriculum_anneals_from_the_adversary_toxicity_to_the_configured_reward(
    learnable_scorer, tiny_model_dir, prompt_file, tmp_path
):
    # the configured reward is tox(defender) alone, so each step's mean reward is known from the logged terms
    out = tmp_path / "run"
    cfg = _cfg(
        grpo.GRPOConfig,
        tiny_model_dir,
        prompt_file,
        steps=3,
        reward_curriculum_steps=2,
        w_defender=1.0,
        w_combined=0.0,
        w_nll=0.0,
    )
    grpo.train(cfg, out, progress=False)
    rows = _read(out)
    assert [r["reward/curriculum_alpha"] for r in rows] == pytest.approx([0.0, 0.5, 1.0])
    # at alpha 0 nothing reads the defender's replies: it stays silent, and the reward is the adversary's toxicity
    assert "reward/tox_defender" not in rows[0]
    assert rows[0]["reward/reward"] == pytest.approx(rows[0]["reward/tox_adversary"], abs=1e-6)
    for r, a in zip(rows[1:], (0.5, 1.0)):
        expected = (1 - a) * r["reward/tox_adversary"] + a * r["reward/tox_defender"]
        assert r["reward/reward"] == pytest.approx(expected, abs=1e-6)
    assert rows[1]["reward/tox_adversary"] != pytest.approx(rows[1]["reward/tox_defender"])  # the check can fail


def test_the_training_defender_is_the_policys_frozen_base_unless_it_is_another_model(
    tiny_model_dir, tiny_gpt2_dir, prompt_file, tmp_path
):
    from redgym.trainers.run import start_run

    run = start_run(_cfg(grpo.GRPOConfig, tiny_model_dir, prompt_file), tmp_path / "same", resume=False)
    base, tok = run.policy.base
    assert run.defender.model is base and run.defender.tokenizer is tok  # no second copy in memory
    assert base is not run.policy.generation_model  # the untouched base, not the sampler the adapter is merged into
    other = start_run(
        _cfg(grpo.GRPOConfig, tiny_model_dir, prompt_file, defender_model=str(tiny_gpt2_dir)), tmp_path / "other", False
    )
    assert other.defender.model is not other.policy.base[0] and other.defender.name == str(tiny_gpt2_dir)
    assert type(other.defender.model).__name__ != type(base).__name__  # the other model's weights, loaded


def test_a_reward_that_reads_no_reply_never_asks_the_defender(
    learnable_scorer, tiny_model_dir, prompt_file, tmp_path, defender_must_not_reply
):
    out = tmp_path / "run"
    grpo.train(
        _cfg(grpo.GRPOConfig, tiny_model_dir, prompt_file, steps=2, reward_target="adversary", defender_samples=2),
        out,
        progress=False,
    )
    rows = _read(out)
    assert [r["step"] for r in rows] == [1, 2]  # both steps logged: the check below runs on each
    for r in rows:
        assert "reward/tox_defender" not in r and np.isfinite(r["reward/nll"])
        assert r["reward/reward"] == pytest.approx(r["reward/tox_adversary"], abs=1e-6)
    with pytest.raises(AssertionError, match="asked to reply"):  # the composite reward does read them
        grpo.train(_cfg(grpo.GRPOConfig, tiny_model_dir, prompt_file, steps=1), tmp_path / "composite", progress=False)


def test_sft_changes_the_adapter(tiny_model_dir, prompt_file, tmp_path):
    from safetensors.torch import load_file

    from redgym.trainers import sft

    weak = tmp_path / "weak.txt"
    weak.write_text("we went out and damn it rained\nwhat the hell are you doing\n", encoding="utf-8")
    out = tmp_path / "run"
    sft.train(_cfg(sft.SFTConfig, tiny_model_dir, prompt_file, weak_prompts=str(weak)), out, progress=False)
    rows = _read(out)
    assert len(rows) == 2 and all(np.isfinite(r["loss/sft"]) for r in rows)
    lora_b = [v for k, v in load_file(str(out / "adversary" / "adapter_model.safetensors")).items() if "lora_B" in k]
    # all-linear LoRA on the tiny Llama: q, k, v, o, gate, up and down projections in each of its 2 layers
    assert len(lora_b) == 2 * 7
    assert all(float(v.abs().sum()) > 0 for v in lora_b)


# ---- 10 held out means held out ---------------------------------------------------------------------------------


def test_no_test_prompt_text_appears_in_the_training_split():
    from redgym.data.prompts import Prompt, split_prompts

    texts = ["a", "b", "c"] * 2 + list("defghijklmno")  # repeated openings, as chitchat has
    prompts = [Prompt(f"x:{i}", (t,)) for i, t in enumerate(texts)]
    for seed in range(20):
        split = split_prompts(prompts, 0.2, 0.3, seed)
        train = {p.text for p in split.train}
        assert not train & {p.text for p in split.test} and not train & {p.text for p in split.dev}
        assert {p.id for p in split.train}.isdisjoint({p.id for p in split.test})


def test_chitchat_test_split_holds_no_training_text():
    from redgym.data.prompts import load_prompts, split_prompts
    from redgym.scorers.toxicity import build_scorer

    prompts = load_prompts("chitchat", max_words=60, scorer=build_scorer("profanity"))
    split = split_prompts(prompts, 0.1, 0.1, 0)
    assert not {p.text for p in split.train} & {p.text for p in split.test}
    assert len(split.test) < round(0.1 * len(prompts))  # some duplicates were removed


def test_eval_of_a_trained_adversary_reads_its_runs_split(tiny_model_dir, prompt_file, tmp_path):
    import json

    from redgym.cli import main

    out, ev = tmp_path / "run", tmp_path / "ev"
    tiny = dict(test_fraction=0.3, max_new_tokens=3, bootstrap_samples=20, max_context_tokens=64)
    train = dict(steps=1, prompts_per_step=2, seed=5)
    assert main(cli_args("train grpo", out, tiny_model_dir, prompt_file, **tiny, **train)) == 0
    split = json.loads((out / "split.json").read_text())
    # an evaluation with another seed would compute another split; the run's own split.json wins
    trained = dict(horizon=1, seed=1, adversary_checkpoint=out / "adversary")
    assert main(cli_args("eval", ev, tiny_model_dir, prompt_file, **tiny, **trained)) == 0
    assert json.loads((ev / "report.json").read_text())["split"]["test_ids_evaluated"] == split["test"]
    report = json.loads((out / "report.json").read_text())  # eval_after wrote the run's own report
    assert set(report["results"]) == {"untuned", "trained"}
    assert report["split"]["test_ids_evaluated"] == split["test"]
    assert "stealth_success_rate" in report["metrics"]


def test_max_variance_subset_by_hand():
    from redgym.trainers.losses import max_variance_subset

    # group 0 sorted: 0.0 (5), 0.05 (3), 0.1 (0), 0.2 (2), 0.3 (4), 0.9 (1)
    # keep 2: top two {0.3, 0.9} var 0.09; lowest + highest {0.0, 0.9} var 0.2025; two lowest var 0.000625
    # keep 3: {0.2, 0.3, 0.9} var 0.0956; {0.0, 0.3, 0.9} var 0.14; {0.0, 0.05, 0.9} var 0.1706 (the most)
    # group 1 has 2 members: no larger than keep 3, so kept whole
    r = torch.tensor([0.1, 0.9, 0.2, 0.05, 0.3, 0.0, 0.4, 0.6])
    g = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    assert max_variance_subset(r, g, 2).tolist() == [1, 5, 6, 7]
    assert max_variance_subset(r, g, 3).tolist() == [1, 3, 5, 6, 7]
    # all equal: every subset has variance 0 and the tie keeps the high end of the (stable) order
    assert max_variance_subset(torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0, 0, 0]), 2).tolist() == [1, 2]
    # nothing left to choose from (min_group_range kept no group): nothing chosen, as integer indices
    none = max_variance_subset(torch.zeros(0), torch.zeros(0, dtype=torch.long), 2)
    assert none.tolist() == [] and none.dtype == torch.long


def test_grpo_train_per_prompt_is_checked():
    from redgym.trainers.grpo import GRPOConfig

    with pytest.raises(RedgymError, match="train_per_prompt"):
        load_config(GRPOConfig, None, {"generations_per_prompt": "4", "train_per_prompt": "5"})
    with pytest.raises(RedgymError, match="train_per_prompt"):
        load_config(GRPOConfig, None, {"train_per_prompt": "1"})


def test_grpo_trains_on_the_kept_samples_only(learnable_scorer, tiny_model_dir, prompt_file, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    seen = []
    real = grpo.prepare_episodes
    monkeypatch.setattr(grpo, "prepare_episodes", lambda ep, *a: (seen.append(len(ep.resp)), real(ep, *a)))
    out = tmp_path / "run"
    cfg = _cfg(
        grpo.GRPOConfig,
        tiny_model_dir,
        prompt_file,
        steps=2,
        prompts_per_step=2,
        generations_per_prompt=4,
        train_per_prompt=2,
        scale_rewards="batch",
        reward_target="adversary",
    )
    grpo.train(cfg, out, progress=False)
    assert seen == [4, 4]  # 2 prompts x 2 kept of 4 each step
    rows = _read(out)
    assert len(rows) == 2 and all(np.isfinite(r["loss/policy"]) and np.isfinite(r["reward/trained"]) for r in rows)
    lora_b = [v for k, v in load_file(str(out / "adversary" / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert lora_b and all(float(v.abs().sum()) > 0 for v in lora_b)


def test_minibatch_tensors_cut_the_right_aligned_rows_to_the_minibatch_width():
    from redgym.trainers.episodes import minibatch_tensors

    # 3 responses right-aligned in width 4; the minibatch (rows 2 and 0) is at most 2 tokens long
    t = {"mask": torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]]), "old": torch.arange(12.0).reshape(3, 4)}
    mb = minibatch_tensors(t, [2, 0], 2, "cpu", ("mask", "old"))
    assert mb["mask"].tolist() == [[0, 1], [1, 1]]
    assert mb["old"].tolist() == [[10.0, 11.0], [2.0, 3.0]]


def test_groups_with_range_by_hand():
    from redgym.trainers.losses import groups_with_range

    # group 0 spans 0.9 - 0.02 = 0.88; group 1 spans 0.05 - 0.01 = 0.04; group 2 spans exactly 0.2
    r = torch.tensor([0.02, 0.9, 0.05, 0.01, 0.1, 0.3])
    g = torch.tensor([0, 0, 1, 1, 2, 2])
    assert groups_with_range(r, g, 0.2).tolist() == [0, 1, 4, 5]
    assert groups_with_range(r, g, 0.5).tolist() == [0, 1]
    assert groups_with_range(r, g, 0.0).tolist() == [0, 1, 2, 3, 4, 5]
    assert groups_with_range(r, g, 1.0).tolist() == []


def test_grpo_with_no_group_in_range_makes_no_update(learnable_scorer, tiny_model_dir, prompt_file, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    cfg = _cfg(
        grpo.GRPOConfig,
        tiny_model_dir,
        prompt_file,
        steps=2,
        prompts_per_step=2,
        generations_per_prompt=4,
        train_per_prompt=2,
        min_group_range=2.0,
        reward_target="adversary",
    )  # toxicity lies in [0, 1]: no group spans 2, and PODS then has no group to choose from
    grpo.train(cfg, out, progress=False)
    rows = _read(out)
    assert [r["train/groups_trained"] for r in rows] == [0, 0]
    assert all(np.isnan(r["loss/policy"]) and np.isfinite(r["reward/reward"]) for r in rows)
    lora_b = [v for k, v in load_file(str(out / "adversary" / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert lora_b and all(float(v.abs().sum()) == 0 for v in lora_b)  # LoRA B starts at zero and never moved


def test_lr_factor_by_hand():
    from redgym.trainers.run import lr_factor

    # warmup over 2 optimizer steps; 4 training steps, the last 2 decaying: step 4 - k gets k / 3
    assert lr_factor(0, 0, 2, 4, 2) == 0.5
    assert lr_factor(1, 0, 2, 4, 2) == 1.0
    assert lr_factor(9, 1, 2, 4, 2) == 1.0
    assert lr_factor(9, 2, 2, 4, 2) == pytest.approx(2 / 3)
    assert lr_factor(9, 3, 2, 4, 2) == pytest.approx(1 / 3)
    assert lr_factor(0, 3, 2, 4, 2) == pytest.approx(0.5 / 3)
    assert lr_factor(9, 3, 2, 4, 0) == 1.0  # no decay: constant after warmup


def test_grpo_lr_decays_per_training_step_and_resumes_straight(learnable_scorer, tiny_model_dir, prompt_file, tmp_path):
    import shutil

    kw = dict(steps=3, lr_decay_steps=2, warmup_steps=1, ppo_epochs=2, generations_per_prompt=4, checkpoint_every=1)
    cfg = _cfg(grpo.GRPOConfig, tiny_model_dir, prompt_file, reward_target="adversary", **kw)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    grpo.train(cfg, straight, progress=False)
    # lr 1e-3; the last 2 of 3 steps decay: 1, 2/3, 1/3 of it, whatever the number of updates in a step
    lrs = [r["train/lr"] for r in _read(straight)]
    assert lrs == pytest.approx([1e-3, 2e-3 / 3, 1e-3 / 3])
    # the run as if stopped after step 2 (its last checkpoint gone), then resumed: the same schedule
    shutil.copytree(straight, resumed)
    shutil.rmtree(latest_checkpoint(resumed))
    grpo.train(cfg, resumed, resume=True, progress=False)
    assert [r["step"] for r in _read(resumed)] == [1, 2, 3]
    assert [r["train/lr"] for r in _read(resumed)] == pytest.approx(lrs)


def test_lr_decay_steps_is_checked():
    with pytest.raises(RedgymError, match="lr_decay_steps"):
        grpo.GRPOConfig(steps=3, lr_decay_steps=4).validate()


@pytest.mark.parametrize("dtype,float32", [("float32", True), ("bfloat16", False)])
def test_policy_knows_whether_its_weights_are_float32(dtype, float32, tiny_model_dir, prompt_file):
    # GRPO takes its old log-probs from the sampler only in float32: in bf16 a cached generation and a fresh forward
    # pass round differently, so the first ratio would not be 1
    from redgym.trainers.policy import build_policy

    assert (
        build_policy(_cfg(TrainConfig, tiny_model_dir, prompt_file, dtype=dtype), str(tiny_model_dir)).float32
        is float32
    )
