"""The PPO trainer on a tiny random model: a trivially learnable reward goes up, parameters change, the KL guard
skips runaway updates, and the value head is checkpointed."""

import json

import numpy as np
import pytest
import torch

from redgym.config import load_config
from redgym.trainers import ppo


def tiny_cfg(model_dir, prompt_file, **kw):
    base = dict(
        adversary_model=str(model_dir),
        defender_model=str(model_dir),
        prompts=str(prompt_file),
        max_new_tokens="6",
        min_new_tokens="6",
        steps="3",
        prompts_per_step="8",
        micro_batch_size="8",
        dtype="float32",
        lr="3e-3",
        test_fraction="0.3",
        eval_after="false",
        max_context_tokens="64",
        reward_target="adversary",
        checkpoint_every="100",
        temperature="1.0",
        top_p="1.0",
        repetition_penalty="1.0",
    )
    base.update({k: str(v) for k, v in kw.items()})
    return load_config(ppo.PPOConfig, None, base)


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_ppo_raises_a_learnable_reward_and_changes_parameters(
    learnable_scorer, tiny_model_dir, prompt_file, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    # Full fine-tuning: on a 32-wide random model LoRA (which leaves the tied output layer alone) moves too slowly
    # for a seconds-long test; the LoRA path is exercised by the other tests.
    cfg = tiny_cfg(
        tiny_model_dir,
        prompt_file,
        steps=12,
        lr="1e-2",
        lora="false",
        kl_coef=0.0,
        prompts_per_step=16,
        micro_batch_size=16,
        max_new_tokens=2,
        min_new_tokens=2,
    )
    ppo.train(cfg, out, progress=False)
    rows = read_metrics(out)
    first, last = np.mean([r["reward/reward"] for r in rows[:3]]), np.mean([r["reward/reward"] for r in rows[-3:]])
    assert last > first + 0.25, (first, last)
    for r in rows:
        for k in (
            "loss/policy",
            "loss/value",
            "policy/clipfrac",
            "policy/approx_kl",
            "objective/kl",
            "objective/entropy",
            "val/explained_variance",
        ):
            assert np.isfinite(r[k]), k
    assert rows[-1]["objective/entropy"] < rows[0]["objective/entropy"] - 0.5  # the policy sharpened


def test_lora_parameters_change(learnable_scorer, tiny_model_dir, prompt_file, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    ppo.train(tiny_cfg(tiny_model_dir, prompt_file, steps=2), out, progress=False)
    adapter = load_file(str(out / "adversary" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(float(v.abs().sum()) > 0 for v in lora_b)  # LoRA B starts at zero
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss/policy"]) for r in rows)


def test_runaway_kl_skips_the_update(learnable_scorer, tiny_model_dir, prompt_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    # kl_stop below zero: any KL counts as runaway, so no update may happen
    ppo.train(tiny_cfg(tiny_model_dir, prompt_file, steps=2, kl_stop=-1.0), out, progress=False)
    rows = read_metrics(out)
    assert [r["policy/kl_stopped"] for r in rows] == [1, 2]
    assert all(np.isnan(r["loss/policy"]) for r in rows)


def test_siblings_of_one_prompt_share_a_leave_one_out_baseline(
    learnable_scorer, tiny_model_dir, prompt_file, tmp_path, monkeypatch
):
    seen = []
    real = ppo.score_episodes

    def spy(ep, *a, **kw):
        real(ep, *a, **kw)
        seen.append(ep)

    monkeypatch.setattr(ppo, "score_episodes", spy)
    ppo.train(
        tiny_cfg(tiny_model_dir, prompt_file, steps=1, kl_coef=0.0, prompts_per_step=2, generations_per_prompt=4),
        tmp_path / "run",
        progress=False,
    )
    (ep,) = seen
    assert sorted(torch.bincount(ep.group).tolist()) == [4, 4]  # 2 prompts x 4 samples, one group each
    last = ep.tensors["token_rewards"][:, -1]  # with kl_coef 0 only the (baselined) episode reward is there
    for g in (0, 1):
        sel = ep.group == g
        r = ep.reward[sel]
        assert last[sel].tolist() == pytest.approx((r - (r.sum() - r) / 3).tolist(), abs=1e-6)
        assert float(last[sel].sum()) == pytest.approx(0.0, abs=1e-6)


def test_kl_in_loss_leaves_the_token_rewards_to_the_episode_and_logs_the_loss_term(
    learnable_scorer, tiny_model_dir, prompt_file, tmp_path, monkeypatch
):
    # two steps: at step 2 the policy has moved, so the sampled tokens' KL to the reference is non-zero; in the
    # reward (the default) it lands on every token, with kl_in_loss only the episode reward is there (last token)
    # and the KL is the loss's term instead
    seen: dict[bool, list] = {False: [], True: []}
    real = ppo.score_episodes

    def spy_into(found):
        def spy(ep, *a, **kw):
            real(ep, *a, **kw)
            found.append(ep.tensors)

        return spy

    for in_loss in (False, True):
        monkeypatch.setattr(ppo, "score_episodes", spy_into(seen[in_loss]))
        out = tmp_path / f"run_{in_loss}"
        torch.manual_seed(0)
        ppo.train(
            tiny_cfg(tiny_model_dir, prompt_file, steps=2, kl_coef=1.0, lr="1e-2", kl_in_loss=in_loss),
            out,
            progress=False,
        )
        rows = read_metrics(out)
        assert all(np.isfinite(r["loss/policy"]) for r in rows)
        if in_loss:
            assert all(np.isfinite(r["objective/kl_k3"]) and r["objective/kl_k3"] >= 0 for r in rows)
            assert rows[-1]["objective/kl_k3"] > 0
        else:
            assert all(np.isnan(r["objective/kl_k3"]) for r in rows)
    for in_loss, tensors in seen.items():
        t = tensors[-1]
        assert float(t["kl"].abs().sum()) > 0  # the policy moved
        before_last = t["token_rewards"][:, :-1].abs().sum()
        assert (float(before_last) == 0.0) == in_loss


def test_value_head_is_saved_and_resumed(learnable_scorer, tiny_model_dir, prompt_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    ppo.train(tiny_cfg(tiny_model_dir, prompt_file, steps=2, checkpoint_every=1), out, progress=False)
    ckpt = sorted((out / "checkpoints").glob("step_*"))[-1]
    assert (ckpt / "model_1.safetensors").exists()  # accelerate saves the value head as the second model
    ppo.train(tiny_cfg(tiny_model_dir, prompt_file, steps=3, checkpoint_every=1), out, resume=True, progress=False)
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]


@pytest.mark.parametrize(
    "field,value,msg",
    [
        ("kl_estimator", "k9", "kl_estimator must be k1 or k3"),
        ("ppo_epochs", "0", "ppo_epochs and generations_per_prompt must be >= 1"),
        ("generations_per_prompt", "0", "generations_per_prompt must be >= 1"),
    ],
)
def test_bad_ppo_config(tiny_model_dir, prompt_file, field, value, msg):
    from redgym.errors import RedgymError

    with pytest.raises(RedgymError, match=msg):
        tiny_cfg(tiny_model_dir, prompt_file, **{field: value})


def test_trainer_configs_redefine_only_intended_run_fields():
    """A trainer field that reuses a RunConfig name silently changes evaluation too (a PPO field once shadowed
    the evaluation's samples_per_prompt); only PPO's default horizon is meant to differ."""
    import dataclasses

    from redgym.config import RunConfig
    from redgym.trainers import ipo
    from redgym.trainers.train_config import TrainConfig

    run = {f.name for f in dataclasses.fields(RunConfig)}
    for cls, intended in ((TrainConfig, set()), (ipo.IPOConfig, set()), (ppo.PPOConfig, {"horizon"})):
        assert {n for n in vars(cls).get("__annotations__", {}) if n in run} == intended, cls.__name__


def test_the_seed_makes_training_reproducible(learnable_scorer, tiny_model_dir, prompt_file, tmp_path, monkeypatch):
    rows = {}
    for name in ("a", "b"):  # without set_seed at the start, the second run continues the first one's RNG stream
        ppo.train(tiny_cfg(tiny_model_dir, prompt_file, steps=2, seed=3), tmp_path / name, progress=False)
        rows[name] = [(r["reward/reward"], r["objective/kl"], r["loss/policy"]) for r in read_metrics(tmp_path / name)]
    assert rows["a"] == rows["b"]
