"""Typed records that flow from rollouts to scores, trainers and reports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Turn:
    """One utterance.

    speaker:   "adversary" or "defender"
    token_ids: ids sampled by the speaker (its own tokenizer), up to and including a stop token
    logprobs:  per-token log-probs of those ids under the speaker at sampling time (temperature 1)
    sample_logprobs: the same under the distribution they were drawn from (temperature, top-p, penalties)
    scores:    filled by ``score_conversations``: tox, and for adversary turns nll (under the defender); with
               several defender replies, a defender turn's tox/tox_combined are their means and tox_replies lists each
    alternatives: the other replies sampled for the same adversary turn (``defender_samples`` > 1); the
               conversation continues with ``text``
    answered_nll: a defender turn's: the NLL of the adversary turn it answers, when the forward pass that produced
               it computed that (``Generation.turn_nll``); the reward's NLL term then uses it (not written out)
    """

    speaker: str
    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    sample_logprobs: list[float] = field(default_factory=list)
    scores: dict[str, float | list[float]] = field(default_factory=dict)
    alternatives: list[str] = field(default_factory=list)
    answered_nll: float | None = None


@dataclass
class Conversation:
    """A starting prompt (one or more utterances) followed by alternating adversary/defender turns.

    ``rewards[t]`` is the composite reward of exchange t (adversary turn t and the defender's reply), and
    ``reward_terms[t]`` its separate terms, so ablations and logs can see each one.
    """

    prompt_id: str
    prompt: tuple[str, ...]
    turns: list[Turn] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    reward_terms: list[dict[str, float]] = field(default_factory=list)

    def history(self) -> list[tuple[str, str]]:
        """``(speaker, text)`` pairs for rendering: prompt utterances first, spoken by "prompt"."""
        return [("prompt", u) for u in self.prompt] + [(t.speaker, t.text) for t in self.turns]

    def exchanges(self) -> list[tuple[Turn, Turn]]:
        """(adversary turn, defender reply) pairs, in order."""
        return [(self.turns[i], self.turns[i + 1]) for i in range(0, len(self.turns) - 1, 2)]

    def to_json(self) -> dict[str, Any]:
        """The record written to samples.jsonl: text and every score (token ids are left out for size)."""
        return {
            "prompt_id": self.prompt_id,
            "prompt": list(self.prompt),
            "turns": [
                {
                    "speaker": t.speaker,
                    "text": t.text,
                    "n_tokens": len(t.token_ids),
                    **t.scores,
                    **({"alternatives": t.alternatives} if t.alternatives else {}),
                }
                for t in self.turns
            ],
            "rewards": self.rewards,
            "reward_terms": self.reward_terms,
        }

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> Conversation:
        """Inverse of ``to_json`` for everything the metrics read (token ids and log-probs are not stored)."""
        meta = ("speaker", "text", "n_tokens", "alternatives")
        turns = [
            Turn(
                t["speaker"],
                t["text"],
                scores={k: v for k, v in t.items() if k not in meta},
                alternatives=list(t.get("alternatives", [])),
            )
            for t in row["turns"]
        ]
        return cls(row["prompt_id"], tuple(row["prompt"]), turns, list(row["rewards"]), list(row["reward_terms"]))
