"""The update GRPO and PPO share: epochs of clipped policy-gradient steps over one training step's episodes.

Both trainers collect a batch, fill ``Episodes.tensors`` (old log-probs, mask, advantages, ...), then call
``clipped_epochs``. What differs is one extra loss term per micro batch, passed in: GRPO's beta * KL to the
reference, PPO's value loss. Everything else, the order of the micro batches, the clipped surrogate with DAPO's
clip-higher, the entropy bonus, the non-finite guard, gradient clipping and one optimizer step per micro batch, is
written once here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from redgym.models.forward import continuation_forward
from redgym.trainers.episodes import Episodes, minibatch_tensors
from redgym.trainers.losses import kl_k3, masked_mean, minibatch_order, ppo_policy_loss, ratio_deviation
from redgym.trainers.metrics_log import finite_or_skip

if TYPE_CHECKING:
    from redgym.trainers.run import Run

# extra_loss(out, mb) -> (the term added to the loss, {name: its value to log}); ``out`` is the policy's forward
# pass over the micro batch, ``mb`` the step's tensors ``names`` cut to it (see ``clipped_epochs``)
ExtraLoss = Callable[[object, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def kl_to_reference(kl_coef: float) -> ExtraLoss:
    """GRPO's term (and PPO's with ``kl_in_loss``) of the shared update: ``kl_coef`` x the per-token k3 KL of the
    micro batch's sampled tokens to the reference (the step's tensors must hold "ref"), logged as "kl". Its gradient
    on the policy's own samples is KL(ref || pi)'s: it costs a policy that drops text the reference says."""

    def term(out, mb):
        kl = masked_mean(kl_k3(out.logps, mb["ref"]), mb["mask"])
        return kl_coef * kl, {"kl": kl}

    return term


def summed(*terms: ExtraLoss) -> ExtraLoss:
    """One ``ExtraLoss`` that adds the terms' losses and logs all their values (names must differ)."""

    def term(out, mb):
        total: torch.Tensor | float = 0.0
        logged: dict[str, torch.Tensor] = {}
        for t in terms:
            loss, values = t(out, mb)
            total = total + loss
            logged.update(values)
        return total, logged

    return term


def clipped_epochs(
    ep: Episodes,
    run: Run,
    counters: dict,
    step: int,
    rng: np.random.Generator,
    extra_loss: ExtraLoss,
    names: tuple[str, ...] = (),
    params: Iterable[torch.nn.Parameter] | None = None,
    whole_groups: bool = False,
    with_hidden: bool = False,
) -> dict[str, float]:
    """``cfg.ppo_epochs`` passes over ``ep``, each in micro batches of ``cfg.micro_batch_size`` taken in
    ``losses.minibatch_order`` (shuffled samples, or whole groups), one optimizer step per micro batch on

        loss = clipped surrogate (cfg.clip_range, cfg.clip_range_high) + extra_loss - cfg.ent_coef * entropy.

    ``ep.tensors`` holds "mask", "old" and "advantages": (B, K) per token, or (B,) per sequence, then put on every
    token; ``names`` are the other (B, K) tensors ``extra_loss`` reads. ``params``: what gradient clipping covers
    (default the policy's). Returns the mean over micro batches of "policy", "clipfrac", "approx_kl" and each
    extra term, "first_ratio_dev", the ratio's deviation from 1 on the first micro batch (0 when the rollout
    sampled from this policy), and "updates", the optimizer steps taken. The policy, optimizer, schedule and
    accelerator are the run frame's (``run``)."""
    policy, acc, opt, sched = run.policy, run.acc, run.opt, run.sched
    cfg: Any = run.cfg  # a GRPOConfig or PPOConfig: both hold the epoch, clip and entropy fields read here
    pad = policy.tokenizer.pad_token_id
    t = ep.filled()
    dev = next(policy.model.parameters()).device
    params = list(params) if params is not None else list(policy.model.parameters())
    per_sequence = t["advantages"].dim() == 1
    keys = ("mask", "old", *names) + (() if per_sequence else ("advantages",))
    stats: dict[str, list[float]] = {n: [] for n in ("policy", "clipfrac", "approx_kl", "first_ratio_dev")}
    updates = 0
    for _ in range(cfg.ppo_epochs):
        order = minibatch_order(ep.group, rng, whole_groups)
        for i in range(0, len(order), cfg.micro_batch_size):
            idx = order[i : i + cfg.micro_batch_size]
            with acc.accumulate(policy.model):
                out = continuation_forward(
                    policy.model,
                    [ep.ctx[j] for j in idx],
                    [ep.resp[j] for j in idx],
                    pad,
                    cfg.temperature,
                    with_entropy=cfg.ent_coef > 0,
                    with_hidden=with_hidden,
                )
                mb = minibatch_tensors(t, idx, out.mask.shape[1], dev, keys)
                mask, old = mb["mask"], mb["old"]
                # (B,) -> every token (B, K), or the per-token advantages as they are
                adv = t["advantages"][idx].to(dev)[:, None].expand_as(mask) if per_sequence else mb["advantages"]
                pg, clipfrac, approx_kl = ppo_policy_loss(
                    out.logps, old, adv, mask, cfg.clip_range, cfg.clip_range_high
                )
                if not stats["first_ratio_dev"]:  # the first micro batch: the policy the rollout sampled from
                    stats["first_ratio_dev"].append(ratio_deviation(out.logps, old, mask))
                extra, logged = extra_loss(out, mb)
                loss = pg + extra
                if cfg.ent_coef > 0:
                    loss = loss - cfg.ent_coef * masked_mean(out.need_entropy(), mask)
                if not finite_or_skip(loss, counters, step):
                    opt.zero_grad()
                    continue
                acc.backward(loss)
                if acc.sync_gradients and cfg.max_grad_norm > 0:
                    acc.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad()
                updates += 1
            stats["policy"].append(float(pg.detach()))
            stats["clipfrac"].append(float(clipfrac))
            stats["approx_kl"].append(float(approx_kl))
            for name, value in logged.items():
                stats.setdefault(name, []).append(float(value.detach()))
    return {**{n: float(np.mean(v)) if v else float("nan") for n, v in stats.items()}, "updates": float(updates)}
