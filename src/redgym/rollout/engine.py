"""Batched multi-turn rollouts: prompt -> adversary -> defender -> ... for ``horizon`` exchanges.

All conversations of a batch advance together: one ``generate`` call per role per turn.
"""

from __future__ import annotations

from typing import Sequence

from tqdm.auto import tqdm

from redgym.models.lm import LM, SamplingParams
from redgym.rollout.records import Conversation, Turn


def generate_turns(lm: LM, histories: Sequence[list[tuple[str, str]]], speaker: str, params: SamplingParams,
                   batch_size: int | None = None) -> list[Turn]:
    """One new turn by ``speaker`` for each history; one generate call per ``batch_size`` rows (default: all)."""
    step = batch_size or max(1, len(histories))
    turns: list[Turn] = []
    for i in range(0, len(histories), step):
        gen = lm.generate([lm.render(h, speaker) for h in histories[i:i + step]], params)
        turns += [Turn(speaker, t, ids, lps) for t, ids, lps in zip(gen.texts, gen.token_ids, gen.logprobs)]
    return turns


def rollout_batch(convs: Sequence[Conversation], adversary: LM, defender: LM, horizon: int,
                  params: SamplingParams) -> None:
    """Extend each conversation by ``horizon`` (adversary, defender) exchanges, in place."""
    for _ in range(horizon):
        for speaker, lm in (("adversary", adversary), ("defender", defender)):
            for c, turn in zip(convs, generate_turns(lm, [c.history() for c in convs], speaker, params)):
                c.turns.append(turn)


def rollout(prompts: Sequence[tuple[str, tuple[str, ...]]], adversary: LM, defender: LM, horizon: int = 3,
            params: SamplingParams = SamplingParams(), batch_size: int = 16, progress: bool = True,
            desc: str = "rollout") -> list[Conversation]:
    """Roll out one conversation per ``(prompt_id, prompt utterances)``; returns them in input order.

    Batches are formed from prompts of similar length, so left padding wastes little compute.
    """
    convs = [Conversation(pid, tuple(turns)) for pid, turns in prompts]
    by_length = sorted(convs, key=lambda c: sum(len(u) for u in c.prompt))
    with tqdm(total=len(convs), desc=desc, unit="conv", disable=not progress) as bar:
        for i in range(0, len(by_length), batch_size):
            rollout_batch(by_length[i:i + batch_size], adversary, defender, horizon, params)
            bar.update(len(by_length[i:i + batch_size]))
    return convs
