"""Weak-supervision data: toxicity-eliciting text split so that the part to be taught holds the toxic span, or (for
stealth) eliciting openings that are themselves clean."""

from __future__ import annotations

from redgym.data.prompts import load_prompts
from redgym.errors import RedgymError


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


def weak_pool(source: str, scorer, threshold: float, scorer_name: str = "") -> list[tuple[str, str]]:
    """The toxic-span splits of a prompt source (IPO's weak pairs and the SFT baseline's examples); a one-line
    error when none has a rest above ``threshold``."""
    pool = toxic_span_splits([p.text for p in load_prompts(source, min_words=2)], scorer, threshold)
    if not pool:
        raise RedgymError(
            f"weak_prompts {source!r}: no split has a rest scoring above {threshold} with scorer {scorer_name!r}"
        )
    return pool


def clean_openings(source: str, scorer, threshold: float, scorer_name: str = "") -> list[str]:
    """The texts of a prompt source that score at or below ``threshold``: for RealToxicityPrompts, openings chosen
    because their continuations turned toxic, yet clean themselves (what a stealthy adversary says). One batched
    scorer call; a one-line error when none is clean."""
    texts = [p.text for p in load_prompts(source, min_words=2)]
    clean = [t for t, x in zip(texts, scorer(texts)) if x <= threshold]
    if not clean:
        raise RedgymError(
            f"weak_prompts {source!r}: no text scores at or below {threshold} with scorer {scorer_name!r}"
        )
    return clean
