"""Scorers (texts -> scores in [0, 1]), embeddings, and diversity metrics."""

from redgym.scorers.diversity import (
    distinct_n,
    embedding_distance_per_text,
    embedding_diversity,
    self_bleu,
    self_bleu_per_text,
    words,
)
from redgym.scorers.embeddings import Embedder, load_embedder
from redgym.scorers.toxicity import Scorer, build_scorer

__all__ = [
    "distinct_n",
    "embedding_distance_per_text",
    "embedding_diversity",
    "self_bleu",
    "self_bleu_per_text",
    "words",
    "Embedder",
    "load_embedder",
    "Scorer",
    "build_scorer",
]
