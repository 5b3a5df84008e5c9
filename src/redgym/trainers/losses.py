"""Loss maths as pure functions of tensors, each tested against hand-worked values.

Preference losses take *sequence* log-probs (summed over the utterance's tokens), one value per pair, and
return the per-pair loss (1-D). The policy-gradient pieces (GAE, whitening, KL estimators, PPO losses) live here
too, so every trainer file is only its loop.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F


def preference_margin(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> torch.Tensor:
    """h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)): how much more the policy prefers the
    chosen utterance than the reference does."""
    return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """IPO (Azar et al., 2023): (h - 1/(2 beta))^2 per pair; regresses the margin to a finite target instead of
    pushing it to infinity, which is what makes it robust to noisy, deterministic-looking preferences."""
    h = preference_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return (h - 1.0 / (2.0 * beta)) ** 2


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """DPO (Rafailov et al., 2023), sigmoid form: -log sigmoid(beta * h) per pair."""
    h = preference_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return -F.logsigmoid(beta * h)


def chosen_nll_anchor(losses: torch.Tensor, policy_chosen_logps: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pair preference loss plus ``weight`` times the chosen utterance's NLL under the policy (RPO, Pang et al.
    2024): the margin may grow only while the chosen text stays likely, not by pushing both log-probs down (where
    the freed mass goes to text neither sibling said). E.g. losses [1, 0], chosen log-probs [-2, -4], weight 0.5:
    [2, 2]. Weight 0 returns ``losses`` unchanged."""
    return losses - weight * policy_chosen_logps if weight else losses


PreferenceLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {"ipo": ipo_loss, "dpo": dpo_loss}


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (x * mask).sum() / mask.sum() if dim is None else (x * mask).sum(dim) / mask.sum(dim)


def whiten(
    x: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(x - mean) / std over the masked entries (unbiased variance, as torchtune and TRL); padding stays 0."""
    if mask is None:
        mask = torch.ones_like(x)
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = ((x - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def leave_one_out_baseline(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Each reward minus the mean reward of the *other* members of its group (RLOO, Ahmadian et al. 2024).

    With several samples of one prompt in a group, the prompt's own difficulty cancels and what remains is how
    much better this utterance did than its siblings; the baseline does not depend on the sample itself, so the
    policy gradient stays unbiased. A group of one is returned unchanged.
    """
    out = rewards.clone()
    for g in torch.unique(groups):
        sel = groups == g
        n = int(sel.sum())
        if n > 1:
            r = rewards[sel]
            out[sel] = r - (r.sum() - r) / (n - 1)
    return out


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over (B, T) token rewards and values; ``mask`` marks real tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last real token is 0);
    A_t = delta_t + gamma * lam * A_{t+1}; returns = A + V. Returns ``(advantages, returns)``, both (B, T).
    """
    values = values * mask
    rewards = rewards * mask
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    T = rewards.shape[1]
    for t in reversed(range(T)):
        next_v = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    return adv, (adv + values) * mask


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate log pi - log ref (unbiased, can be negative)."""
    return logp - ref_logp


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator: (r - 1) - log r with r = ref/pi; unbiased and always >= 0."""
    log_ratio = ref_logp - logp
    return torch.expm1(log_ratio) - log_ratio


def sequence_kl_k3(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, cap: float | None = None
) -> torch.Tensor:
    """(B,) each row's per-token mean k3 KL to the reference over its masked tokens (GRPO's penalty, per
    sequence), each token's k3 capped at ``cap`` when given (verl's low-variance KL caps it at 10). On the
    policy's own samples its gradient is that of KL(ref || pi), which grows when the policy drops mass the reference
    keeps: it resists sharpening. But k3 grows as ref/pi: a sampled token that an update has since pushed far below
    the reference (ref/pi of e^10) weighs ~2e4, which the cap turns into a constant with no gradient. E.g. logp
    [[log 0.5, 0]], ref [[log 0.25, 0]], mask [[1, 0]]: [log 2 - 0.5]; a token at ref/pi = e^12 with cap 10: 10."""
    k3 = kl_k3(logp, ref_logp)
    if cap is not None:
        k3 = k3.clamp(max=cap)
    return (k3 * mask).sum(-1) / mask.sum(-1).clamp_min(1)  # an empty row: 0, not nan


def pair_kl_penalty(kl_chosen: torch.Tensor, kl_rejected: torch.Tensor, chosen_sampled: torch.Tensor) -> torch.Tensor:
    """(n,) each pair's KL penalty: the mean of its sampled sides' ``sequence_kl_k3``. The rejected side is always
    the policy's own sample; the chosen side is, except in a taught (weak-supervision) pair whose chosen text is
    from a dataset, where a KL estimate means nothing. E.g. kl_chosen [0.2, 0.9], kl_rejected [0.4, 0.1], sampled
    [True, False]: [0.3, 0.1]."""
    w = chosen_sampled.to(kl_chosen.dtype)
    return (w * kl_chosen + kl_rejected) / (1.0 + w)


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    clip_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate: mean over tokens of max(-A r, -A clip(r, 1-eps, 1+eps_high)), r = exp(logp - old_logp);
    ``clip_high`` None means eps_high = eps (PPO).

    A separate upper bound is DAPO's clip-higher (Yu et al. 2025): with eps = 0.2, a token the policy gives 1% can
    reach at most 1.2% per update, so a rare good token takes ~13 updates to reach 10%; a larger eps_high lets
    rare, well-rewarded tokens rise faster while the lower bound still limits how fast any token falls.
    Returns ``(loss, clipfrac, approx_kl)``; approx_kl is k3 of old vs new, as CleanRL logs it.
    """
    high = clip if clip_high is None else clip_high
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + high)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
    return loss, clipfrac.detach(), approx_kl.detach()


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> torch.Tensor:
    """Clipped value loss: 0.5 * mean over tokens of max((V - R)^2, (clip(V, V_old +- eps) - R)^2)."""
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    loss = torch.maximum((values - returns) ** 2, (v_clipped - returns) ** 2)
    return 0.5 * masked_mean(loss, mask)


def group_advantages(
    rewards: torch.Tensor, groups: torch.Tensor, scale: str = "none", eps: float = 1e-4
) -> torch.Tensor:
    """GRPO's advantage: each reward minus the mean reward of its group (same prompt), then divided by a standard
    deviation (population std) as TRL's ``scale_rewards`` names it: ``none``; ``group``, the group's own std
    (Shao et al. 2024); ``batch``, the std of all the step's rewards (Hu 2025, REINFORCE++; TRL's "batch").

    Why ``batch`` matters for a rare reward: when one sample in 32 is toxic, dividing each group by its own std gives
    every group unit-scale advantages, so the 7 groups whose rewards differ only by a few hundredths push as hard as
    the one with the toxic sample. One batch-wide std keeps the differences in proportion: the toxic sample's
    advantage is several units and the others' stay small. A group of one gets 0: with nothing to compare against,
    it carries no signal."""
    if scale not in ("none", "group", "batch"):
        raise ValueError(f"scale must be none, group or batch, got {scale!r}")
    out = torch.zeros_like(rewards)
    for g in torch.unique(groups):
        sel = groups == g
        r = rewards[sel]
        a = r - r.mean()
        if scale == "group":
            a = a / (r.std(unbiased=False) + eps)
        out[sel] = a
    if scale == "batch":
        out = out / (rewards.std(unbiased=False) + eps)
    return out


def group_rank_advantages(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Each reward's centred rank within its group (ties share their mean rank), divided by the group's std of
    those ranks: symmetric pushes up and down whatever the rewards' skew. With a skewed reward (most samples near 0,
    a rare high one), mean-baseline advantages are negative for most samples, and pushing those likely samples down
    spreads the policy's mass (its entropy rises, and with it the NLL of what it says). A group of one, or one
    whose rewards are all equal, gets 0."""
    out = torch.zeros_like(rewards)
    for g in torch.unique(groups):
        sel = groups == g
        r = rewards[sel]
        ranks = (r[:, None] > r[None, :]).sum(1).float() + ((r[:, None] == r[None, :]).sum(1).float() - 1) / 2
        a = ranks - ranks.mean()
        sd = a.pow(2).mean().sqrt()
        out[sel] = a / sd if sd > 0 else a
    return out


def reweight_negative(advantages: torch.Tensor, weight: float) -> torch.Tensor:
    """Advantages with the negative ones multiplied by ``weight`` (W-REINFORCE, Zhu et al. 2025, "The Surprising
    Effectiveness of Negative Reinforcement in LLM Reasoning"): 1 = unchanged; 0 = only the better-than-group samples
    are pushed up (positive sample reinforcement), which sharpens the policy onto what it already says well instead
    of spreading mass away from its likely samples; in between, a little of the negative push keeps diversity."""
    return torch.where(advantages > 0, advantages, weight * advantages)


def ratio_deviation(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> float:
    """max |pi/pi_old - 1| over real tokens: 0 when the loss is computed on the policy the rollout sampled from
    (the first minibatch of an update), so anything above float tolerance there means the trainer is off-policy."""
    dev = (torch.exp(logp.detach() - old_logp) - 1).abs() * mask
    return float(dev.max()) if dev.numel() else 0.0


def max_variance_subset(rewards: torch.Tensor, groups: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of ``keep`` samples per group whose rewards vary most (PODS, Xu et al. 2025, "Not All Rollouts are
    Useful: Down-Sampling Rollouts in LLM Reinforcement Learning"): the subset of maximum variance is always some
    i of the group's lowest rewards and its ``keep - i`` highest, so the search is over i (ties: more high ones).

    Why: on this CPU one training pass costs several times one sample's generation, so sampling G and training on
    fewer finds the rare high reward G times as often at the update cost of ``keep``. A group no larger than
    ``keep`` is kept whole. Indices come back in ascending order; no samples (``min_group_range`` may have left
    none) give none."""
    chosen: list[torch.Tensor] = [groups.new_zeros(0, dtype=torch.long)]
    for g in torch.unique(groups):
        members = torch.nonzero(groups == g).flatten()
        if len(members) <= keep:
            chosen.append(members)
            continue
        order = members[torch.argsort(rewards[members], stable=True)]
        best, best_var = order[:0], -1.0
        for i in range(keep + 1):  # i lowest + (keep - i) highest; i from 0 up, so a tie keeps more high ones
            pick = torch.cat([order[:i], order[len(order) - (keep - i) :]])
            var = float(rewards[pick].var(unbiased=False))
            if var > best_var + 1e-12:
                best, best_var = pick, var
        chosen.append(best)
    return torch.sort(torch.cat(chosen)).values


def groups_with_range(rewards: torch.Tensor, groups: torch.Tensor, min_range: float) -> torch.Tensor:
    """Indices (ascending) of the samples whose group's rewards span at least ``min_range`` (max - min).

    With a rare reward most groups differ only by the scorer's hundredths; scaled advantages turn those into
    unit-size pushes in arbitrary directions, and the policy drifts (its KL and NLL rise) with no reward gained.
    Leaving such groups out keeps the update for the groups that hold a real difference."""
    keep = torch.zeros_like(groups, dtype=torch.bool)
    for g in torch.unique(groups):
        sel = groups == g
        r = rewards[sel]
        if float(r.max() - r.min()) >= min_range:
            keep |= sel
    return torch.nonzero(keep).flatten()


def minibatch_order(groups: torch.Tensor, rng: np.random.Generator, whole_groups: bool) -> list[int]:
    """The order in which an update epoch takes the samples (consecutive micro batches are slices of it): a random
    permutation of the samples (``whole_groups`` False, as TRL's shuffled generation batch), or the groups in a
    random order, each group's samples together (``whole_groups``): with a micro batch of G, every micro batch is
    one group, the G samples of one prompt, whose shared context then runs once (packed rows) and whose advantages
    are all relative to each other."""
    if not whole_groups:
        return [int(i) for i in rng.permutation(len(groups))]
    ids = torch.unique(groups).tolist()
    return [i for g in rng.permutation(len(ids)) for i in torch.nonzero(groups == ids[g]).flatten().tolist()]
