"""GRPO red-teaming: group-relative advantages, no critic, a KL penalty to the frozen reference.

    redgym train grpo --config configs/grpo_demo.yaml --out runs/grpo      (--resume runs/grpo to continue)

Each adversary turn is an episode rewarded with the composite reward of its exchange, whose toxicity terms are the
mean over ``defender_samples`` defender replies. Each step: (1) a batch of training prompts, each rolled out G =
``generations_per_prompt`` times, the adversary sampled on-policy (temperature only); (2) roll out and score;
(3) optionally keep ``train_per_prompt`` of each group, those whose rewards vary most (PODS); advantage = reward -
the mean reward of its group (same prompt and turn), optionally divided by the group's or the batch's std
(``scale_rewards``), negative ones optionally down-weighted (``negative_weight``), on every token of the utterance;
old and reference log-probs; (4) ``ppo_epochs`` passes (micro batches of shuffled samples or of whole groups:
``micro_batches``) of the clipped surrogate plus beta * k3 KL to the reference per token (``update.clipped_epochs``,
shared with PPO) (Shao et al. 2024; as
TRL's GRPOTrainer), token-mean over the batch; (5) log (with pair reliability: how often one defender reply orders
two siblings as their other replies' mean does) and checkpoint.
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
    group_advantages,
    group_rank_advantages,
    groups_with_range,
    kl_k1,
    masked_mean,
    max_variance_subset,
    reweight_negative,
)
from redgym.trainers.memory import release_memory
from redgym.trainers.policy import Policy, train_sampling
from redgym.trainers.run import end_step, finish_run, start_run
from redgym.trainers.train_config import TrainConfig
from redgym.trainers.update import clipped_epochs, kl_to_reference


@dataclass
class GRPOConfig(TrainConfig):
    horizon: int = _f(1, "adversary/defender exchanges per rollout (each adversary turn is an episode)")
    generations_per_prompt: int = _f(4, "G: adversary samples per prompt; each is compared with its group's mean")
    train_per_prompt: int = _f(
        0,
        "train on this many of each prompt's G samples, those whose rewards vary most "
        "(PODS: losses.max_variance_subset); 0 = all G. Generating a sample costs a "
        "fraction of training on it, so a larger G finds rare rewards more often at the "
        "update cost of train_per_prompt",
    )
    scale_rewards: str = _f(
        "none",
        "divide the advantages by a reward std, as TRL's scale_rewards: none; group (the "
        "group's std, GRPO); batch (the std of the whole step's rewards, so a rare high "
        "reward stays several units while groups differing by a few hundredths stay "
        "small: losses.group_advantages). Off by default: a group whose rewards differ "
        "only by scorer noise would be blown up to unit scale. Scaled, advantages have "
        "unit scale; unscaled toxicity advantages are ~0.05, so the KL term outweighs "
        "them and the policy barely moves",
    )
    advantages: str = _f(
        "mean",
        "mean: reward - its group's mean (then scale_rewards); rank: the "
        "reward's centred rank in its group / the ranks' std, symmetric up and down "
        "whatever the reward's skew (losses.group_rank_advantages says why that matters)",
    )
    negative_weight: float = _f(
        1.0,
        "multiplies the negative advantages (losses.reweight_negative): 1 = GRPO; 0 = "
        "push up only the better-than-group samples, so the policy sharpens onto "
        "likely text it already says instead of growing more random (entropy and "
        "NLL rise when most likely samples are pushed down)",
    )
    kl_coef: float = _f(
        0.02,
        "beta: weight of the per-token k3 KL to the reference in the loss (0 = off); what "
        "keeps the adversary likely (its NLL under the defender), weighed against advantages "
        "of unit scale when scale_rewards is group or batch",
    )
    ppo_epochs: int = _f(1, "passes over each step's rollouts (1 = purely on-policy: the ratio is 1)")
    micro_batches: str = _f(
        "shuffled",
        "how an epoch forms its micro batches: shuffled (a random permutation of the samples, as TRL); groups "
        "(the groups in a random order, each group's samples together: with micro_batch_size = G each micro batch "
        "is the G samples of one prompt, whose shared context runs once, and each optimizer step compares samples "
        "of one prompt; losses.minibatch_order)",
    )
    min_group_range: float = _f(
        0.0,
        "leave out of the update each group whose rewards span less than this (max - min): with a rare reward most "
        "groups differ by the scorer's hundredths, which scaled advantages would train on as if a signal "
        "(losses.groups_with_range); a step with no such group makes no update; 0 = train on every group",
    )
    clip_range: float = _f(0.2, "policy ratio clip epsilon (matters when ppo_epochs > 1)")
    clip_range_high: float | None = _f(
        None,
        "upper ratio clip epsilon (DAPO's clip-higher; TRL's epsilon_high); None = clip_range. With 0.2 a rare "
        "token can grow at most 1.2x per update, which is what makes a rare reward's takeoff late "
        "(losses.ppo_policy_loss)",
    )
    ent_coef: float = _f(0.0, "entropy bonus coefficient")

    @classmethod
    def upgrade(cls, name: str, value: object) -> object:
        # scale_rewards was a bool: true meant the group's std (TRL maps its bools the same way)
        if name == "scale_rewards" and (isinstance(value, bool) or str(value).lower() in ("true", "false")):
            return "group" if str(value).lower() == "true" else "none"
        return value

    def validate(self) -> None:
        super().validate()
        if self.generations_per_prompt < 2:
            raise RedgymError(
                f"config: generations_per_prompt must be >= 2 (a group needs siblings), "
                f"got {self.generations_per_prompt}"
            )
        if self.train_per_prompt and not 2 <= self.train_per_prompt <= self.generations_per_prompt:
            raise RedgymError(
                f"config: train_per_prompt must be 0 (all) or in [2, generations_per_prompt], got "
                f"{self.train_per_prompt}"
            )
        one_of(self, "scale_rewards", "none", "group", "batch")
        one_of(self, "micro_batches", "shuffled", "groups")
        one_of(self, "advantages", "mean", "rank")
        if not 0 <= self.negative_weight <= 1:
            raise RedgymError(f"config: negative_weight must be in [0, 1], got {self.negative_weight}")
        if self.min_group_range < 0:
            raise RedgymError(f"config: min_group_range must be >= 0, got {self.min_group_range}")
        if self.clip_range_high is not None and self.clip_range_high <= 0:
            raise RedgymError(f"config: clip_range_high must be > 0, got {self.clip_range_high}")
        if self.ppo_epochs < 1 or not 0 < self.clip_range < 1 or self.kl_coef < 0:
            raise RedgymError("config: ppo_epochs must be >= 1, clip_range in (0, 1) and kl_coef >= 0")


@torch.no_grad()
def prepare_episodes(ep: Episodes, policy: Policy, cfg: GRPOConfig) -> None:
    """Step 3: old and reference log-probs at the response tokens (B, K), the mask, and advantages (B,).

    With on-policy sampling in float32 the old log-probs are the sampler's own (``Episodes.sampled``: the plain
    softmax at the training temperature, the policy's distribution; tests/test_learning_signal.py checks both
    agree), so only the reference needs a forward pass; the entropy is then estimated by the sampled tokens' mean
    -log p. Otherwise (bf16/fp16 rounding, or a turn lacking them) the policy's forward pass gives both."""
    pad = policy.tokenizer.pad_token_id
    k = max(len(r) for r in ep.resp)
    sampled = ep.sampled if cfg.on_policy_sampling and policy.float32 else None
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in ("old", "ref", "mask", "entropy")}
    for i in range(0, len(ep.resp), cfg.micro_batch_size):
        sl = slice(i, i + cfg.micro_batch_size)
        ref = continuation_forward(policy.reference, ep.ctx[sl], ep.resp[sl], pad, cfg.temperature)
        if sampled is None:
            cur = continuation_forward(policy.model, ep.ctx[sl], ep.resp[sl], pad, cfg.temperature, with_entropy=True)
            old, entropy = list(cur.logps.cpu()), list(cur.need_entropy().cpu())
        else:
            old = [torch.tensor(lp, dtype=torch.float32) for lp in sampled[sl]]
            entropy = [-x for x in old]
        parts["old"] += old
        parts["entropy"] += entropy
        parts["ref"] += list(ref.logps.cpu())
        parts["mask"] += list(ref.mask.cpu())
    t = {n: pad_right_aligned(v, k) for n, v in parts.items()}
    adv = (
        group_rank_advantages(ep.reward, ep.group)
        if cfg.advantages == "rank"
        else group_advantages(ep.reward, ep.group, cfg.scale_rewards)
    )
    t["advantages"] = reweight_negative(adv, cfg.negative_weight)
    ep.tensors = t


def train(cfg: GRPOConfig, out: Path, resume: bool = False, progress: bool = True) -> dict:
    """Run (or resume) GRPO training into ``out``; returns the final step's metrics."""
    # 0 setup: policy (LoRA) + frozen reference/defender (shared base weights), prompts, scorer, optimizer
    run = start_run(cfg, out, resume)
    policy, adversary, setup, opt = run.policy, run.adversary, run.setup, run.opt
    counters = run.state.get("counters", {})
    sampling = train_sampling(cfg, setup.params)  # the adversary's; the defender keeps setup.params
    budget = cfg.max_context_tokens - cfg.max_new_tokens
    metrics: dict[str, float] = {}

    for step in run.steps("grpo", progress):  # each begins with Run.begin_step
        t0 = time.time()
        # 1-2 the step's prompts, each rolled out G times (adversary on-policy, K defender replies), scored
        rolled = run.defender_step(step, counters, roll_out, run, step, sampling, cfg.generations_per_prompt)
        if rolled is None:  # a server defender failed the step and http_skip_failed_steps says skip it
            if end_step(run, step, {"time/step_s": time.time() - t0}, {"counters": counters}):
                break
            continue
        convs, scores = rolled
        t_roll = time.time() - t0
        release_memory()
        # 3 the samples trained on (train_per_prompt: each group's most varied), their group-relative advantages,
        #   old and reference log-probs
        ep = episodes_from(convs, adversary, budget)
        kept = ep.subset(groups_with_range(ep.reward, ep.group, cfg.min_group_range)) if cfg.min_group_range else ep
        if cfg.train_per_prompt:
            kept = kept.subset(max_variance_subset(kept.reward, kept.group, cfg.train_per_prompt))
        nan = float("nan")
        losses: dict[str, float] = {}
        kl_seq, entropy = nan, nan
        if kept.resp:  # min_group_range can leave nothing to train on: then the step makes no update
            prepare_episodes(kept, policy, cfg)
            t = kept.filled()
            # 4 clipped surrogate + KL to the reference
            policy.model.train()
            rng = np.random.default_rng([cfg.seed, step])  # minibatch order: a function of the step (resume = straight)
            grouped = cfg.micro_batches == "groups"
            losses = clipped_epochs(
                kept, run, counters, step, rng, kl_to_reference(cfg.kl_coef), ("ref",), whole_groups=grouped
            )
            kl_seq = float((kl_k1(t["old"], t["ref"]) * t["mask"]).sum(1).mean())  # sequence KL of the sampler, k1
            entropy = float(masked_mean(t["entropy"], t["mask"]))
        # 5 log + checkpoint
        metrics = {
            "reward/reward": float(ep.reward.mean()),
            **term_means(scores),
            "reward/max": float(ep.reward.max()),
            "reward/trained": float(kept.reward.mean()) if kept.resp else nan,
            "train/groups_trained": len(torch.unique(kept.group)),
            "reward/group_std": float(
                np.mean([float(ep.reward[ep.group == g].std(unbiased=False)) for g in torch.unique(ep.group)])
            ),
            "pairs/reliability": pair_reliability(sibling_reply_terms(ep, scores, run.reward_weights(step)))[0],
            "objective/kl": kl_seq,
            "objective/kl_k3": losses.get("kl", nan),
            "objective/entropy": entropy,
            "loss/policy": losses.get("policy", nan),
            "policy/clipfrac": losses.get("clipfrac", nan),
            "policy/first_ratio_dev": losses.get("first_ratio_dev", nan),
            "train/updates": int(losses.get("updates", 0)),
            **budget_counts(scores),
            "train/lr": opt.param_groups[0]["lr"],  # in effect at the step's end
            "train/nonfinite_skipped": counters.get("nonfinite_skipped", 0),
            "time/rollout_s": t_roll,
            "time/step_s": time.time() - t0,
        }
        if end_step(run, step, metrics, {"counters": counters}):
            break
    finish_run(run)
    return metrics
