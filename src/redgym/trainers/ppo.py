"""PPO red-teaming: actor-critic with GAE, the clipped objective and a per-token KL penalty to a frozen reference.

    redgym train ppo --config configs/ppo_demo.yaml --out runs/ppo      (--resume runs/ppo to continue)

Each adversary turn is an episode whose reward is the composite reward of its exchange (or, with
``reward_target: adversary``, the toxicity of the adversary's own text). Each step: (1) a batch of training
prompts, each rolled out ``generations_per_prompt`` times; (2) roll out and score conversations; (3) old log-probs,
reference log-probs and values, per-token rewards (-kl_coef * KL, unless ``kl_in_loss``, plus the episode reward on
the last token, less its siblings' mean reward when a prompt has several samples), GAE and whitened advantages; (4)
PPO epochs over minibatches with the clipped policy and value losses, an optional entropy bonus and, with
``kl_in_loss``, GRPO's k3 KL term (``update.clipped_epochs``, shared with GRPO); (5) log, adapt the KL coefficient,
checkpoint. A KL to the reference above ``kl_stop`` skips the update instead of letting the policy
collapse.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from redgym.config import _f, one_of
from redgym.errors import RedgymError
from redgym.models.forward import continuation_forward
from redgym.rollout.reward import budget_counts, pair_reliability, term_means
from redgym.trainers.episodes import Episodes, episodes_from, pad_right_aligned, roll_out, sibling_reply_terms
from redgym.trainers.losses import (
    gae,
    kl_k1,
    kl_k3,
    leave_one_out_baseline,
    masked_mean,
    ppo_value_loss,
    whiten,
)
from redgym.trainers.policy import Policy, model_config, train_sampling
from redgym.trainers.run import end_step, finish_run, log, start_run
from redgym.trainers.train_config import TrainConfig
from redgym.trainers.update import ExtraLoss, clipped_epochs, kl_to_reference, summed


@dataclass
class PPOConfig(TrainConfig):
    horizon: int = _f(1, "adversary/defender exchanges per episode batch (each adversary turn is rewarded)")
    ppo_epochs: int = _f(4, "passes over each step's rollouts")
    clip_range: float = _f(0.2, "policy ratio clip epsilon")
    clip_range_high: float | None = _f(
        None,
        "upper ratio clip epsilon (DAPO's clip-higher, as GRPO's); None = clip_range: a rare well-rewarded token may "
        "then grow at most 1 + clip_range per update",
    )
    clip_range_value: float = _f(0.2, "value clip epsilon")
    gamma: float = _f(1.0, "discount")
    lam: float = _f(0.95, "GAE lambda")
    vf_coef: float = _f(0.1, "value loss coefficient")
    ent_coef: float = _f(0.0, "entropy bonus coefficient")
    kl_coef: float = _f(0.05, "initial per-token KL penalty coefficient")
    kl_estimator: str = _f("k1", "KL estimator in the reward: k1 (log ratio) or k3 (non-negative)")
    kl_in_loss: bool = _f(
        False,
        "the KL penalty in the loss, as GRPO's (kl_coef x the per-token k3 of the sampled tokens to the reference, "
        "whose gradient is KL(ref || pi)'s), instead of in the token rewards (Ziegler's; kl_estimator). With the "
        "reward's NLL term a reward-side KL's optimum is ref^(1 + w_nll / kl_coef) x exp(toxicity / kl_coef): "
        "sharpened at any weight",
    )
    adaptive_kl: bool = _f(False, "adapt kl_coef towards kl_target (Ziegler et al. 2019)")
    kl_target: float = _f(6.0, "target sequence KL for the adaptive controller")
    kl_horizon: int = _f(10000, "adaptive controller horizon (in episodes)")
    kl_stop: float = _f(20.0, "skip a step's update when the mean sequence KL to the reference exceeds this")
    whiten_advantages: bool = _f(True, "whiten advantages over each step's batch")
    generations_per_prompt: int = _f(1, "adversary samples rolled out from each training prompt per step")
    group_baseline: bool = _f(
        True,
        "with generations_per_prompt > 1, subtract from each episode reward the mean "
        "reward of its siblings (same prompt and turn) before GAE (RLOO)",
    )

    def validate(self) -> None:
        super().validate()
        one_of(self, "kl_estimator", "k1", "k3")
        if self.ppo_epochs < 1 or not 0 < self.clip_range < 1 or self.generations_per_prompt < 1:
            raise RedgymError("config: ppo_epochs and generations_per_prompt must be >= 1 and clip_range in (0, 1)")
        if not 0 < self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise RedgymError(
                f"config: gamma must be in (0, 1] and lam in [0, 1], got gamma {self.gamma} and lam {self.lam}"
            )
        if self.clip_range_high is not None and self.clip_range_high <= 0:
            raise RedgymError(f"config: clip_range_high must be > 0, got {self.clip_range_high}")
        if self.vf_coef < 0 or self.kl_coef < 0 or self.clip_range_value <= 0:
            raise RedgymError("config: vf_coef and kl_coef must be >= 0 and clip_range_value > 0")


class ValueHead(torch.nn.Module):
    """A scalar value per position from the policy's last hidden state (float32).

    Zero-initialised: the last hidden states of small LMs have large norms, so a random head starts with values
    of order 1 against returns of order 0.1, and the clipped value loss then needs many steps to recover.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, K, H) -> (B, K)
        return self.linear(hidden.float()).squeeze(-1)


@torch.no_grad()
def score_episodes(ep: Episodes, policy: Policy, value_head: torch.nn.Module, cfg: PPOConfig, kl_coef: float) -> None:
    """Step 3: old/ref log-probs and values at the response tokens, token rewards, GAE, advantages.

    ``value_head``: the ``ValueHead`` as accelerate prepared it (in a DDP wrapper under several processes)."""
    pad = policy.tokenizer.pad_token_id
    k = max(len(r) for r in ep.resp)
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in ("old", "ref", "values", "mask", "entropy")}
    for i in range(0, len(ep.resp), cfg.micro_batch_size):
        sl = slice(i, i + cfg.micro_batch_size)
        cur = continuation_forward(
            policy.model, ep.ctx[sl], ep.resp[sl], pad, cfg.temperature, with_entropy=True, with_hidden=True
        )
        ref = continuation_forward(policy.reference, ep.ctx[sl], ep.resp[sl], pad, cfg.temperature)
        for name, x in (
            ("old", cur.logps),
            ("ref", ref.logps),
            ("values", value_head(cur.need_hidden()) * cur.mask),
            ("mask", cur.mask),
            ("entropy", cur.need_entropy()),
        ):
            parts[name] += list(x.cpu())
    t = {n: pad_right_aligned(v, k) for n, v in parts.items()}
    kl = (kl_k1 if cfg.kl_estimator == "k1" else kl_k3)(t["old"], t["ref"]) * t["mask"]
    rewards = torch.zeros_like(kl) if cfg.kl_in_loss else -kl_coef * kl  # kl_in_loss: update.kl_to_reference
    score = ep.reward
    if cfg.generations_per_prompt > 1 and cfg.group_baseline:
        score = leave_one_out_baseline(score, ep.group)
    rewards[:, -1] += score  # the episode reward lands on the last token (responses are right-aligned)
    adv, ret = gae(rewards, t["values"], t["mask"], cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        adv = whiten(adv, t["mask"])
    t.update(kl=kl, token_rewards=rewards, advantages=adv, returns=ret)
    ep.tensors = t


def value_loss(value_head: torch.nn.Module, cfg: PPOConfig) -> ExtraLoss:
    """PPO's own term of step 4's shared update (``update.clipped_epochs``): vf_coef * the clipped value loss of
    ``value_head`` on the policy's last hidden states, logged as "value"."""

    def term(out, mb):
        values = value_head(out.need_hidden()) * mb["mask"]
        vf = ppo_value_loss(values, mb["values"], mb["returns"], mb["mask"], cfg.clip_range_value)
        return cfg.vf_coef * vf, {"value": vf}

    return term


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over real tokens (1 = perfect critic, <= 0 = useless)."""
    r, v = returns[mask.bool()], values[mask.bool()]
    var = torch.var(r)
    return float(1 - torch.var(r - v) / var) if var > 0 else float("nan")


def train(cfg: PPOConfig, out: Path, resume: bool = False, progress: bool = True) -> dict:
    """Run (or resume) PPO training into ``out``; returns the final step's metrics."""
    # 0 setup: policy (LoRA) + frozen reference/defender (shared base weights), value head, optimizer
    run = start_run(cfg, out, resume, make_extra=lambda pol: (ValueHead(model_config(pol.model).hidden_size),))
    policy, adversary, setup, opt = run.policy, run.adversary, run.setup, run.opt
    value_head = run.extra[0]
    counters, kl_coef = run.state.get("counters", {}), run.state.get("kl_coef", cfg.kl_coef)
    sampling = train_sampling(cfg, setup.params)  # the adversary's; the defender keeps setup.params
    budget = cfg.max_context_tokens - cfg.max_new_tokens
    metrics: dict[str, float] = {}

    for step in run.steps("ppo", progress):  # each begins with Run.begin_step
        t0 = time.time()
        # 1-2 the step's prompts, each rolled out generations_per_prompt times (adversary on-policy), scored
        rolled = run.defender_step(step, counters, roll_out, run, step, sampling, cfg.generations_per_prompt)
        if rolled is None:  # a server defender failed the step and http_skip_failed_steps says skip it
            if end_step(run, step, {"time/step_s": time.time() - t0}, {"counters": counters, "kl_coef": kl_coef}):
                break
            continue
        convs, scores = rolled
        t_roll = time.time() - t0
        # 3 old/ref log-probs, values, KL-penalised token rewards, GAE
        ep = episodes_from(convs, adversary, budget)
        score_episodes(ep, policy, value_head, cfg, kl_coef)
        t = ep.filled()
        seq_kl = float((t["kl"].sum(1)).mean())
        # 4 PPO epochs, unless the KL has run away from the reference
        policy.model.train()
        losses: dict[str, float] = {}
        if seq_kl > cfg.kl_stop:
            counters["kl_stopped"] = counters.get("kl_stopped", 0) + 1
            log.warning("step %d: sequence KL %.2f > kl_stop %.2f; update skipped", step + 1, seq_kl, cfg.kl_stop)
        else:
            rng = np.random.default_rng([cfg.seed, step])  # minibatch order: a function of the step
            params = [*policy.model.parameters(), *value_head.parameters()]  # clipping covers the value head too
            term: ExtraLoss = value_loss(value_head, cfg)
            names: tuple[str, ...] = ("values", "returns")
            if cfg.kl_in_loss:
                term, names = summed(term, kl_to_reference(kl_coef)), (*names, "ref")
            losses = clipped_epochs(ep, run, counters, step, rng, term, names, params, with_hidden=True)
        # 5 log, adapt the KL coefficient, checkpoint
        nan = float("nan")
        metrics = {
            "reward/reward": float(ep.reward.mean()),
            **term_means(scores),
            "objective/kl": seq_kl,
            "objective/kl_coef": kl_coef,
            "objective/entropy": float(masked_mean(t["entropy"], t["mask"])),
            "loss/policy": losses.get("policy", nan),
            "loss/value": losses.get("value", nan),
            "objective/kl_k3": losses.get("kl", nan),  # with kl_in_loss: the loss's KL term, before kl_coef
            "policy/clipfrac": losses.get("clipfrac", nan),
            "policy/approx_kl": losses.get("approx_kl", nan),
            "policy/first_ratio_dev": losses.get("first_ratio_dev", nan),
            "pairs/reliability": pair_reliability(sibling_reply_terms(ep, scores, run.reward_weights(step)))[0],
            "policy/kl_stopped": counters.get("kl_stopped", 0),
            "val/explained_variance": explained_variance(t["values"], t["returns"], t["mask"]),
            "train/updates": int(losses.get("updates", 0)),
            **budget_counts(scores),
            "train/lr": opt.param_groups[0]["lr"],  # in effect at the step's end
            "train/nonfinite_skipped": counters.get("nonfinite_skipped", 0),
            "time/rollout_s": t_roll,
            "time/step_s": time.time() - t0,
        }
        if cfg.adaptive_kl:
            err = float(np.clip(seq_kl / cfg.kl_target - 1, -0.2, 0.2))
            kl_coef *= 1 + err * len(ep.resp) / cfg.kl_horizon
        if end_step(run, step, metrics, {"counters": counters, "kl_coef": kl_coef}):
            break
    finish_run(run)
    return metrics
