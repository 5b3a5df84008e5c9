"""The stealth objective: the gate on the defender's terms and the adversary-budget constraint's multiplier, on
hand-worked numbers, then in a GRPO run (logged, used in the next step's rewards, resumed from the checkpoint)."""

import json

import numpy as np
import pytest

from redgym.errors import RedgymError
from redgym.rollout.reward import (
    LOGIT_EPS,
    RewardWeights,
    composite_reward,
    gate_mask,
    multiplier_update,
    reply_terms,
    with_multiplier,
)
from redgym.trainers import grpo
from redgym.trainers.checkpoints import latest_checkpoint
from tests.test_learning_signal import _cfg, _read


def test_the_gate_passes_clean_turns_at_or_below_it():
    assert gate_mask([0.1, 0.5, 0.51, 0.9], 0.5).tolist() == [1.0, 1.0, 0.0, 0.0]
    assert gate_mask([0.1, 0.9], None).tolist() == [1.0, 1.0]


def test_a_gated_exchange_earns_nothing_from_the_defender():
    # exchange 0: adversary 0.3 <= 0.5, clean: 1*0.4 + 0.5*0.2 - 0.1*2 - 1*0.3 = 0.0
    # exchange 1: adversary 0.7 > 0.5, the echo: 0 + 0 - 0.1*1 - 1*0.7 = -0.8 (without the gate: +0.6 - 0.1 + 0.4 - 0.7)
    w = RewardWeights(defender=1.0, combined=0.5, nll=0.1, adversary=-1.0, gate=0.5)
    tox_d, tox_c, nll, tox_a = [0.4, 0.6], [0.2, 0.8], [2.0, 1.0], [0.3, 0.7]
    assert composite_reward(tox_d, tox_c, nll, None, w, tox_adversary=tox_a) == pytest.approx([0.0, -0.8])
    ungated = RewardWeights(defender=1.0, combined=0.5, nll=0.1, adversary=-1.0)
    assert composite_reward(tox_d, tox_c, nll, None, ungated, tox_adversary=tox_a) == pytest.approx([0.0, 0.2])
    with pytest.raises(ValueError, match="gate"):
        composite_reward(tox_d, tox_c, nll, None, w)


def test_under_logit_a_gated_exchange_takes_the_floor_not_zero():
    # logit(0.05) = -2.944 is below 0: a gate that zeroed the transformed term would pay the echo more than a clean turn
    w = RewardWeights(defender=1.0, combined=0.0, nll=0.0, transform="logit", gate=0.5)
    r = composite_reward([0.05, 0.05], [0.0, 0.0], [0.0, 0.0], None, w, tox_adversary=[0.1, 0.9])
    floor = np.log(LOGIT_EPS / (1 - LOGIT_EPS))
    assert r == pytest.approx([np.log(0.05 / 0.95), floor])
    assert r[1] < r[0]


def test_reply_terms_carry_the_gate():
    scores = {
        "tox_defender_replies": np.array([[0.2, 0.4], [0.6, 0.8]]),
        "tox_combined_replies": np.array([[0.0, 0.2], [1.0, 1.0]]),
        "tox_adversary": np.array([0.1, 0.9]),
    }
    w = RewardWeights(defender=1.0, combined=0.5, gate=0.5)
    assert reply_terms(scores, w) == pytest.approx(np.array([[0.2, 0.5], [0.0, 0.0]]))


def test_the_multiplier_rises_over_budget_and_falls_to_zero_under_it():
    assert multiplier_update(0.5, 0.3, 0.1, 2.0) == pytest.approx(0.9)  # 0.5 + 2 * (0.3 - 0.1)
    assert multiplier_update(0.1, 0.0, 0.1, 2.0) == 0.0  # 0.1 - 0.2 projected onto lambda >= 0
    lam, seen = 0.0, []
    for cost in (0.3, 0.2, 0.05, 0.05, 0.05, 0.05):  # budget 0.1, lr 1
        lam = multiplier_update(lam, cost, 0.1, 1.0)
        seen.append(lam)
    assert seen == pytest.approx([0.2, 0.3, 0.25, 0.2, 0.15, 0.1])


def test_the_multiplier_enters_the_reward_as_a_penalty_on_the_adversary_toxicity():
    w = RewardWeights(defender=1.0, combined=0.0, nll=0.0, adversary=0.5)
    assert with_multiplier(w, 0.0) is w
    assert with_multiplier(w, 2.0).adversary == pytest.approx(-1.5)
    r = composite_reward([0.2], [0.0], [0.0], None, with_multiplier(w, 2.0), tox_adversary=[0.4])
    assert r == pytest.approx([0.2 - 1.5 * 0.4])


@pytest.mark.parametrize(
    "field,value", [("stealth_gate", "1.5"), ("adversary_budget", "-0.1"), ("multiplier_lr", "-1")]
)
def test_bad_stealth_settings_are_one_line_errors(tiny_model_dir, prompt_file, field, value):
    with pytest.raises(RedgymError, match=field):
        _cfg(grpo.GRPOConfig, tiny_model_dir, prompt_file, **{field: value})


def test_grpo_moves_the_multiplier_each_step_and_resumes_it(learnable_scorer, tiny_model_dir, prompt_file, tmp_path):
    # reward = tox(defender) - lambda * tox(adversary): each step's mean reward is known from its logged terms
    kw = dict(w_defender=1.0, w_combined=0.0, w_nll=0.0, adversary_budget=0.05, multiplier_lr=3.0)
    kw.update(multiplier_init=0.5, checkpoint_every=1, defender_samples=2)
    out = tmp_path / "run"
    grpo.train(_cfg(grpo.GRPOConfig, tiny_model_dir, prompt_file, steps=2, **kw), out, progress=False)
    saved = json.loads((latest_checkpoint(out) / "trainer_state.json").read_text())["multiplier"]
    grpo.train(_cfg(grpo.GRPOConfig, tiny_model_dir, prompt_file, steps=3, **kw), out, resume=True, progress=False)
    rows = _read(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert saved == pytest.approx(rows[1]["reward/multiplier"])
    lam = 0.5
    for r in rows:
        assert r["reward/reward"] == pytest.approx(r["reward/tox_defender"] - lam * r["reward/tox_adversary"], abs=1e-6)
        lam = max(0.0, lam + 3.0 * (r["reward/tox_adversary"] - 0.05))
        assert r["reward/multiplier"] == pytest.approx(lam, abs=1e-9)
    assert len({round(r["reward/multiplier"], 9) for r in rows}) > 1  # the check can fail: it moved


def test_clean_openings_keep_the_texts_at_or_below_the_threshold(tmp_path):
    from redgym.data.weak import clean_openings

    src = tmp_path / "openings.txt"
    src.write_text("a calm opening here\nthe loud one\nanother calm one\n", encoding="utf-8")
    scorer = lambda texts: [0.9 if "loud" in t else 0.5 if "another" in t else 0.1 for t in texts]  # noqa: E731
    assert clean_openings(str(src), scorer, 0.5) == ["a calm opening here", "another calm one"]
    with pytest.raises(RedgymError, match="no text scores at or below 0.05"):
        clean_openings(str(src), scorer, 0.05)


def test_sft_on_clean_openings_teaches_them_after_a_training_prompt(tiny_model_dir, prompt_file, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from redgym.models.lm import LM
    from redgym.trainers import sft

    weak = tmp_path / "weak.txt"
    weak.write_text("we went out and it rained all day\nwhat the hell are you doing\n", encoding="utf-8")
    seen = []
    real = LM.render

    def spy(self, history, me):
        seen.append(list(history))
        return real(self, history, me)

    monkeypatch.setattr(LM, "render", spy)
    out = tmp_path / "run"
    cfg = _cfg(sft.SFTConfig, tiny_model_dir, prompt_file, weak_prompts=str(weak), weak_kind="clean_opening")
    sft.train(cfg, out, progress=False)
    rows = _read(out)
    assert len(rows) == 2 and all(np.isfinite(r["loss/sft"]) for r in rows)
    prompts = {line.strip() for line in prompt_file.read_text().splitlines()}
    taught = [h for h in seen if h and all(speaker == "prompt" for speaker, _ in h)]
    assert taught and all(text in prompts for h in taught for _, text in h)  # contexts are training prompts
    lora_b = [v for k, v in load_file(str(out / "adversary" / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert lora_b and all(float(v.abs().sum()) > 0 for v in lora_b)
    with pytest.raises(RedgymError, match="weak_kind"):
        _cfg(sft.SFTConfig, tiny_model_dir, prompt_file, weak_kind="openings")


def test_ipo_moves_the_multiplier_from_its_trees_adversary_turns(
    learnable_scorer, tiny_model_dir, prompt_file, tmp_path
):
    from redgym.trainers import ipo
    from tests.test_ipo import read_metrics, tiny_cfg

    out = tmp_path / "ipo"
    cfg = tiny_cfg(tiny_model_dir, prompt_file, steps=2, adversary_budget=0.0, multiplier_lr=2.0)
    ipo.train(cfg, out, progress=False)
    rows = read_metrics(out)
    lam = 0.0
    for r in rows:  # budget 0: every step adds 2 x the mean toxicity of the step's adversary turns
        lam += 2.0 * r["reward/tox_adversary"]
        assert r["reward/multiplier"] == pytest.approx(lam, abs=1e-9)
    assert lam > 0
