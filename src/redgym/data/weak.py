"""Weak-supervision data: toxicity-eliciting text split so that the part to be taught holds the toxic span."""

from __future__ import annotations


def toxic_span_splits(texts: list[str], scorer, threshold: float) -> list[tuple[str, str]]:
    """Every (first part, rest) split of ``texts`` at a word boundary whose rest scores above ``threshold``: the
    taught continuation holds the toxic span, so a weak pair teaches eliciting text, not merely prompt-like text.
    One batched scorer call over all splits."""
    splits = []
    for text in texts:
        words = text.split()
        splits += [(" ".join(words[:c]), " ".join(words[c:])) for c in range(1, len(words))]
    tox = scorer([rest for _, rest in splits]) if splits else []
    return [s for s, t in zip(splits, tox) if t > threshold]
