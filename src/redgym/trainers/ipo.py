"""Online IPO/DPO red-teaming over multi-turn tree rollouts with weak supervision (the ASTPrompter method).

    redgym train ipo --config configs/ipo_demo.yaml --out runs/ipo      (--resume runs/ipo to continue)

Each step: (1) a batch of training prompts; (2) a tree per prompt, k adversary samples per node (sampled on-policy),
each answered ``defender_samples`` times by the defender and scored by the composite reward (toxicity terms
averaged over the replies); siblings whose best and worst rewards differ by more than a threshold give a
preference pair; (3) weak supervision: with probability rho (annealed towards 0) a tree gets one taught pair, a
toxicity-eliciting prompt split so that its true rest holds the toxic span (chosen, its toxicity checked above the
threshold) against the adversary's own continuation (rejected); (4) IPO or DPO loss on sequence log-probs (or their
per-token means) under the policy and the frozen reference, plus ``kl_coef`` x the per-token k3 KL of the sampled
utterances to the reference (GRPO's penalty; off by default), ``ipo_epochs`` passes over the step's pairs with one
optimizer step per ``pairs_per_update`` of them (by default one pass, one step: ASTPrompter's); (5) log and
checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from redgym.config import _f
from redgym.data.weak import toxic_span_splits, weak_pool  # noqa: F401 - toxic_span_splits: the tests' entry
from redgym.errors import RedgymError
from redgym.models.base import LikelihoodBackend
from redgym.models.forward import continuation_logprobs
from redgym.models.lm import LM, render_plain
from redgym.rollout.engine import generate_turns
from redgym.rollout.reward import budget_counts, pair_reliability, reply_terms, score_exchanges, term_means
from redgym.rollout.tree import SiblingGroup, grow_tree
from redgym.trainers.distributed import accumulate_locally, rank_share
from redgym.trainers.episodes import pad_right_aligned
from redgym.trainers.losses import (
    PREFERENCE_LOSSES,
    chosen_nll_anchor,
    masked_mean,
    pair_kl_penalty,
    preference_margin,
    sequence_kl_k3,
)
from redgym.trainers.memory import release_memory
from redgym.trainers.metrics_log import finite_or_skip
from redgym.trainers.policy import Policy, train_sampling
from redgym.trainers.run import Frame, batch_indices, end_step, finish_run, start_run, without_replies
from redgym.trainers.train_config import TrainConfig


@dataclass
class IPOConfig(TrainConfig):
    loss: str = _f("ipo", "preference loss: ipo or dpo (sigmoid)")
    beta: float = _f(0.01, "IPO/DPO beta (IPO regresses the log-ratio margin to 1/(2 beta))")
    samples_per_node: int = _f(2, "adversary samples per tree node; pairs are siblings (pairing)")
    pair_threshold: float = _f(0.0, "siblings make a pair only when their rewards differ by more than this")
    pairing: str = _f(
        "best_worst",
        "which siblings pair up: best_worst (one pair per node, ASTPrompter's) or all (every sibling over every "
        "sibling it beats by more than pair_threshold: a rare good sample is taught against each of the others)",
    )
    max_pairs_per_step: int = _f(16, "pairs trained on per step, largest reward margins first (0 = all)")
    weak_supervision: float = _f(0.5, "probability rho that a tree gets one taught (weak-supervision) pair (0 = off)")
    weak_anneal: bool = _f(True, "anneal rho linearly to 0 over the run's steps")
    weak_prompts: str = _f("rtp", "toxicity-eliciting prompts for weak supervision (any prompt source)")
    weak_candidates: int = _f(
        1,
        "weak-supervision splits drawn per pair; the one whose true continuation is most "
        "likely under the defender is kept (1 = ASTPrompter's single draw)",
    )
    length_normalize: bool = _f(
        False, "per-token mean log-probs in the loss, so beta means the same at every utterance length"
    )
    chosen_nll: float = _f(
        0.0,
        "weight of the chosen utterance's NLL under the policy added to each pair's loss (RPO's anchor; the same "
        "sum or per-token mean as the loss): 0 = off, ASTPrompter's",
    )
    kl_coef: float = _f(
        0.0,
        "weight of the per-token k3 KL to the reference of each pair's sampled utterances (both siblings; a taught "
        "pair's own continuation; each token's k3 capped at 10), added to the pair's loss as GRPO's kl_coef is to "
        "its: mass-covering, it resists the sharpening that preference losses drift into; 0 = off, ASTPrompter's",
    )
    ipo_epochs: int = _f(
        1,
        "passes over each step's pairs (the reference is frozen, so a pair's loss stays well defined as the policy "
        "moves: GRPO's ppo_epochs for preferences; the reference's log-probs are computed once a step)",
    )
    pairs_per_update: int = _f(
        0,
        "pairs per optimizer step: each pass shuffles the step's pairs and takes one update per this many (each "
        "accumulated over micro batches); 0 = one update on all of them (ASTPrompter's). With 16 pairs, 4 and 2 "
        "epochs make 8 updates a step where 0 makes 1",
    )

    def validate(self) -> None:
        super().validate()
        if self.loss not in PREFERENCE_LOSSES:
            raise RedgymError(f"config: loss must be ipo or dpo, got {self.loss!r}")
        if self.beta <= 0 or self.samples_per_node < 2 or not 0 <= self.weak_supervision <= 1:
            raise RedgymError("config: beta must be > 0, samples_per_node >= 2, weak_supervision in [0, 1]")
        if self.pairing not in PAIRINGS:
            raise RedgymError(f"config: pairing must be {' or '.join(PAIRINGS)}, got {self.pairing!r}")
        if self.weak_candidates < 1:
            raise RedgymError(f"config: weak_candidates must be >= 1, got {self.weak_candidates}")
        if self.chosen_nll < 0 or self.kl_coef < 0:
            raise RedgymError(f"config: chosen_nll and kl_coef must be >= 0, got {self.chosen_nll} and {self.kl_coef}")
        if self.ipo_epochs < 1 or self.pairs_per_update < 0:
            raise RedgymError(
                f"config: ipo_epochs must be >= 1 and pairs_per_update >= 0, got {self.ipo_epochs} and "
                f"{self.pairs_per_update}"
            )


@dataclass
class PreferencePair:
    """Adversary token ids of a chosen and a rejected utterance after the same (adversary-rendered) context."""

    context: str
    chosen: list[int]
    rejected: list[int]
    chosen_reward: float
    rejected_reward: float
    weak: bool = False


PAIRINGS = ("best_worst", "all")
# Each token's k3 is capped (losses.sequence_kl_k3): the pair loss pushes the rejected sibling's tokens down on
# purpose, and within a step's updates one of them reached ref/pi = e^10 (measured: a step's mean penalty of 1018,
# its loss 306 where the uncapped pair loss was 0.3). GRPO needs no cap; its clipped ratios keep pi near the sampler.
KL_CAP = 10.0


def sibling_pairs(rewards: np.ndarray, threshold: float, pairing: str = "best_worst") -> list[tuple[int, int]]:
    """(chosen, rejected) sibling indices from their rewards: the best over the worst (``best_worst``), or every
    sibling over every one it beats (``all``), each only when the gap exceeds ``threshold``; ``all`` lists them by
    chosen sibling, then rejected, in index order. E.g. rewards [0.9, 0.1, 0.1, 0.5], threshold 0.2: best_worst
    [(0, 1)] (the first of the tied worst); all [(0, 1), (0, 2), (0, 3), (3, 1), (3, 2)]."""
    if pairing == "best_worst":
        hi, lo = int(np.argmax(rewards)), int(np.argmin(rewards))
        return [(hi, lo)] if rewards[hi] - rewards[lo] > threshold else []
    n = len(rewards)
    return [(i, j) for i in range(n) for j in range(n) if rewards[i] - rewards[j] > threshold]


def pairs_from_groups(
    groups: list[SiblingGroup], adversary: LM, threshold: float, pairing: str = "best_worst"
) -> list[PreferencePair]:
    """The preference pairs of each group's siblings (``sibling_pairs``), after the group's shared context."""
    pairs = []
    for g in groups:
        r = g.scores["reward"]
        context = adversary.render(g.history, "adversary")
        for hi, lo in sibling_pairs(r, threshold, pairing):
            pairs.append(
                PreferencePair(
                    context, g.adversary[hi].token_ids, g.adversary[lo].token_ids, float(r[hi]), float(r[lo])
                )
            )
    return pairs


def weak_pairs(
    n: int,
    pool: list[tuple[str, str]],
    adversary: LM,
    params,
    rng: np.random.Generator,
    batch_size: int,
    likelihood: LikelihoodBackend | None = None,
    candidates: int = 1,
) -> list[PreferencePair]:
    """``n`` weak-supervision pairs from ``pool`` (``toxic_span_splits``): context = first part, chosen = its true
    rest, rejected = the adversary's own continuation (one batched generate call).

    With ``candidates`` > 1, each pair keeps the likeliest of that many draws: the one whose true rest has the
    lowest NLL under ``likelihood`` (the set-up's: the defender unless ``likelihood_model`` is set): toxic text
    that a user plausibly says, instead of any toxic text."""
    if n == 0 or not pool:
        return []
    splits = [pool[int(i)] for i in rng.integers(len(pool), size=n * candidates)]
    if candidates > 1:
        if likelihood is None:
            raise ValueError("weak_pairs: candidates > 1 needs a likelihood to rank them")
        nll = np.array(
            likelihood.continuation_nll(
                [render_plain([("prompt", first)]) for first, _ in splits], [rest for _, rest in splits], batch_size
            )
        ).reshape(n, candidates)
        splits = [splits[i * candidates + int(j)] for i, j in enumerate(nll.argmin(1))]
    histories = [[("prompt", first)] for first, _ in splits]
    own = generate_turns(adversary, histories, "adversary", params, batch_size)
    tok = adversary.tokenizer
    return [
        PreferencePair(
            adversary.render(h, "adversary"),
            tok(rest, add_special_tokens=False)["input_ids"],
            t.token_ids,
            float("nan"),
            float("nan"),
            weak=True,
        )
        for h, (_, rest), t in zip(histories, splits, own)
    ]


def weak_rate(cfg: IPOConfig, step: int) -> float:
    """rho at ``step``: constant, or annealed linearly from rho at step 0 to 0 at the last step."""
    if not cfg.weak_anneal:
        return cfg.weak_supervision
    return cfg.weak_supervision * max(0.0, 1.0 - step / max(1, cfg.steps))


def pair_token_logps(
    model: torch.nn.Module, ctx: list[list[int]], chosen: list[list[int]], rejected: list[list[int]], pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logps, mask)``, both (2n, K): per-token log-probs under ``model`` of the chosen then the rejected
    continuations, right-aligned (with gradients when they are on)."""
    return continuation_logprobs(model, ctx + ctx, chosen + rejected, pad)


def reduce_logps(logps: torch.Tensor, mask: torch.Tensor, length_normalize: bool) -> torch.Tensor:
    """(B,) per-token log-probs summed over each row's tokens, or their mean with ``length_normalize``."""
    return masked_mean(logps, mask, -1) if length_normalize else (logps * mask).sum(-1)


def pair_logps(
    model: torch.nn.Module,
    ctx: list[list[int]],
    chosen: list[list[int]],
    rejected: list[list[int]],
    pad: int,
    length_normalize: bool = False,
) -> torch.Tensor:
    """(2n,) log-probs under ``model`` of the chosen then the rejected continuations (with gradients when they are
    on), summed over tokens, or their per-token mean with ``length_normalize``."""
    return reduce_logps(*pair_token_logps(model, ctx, chosen, rejected, pad), length_normalize)


@torch.no_grad()
def reference_logps(
    policy: Policy, ctx: list[list[int]], pairs: list[PreferencePair], pad: int, per_mb: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each pair's chosen and rejected per-token log-probs (1-D, one value a token) under the frozen reference,
    once a step (``pair_token_logps`` in micro-batches of ``per_mb`` pairs): the reference does not move while the
    step's pairs are trained on, so its passes are not repeated for every epoch."""
    rows: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i in range(0, len(pairs), per_mb):
        mb = pairs[i : i + per_mb]
        lp, _ = pair_token_logps(
            policy.reference, ctx[i : i + per_mb], [p.chosen for p in mb], [p.rejected for p in mb], pad
        )
        k, n = lp.shape[1], len(mb)
        rows += [(lp[j, k - len(p.chosen) :], lp[n + j, k - len(p.rejected) :]) for j, p in enumerate(mb)]
    return rows


def update_chunks(n_pairs: int, epochs: int, per_update: int, rng: np.random.Generator) -> list[list[int]]:
    """The pairs (indices) of each optimizer step of a training step: ``epochs`` passes, each one update on all
    pairs in order (``per_update`` 0), or a shuffled order cut into updates of ``per_update`` pairs."""
    if not n_pairs:
        return []
    if not per_update:
        return [list(range(n_pairs)) for _ in range(epochs)]
    chunks = []
    for _ in range(epochs):
        order = [int(i) for i in rng.permutation(n_pairs)]
        chunks += [order[i : i + per_update] for i in range(0, n_pairs, per_update)]
    return chunks


def update(
    pairs: list[PreferencePair], f: Frame, adversary: LM, cfg: IPOConfig, counters: dict, step: int
) -> tuple[dict[str, list[float]], float, int]:
    """Step 4: ``ipo_epochs`` passes over the pairs, one optimizer step per ``pairs_per_update`` of them (all, when
    0), each the IPO/DPO loss (plus RPO's anchor and the KL penalty, when weighted) accumulated over micro batches;
    returns the per-pair loss, anchor share (in the loss), margin, chosen log-ratio and k3 KL penalty lists, the last
    update's gradient norm (nan when clipping is off or nothing trained) and the number of optimizer steps."""
    loss_fn = PREFERENCE_LOSSES[cfg.loss]
    policy, acc = f.policy, f.acc
    pad = policy.tokenizer.pad_token_id
    budget = cfg.max_context_tokens - cfg.max_new_tokens
    policy.model.train()
    stats: dict[str, list[float]] = {"loss": [], "anchor": [], "margin": [], "kl": [], "kl_k3": []}
    per_mb = max(1, cfg.micro_batch_size // 2)  # a pair is two sequences
    rng = np.random.default_rng([cfg.seed, step, 1])  # the pairs' order: a function of the step (resume = straight)
    chunks = update_chunks(len(pairs), cfg.ipo_epochs, cfg.pairs_per_update, rng)
    contexts = [adversary.encode_context(p.context, budget) for p in pairs]
    refs = reference_logps(policy, contexts, pairs, pad, per_mb)
    grad_norm = float("nan")
    for chunk in chunks or [[]]:  # no pairs: one empty update, as before (the schedule still steps)
        trained = False
        with accumulate_locally(acc, policy.model):
            for i in range(0, len(chunk), per_mb):
                idx = chunk[i : i + per_mb]
                mb = [pairs[j] for j in idx]
                ctx = [contexts[j] for j in idx]
                pol_tok, mask = pair_token_logps(
                    policy.model, ctx, [p.chosen for p in mb], [p.rejected for p in mb], pad
                )
                n = len(mb)
                ref_tok = pad_right_aligned([refs[j][0] for j in idx] + [refs[j][1] for j in idx], mask.shape[1])
                ref_tok = ref_tok.to(pol_tok.device)  # chosen then rejected, as pol_tok
                pol = reduce_logps(pol_tok, mask, cfg.length_normalize)
                ref = reduce_logps(ref_tok, mask, cfg.length_normalize)
                plain = loss_fn(pol[:n], pol[n:], ref[:n], ref[n:], cfg.beta)
                anchored = chosen_nll_anchor(plain, pol[:n], cfg.chosen_nll)
                kl = sequence_kl_k3(pol_tok, ref_tok, mask, KL_CAP)
                sampled = torch.tensor([not p.weak for p in mb], device=kl.device)
                kl_pen = pair_kl_penalty(kl[:n], kl[n:], sampled)
                losses = anchored + cfg.kl_coef * kl_pen if cfg.kl_coef else anchored
                loss = losses.sum() / len(chunk)
                if not finite_or_skip(loss, counters, step):
                    continue
                acc.backward(loss)
                trained = True
                stats["loss"] += losses.detach().tolist()
                stats["anchor"] += (anchored - plain).detach().tolist()  # RPO's share of each pair's loss
                stats["kl_k3"] += kl_pen.detach().tolist()  # logged whether or not it is weighted
                stats["margin"] += preference_margin(pol[:n], pol[n:], ref[:n], ref[n:]).detach().tolist()
                per_token = 1 if cfg.length_normalize else torch.tensor([len(p.chosen) for p in mb])
                stats["kl"] += ((pol[:n] - ref[:n]).detach() / per_token).tolist()
            grad_norm = f.optimizer_step(trained)
    return stats, grad_norm, len(chunks)


def train(cfg: IPOConfig, out: Path, resume: bool = False, progress: bool = True) -> dict:
    """Run (or resume) IPO training into ``out``; returns the final step's metrics."""
    # 0 setup: policy + frozen reference/defender (shared base weights), prompts, scorer, optimizer
    run = start_run(cfg, out, resume)
    policy, adversary, setup, acc, opt = run.policy, run.adversary, run.setup, run.acc, run.opt
    pool = (
        weak_pool(cfg.weak_prompts, setup.scorer, cfg.toxic_threshold, cfg.scorer) if cfg.weak_supervision > 0 else []
    )
    sampling = train_sampling(cfg, setup.params)  # the adversary's; the defender keeps setup.params
    counters = run.state.get("counters", {})
    train_prompts = setup.split.train

    def score(ctx, a, d, groups, known_nll):  # the exchanges of this step's trees, under this step's reward weights
        return score_exchanges(
            ctx,
            a,
            d,
            setup.scorer,
            setup.likelihood,
            weights,
            setup.embedder,
            groups,
            cfg.batch_size,
            setup.memory,
            known_nll,
        )

    metrics: dict[str, float] = {}

    for step in run.steps("ipo", progress):  # each begins with Run.begin_step
        t0 = time.time()
        weights = run.reward_weights(step)  # read by score(): the configured weights, or a curriculum's
        # 1 prompts
        batch = [train_prompts[i] for i in batch_indices(len(train_prompts), cfg.prompts_per_step, step, cfg.seed)]
        batch = rank_share(batch, acc)  # several processes: each grows its share of the step's trees
        # 2 tree rollouts -> online pairs (generation with the adapter on, eval mode)
        policy.model.eval()
        policy.sync_sampler()
        replier, replies, silent = run.who_replies(weights, cfg.horizon)  # silent: the reward reads no reply
        groups = run.defender_step(
            step,
            counters,
            grow_tree,
            [p.turns for p in batch],
            adversary,
            replier,
            cfg.horizon,
            cfg.samples_per_node,
            sampling,
            score,
            cfg.batch_size,
            setup.params,
            replies,
        )
        if groups is None:  # a server defender failed the step and http_skip_failed_steps says skip it
            if end_step(run, step, {"time/step_s": time.time() - t0}, {"counters": counters}):
                break
            continue
        if silent:
            for g in groups:
                g.scores = without_replies(g.scores)
        t_roll = time.time() - t0
        release_memory()  # the rollout's generation caches, before training activations are allocated
        run.observe_adversary_toxicity(np.concatenate([g.scores["tox_adversary"] for g in groups]))
        pairs = pairs_from_groups(groups, adversary, cfg.pair_threshold, cfg.pairing)
        pairs.sort(key=lambda p: p.rejected_reward - p.chosen_reward)  # largest margin first
        if cfg.max_pairs_per_step:
            pairs = pairs[: cfg.max_pairs_per_step]
        # 3 weak supervision: each tree gets one taught pair with probability rho (annealed)
        rho = weak_rate(cfg, step)
        # weak-supervision draws: a function of the step (a resumed run draws what a straight one would), and of
        # the process under several
        rng = np.random.default_rng([cfg.seed, step] + ([acc.process_index] if acc.num_processes > 1 else []))
        pairs += weak_pairs(
            int(rng.binomial(len(batch), rho)) if rho > 0 else 0,
            pool,
            adversary,
            sampling,
            rng,
            cfg.batch_size,
            setup.likelihood,
            cfg.weak_candidates,
        )
        # 4 IPO/DPO loss: ipo_epochs passes, one optimizer step per pairs_per_update pairs (micro-batches accumulated)
        stats, grad_norm, n_updates = update(pairs, run, adversary, cfg, counters, step)
        # 5 log + checkpoint
        online = [p for p in pairs if not p.weak]
        reliability = pair_reliability([] if silent else [reply_terms(g.scores, weights) for g in groups])[0]
        step_scores = {k: np.concatenate([g.scores[k] for g in groups]) for k in groups[0].scores}
        rewards = step_scores["reward"]
        metrics = {
            "reward/reward": float(rewards.mean()),
            **term_means(step_scores),
            "reward/max": float(rewards.max()),
            "pairs/count": len(pairs),
            "pairs/weak_share": float(np.mean([p.weak for p in pairs])) if pairs else 0.0,
            "pairs/weak_count": sum(p.weak for p in pairs),
            "pairs/rho": rho,
            "pairs/reliability": reliability,
            "pairs/reward_margin": float(np.mean([p.chosen_reward - p.rejected_reward for p in online]))
            if online
            else 0.0,
            "loss/" + cfg.loss: float(np.mean(stats["loss"])) if stats["loss"] else float("nan"),
            "loss/anchor": float(np.mean(stats["anchor"])) if stats["anchor"] else float("nan"),  # in loss/<loss>
            "loss/margin_h": float(np.mean(stats["margin"])) if stats["margin"] else float("nan"),
            "objective/kl": float(np.mean(stats["kl"])) if stats["kl"] else float("nan"),
            "objective/kl_k3": float(np.mean(stats["kl_k3"])) if stats["kl_k3"] else float("nan"),  # x kl_coef in loss
            "train/grad_norm": grad_norm,
            "train/updates": n_updates,
            **budget_counts(step_scores),
            "train/lr": opt.param_groups[0]["lr"],  # in effect at the step's end
            "train/nonfinite_skipped": counters.get("nonfinite_skipped", 0),
            "time/rollout_s": t_roll,
            "time/step_s": time.time() - t0,
            "time/exchanges_per_s": len(rewards) / max(t_roll, 1e-9),
        }
        if end_step(run, step, metrics, {"counters": counters}):
            break
    finish_run(run)
    return metrics
