"""What the rest of redgym asks of a model, as two small Protocols, and the records they exchange.

A rollout needs a speaker that can answer (``ChatBackend``); the reward's NLL term needs a model that can score a
text (``LikelihoodBackend``). The local ``LM`` (models/lm.py) is both; an OpenAI-compatible server
(models/http.py) is only a ``ChatBackend``, so the NLL term then comes from a local ``likelihood_model``.

A context is whatever a backend's ``render`` returns (a prompt string for a local LM, JSON chat messages for an
HTTP server); only that backend's own ``generate`` reads it, so rollouts never need to know which backend speaks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingParams:
    """ASTPrompter's sampling defaults; ``temperature`` 0 decodes greedily."""

    max_new_tokens: int = 24
    min_new_tokens: int = 2
    temperature: float = 0.7
    top_p: float = 0.7
    repetition_penalty: float = 1.1
    top_k: int = 50  # transformers' default, which ASTPrompter's settings ran under; 0 = off


@dataclass
class Generation:
    """B sampled continuations.

    texts:     B decoded utterances (special tokens dropped, whitespace stripped)
    token_ids: B lists of sampled ids, up to and including the first stop token (empty lists from an HTTP backend)
    logprobs:  B lists aligned with token_ids: log p(token | prefix) under the model's own distribution
               (temperature 1, no top-p)
    sample_logprobs: the same under the distribution each token was actually drawn from (after temperature,
               top-p, repetition penalty, min-length masking): equal to the trainer's tempered log-probs only when
               the rollout is on-policy; None when the backend does not report them
    turn_nll:  B values or None: the mean per-token NLL of each context's final adversary turn on the plain
               transcript, where this call's own forward pass computed it (an ``LM`` with ``score_turn_nll``); the
               value ``continuation_nll`` gives for that pair, returned instead of remembered
    kept:      what the backend's next ``generate`` call may start from, when asked to keep it (``LM``: its
               key-value cache, a ``KeptCache``); None otherwise
    """

    texts: list[str]
    token_ids: list[list[int]]
    logprobs: list[list[float]]
    sample_logprobs: list[list[float]] | None = None
    turn_nll: list[float | None] | None = None
    kept: Any = None


class Context(str):
    """A rendered context, the text a backend's ``generate`` answers, that also carries the conversation it renders
    (``history``): what ``generate`` needs of the conversation (the adversary turn it answers: a guard's question,
    the turn whose NLL the reply's own forward pass gives) comes with its argument, not from state ``render`` left
    behind. Everywhere else it is the string it equals; a plain ``str`` context simply has no history."""

    history: tuple[tuple[str, str], ...]

    def __new__(cls, text: str, history: Iterable[tuple[str, str]]) -> Context:
        self = super().__new__(cls, text)
        self.history = tuple(history)
        return self


def last_turn(context: str, speaker: str = "adversary") -> str | None:
    """The last utterance of ``speaker`` in the conversation a ``Context`` renders (None: none, or a plain str)."""
    history = getattr(context, "history", ())
    return next((t for s, t in reversed(history) if s == speaker), None)


def render_plain(history: list[tuple[str, str]]) -> str:
    """Raw transcript, one utterance a line; the model continues after the last newline (as with GPT-2)."""
    return "".join(text + "\n" for _, text in history)


def chat_messages(history: list[tuple[str, str]], me: str) -> list[dict[str, str]]:
    """Chat messages as ``me`` sees the conversation: its own turns are ``assistant``, everyone else's (the
    prompt's and the other speaker's) ``user``, adjacent turns of one role merged into one message."""
    messages: list[dict[str, str]] = []
    for speaker, text in history:
        role = "assistant" if speaker == me else "user"
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n" + text
        else:
            messages.append({"role": role, "content": text})
    return messages


@runtime_checkable
class ChatBackend(Protocol):
    """A speaker in a conversation: renders its context from the ``(speaker, text)`` history, then answers."""

    name: str

    def render(self, history: list[tuple[str, str]], me: str) -> str:
        """The context this backend's ``generate`` answers, speaking as ``me`` (its own turns are ``assistant``)."""
        ...

    def generate(self, contexts: list[str], params: SamplingParams = SamplingParams()) -> Generation:
        """One reply per context, in order."""
        ...


@runtime_checkable
class LikelihoodBackend(Protocol):
    """A model that scores texts: the reward's NLL term (how plausibly a user says the adversary's turn)."""

    def continuation_nll(self, contexts: list[str], continuations: list[str], batch_size: int = 16) -> list[float]:
        """Mean negative log-likelihood per token of each continuation given its (plain-text) context."""
        ...
