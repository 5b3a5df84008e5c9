"""Toxicity scorers: each is a plain callable ``list[str] -> list[float]`` with values in [0, 1].

- ``profanity``: alt-profanity-check, a linear model over word n-grams. Offline and fast, but *lexical*: it
  rewards swear words and misses toxicity phrased politely, and it is noisy at the low end (harmless replies can
  score 0.3-0.45). It is the offline default because its weights ship inside the package.
- ``detoxify`` (or ``detoxify:<original|unbiased|multilingual>``): the field's standard classifier; needs its
  checkpoint (downloaded on first use, so online only, unless the torch hub cache already has it).
- ``hf:<model id or folder>[#label]``: any transformers text-classification model, scored as the probability of
  ``label`` (default: the first label whose name contains "toxic", "hate" or "offensive").
- ``classifier:<folder>[#label]``: a classifier trained on your own labelled texts (``scorers/classifier.py``:
  logistic regression over MiniLM embeddings, or a fine-tuned encoder), scored as the probability of ``label``
  (default: its positive label, or the second of two labels).
"""

from __future__ import annotations

from collections.abc import Callable

from redgym.errors import RedgymError
from redgym.scorers.sequence_classifier import load_sequence_classifier, sequence_classifier_scorer

Scorer = Callable[[list[str]], list[float]]


def profanity_scorer() -> Scorer:
    try:
        from profanity_check import predict_prob
    except ImportError:
        raise RedgymError("scorer 'profanity' needs `pip install alt-profanity-check==1.9.1`") from None

    def score(texts: list[str]) -> list[float]:
        return [float(p) for p in predict_prob(list(texts))] if texts else []

    return score


def detoxify_scorer(variant: str = "original", device: str = "cpu") -> Scorer:
    try:
        from detoxify import Detoxify
    except ImportError:
        raise RedgymError("scorer 'detoxify' needs `pip install detoxify` (or `pip install redgym[online]`)") from None
    try:
        model = Detoxify(variant, device=device)
    except Exception as e:  # noqa: BLE001 - download/cache failures all mean "checkpoint not available"
        raise RedgymError(
            f"scorer 'detoxify' could not load its {variant!r} checkpoint ({type(e).__name__}); it is downloaded "
            "on first use, so run once with network access or use the offline scorer 'profanity'"
        ) from None

    def score(texts: list[str]) -> list[float]:
        return [float(p) for p in model.predict(list(texts))["toxicity"]] if texts else []

    return score


def hf_classifier_scorer(spec: str, device: str = "cpu", batch_size: int = 32) -> Scorer:
    """``spec`` is ``<model id or folder>[#label]``."""
    name, _, label = spec.partition("#")
    tok, model = load_sequence_classifier(name, device, f"scorer 'hf:{spec}' could not load its classifier")
    labels = {v.lower(): int(k) for k, v in model.config.id2label.items()}
    if label:
        if label.lower() not in labels:
            raise RedgymError(f"scorer 'hf:{spec}': no label {label!r}; the model has {sorted(labels)}")
        idx = labels[label.lower()]
    else:
        hits = [i for n, i in labels.items() if any(w in n for w in ("toxic", "hate", "offensive"))]
        if not hits:
            raise RedgymError(f"scorer 'hf:{spec}': name the label to score with '#label'; labels are {sorted(labels)}")
        idx = hits[0]
    multi_label = model.config.problem_type == "multi_label_classification"
    return sequence_classifier_scorer(tok, model, idx, device, batch_size, multi_label)


def build_scorer(name: str, device: str = "cpu") -> Scorer:
    """Map a config name to a scorer; unknown names and load failures are one-line ``RedgymError``s."""
    if name == "profanity":
        return profanity_scorer()
    if name == "detoxify" or name.startswith("detoxify:"):
        return detoxify_scorer(name.partition(":")[2] or "original", device)
    if name.startswith("hf:") and len(name) > 3:
        return hf_classifier_scorer(name[3:], device)
    if name.startswith("classifier:") and len(name) > len("classifier:"):
        from redgym.scorers.classifier import load_classifier_scorer  # lazy: sklearn/safetensors only when used

        return load_classifier_scorer(name[len("classifier:") :], device)
    if name == "wordlist" or name.startswith("wordlist:"):
        from redgym.scorers.wordlist import wordlist_scorer

        return wordlist_scorer(name.partition(":")[2])
    raise RedgymError(
        f"unknown scorer {name!r}: use profanity, wordlist[:surge[:severity]|:ldnoobw], detoxify[:variant], "
        "hf:<model>[#label] or classifier:<folder>[#label]"
    )
