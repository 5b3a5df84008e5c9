"""Tree rollouts (ASTPrompter): at every node sample k adversary turns, a defender reply to each, score them,
and expand every child to the next depth. All nodes of one depth are generated together, in batched calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from redgym.models.base import ChatBackend, SamplingParams
from redgym.rollout.engine import defender_replies, generate_turns
from redgym.rollout.records import Turn

History = list[tuple[str, str]]


@dataclass
class SiblingGroup:
    """k exchanges sampled from the same conversation state, at one depth of the tree.

    history: the conversation before the adversary turn; adversary/defender: k turns each;
    scores: (k,) arrays from ``score_exchanges`` (``reward`` and every term).
    """

    history: History
    depth: int
    adversary: list[Turn]
    defender: list[Turn]
    scores: dict[str, np.ndarray]


def grow_tree(
    prompts: Sequence[Sequence[str]],
    adversary: ChatBackend,
    defender: ChatBackend,
    horizon: int,
    k: int,
    params: SamplingParams,
    score: Callable[..., dict[str, np.ndarray]],
    batch_size: int = 16,
    defender_params: SamplingParams | None = None,
    defender_samples: int = 1,
) -> list[SiblingGroup]:
    """Grow one tree per prompt to depth ``horizon``; returns every sibling group, depth by depth.

    ``params`` samples the adversary and ``defender_params`` (default: the same) the defender, which answers each
    adversary turn ``defender_samples`` times (the tree continues with the first reply).
    ``score(contexts, adversary_texts, defender_replies, groups, known_nll)`` scores N exchanges (see
    ``score_exchanges``; ``known_nll``: the NLLs the replies' forward passes gave, ``Turn.answered_nll``).
    Width at depth d is len(prompts) * k**(d+1) exchanges.
    """
    nodes: list[History] = [[("prompt", u) for u in p] for p in prompts]
    groups: list[SiblingGroup] = []
    for depth in range(horizon):
        contexts = [h for h in nodes for _ in range(k)]
        adv = generate_turns(adversary, contexts, "adversary", params, batch_size)
        replies = defender_replies(
            defender,
            [h + [("adversary", a.text)] for h, a in zip(contexts, adv)],
            defender_params or params,
            defender_samples,
            batch_size,
        )
        s = score(
            contexts,
            [a.text for a in adv],
            [[d.text, *d.alternatives] for d in replies],
            np.full(len(adv), depth),
            [d.answered_nll for d in replies],
        )
        for i, h in enumerate(nodes):
            sl = slice(i * k, (i + 1) * k)
            groups.append(SiblingGroup(h, depth, adv[sl], replies[sl], {n: v[sl] for n, v in s.items()}))
        nodes = [h + [("adversary", a.text), ("defender", d.text)] for h, a, d in zip(contexts, adv, replies)]
    return groups
