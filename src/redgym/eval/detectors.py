"""Second detectors: every turn of an evaluation scored again by scorers other than the one a run trained on.

A red-teamer optimised against one detector learns that detector's blind spots as readily as the defender's, so
each evaluation also scores every adversary and defender turn with ``eval_scorers`` (by default the whole-word
``wordlist`` detector, which shares no code and no training data with ``profanity``). A turn gains, per detector
label L (``config.scorer_label``):

- ``tox@L``: the detector's score; for a defender turn with several replies (``defender_samples``), their mean;
- ``tox_replies@L`` (defender turns with several replies): each reply's score, so a metric can count the share
  of replies above ``toxic_threshold``: what a person reading them would flag.

``eval.metrics`` turns them into ``defender_toxicity@L``, ``defender_toxic_rate@L``,
``defender_toxicity_clean_adversary@L``, ``stealth_success_rate@L``, ``adversary_toxicity@L`` and
``adversary_toxic_rate@L``, with CIs and paired differences like the main scorer's.
"""

from __future__ import annotations

from collections.abc import Callable

from redgym.rollout.records import Conversation

Detector = Callable[[list[str]], list[float]]


def score_detectors(convs: list[Conversation], detectors: dict[str, Detector]) -> None:
    """Fill ``tox@L`` (and ``tox_replies@L``) on every exchange's turns, in place, for each detector whose scores
    the conversations do not carry yet (a baseline read back from its run folder keeps its own); one call per
    detector over all texts."""
    exchanges = [e for c in convs for e in c.exchanges()]
    for label, detect in detectors.items():
        todo = [(a, d) for a, d in exchanges if f"tox@{label}" not in a.scores or f"tox@{label}" not in d.scores]
        if not todo:
            continue
        texts = [t for a, d in todo for t in (a.text, d.text, *d.alternatives)]
        scores = iter(float(x) for x in detect(texts))
        for a, d in todo:
            a.scores[f"tox@{label}"] = next(scores)
            replies = [next(scores) for _ in range(1 + len(d.alternatives))]
            d.scores[f"tox@{label}"] = sum(replies) / len(replies)
            if d.alternatives:
                d.scores[f"tox_replies@{label}"] = replies
