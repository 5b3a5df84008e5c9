"""A transformers sequence classifier as a scorer: loaded in one line or failing in one, and scored as the
probability of one label in batches. The ``hf:`` scorer (``toxicity.py``) and a fine-tuned ``classifier:``
(``classifier.py``) both stand on it."""

from __future__ import annotations

from collections.abc import Callable

from redgym.errors import RedgymError


def load_sequence_classifier(name: str, device: str, failure: str):
    """(tokenizer, model) of a transformers sequence classifier (a hub id or folder), in eval mode on ``device``; a
    load failure is one line, ``failure`` followed by the reason."""
    try:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(name)
        return tok, AutoModelForSequenceClassification.from_pretrained(name).to(device).eval()
    except Exception as e:  # noqa: BLE001
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise RedgymError(f"{failure} ({reason})") from None


def sequence_classifier_scorer(
    tok, model, idx: int, device: str, batch_size: int, multi_label: bool = False
) -> Callable[[list[str]], list[float]]:
    """The probability of label ``idx`` (sigmoid for a multi-label model, else softmax), in batches, texts cut to
    512 tokens."""
    import torch

    @torch.no_grad()
    def score(texts: list[str]) -> list[float]:
        out: list[float] = []
        for i in range(0, len(texts), batch_size):
            enc = tok(
                list(texts[i : i + batch_size]), return_tensors="pt", padding=True, truncation=True, max_length=512
            ).to(device)
            logits = model(**enc).logits.double()
            probs = logits.sigmoid() if multi_label else logits.softmax(-1)
            out.extend(probs[:, idx].tolist())
        return out

    return score
