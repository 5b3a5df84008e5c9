"""The sampling step ``LM.generate`` hands to transformers' ``generate``: the same distribution as its logits
processors (repetition penalty, minimum length, temperature, top-k, top-p), drawn from the top-k candidates only.

transformers applies each processor to the whole vocabulary at every step, then draws from a softmax over all of it:
with SmolLM2's 49k-token vocabulary at batch 64 those passes (a sort for top-p, a multinomial over every token, copies
for each processor) cost more on a CPU than the model's own forward pass. After top-k at most k tokens can be drawn,
so ``CandidateSampler`` ranks them once and does the rest on (B, k). It is a ``LogitsProcessor`` that draws the token
itself and returns a score that is 0 at the drawn token and -inf elsewhere: ``generate`` runs greedy
(``do_sample=False``), so its argmax takes that token, and its loop, cache and stopping criteria stay its own.

It records per step the drawn token's log-probability under the model's own distribution (the raw logits,
temperature 1: ``Generation.logprobs``) and under the distribution it was drawn from (``sample_logprobs``).
Ties at the k-th score keep exactly k tokens (transformers keeps every tied token); draws differ from
transformers' for the same seed (another random stream), the distribution does not.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from redgym.models.base import SamplingParams


def penalize_repeats(scores: torch.Tensor, input_ids: torch.Tensor, penalty: float) -> None:
    """In place, as transformers' ``RepetitionPenaltyLogitsProcessor``: every token already in the row (padding
    included, as there) has its score divided by ``penalty`` if positive, multiplied if negative."""
    seen = scores.gather(1, input_ids)
    scores.scatter_(1, input_ids, torch.where(seen < 0, seen * penalty, seen / penalty))


def nucleus_mask(sorted_logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """True where transformers' ``TopPLogitsWarper`` removes a token, for logits sorted ascending along the last
    dimension: the tokens whose cumulative probability stays within ``1 - top_p``, never the most likely one."""
    remove = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
    remove[..., -1] = False
    return remove


def candidate_logprobs(scores: torch.Tensor, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, logp)``, both (B, k): the top-k tokens of already penalized ``scores`` and their log-probabilities
    after temperature and top-p (-inf for a token top-p removes); with ``top_k`` 0, the whole vocabulary."""
    if params.top_k > 0:  # temperature keeps the order: divide the k candidates, not the vocabulary
        logits, ids = scores.topk(min(params.top_k, scores.shape[-1]), dim=-1, sorted=True)
        logits = logits / params.temperature
    else:
        logits = scores / params.temperature
        ids = torch.arange(logits.shape[-1], device=logits.device).expand_as(logits)
    if params.top_p < 1.0:
        if params.top_k <= 0:
            logits, ids = logits.sort(-1, descending=True)
        # nucleus_mask wants ascending order: the candidates come in descending order
        remove = nucleus_mask(logits.flip(-1), params.top_p).flip(-1)
        logits = logits.masked_fill(remove, float("-inf"))
    return ids, torch.log_softmax(logits, -1)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(B, 1) indices drawn from the rows of ``probs`` (B, n) by uniforms ``u`` (B, 1) in [0, 1): the first index
    whose cumulative probability exceeds ``u`` times the row's total, never a zero-probability one. One cumulative sum
    per row: ``torch.multinomial`` on a CPU draws an exponential for every entry, ~40 ms per step over a 49k
    vocabulary at batch 32 (when top_k is 0, as in training) against ~1 ms."""
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    last = probs.shape[-1] - 1 - (probs > 0).flip(-1).to(torch.int8).argmax(-1, keepdim=True)  # last drawable index
    return torch.minimum(idx, last)  # u * total can round up to the total


class CandidateSampler(LogitsProcessor):
    """Draws each step's token (see the module) for rows whose contexts end at column ``width``."""

    def __init__(self, params: SamplingParams, stop_ids: list[int], width: int):
        if params.temperature <= 0:
            raise ValueError("CandidateSampler samples; greedy decoding needs no sampler")
        self.params, self.stop_ids, self.width = params, stop_ids, width
        self.logprobs: list[torch.Tensor] = []  # per step (B,): under the raw distribution
        self.sample_logprobs: list[torch.Tensor] = []  # per step (B,): under the one drawn from

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        p = self.params
        normalizer = torch.logsumexp(scores, -1)  # of the raw logits, before anything changes them
        if p.repetition_penalty != 1.0:
            raw_seen = scores.gather(1, input_ids)
            penalize_repeats(scores, input_ids, p.repetition_penalty)
        if input_ids.shape[1] - self.width < p.min_new_tokens:
            scores[:, self.stop_ids] = float("-inf")  # as MinNewTokensLengthLogitsProcessor
        ids, logp = candidate_logprobs(scores, p)
        probs = logp.exp()
        pick = inverse_cdf(probs, torch.rand((probs.shape[0], 1), device=probs.device))  # (B, 1) into the candidates
        token = ids.gather(1, pick)
        raw = scores.gather(1, token)
        if p.repetition_penalty != 1.0:  # a repeated token's raw score is the one before the penalty
            seen = input_ids == token
            first = seen.to(torch.int8).argmax(-1, keepdim=True)
            raw = torch.where(seen.any(-1, keepdim=True), raw_seen.gather(1, first), raw)
        self.logprobs.append((raw - normalizer[:, None]).squeeze(1))
        self.sample_logprobs.append(logp.gather(1, pick).squeeze(1))
        scores.fill_(float("-inf"))
        scores.scatter_(1, token, 0.0)
        return scores
