"""Guard evaluation: harmful-positive scores with unparseables apart, greedy guard outputs, the CLI report."""

import json

import pytest

from redgym.cli import main
from redgym.guard.data import GuardExample, format_guard_target, write_guard_jsonl
from redgym.guard.evaluate import binary_scores, system_report
from redgym.models.guard import GuardModel


def test_binary_scores_by_hand_with_an_unparseable_output():
    y = ["harmful", "harmful", "harmful", "safe", "safe"]
    p = ["harmful", None, "safe", "harmful", "safe"]
    s = binary_scores(y, p)
    # TP 1, FP 1, FN 2 (the unparseable one is a miss, not a false positive): P 1/2, R 1/3, F1 2/(2+1+2)
    assert s["precision"] == pytest.approx(0.5) and s["recall"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx(2 / 5) and s["accuracy"] == pytest.approx(2 / 5)


def test_the_system_report_counts_unparseables_apart_and_recall_per_category():
    test = [
        GuardExample("a", "harmful", "cat1"),
        GuardExample("b", "harmful", "cat1"),
        GuardExample("c", "harmful", "cat2"),
        GuardExample("d", "safe"),
    ]
    r = system_report(test, ["harmful", None, None, "safe"], n_boot=50, seed=0)
    assert r["unparseable"] == {"count": 2, "share": 0.5}
    assert r["recall_by_category"] == {"cat1": {"n": 2, "recall": 0.5}, "cat2": {"n": 1, "recall": 0.0}}
    assert r["confusion_matrix"] == [[1, 0, 2], [0, 1, 0]]


def test_the_guard_decodes_greedily(tiny_lm):
    guard = GuardModel(tiny_lm, instruction="is {text} ok?", max_new_tokens=5)
    texts = ["hello there", "the weather is nice again"]
    assert guard.generate(texts) == guard.generate(texts)  # no sampling: the same answer every time


def test_guard_eval_cli_writes_a_report_with_every_baseline(tiny_model_dir, tmp_path, capsys):
    test = [GuardExample(f"<harmful request {i}>", "harmful", "demo") for i in range(4)] + [
        GuardExample(t, "safe")
        for t in ("how do I bake bread", "what films do you like", "is it raining", "where is the park")
    ]
    write_guard_jsonl(tmp_path / "test.jsonl", test)
    train = tmp_path / "train.jsonl"
    rows = [
        {
            "conversations": [
                {"from": "human", "value": t},
                {"from": "gpt", "value": format_guard_target("because", lab)},
            ]
        }
        for t, lab in [
            ("<harmful request a>", "harmful"),
            ("<harmful request b>", "harmful"),
            ("how do I cook rice", "safe"),
            ("what music do you like", "safe"),
        ]
    ]
    train.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "guard"
    assert (
        main(
            [
                "guard",
                "eval",
                "--out",
                str(out),
                "--guard_model",
                str(tiny_model_dir),
                "--guard_format",
                "plain",
                "--test_set",
                str(tmp_path / "test.jsonl"),
                "--train_set",
                str(train),
                "--max_new_tokens",
                "6",
                "--bootstrap_samples",
                "50",
            ]
        )
        == 0
    )
    report = json.loads((out / "guard_report.json").read_text())
    assert set(report["systems"]) == {"guard", "keyword", "embedding + logistic regression"}
    assert report["n_test"] == 8 and report["test_labels"] == {"harmful": 4, "safe": 4}
    g = report["systems"]["guard"]
    assert 0 <= g["unparseable"]["share"] <= 1 and sum(map(sum, g["confusion_matrix"])) == 8
    assert "| keyword |" in (out / "guard_report.md").read_text()
    q = report["quality"]["guard"]
    assert set(q) == {"mean", "label", "coherence", "relevance", "specificity"} and 0 <= q["mean"]["value"] <= 1
    assert "keyword" not in report["quality"]  # only LM guards write a reasoning
    raw = [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]
    assert [(r["system"], r["index"], r["label"]) for r in raw] == [("guard", i, e.label) for i, e in enumerate(test)]
    # each raw output parsed to the label the report counted (None = unparseable)
    assert sum(r["predicted"] is None for r in raw) == g["unparseable"]["count"]
