"""Learned classifiers: sklearn-exact probabilities, a pickle-free save/load, and loading back as a scorer."""

import json
import math

import numpy as np
import pytest
import torch

from redgym.errors import RedgymError
from redgym.scorers.classifier import (
    LinearClassifier,
    load_classifier_scorer,
    train_encoder_classifier,
    train_linear_classifier,
)
from redgym.scorers.toxicity import build_scorer

TOXIC = [
    "damn you",
    "what a load of crap",
    "this is damn stupid",
    "crap, you idiot",
    "shut up, damn it",
    "you are a damn fool",
    "that crap again",
    "damn this crap",
    "go away, idiot",
    "what damn nonsense",
]
NEUTRAL = [
    "the weather is nice today",
    "i like old films",
    "we went to the park",
    "thanks for the help",
    "see you tomorrow",
    "the tea is warm",
    "a quiet walk by the river",
    "good morning to you",
    "the train was on time",
    "she plays the piano",
]


def fake_embedder(dim: int = 8):
    """Deterministic texts -> (N, dim): a seeded vector per text, plus a 'toxic word' direction in column 0."""

    def embed(texts: list[str]) -> np.ndarray:
        rows = []
        for t in texts:
            rng = np.random.default_rng(sum(map(ord, t)))
            v = rng.normal(size=dim)
            v[0] += 3.0 * any(w in t for w in ("damn", "crap", "idiot"))
            rows.append(v)
        return np.array(rows, dtype=np.float32).reshape(len(texts), dim)

    return embed


def blobs(n_per: int, classes: list[str], dim: int = 5, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Overlapping Gaussian clusters (so the fit is not degenerate) with class means one unit apart."""
    rng = np.random.default_rng(seed)
    emb = np.concatenate([rng.normal(size=(n_per, dim)) + np.eye(dim)[i] * 1.5 for i in range(len(classes))])
    return emb, [c for c in classes for _ in range(n_per)]


@pytest.mark.parametrize("classes", [["no", "yes"], ["false", "neither", "true"]])
def test_probabilities_equal_sklearns(classes):
    """Our (C, D) rows reproduce sklearn's predict_proba, including the binary [0, w] trick."""
    from sklearn.linear_model import LogisticRegression

    emb, labels = blobs(30, classes)
    clf = train_linear_classifier(emb, labels, embedding_model="fake", C=0.5)
    ref = LogisticRegression(C=0.5, class_weight="balanced", random_state=0, max_iter=2000).fit(emb, labels)
    assert clf.labels == list(ref.classes_)
    assert clf.weight.shape == (len(classes), emb.shape[1]) and clf.weight.dtype == np.float64
    np.testing.assert_allclose(clf.predict_proba(emb), ref.predict_proba(emb), rtol=0, atol=1e-12)
    assert clf.predict(emb) == list(ref.predict(emb))
    assert np.mean(np.array(clf.predict(emb)) == np.array(labels)) > 0.6  # it learnt something


def test_save_load_round_trip_is_exact_and_pickle_free(tmp_path):
    emb, labels = blobs(20, ["a", "b", "c"])
    clf = train_linear_classifier(emb, labels, embedding_model="minilm", positive_label="b")
    clf.save(tmp_path / "clf", metadata={"source": "unit test", "n_train": 60})
    assert sorted(p.name for p in (tmp_path / "clf").iterdir()) == ["classifier.json", "classifier.safetensors"]
    meta = json.loads((tmp_path / "clf" / "classifier.json").read_text())
    assert meta == {
        "source": "unit test",
        "n_train": 60,
        "kind": "linear",
        "labels": ["a", "b", "c"],
        "embedding_model": "minilm",
        "positive_label": "b",
    }
    back = LinearClassifier.load(tmp_path / "clf")
    assert (back.labels, back.embedding_model, back.positive_label) == (["a", "b", "c"], "minilm", "b")
    assert np.array_equal(back.weight, clf.weight) and np.array_equal(back.bias, clf.bias)
    assert np.array_equal(back.predict_proba(emb), clf.predict_proba(emb))


def test_scorer_reproduces_predict_proba_exactly(tmp_path):
    """The scorer is P(label) of the saved model: default positive label, '#label' picks another, any case."""
    embed = fake_embedder()
    texts = TOXIC + NEUTRAL
    emb = embed(texts)
    clf = train_linear_classifier(emb, ["toxic"] * 10 + ["ok"] * 10, embedding_model="fake", positive_label="toxic")
    clf.save(tmp_path / "clf")
    probs = clf.predict_proba(emb)
    score = load_classifier_scorer(str(tmp_path / "clf"), embedder=embed)
    assert score(texts) == probs[:, clf.labels.index("toxic")].tolist()
    assert np.mean(score(TOXIC)) > np.mean(score(NEUTRAL)) + 0.3
    assert score([]) == []
    other = load_classifier_scorer(f"{tmp_path / 'clf'}#OK", embedder=embed)
    assert other(texts) == probs[:, clf.labels.index("ok")].tolist()


def test_default_label_is_second_of_two_without_a_positive_label(tmp_path):
    emb, labels = blobs(10, ["harmful", "harmless"], dim=8)
    clf = train_linear_classifier(emb, labels, embedding_model="fake")
    clf.save(tmp_path / "clf")
    score = load_classifier_scorer(str(tmp_path / "clf"), embedder=lambda texts: emb[: len(texts)])
    assert score(["x"] * 20) == clf.predict_proba(emb)[:, 1].tolist()


def _one_line_error(spec: str, match: str, **kw) -> str:
    with pytest.raises(RedgymError, match=match) as e:
        load_classifier_scorer(spec, embedder=fake_embedder(), **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_specs_are_one_line_errors(tmp_path):
    _one_line_error(str(tmp_path / "nowhere"), "not found")
    (tmp_path / "empty").mkdir()
    _one_line_error(str(tmp_path / "empty"), "no classifier.json")
    emb, labels = blobs(10, ["false", "neither", "true"])
    train_linear_classifier(emb, labels, embedding_model="fake").save(tmp_path / "three")
    assert "#label" in _one_line_error(str(tmp_path / "three"), "no positive label")
    _one_line_error(f"{tmp_path / 'three'}#maybe", "no label 'maybe'")
    (tmp_path / "three" / "classifier.safetensors").unlink()
    _one_line_error(f"{tmp_path / 'three'}#true", "no classifier.safetensors")
    (tmp_path / "three" / "classifier.json").write_text("{not json")
    _one_line_error(f"{tmp_path / 'three'}#true", "not valid JSON")
    with pytest.raises(RedgymError, match="needs at least two labels"):
        train_linear_classifier(emb, ["true"] * len(emb), embedding_model="fake")
    with pytest.raises(RedgymError, match="positive_label 'yes'"):
        train_linear_classifier(emb, labels, embedding_model="fake", positive_label="yes")
    with pytest.raises(RedgymError, match="classifier:<folder>"):
        build_scorer("classifier:")


def test_build_scorer_with_the_real_minilm_embedder(tmp_path):
    """End to end with the shipped embedder: train on MiniLM embeddings, reload by name, same numbers."""
    from redgym.scorers.embeddings import load_embedder

    texts = TOXIC + NEUTRAL
    emb = load_embedder("minilm")(texts)
    clf = train_linear_classifier(emb, ["toxic"] * 10 + ["ok"] * 10, embedding_model="minilm", positive_label="toxic")
    clf.save(tmp_path / "clf")
    score = build_scorer(f"classifier:{tmp_path / 'clf'}")
    got = score(texts)
    assert got == clf.predict_proba(emb)[:, clf.labels.index("toxic")].tolist()
    assert min(got[:10]) > max(got[10:])  # separable training set: every toxic text outranks every neutral one


def test_minilm_base_is_a_bert_folder_transformers_can_load():
    from transformers import AutoConfig

    from redgym.scorers.classifier import _base_model_path

    assert AutoConfig.from_pretrained(_base_model_path("minilm")).model_type == "bert"


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A randomly initialised 2-layer BERT with a word-level vocabulary of the test texts."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert")
    words = sorted({w.strip(",") for t in TOXIC + NEUTRAL for w in t.split()})
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ","] + words) + "\n")
    tok = BertTokenizerFast(vocab_file=str(path / "vocab.txt"))
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    ).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_encoder_fine_tuning_changes_weights_and_reloads_as_a_scorer(tmp_path, tiny_bert_dir):
    from safetensors.torch import load_file

    texts, labels = TOXIC + NEUTRAL, ["toxic"] * 10 + ["ok"] * 10
    run = train_encoder_classifier(
        texts,
        labels,
        tmp_path / "enc",
        base=str(tiny_bert_dir),
        epochs=4,
        lr=1e-3,
        batch_size=8,
        positive_label="toxic",
    )
    assert len(run.losses) == 4 * 3 and all(math.isfinite(x) for x in run.losses)
    assert np.mean(run.losses[-3:]) < np.mean(run.losses[:3])
    before, after = load_file(tiny_bert_dir / "model.safetensors"), load_file(tmp_path / "enc" / "model.safetensors")
    name = next(k for k in before if "word_embeddings" in k)
    assert not torch.equal(before[name], after["bert." + name.removeprefix("bert.")])
    meta = json.loads((tmp_path / "enc" / "classifier.json").read_text())
    assert (meta["kind"], meta["labels"], meta["positive_label"]) == ("encoder", ["ok", "toxic"], "toxic")
    toxic = build_scorer(f"classifier:{tmp_path / 'enc'}")(texts)
    ok = load_classifier_scorer(f"{tmp_path / 'enc'}#ok")(texts)
    assert len(toxic) == 20 and all(0.0 <= p <= 1.0 for p in toxic)
    np.testing.assert_allclose(np.array(toxic) + np.array(ok), 1.0, atol=1e-9)
    assert np.mean(toxic[:10]) > np.mean(toxic[10:])
