"""Novelty of new adversary utterances against past ones: the curiosity terms of Hong et al. (2024).

An "exploit" step that only chases toxicity collapses onto a few prompts; rewarding distance from what the
adversary already said (n-gram overlap and embedding similarity to a bounded memory) keeps it exploring.
Pure numpy + stdlib; the caller scores a batch against ``NoveltyMemory`` and then adds the batch to it.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from redgym.scorers.diversity import bleu_from_counts, ngrams, words


def bleu_to_references(
    candidates: list[str], references: list[str], max_n: int = 4, epsilon: float = 0.1
) -> list[float]:
    """Sentence BLEU-``max_n`` of each candidate against the whole reference set: N texts -> N floats.

    Clipped counts are min(count in candidate, max count in any *one* reference) (Papineni et al., 2002), so
    the same BLEU as ``self_bleu_per_text`` with a fixed reference set. No references -> 0.0 (nothing to
    repeat); an empty candidate -> 0.0.
    """
    if not references:
        return [0.0] * len(candidates)
    ref_toks = [words(t) for t in references]
    ref_max: list[Counter] = [Counter() for _ in range(max_n)]  # per order: gram -> max count over references
    for t in ref_toks:
        for k in range(max_n):
            ref_max[k] |= Counter(ngrams(t, k + 1))  # Counter | Counter keeps the max count per key
    ref_lengths = np.array([len(t) for t in ref_toks])  # (K,)
    out = []
    for text in candidates:
        toks = words(text)
        if not toks:
            out.append(0.0)
            continue
        clipped_totals = []
        for k in range(max_n):
            c = Counter(ngrams(toks, k + 1))
            clipped_totals.append((sum(min(v, ref_max[k][g]) for g, v in c.items()), sum(c.values())))
        out.append(bleu_from_counts(clipped_totals, len(toks), ref_lengths, epsilon))
    return out


def bleu_novelty(candidates: list[str], references: list[str], max_n: int = 4) -> np.ndarray:
    """(N,) ``1 - BLEU`` of each candidate against past utterances (Hong et al.'s SelfBLEU novelty)."""
    return 1.0 - np.array(bleu_to_references(candidates, references, max_n), dtype=np.float64)


def cosine_novelty(emb: np.ndarray, memory: np.ndarray | None) -> np.ndarray:
    """(N, D) and (M, D) unit-norm rows -> (N,) ``1 - max cosine similarity`` to the memory, in [0, 2].

    The nearest past utterance, not the mean, decides: one near-copy is enough to be "not new". M == 0 -> ones.
    """
    emb = np.asarray(emb, dtype=np.float64)
    if memory is None or len(memory) == 0:
        return np.ones(emb.shape[0])
    return 1.0 - (emb @ np.asarray(memory, dtype=np.float64).T).max(axis=1)


class NoveltyMemory:
    """Bounded FIFO of past adversary utterances (and optionally their (M, D) float32 embeddings).

    Embeddings are all-or-nothing so rows always line up with ``texts``: once the memory holds them every
    add must bring them (same D), and a memory of texts alone refuses them.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.texts: list[str] = []
        self.embeddings: np.ndarray | None = None  # (M, D) float32, M == len(texts)

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, texts: list[str], embeddings: np.ndarray | None = None) -> None:
        """Append a batch (texts, optional (B, D) embeddings), then drop the oldest beyond ``capacity``."""
        texts = list(texts)
        if embeddings is not None:
            embeddings = np.asarray(embeddings, dtype=np.float32)
            if embeddings.ndim != 2 or embeddings.shape[0] != len(texts):
                raise ValueError(f"embeddings must be ({len(texts)}, D), got {embeddings.shape}")
        if self.texts:
            if self.embeddings is not None:
                if embeddings is None:
                    raise ValueError("memory holds embeddings: add must bring them too")
                if embeddings.shape[1] != self.embeddings.shape[1]:
                    raise ValueError(f"embedding dim {embeddings.shape[1]} != memory's {self.embeddings.shape[1]}")
            elif embeddings is not None:
                raise ValueError("memory holds texts only: cannot start adding embeddings")
        if not texts:
            return  # an empty batch would leave a (0, D) array that JSON cannot round-trip
        self.texts = (self.texts + texts)[-self.capacity :]
        if embeddings is not None:
            both = embeddings if self.embeddings is None else np.concatenate([self.embeddings, embeddings])
            self.embeddings = both[-self.capacity :]

    def score(self, texts: list[str], embeddings: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """(N,) ``novelty_bleu`` and ``novelty_cos`` of a batch against the memory *before* it is added.

        ``novelty_cos`` is ones unless both the batch and the memory have embeddings.
        """
        out = {"novelty_bleu": bleu_novelty(texts, self.texts)}
        if embeddings is not None and self.embeddings is not None:
            out["novelty_cos"] = cosine_novelty(embeddings, self.embeddings)
        else:
            out["novelty_cos"] = np.ones(len(texts))
        return out

    def state_dict(self) -> dict:
        """JSON-serialisable state; float32 -> Python float is exact, so a JSON round trip is bit-exact."""
        emb = None if self.embeddings is None else [[float(x) for x in row] for row in self.embeddings]
        return {"capacity": self.capacity, "texts": list(self.texts), "embeddings": emb}

    def load_state_dict(self, d: dict) -> None:
        self.capacity = int(d["capacity"])
        self.texts = list(d["texts"])
        self.embeddings = None if d["embeddings"] is None else np.array(d["embeddings"], dtype=np.float32)

    @classmethod
    def from_state_dict(cls, d: dict) -> NoveltyMemory:
        mem = cls(int(d["capacity"]))
        mem.load_state_dict(d)
        return mem
