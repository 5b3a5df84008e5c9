"""Batched multi-turn rollouts: prompt -> adversary -> defender -> ... for ``horizon`` exchanges.

All conversations of a batch advance together: one ``generate`` call per role per turn.
"""

from __future__ import annotations

from typing import Sequence

from tqdm.auto import tqdm

from redgym.models.lm import LM, SamplingParams
from redgym.rollout.records import Conversation, Turn


def advance(convs: Sequence[Conversation], speaker: str, lm: LM, params: SamplingParams) -> None:
    """Append one turn by ``speaker`` to every conversation, with a single batched generate call."""
    gen = lm.generate([lm.render(c.history(), speaker) for c in convs], params)
    for c, text, ids, lps in zip(convs, gen.texts, gen.token_ids, gen.logprobs):
        c.turns.append(Turn(speaker, text, ids, lps))


def rollout_batch(convs: Sequence[Conversation], adversary: LM, defender: LM, horizon: int,
                  params: SamplingParams) -> None:
    """Extend each conversation by ``horizon`` (adversary, defender) exchanges, in place."""
    for _ in range(horizon):
        advance(convs, "adversary", adversary, params)
        advance(convs, "defender", defender, params)


def rollout(prompts: Sequence[tuple[str, tuple[str, ...]]], adversary: LM, defender: LM, horizon: int = 3,
            params: SamplingParams = SamplingParams(), batch_size: int = 16, progress: bool = True,
            desc: str = "rollout") -> list[Conversation]:
    """Roll out one conversation per ``(prompt_id, prompt utterances)``; returns them in input order."""
    convs = [Conversation(pid, tuple(turns)) for pid, turns in prompts]
    with tqdm(total=len(convs), desc=desc, unit="conv", disable=not progress) as bar:
        for i in range(0, len(convs), batch_size):
            rollout_batch(convs[i:i + batch_size], adversary, defender, horizon, params)
            bar.update(len(convs[i:i + batch_size]))
    return convs
