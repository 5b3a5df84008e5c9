"""models/sampling.py: the top-k candidate sampler draws from exactly the distribution transformers' processors
define, and reports the log-probs ``Generation`` promises."""

import math

import pytest
import torch
from transformers import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from redgym.models.base import SamplingParams
from redgym.models.sampling import CandidateSampler, candidate_logprobs, inverse_cdf, nucleus_mask, penalize_repeats

STOP = [2]


def test_penalize_repeats_divides_positive_and_multiplies_negative_scores_of_seen_tokens():
    scores = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    penalize_repeats(scores, torch.tensor([[0, 1, 1]]), 2.0)
    assert scores.tolist() == [[1.0, -2.0, 0.5, 3.0]]


def test_nucleus_mask_removes_the_tail_within_one_minus_top_p_but_never_the_top_token():
    ascending = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))  # cumulative 0.1, 0.3, 0.6, 1.0
    assert nucleus_mask(ascending, 0.5).tolist() == [[True, True, False, False]]
    assert nucleus_mask(ascending, 0.75).tolist() == [[True, False, False, False]]
    assert nucleus_mask(torch.log(torch.tensor([[0.05, 0.95]])), 0.01).tolist() == [[True, False]]


def _transformers_probs(scores, input_ids, width, p: SamplingParams) -> torch.Tensor:
    procs = LogitsProcessorList()
    if p.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(p.repetition_penalty))
    procs.append(MinNewTokensLengthLogitsProcessor(width, p.min_new_tokens, STOP))
    procs.append(TemperatureLogitsWarper(p.temperature))
    if p.top_k > 0:
        procs.append(TopKLogitsWarper(p.top_k))
    if p.top_p < 1.0:
        procs.append(TopPLogitsWarper(p.top_p))
    return procs(input_ids, scores.clone()).softmax(-1)


def _candidate_probs(scores, input_ids, width, p: SamplingParams) -> torch.Tensor:
    s = scores.clone()
    if p.repetition_penalty != 1.0:
        penalize_repeats(s, input_ids, p.repetition_penalty)
    if input_ids.shape[1] - width < p.min_new_tokens:
        s[:, STOP] = float("-inf")
    ids, logp = candidate_logprobs(s, p)
    return torch.zeros_like(s).scatter_(1, ids, logp.exp())


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(),  # the evaluation default: penalty 1.1, min length 2, temperature 0.7, top-k 50, top-p 0.7
        SamplingParams(temperature=1.3, top_k=5, top_p=0.9, repetition_penalty=1.0, min_new_tokens=0),
        SamplingParams(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, min_new_tokens=0),  # training
        SamplingParams(temperature=0.5, top_k=0, top_p=0.6),
    ],
)
@pytest.mark.parametrize("new_so_far", [0, 3])  # within and past the minimum length
def test_candidate_distribution_is_transformers_processors_distribution(params, new_so_far):
    torch.manual_seed(0)
    scores = torch.randn(6, 80) * 3
    width = 5
    input_ids = torch.randint(0, 80, (6, width + new_so_far))
    ours = _candidate_probs(scores, input_ids, width, params)
    theirs = _transformers_probs(scores, input_ids, width, params)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert (ours > 0).sum() < 80 or params.top_k == 0  # the candidates really are a subset


def test_inverse_cdf_takes_the_first_index_past_u_and_never_a_zero_probability_one():
    probs = torch.tensor([[0.2, 0.0, 0.5, 0.3]] * 5 + [[0.5, 0.5, 0.0, 0.0]])  # cumulative 0.2, 0.2, 0.7, 1.0
    u = torch.tensor([[0.1], [0.2], [0.69], [0.7], [1.0], [1.0]])  # 1.0: u * total rounded up to the total
    assert inverse_cdf(probs, u).flatten().tolist() == [0, 2, 2, 3, 3, 1]
    assert inverse_cdf(probs[:1] * 2, torch.tensor([[0.1]])).tolist() == [[0]]  # unnormalized rows: by their total


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.8, top_k=6, top_p=0.95, repetition_penalty=1.3, min_new_tokens=0),
        SamplingParams(temperature=0.7, top_k=0, top_p=1.0, repetition_penalty=1.0, min_new_tokens=0),  # training's
    ],
)
def test_sampler_draws_from_that_distribution_and_reports_both_logprobs(params):
    torch.manual_seed(0)
    row = torch.randn(1, 30) * 2
    row[0, 4] = row.max() + 1.0  # a likely token that is also in the context: penalized
    n = 20000
    scores, input_ids = row.repeat(n, 1), torch.tensor([[4, 7, 9]]).repeat(n, 1)
    sampler = CandidateSampler(params, STOP, width=3)
    out = sampler(input_ids, scores.clone())
    token = out.argmax(-1)
    assert (out.isfinite().sum(-1) == 1).all() and (out.gather(1, token[:, None]) == 0).all()  # one-hot for argmax
    probs = _transformers_probs(row, input_ids[:1], 3, params)[0]
    freq = torch.bincount(token, minlength=30).float() / n
    assert (freq - probs).abs().max() < 0.015  # ~4 binomial standard deviations at the largest probability
    assert set(torch.nonzero(freq).flatten().tolist()) <= set(torch.nonzero(probs).flatten().tolist())
    raw = torch.log_softmax(row[0], -1)  # the model's own distribution: before the penalty and temperature
    assert sampler.logprobs[0].tolist() == pytest.approx(raw[token].tolist(), abs=1e-5)
    assert sampler.sample_logprobs[0].tolist() == pytest.approx(probs[token].log().tolist(), abs=1e-5)
    assert 4 in token.tolist() and math.isfinite(float(sampler.logprobs[0][token == 4][0]))
    assert len(set(token.tolist())) >= 3  # not one candidate every time


def test_the_minimum_length_keeps_stop_tokens_out_until_reached():
    scores = torch.full((1, 10), -5.0)
    scores[0, STOP] = 5.0  # the stop token is by far the likeliest
    params = SamplingParams(temperature=1.0, top_k=3, top_p=1.0, repetition_penalty=1.0, min_new_tokens=2)
    sampler = CandidateSampler(params, STOP, width=4)
    assert sampler(torch.zeros(1, 5, dtype=torch.long), scores.clone()).argmax().item() != STOP[0]  # 1 new token
    assert sampler(torch.zeros(1, 6, dtype=torch.long), scores.clone()).argmax().item() == STOP[0]  # 2: allowed
