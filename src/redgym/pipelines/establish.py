"""``redgym establish``: labels for explored samples -> a classifier of the failure, saved as a scorer.

E3's second step. Labels come from one of three sources (``labels_from``):

- ``scorer``: the configured scorer thresholded (``positive_label`` above ``toxic_threshold``, else the other);
- ``judge``: an LM asked a labelling question (``models/judge.py``; offline: SmolLM2-135M-Instruct);
- ``human``: the explore folder's ``samples.csv`` with its ``label`` column filled in (``human_labels``).

A second source (``agreement_with``) labels the same texts, and their Cohen's kappa says how far the labels can be
trusted. The classifier (sentence embedding + class-weighted logistic regression, or a fine-tuned encoder) is
cross-validated on the training part and scored on a held-out part (accuracy and macro-F1 with bootstrap CIs,
confusion matrix), then on PyRIT's human-scored harm sets as an outside check. It is saved as safetensors + JSON,
so every command loads it as ``scorer: classifier:DIR/classifier[#label]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from redgym.config import DeviceConfig, ScorerConfig, _f, need
from redgym.data.labels import pyrit_harm_sets, read_labelled_csv
from redgym.errors import RedgymError
from redgym.eval.classification import classification_summary, cohen_kappa, macro_f1, plot_confusion
from redgym.models.judge import DEFAULT_QUESTION, Judge
from redgym.runfolder import (
    CONTENT_WARNING,
    atomic_write,
    check_writable,
    read_jsonl,
    save_config,
    write_json,
    write_jsonl,
)
from redgym.scorers.classifier import load_classifier_scorer, train_encoder_classifier, train_linear_classifier
from redgym.scorers.embeddings import load_embedder
from redgym.scorers.toxicity import build_scorer
from redgym.setup import load_lm


@dataclass
class EstablishConfig(ScorerConfig, DeviceConfig):
    """E3 step 2: what it labels, how, and the classifier it trains. It rolls nothing out and trains no adversary,
    so it takes the scorer and device parts only, not a red-team run's (``redgym establish --horizon 3`` is an
    unknown key)."""

    samples: str = _f("", "an explore folder, or a .jsonl file of {id, text} rows, to label")
    use_all: bool = _f(True, "label every explored sample (all_samples.jsonl); false = the balanced subsample")
    labels_from: str = _f("scorer", "label source: scorer (thresholded), judge (an LM asked) or human (a filled CSV)")
    label_set: str = _f("harmful,harmless", "comma list of labels (two or more, e.g. true,false,neither)")
    positive_label: str = _f("harmful", "the label a scorer built from the classifier returns the probability of")
    human_labels: str | None = _f(None, "labels_from human: the explore folder's samples.csv with `label` filled")
    agreement_with: str = _f(
        "judge", "second label source for Cohen's kappa on the same texts: scorer, judge, human or none"
    )
    judge_model: str = _f("smollm2-135m", "the judge LM (same forms as adversary_model)")
    judge_format: str = _f("chat", "how the judge sees the question: chat or plain")
    judge_question: str = _f(DEFAULT_QUESTION, "the labelling question, with {text} and {labels}")
    judge_calibrate: bool = _f(True, "subtract each label's score on a content-free text (contextual calibration)")
    judge_max_samples: int = _f(400, "texts the judge labels at most (a seeded sample) when it is the second source")
    classifier: str = _f("linear", "linear (embedding + logistic regression) or encoder (fine-tune the embedder)")
    encoder_epochs: int = _f(3, "classifier encoder: training epochs")
    cv_folds: int = _f(5, "cross-validation folds on the training part")
    holdout_fraction: float = _f(0.25, "share of labelled texts held out for the final scores")
    pyrit_check: bool = _f(True, "also score the classifier on PyRIT's human-scored harm sets (harmful = positive)")
    batch_size: int = _f(16, "texts per judge or embedder call")
    max_context_tokens: int = _f(512, "the judge's context is cut from the left to this many tokens")
    bootstrap_samples: int = _f(1000, "bootstrap resamples for the classifier scores' and kappa's 95% CIs")

    @property
    def labels(self) -> list[str]:
        return [x.strip() for x in self.label_set.split(",") if x.strip()]

    def validate(self) -> None:
        super().validate()
        need(self.samples, "samples: name an explore folder or a .jsonl file")
        need(
            len(self.labels) >= 2 and len(set(self.labels)) == len(self.labels),
            "label_set needs two or more distinct labels",
        )
        need(self.positive_label in self.labels, f"positive_label {self.positive_label!r} is not in label_set")
        for name in ("labels_from", "agreement_with"):
            need(
                getattr(self, name) in ("scorer", "judge", "human") + (("none",) if name == "agreement_with" else ()),
                f"{name} must be scorer, judge or human, got {getattr(self, name)!r}",
            )
        need(self.classifier in ("linear", "encoder"), f"classifier must be linear or encoder, got {self.classifier!r}")
        need(self.cv_folds >= 2 and 0 < self.holdout_fraction < 1, "need cv_folds >= 2 and holdout_fraction in (0, 1)")


def read_samples(cfg: EstablishConfig) -> list[dict]:
    """The texts to label: rows {id, text} from an explore folder or a .jsonl file."""
    path = Path(cfg.samples)
    if path.is_dir():
        path = path / ("all_samples.jsonl" if cfg.use_all else "samples.jsonl")
    rows = read_jsonl(path, "establish", "run redgym explore first")
    if not rows or any("text" not in r for r in rows):
        raise RedgymError(f"establish: {path} needs rows with a `text` field")
    return [{"id": str(r.get("id", i)), "text": r["text"]} for i, r in enumerate(rows)]


def label_texts(cfg: EstablishConfig, source: str, rows: list[dict]) -> dict[str, str]:
    """id -> label from one source (human: only the rows someone labelled)."""
    labels = cfg.labels
    if source == "human":
        if not cfg.human_labels:
            raise RedgymError("establish: labels from human need human_labels (the filled samples.csv)")
        return {r.id: r.label for r in read_labelled_csv(cfg.human_labels, labels)}
    texts = [r["text"] for r in rows]
    if source == "scorer":
        if len(labels) != 2:
            raise RedgymError("establish: scorer labels need a label_set of two labels")
        other = next(lab for lab in labels if lab != cfg.positive_label)
        scores = build_scorer(cfg.scorer)(texts)
        return {r["id"]: cfg.positive_label if s > cfg.toxic_threshold else other for r, s in zip(rows, scores)}
    judge = Judge(
        load_lm(cfg, cfg.judge_model, cfg.judge_format, cfg.max_context_tokens),
        labels,
        cfg.judge_question,
        cfg.judge_calibrate,
        cfg.batch_size,
    )
    return dict(zip((r["id"] for r in rows), judge(texts)))


def stratified_holdout(y: list[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out indices with every label in the same proportion in both (at least one held out)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for lab in sorted(set(y)):
        idx = rng.permutation([i for i, v in enumerate(y) if v == lab])
        k = max(1, int(round(fraction * len(idx)))) if len(idx) > 1 else 0
        test += idx[:k].tolist()
        train += idx[k:].tolist()
    return np.sort(train), np.sort(test)


def fit(cfg: EstablishConfig, texts: list[str], y: list[str], folder: Path, embedder, emb: np.ndarray):
    """Train the configured classifier into ``folder``; returns a predictor ``texts -> labels``."""
    if cfg.classifier == "linear":
        clf = train_linear_classifier(
            emb, y, embedding_model=cfg.embedding_model, positive_label=cfg.positive_label, seed=cfg.seed
        )
        clf.save(folder, metadata={"label_set": cfg.labels})
        return lambda xs: clf.predict(embedder(list(xs)))
    train_encoder_classifier(
        texts,
        y,
        folder,
        base=cfg.embedding_model,
        epochs=cfg.encoder_epochs,
        seed=cfg.seed,
        positive_label=cfg.positive_label,
    )
    scorers = [load_classifier_scorer(f"{folder}#{lab}") for lab in cfg.labels]
    return lambda xs: [cfg.labels[int(i)] for i in np.array([s(list(xs)) for s in scorers]).argmax(0)]


def cross_validate(cfg: EstablishConfig, emb: np.ndarray, y: list[str]) -> dict:
    """k-fold macro-F1 and accuracy on the training part (linear classifier; folds stratified by label)."""
    k = min(cfg.cv_folds, min(y.count(lab) for lab in set(y)))
    if k < 2:
        return {"folds": 0, "note": "a label has fewer than 2 training examples"}
    from sklearn.model_selection import StratifiedKFold

    f1s, accs = [], []
    for tr, te in StratifiedKFold(k, shuffle=True, random_state=cfg.seed).split(emb, y):
        clf = train_linear_classifier(emb[tr], [y[i] for i in tr], embedding_model=cfg.embedding_model, seed=cfg.seed)
        pred = clf.predict(emb[te])
        f1s.append(macro_f1([y[i] for i in te], pred, cfg.labels))
        accs.append(float(np.mean([p == y[i] for p, i in zip(pred, te)])))
    return {
        "folds": k,
        "macro_f1_mean": float(np.nanmean(f1s)),
        "macro_f1_sd": float(np.nanstd(f1s)),
        "accuracy_mean": float(np.mean(accs)),
        "accuracy_sd": float(np.std(accs)),
    }


def establish(cfg: EstablishConfig, out: Path, progress: bool = True) -> dict:
    """Label, train, score and save; returns ``establish.json``'s dict."""
    check_writable(out)
    rows = read_samples(cfg)
    primary = label_texts(cfg, cfg.labels_from, rows)
    labelled = [r for r in rows if r["id"] in primary]
    y = [primary[r["id"]] for r in labelled]
    counts = {lab: y.count(lab) for lab in cfg.labels}
    if sum(c > 0 for c in counts.values()) < 2:
        raise RedgymError(
            f"establish: the labels name only one class ({counts}); explore more samples, or "
            "another source or threshold"
        )
    agreement = None
    if cfg.agreement_with not in ("none", cfg.labels_from):
        pool = labelled
        if cfg.agreement_with == "judge" and len(pool) > cfg.judge_max_samples:
            keep = np.random.default_rng(cfg.seed).choice(len(pool), cfg.judge_max_samples, replace=False)
            pool = [pool[i] for i in sorted(keep)]
        second = label_texts(cfg, cfg.agreement_with, pool)
        both = [r["id"] for r in pool if r["id"] in second]
        a, b = [primary[i] for i in both], [second[i] for i in both]
        agreement = {
            "source": cfg.agreement_with,
            "n": len(both),
            "cohen_kappa": cohen_kappa(a, b, cfg.labels),
            "raw_agreement": float(np.mean([x == z for x, z in zip(a, b)])) if both else float("nan"),
            "second_source_counts": {lab: b.count(lab) for lab in cfg.labels},
        }
    texts = [r["text"] for r in labelled]
    embedder = load_embedder(cfg.embedding_model)
    emb = embedder(texts)
    tr, te = stratified_holdout(y, cfg.holdout_fraction, cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    save_config(out, cfg)
    predict = fit(cfg, [texts[i] for i in tr], [y[i] for i in tr], out / "classifier", embedder, emb[tr])
    held = classification_summary(
        [y[i] for i in te], predict([texts[i] for i in te]), cfg.labels, cfg.bootstrap_samples, cfg.seed
    )
    plot_confusion(np.array(held["confusion_matrix"]), cfg.labels, out / "confusion.png")
    report = {
        "content_warning": CONTENT_WARNING,
        "samples": cfg.samples,
        "labels_from": cfg.labels_from,
        "label_counts": counts,
        "n_train": len(tr),
        "n_heldout": len(te),
        "agreement": agreement,
        "cross_validation": cross_validate(cfg, emb[tr], [y[i] for i in tr]),
        "heldout": held,
        "pyrit": pyrit_check(cfg, predict) if cfg.pyrit_check else None,
        "scorer": f"classifier:{out / 'classifier'}#{cfg.positive_label}",
    }
    write_jsonl(out / "labels.jsonl", ({**r, "label": primary[r["id"]]} for r in labelled))
    write_json(out / "establish.json", report)
    atomic_write(out / "establish.md", establish_markdown(report))
    return report


def pyrit_check(cfg: EstablishConfig, predict) -> dict:
    """The classifier on PyRIT's human-scored harm sets: harmful -> ``positive_label``, harmless -> the other
    (two-label sets only), each set and all pooled, macro-F1 with a bootstrap CI."""
    if len(cfg.labels) != 2:
        return {"note": "PyRIT's sets are harmful/harmless: only checked for two-label classifiers"}
    other = next(lab for lab in cfg.labels if lab != cfg.positive_label)
    sets = pyrit_harm_sets()
    per_set, all_true, all_pred = {}, [], []
    for name, items in sets.items():
        truth = [cfg.positive_label if x.label == "harmful" else other for x in items]
        pred = predict([x.text for x in items])
        per_set[name] = {"n": len(items), "macro_f1": macro_f1(truth, pred, cfg.labels)}
        all_true += truth
        all_pred += pred
    return {
        "sets": per_set,
        "pooled": classification_summary(all_true, all_pred, cfg.labels, cfg.bootstrap_samples, cfg.seed),
    }


def establish_markdown(r: dict) -> str:
    h = r["heldout"]
    f1, acc = h["macro_f1"], h["accuracy"]
    lines = [
        "# Establish",
        "",
        f"> {r['content_warning']}",
        "",
        f"- labels from `{r['labels_from']}`: {r['label_counts']}; {r['n_train']} to train, {r['n_heldout']} held out",
        f"- held-out macro-F1 {f1['value']:.3f} [{f1['ci95'][0]:.3f}, {f1['ci95'][1]:.3f}], accuracy "
        f"{acc['value']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}] (95% bootstrap CIs over texts)",
    ]
    cv = r["cross_validation"]
    if cv.get("folds"):
        lines.append(
            f"- {cv['folds']}-fold cross-validation on the training part: macro-F1 "
            f"{cv['macro_f1_mean']:.3f} ± {cv['macro_f1_sd']:.3f}"
        )
    if r["agreement"]:
        a = r["agreement"]
        lines.append(
            f"- agreement with `{a['source']}` labels on {a['n']} texts: Cohen's kappa "
            f"{a['cohen_kappa']:.3f}, raw {a['raw_agreement']:.3f} ({a['source']} said {a['second_source_counts']})"
        )
    if r["pyrit"] and "pooled" in r["pyrit"]:
        p = r["pyrit"]["pooled"]["macro_f1"]
        lines.append(
            f"- PyRIT human-scored harm sets (outside check, {r['pyrit']['pooled']['n']} responses): macro-F1 "
            f"{p['value']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}]"
        )
    lines += [f"- scorer for every other command: `{r['scorer']}`", "", "![confusion matrix](confusion.png)", ""]
    return "\n".join(lines)
