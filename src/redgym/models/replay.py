"""A speaker that says given texts instead of generating them.

Used as the ``dataset`` adversary (human-written eliciting prompts, e.g. RealToxicityPrompts, fed as the adversary's
turns: the baseline a learned red-teamer must beat); ``ScriptedSpeaker`` replays a run's recorded adversary turns
against another defender (``redgym eval --replay``).
It has the two methods a rollout calls on a speaker (``render`` and ``generate``), so rollouts need no special case.
"""

from __future__ import annotations

import json

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


class ScriptedSpeaker:
    """Says recorded utterances again, in their conversations: turn k of the j-th recorded conversation of a
    prompt is said as turn k of the j-th conversation with that prompt (transfer replay: the same adversary turns
    put to another defender, nothing generated).

    ``scripts``: one ``(prompt utterances, [adversary turn texts])`` per recorded conversation, in rollout order.
    """

    def __init__(self, scripts: list[tuple[tuple[str, ...], list[str]]], name: str = "replay"):
        self.name, self.fmt = name, "plain"
        self.queues: dict[str, list[str]] = {}
        for prompt, turns in scripts:
            for k, text in enumerate(turns):
                self.queues.setdefault(self._key(prompt, k), []).append(text)

    @staticmethod
    def _key(prompt: tuple[str, ...], k: int) -> str:
        return json.dumps([list(prompt), k])

    def render(self, history: list[tuple[str, str]], me: str) -> str:
        """The 'context' is the key of the next recorded turn: the prompt and how many turns ``me`` has said."""
        prompt = tuple(text for speaker, text in history if speaker == "prompt")
        return self._key(prompt, sum(speaker == me for speaker, _ in history))

    def generate(self, contexts: list[str], params: SamplingParams = SamplingParams()) -> Generation:
        texts = []
        for key in contexts:
            queue = self.queues.get(key)
            if not queue:
                prompt, k = json.loads(key)
                raise RedgymError(
                    f"{self.name}: no recorded adversary turn {k + 1} for prompt {prompt[-1][:40]!r}; "
                    "replay with the recorded horizon and samples_per_prompt"
                )
            texts.append(queue.pop(0))
        return Generation(texts, [[] for _ in texts], [[] for _ in texts])


class SilentSpeaker:
    """Says nothing, at no cost: the defender of a training rollout whose reward does not read its replies (the
    adversary's own toxicity at horizon 1), so a step spends no time sampling replies nothing uses."""

    name, fmt = "silent", "plain"

    def render(self, history: list[tuple[str, str]], me: str) -> str:
        return ""

    def generate(self, contexts: list[str], params: SamplingParams = SamplingParams()) -> Generation:
        return Generation(["" for _ in contexts], [[] for _ in contexts], [[] for _ in contexts])
