"""Batched multi-turn rollouts: prompt -> adversary -> defender -> ... for ``horizon`` exchanges.

All conversations of a batch advance together: one ``generate`` call per role per turn. The adversary and the
defender may sample with different settings (training samples the adversary from exactly the distribution it is
trained on, while the defender keeps the evaluation settings), and each adversary turn may be answered
``defender_samples`` times, in the same batched call, to denoise its reward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from redgym.models.base import ChatBackend, SamplingParams
from redgym.rollout.records import Conversation, Turn


def generate_kept(lm: ChatBackend, contexts: list[str], params: SamplingParams, kept: dict[int, Any] | None):
    """``lm.generate``; with ``kept`` (a rollout batch's caches, by backend) a backend that can keep its key-value
    cache (``keeps_cache``: ``LM``) starts from the one its previous call in the batch returned, and this call's
    replaces it."""
    if kept is None or not getattr(lm, "keeps_cache", False):
        return lm.generate(contexts, params)
    gen = lm.generate(contexts, params, kept=kept.get(id(lm)), keep=True)  # type: ignore[call-arg]
    kept[id(lm)] = gen.kept
    return gen


def generate_turns(
    lm: ChatBackend,
    histories: Sequence[list[tuple[str, str]]],
    speaker: str,
    params: SamplingParams,
    batch_size: int | None = None,
    kept: dict[int, Any] | None = None,
) -> list[Turn]:
    """One new turn by ``speaker`` for each history; one generate call per ``batch_size`` rows (default: all);
    ``kept``: see ``generate_kept``."""
    step = batch_size or max(1, len(histories))
    turns: list[Turn] = []
    for i in range(0, len(histories), step):
        gen = generate_kept(lm, [lm.render(h, speaker) for h in histories[i : i + step]], params, kept)
        slps = gen.sample_logprobs or [[] for _ in gen.texts]
        nlls = gen.turn_nll or [None for _ in gen.texts]
        turns += [
            Turn(speaker, t, ids, lps, s, answered_nll=n)
            for t, ids, lps, s, n in zip(gen.texts, gen.token_ids, gen.logprobs, slps, nlls)
        ]
    return turns


def defender_replies(
    defender: ChatBackend,
    histories: Sequence[list[tuple[str, str]]],
    params: SamplingParams,
    k: int = 1,
    batch_size: int | None = None,
    kept: dict[int, Any] | None = None,
) -> list[Turn]:
    """One defender turn per history, sampled ``k`` times in one batch: the first reply is the turn, the other
    k - 1 texts are its ``alternatives``."""
    flat = generate_turns(
        defender,
        [h for h in histories for _ in range(k)],
        "defender",
        params,
        batch_size * k if batch_size else None,
        kept,
    )
    out = []
    for i in range(len(histories)):
        first, *rest = flat[i * k : (i + 1) * k]
        first.alternatives = [t.text for t in rest]
        out.append(first)
    return out


def rollout_batch(
    convs: Sequence[Conversation],
    adversary: ChatBackend,
    defender: ChatBackend,
    horizon: int,
    params: SamplingParams,
    defender_params: SamplingParams | None = None,
    defender_samples: int = 1,
) -> None:
    """Extend each conversation by ``horizon`` (adversary, defender) exchanges, in place.

    ``params`` samples the adversary, ``defender_params`` (default: the same) the defender. A backend that can keep
    its key-value cache between calls (``LM``) hands it from call to call within the batch (``kept``, dropped when
    the batch ends): each turn then runs only the new utterances through the model, not the whole history again."""
    kept: dict[int, Any] = {}  # by backend: the cache its last call returned (one, when adversary is defender)
    for _ in range(horizon):
        adv = generate_turns(adversary, [c.history() for c in convs], "adversary", params, kept=kept)
        for c, turn in zip(convs, adv):
            c.turns.append(turn)
        histories = [c.history() for c in convs]
        replies = defender_replies(defender, histories, defender_params or params, defender_samples, kept=kept)
        for c, turn in zip(convs, replies):
            c.turns.append(turn)


def rollout(
    prompts: Sequence[tuple[str, tuple[str, ...]]],
    adversary: ChatBackend,
    defender: ChatBackend,
    horizon: int = 3,
    params: SamplingParams = SamplingParams(),
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "rollout",
    defender_samples: int = 1,
) -> list[Conversation]:
    """Roll out one conversation per ``(prompt_id, prompt utterances)``; returns them in input order.

    Batches are formed from prompts of similar length, so left padding wastes little compute.
    """
    convs = [Conversation(pid, tuple(turns)) for pid, turns in prompts]
    by_length = sorted(convs, key=lambda c: sum(len(u) for u in c.prompt))
    with tqdm(total=len(convs), desc=desc, unit="conv", disable=not progress) as bar:
        for i in range(0, len(by_length), batch_size):
            rollout_batch(
                by_length[i : i + batch_size], adversary, defender, horizon, params, defender_samples=defender_samples
            )
            bar.update(len(by_length[i : i + batch_size]))
    return convs
