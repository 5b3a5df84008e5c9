"""Episodes for the policy-gradient trainers (PPO, GRPO): one adversary turn each, with its context, its
sampled token ids, its reward and its sibling group (the same prompt and turn)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from redgym.models.lm import LM, SamplingParams
from redgym.rollout.engine import rollout_batch
from redgym.rollout.records import Conversation
from redgym.rollout.reward import score_conversations


@dataclass
class Episodes:
    """One adversary turn each: context ids, response ids, the episode reward and its sibling group (same
    prompt, same turn), plus tensors (B, K) filled in step 3 (old log-probs, reference log-probs, values, mask,
    advantages, returns). ``sampled`` holds each response's per-token log-probs under the distribution it was
    drawn from (the sampler's, ``Turn.sample_logprobs``), when every turn has them."""

    ctx: list[list[int]]
    resp: list[list[int]]
    reward: torch.Tensor
    group: torch.Tensor
    tensors: dict[str, torch.Tensor] | None = None
    sampled: list[list[float]] | None = None

    def filled(self) -> dict[str, torch.Tensor]:
        """The (B, K) tensors of step 3; an error when step 3 has not filled them yet."""
        if self.tensors is None:
            raise RuntimeError("episode tensors are read before step 3 filled them")
        return self.tensors

    def subset(self, idx: torch.Tensor) -> Episodes:
        """The episodes at ``idx`` (before step 3 fills the tensors)."""
        keep = idx.tolist()
        return Episodes(
            [self.ctx[i] for i in keep],
            [self.resp[i] for i in keep],
            self.reward[idx],
            self.group[idx],
            sampled=[self.sampled[i] for i in keep] if self.sampled is not None else None,
        )


def episodes_from(convs: list[Conversation], adversary: LM, budget: int) -> Episodes:
    """Episodes of conversations; conversations with the same ``prompt_id`` are siblings."""
    ctx, resp, rew, group, sampled = [], [], [], [], []
    ids: dict[tuple[str, int], int] = {}
    for c in convs:
        hist = c.history()
        for k, (a, _) in enumerate(c.exchanges()):
            text = adversary.render(hist[: len(c.prompt) + 2 * k], "adversary")
            ctx.append(adversary.encode_context(text, budget))
            resp.append(a.token_ids)
            rew.append(c.rewards[k])
            group.append(ids.setdefault((c.prompt_id, k), len(ids)))
            sampled.append(a.sample_logprobs)
    complete = all(len(s) == len(r) for s, r in zip(sampled, resp))
    return Episodes(
        ctx, resp, torch.tensor(rew, dtype=torch.float32), torch.tensor(group), sampled=sampled if complete else None
    )


def pad_right_aligned(rows: list[torch.Tensor], k: int) -> torch.Tensor:
    return torch.stack([torch.nn.functional.pad(r, (k - r.shape[-1], 0)) for r in rows])


def minibatch_tensors(
    tensors: dict[str, torch.Tensor], idx, width: int, device, names: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """The step's right-aligned (B, K) tensors ``names`` at rows ``idx``, cut to the minibatch's longest response
    (its last ``width`` columns) and moved to ``device``."""
    return {n: tensors[n][idx][:, tensors[n].shape[1] - width :].to(device) for n in names}


def sibling_reply_terms(ep: Episodes, scores: dict, weights) -> list:
    """Per sibling group, the (S, K) reply-dependent reward terms of its S episodes (for ``pair_reliability``);
    ``scores`` is ``score_conversations``' output, whose exchanges are in the same order as the episodes."""
    from redgym.rollout.reward import reply_terms

    if "tox_defender_replies" not in scores:  # no scores, or a silent defender
        return []
    terms = reply_terms(scores, weights)
    groups = ep.group.numpy()
    return [terms[groups == g] for g in sorted(set(groups.tolist()))]


def roll_out(run, step: int, sampling: SamplingParams, generations: int) -> tuple[list[Conversation], dict]:
    """Steps 1-2 of the policy-gradient trainers: the step's training prompts, each rolled out ``generations``
    times (the adversary sampled with ``sampling`` from the merged copy, the defender answering
    ``defender_samples`` times with the evaluation settings, or not at all when nothing reads its replies), then
    scored (then the adversary-budget multiplier takes its step). Returns the conversations and
    ``score_conversations``' arrays."""
    from redgym.trainers.distributed import rank_share
    from redgym.trainers.run import batch_indices, without_replies

    cfg, setup, policy = run.cfg, run.setup, run.policy
    train_prompts = setup.split.train
    batch = [train_prompts[i] for i in batch_indices(len(train_prompts), cfg.prompts_per_step, step, cfg.seed)]
    batch = rank_share(batch, run.acc)  # several processes: each rolls out its share of the step's prompts
    policy.model.eval()
    policy.sync_sampler()
    convs = [Conversation(p.id, p.turns) for p in batch for _ in range(generations)]
    weights = run.reward_weights(step)
    defender, replies, silent = run.who_replies(weights, cfg.horizon)  # silent: the reward reads no reply
    rollout_batch(convs, run.adversary, defender, cfg.horizon, sampling, setup.params, replies)
    scores = score_conversations(
        convs, setup.scorer, setup.likelihood, weights, setup.embedder, cfg.batch_size, setup.memory
    )
    if silent:
        scores = without_replies(scores)
    run.observe_adversary_toxicity(scores.get("tox_adversary", ()))  # adversary_budget: the next step's multiplier
    return convs, scores
