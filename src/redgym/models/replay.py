"""A speaker that says given texts instead of generating them.

Used as the ``dataset`` adversary (human-written eliciting prompts, e.g. RealToxicityPrompts, fed as the adversary's
turns: the baseline a learned red-teamer must beat) and to replay recorded utterances against another defender.
It has the two methods a rollout calls on a speaker (``render`` and ``generate``), so rollouts need no special case.
"""

from __future__ import annotations

import numpy as np

from redgym.errors import RedgymError
from redgym.models.lm import Generation, SamplingParams


class ReplaySpeaker:
    """Says ``texts`` in a seeded random order (each draw independent, with replacement)."""

    def __init__(self, texts: list[str], seed: int = 0, name: str = "dataset"):
        self.texts = [t for t in texts if t.strip()]
        if not self.texts:
            raise RedgymError(f"{name}: no texts to replay")
        self.name, self.fmt = name, "plain"
        self.rng = np.random.default_rng(seed)

    def render(self, history: list[tuple[str, str]], me: str) -> str:
        return ""  # the context does not change what a replayed speaker says

    def generate(self, contexts: list[str], params: SamplingParams = SamplingParams()) -> Generation:
        texts = [self.texts[int(i)] for i in self.rng.integers(len(self.texts), size=len(contexts))]
        return Generation(texts, [[] for _ in texts], [[] for _ in texts])
