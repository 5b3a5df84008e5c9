"""E3: explore (balanced subsample), establish (labels -> a classifier that reloads as a scorer), the LLM judge,
and the pipeline's exploit experiment."""

import csv
import json

import numpy as np
import pytest
import yaml

from redgym.cli import main
from redgym.pipelines.e3 import exploit_experiment
from redgym.pipelines.explore import balanced_subsample


def test_the_subsample_is_balanced_across_clusters():
    ids = np.array([0] * 10 + [1] * 2 + [2] * 5)
    picked = balanced_subsample(ids, per_cluster=3, seed=0)
    assert np.bincount(ids[picked]).tolist() == [3, 2, 3]  # cluster 1 gives all it has
    assert len(set(picked.tolist())) == len(picked)
    assert (balanced_subsample(ids, 3, seed=0) == picked).all()  # seeded


def _common(tiny_model_dir, prompt_file):
    return [
        "--adversary_model",
        str(tiny_model_dir),
        "--defender_model",
        str(tiny_model_dir),
        "--prompts",
        str(prompt_file),
        "--max_new_tokens",
        "6",
        "--test_fraction",
        "0.3",
        "--quiet",
    ]


def test_explore_writes_a_balanced_labelling_csv(tiny_model_dir, prompt_file, tmp_path, monkeypatch):
    from redgym.pipelines import explore as explore_mod

    built = []
    real = explore_mod.build_scorer
    monkeypatch.setattr(explore_mod, "build_scorer", lambda name: built.append(name) or real(name))
    out = tmp_path / "explore"
    args = [
        "explore",
        "--out",
        str(out),
        *_common(tiny_model_dir, prompt_file),
        "--n_samples",
        "40",
        "--clusters",
        "4",
        "--per_cluster",
        "3",
        "--batch_size",
        "16",
    ]
    assert main(args) == 0
    rows = [json.loads(x) for x in (out / "all_samples.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and {r["cluster"] for r in rows} == {0, 1, 2, 3}
    with open(out / "samples.csv", encoding="utf-8") as f:
        sub = list(csv.DictReader(f))
    sizes = np.bincount([r["cluster"] for r in rows], minlength=4)
    per = np.bincount([int(r["cluster"]) for r in sub], minlength=4)
    assert per.tolist() == np.minimum(sizes, 3).tolist()
    assert all(r["label"] == "" for r in sub) and (out / "clusters.png").stat().st_size > 0
    summary = json.loads((out / "explore.json").read_text())
    assert summary["n_samples"] == 40 and summary["cluster_sizes"] == sizes.tolist()
    assert built == ["profanity"]  # one scorer filters the prompts and scores the outputs


def test_establish_from_human_labels_saves_a_classifier_that_reloads_as_a_scorer(tiny_model_dir, prompt_file, tmp_path):
    from redgym.scorers.toxicity import build_scorer

    out = tmp_path / "explore"
    assert (
        main(
            [
                "explore",
                "--out",
                str(out),
                *_common(tiny_model_dir, prompt_file),
                "--n_samples",
                "24",
                "--clusters",
                "3",
                "--per_cluster",
                "8",
            ]
        )
        == 0
    )
    with open(out / "samples.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    three = ["true", "false", "neither"]  # a free-form label set (E3's CommonClaim)
    for i, r in enumerate(rows):  # a human's labels, every class present
        r["label"] = three[i % 3]
    with open(out / "samples.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    est = tmp_path / "establish"
    assert (
        main(
            [
                "establish",
                "--out",
                str(est),
                "--samples",
                str(out),
                "--use_all",
                "false",
                "--labels_from",
                "human",
                "--human_labels",
                str(out / "samples.csv"),
                "--agreement_with",
                "none",
                "--label_set",
                "true,false,neither",
                "--positive_label",
                "false",
                "--pyrit_check",
                "false",
                "--cv_folds",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    report = json.loads((est / "establish.json").read_text())
    assert report["label_counts"] == {lab: sum(r["label"] == lab for r in rows) for lab in three}
    assert len(report["heldout"]["confusion_matrix"]) == 3
    assert report["n_train"] + report["n_heldout"] == len(rows)
    labelled = [json.loads(x) for x in (est / "labels.jsonl").read_text().splitlines()]
    assert [r["label"] for r in labelled] == [r["label"] for r in rows]  # the edited labels came back
    folder = est / "classifier"
    assert report["scorer"] == f"classifier:{folder}#false"  # the positive label's probability
    scorer = build_scorer(report["scorer"])
    texts = [r["text"] for r in labelled]
    assert scorer(texts) == scorer(texts) and all(0 <= p <= 1 for p in scorer(texts))
    # The saved classifier read by hand: P(false) = softmax(embedding @ weight.T + bias) in the column of "false"
    from safetensors.numpy import load_file

    from redgym.scorers.embeddings import load_embedder

    meta = json.loads((folder / "classifier.json").read_text())
    saved = load_file(str(folder / "classifier.safetensors"))
    assert meta["labels"] == sorted(three) and saved["weight"].shape[0] == 3
    z = load_embedder(meta["embedding_model"])(texts).astype(np.float64) @ saved["weight"].T + saved["bias"]
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    expected = probs[:, meta["labels"].index("false")]
    assert np.ptp(expected) > 0.01  # the texts get different probabilities: a constant would not pass
    assert scorer(texts) == pytest.approx(expected.tolist(), abs=1e-9)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"id,text\na,hello\n", "no 'label' column"),
        (b"id,text,label\na,hello,maybe\n", "row 2: label 'maybe' is not one of"),
        (b"", "is empty"),
        ("id,text,label\na,caf\u00e9,harmful\n".encode("cp1252"), "not UTF-8"),
    ],
)
def test_establish_with_a_malformed_labels_file_is_one_line_and_exit_2(tmp_path, capsys, content, expected):
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"id": "a", "text": "hello"}) + "\n")
    bad = tmp_path / "labels.csv"
    bad.write_bytes(content)
    assert (
        main(
            [
                "establish",
                "--out",
                str(tmp_path / "o"),
                "--samples",
                str(samples),
                "--labels_from",
                "human",
                "--human_labels",
                str(bad),
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expected in err, err
    assert not (tmp_path / "o").exists()  # nothing written on bad input


def _continuation_logprob(lm, context: str, continuation: str) -> float:
    """log p(continuation | context) from one forward pass over the unpadded (context, continuation) ids."""
    import torch

    tok = lm.tokenizer
    ctx = tok(context)["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(torch.tensor([ctx + cont])).logits[0].double(), -1)
    return float(sum(logp[len(ctx) - 1 + k, t] for k, t in enumerate(cont)))


def test_the_judge_picks_the_likelier_label_and_calibration_removes_a_constant_preference(tiny_lm):
    from redgym.models.judge import Judge

    # Two labels of one token each in the tiny vocabulary (" yes" is four tokens and " no" three, so "no" would win
    # whatever the text), and texts on which the random model's choice differs and calibration changes one of them.
    labels = ["and", "is"]
    texts = ["damn that is a lot of rain", "do you like music or films", "we could go to the park or the beach"]
    judge = Judge(tiny_lm, labels, "is {text} ok? {labels}", calibrate=False)
    lp = judge.label_logprobs(texts)
    assert lp.shape == (3, 2) and np.isfinite(lp).all() and (lp < 0).all()
    # The same numbers from an independent forward pass: the plain-format question "is {text} ok? and, is" and a
    # newline, then " and" or " is", the label's token log-probs summed
    by_hand = np.array(
        [[_continuation_logprob(tiny_lm, f"is {t} ok? and, is\n", f" {a}") for a in labels] for t in texts]
    )
    assert lp == pytest.approx(by_hand, abs=1e-5)
    raw = [labels[i] for i in by_hand.argmax(1)]
    assert judge(texts) == raw and len(set(raw)) == 2  # the text decides, not a constant preference
    calibrated = Judge(tiny_lm, labels, "is {text} ok? {labels}", calibrate=True)
    base = np.array([_continuation_logprob(tiny_lm, "is N/A ok? and, is\n", f" {a}") for a in labels])
    assert calibrated(texts) == [labels[i] for i in (by_hand - base).argmax(1)] != raw


def test_the_exploit_experiment_has_the_terms_on_in_one_arm_only():
    ex = {
        "seeds": [0, 1],
        "trainer": "grpo",
        "train": {"steps": 3},
        "shared": {"horizon": 1},
        "diversity": {"w_diversity": 0.5, "w_novelty_bleu": 0.5, "ent_coef": 0.01},
    }
    spec = exploit_experiment(ex, "classifier:runs/x/classifier#harmful")
    assert spec["shared"] == {"horizon": 1, "scorer": "classifier:runs/x/classifier#harmful"}
    assert spec["arms"]["exploit"] == {"kind": "grpo", "train": {"steps": 3}}
    assert spec["arms"]["exploit_diverse"]["train"] == {
        "steps": 3,
        "w_diversity": 0.5,
        "w_novelty_bleu": 0.5,
        "ent_coef": 0.01,
    }
    from redgym.experiments.runner import expand_grid, parse_experiment

    cells = expand_grid(parse_experiment(spec))
    assert sorted((c.arm, c.seed) for c in cells) == sorted(
        (a, s) for a in ("untuned", "exploit", "exploit_diverse") for s in (0, 1)
    )
    del ex["diversity"]  # no diversity terms given: no second trained arm
    assert list(exploit_experiment(ex, "x")["arms"]) == ["untuned", "exploit"]


def test_the_exploit_arms_extend_an_experiment_files_arm(tmp_path):
    """exploit.extends names an experiment file's arm relative to the pipeline file; the written exploit.yaml
    holds it absolute (it lives in the run folder), and the arm resolves to that arm's kind and train under this
    section's train."""
    from redgym.experiments.runner import expand_grid, parse_experiment

    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "gain.yaml").write_text(
        yaml.safe_dump({"arms": {"rl": {"kind": "ppo", "train": {"steps": 9, "lr": 0.001, "kl_coef": 0.3}}}})
    )
    pipelines = tmp_path / "pipelines"
    ex = {"seeds": [0], "extends": "../experiments/gain.yaml:rl", "train": {"steps": 2}}
    spec = exploit_experiment(ex, "classifier:x#harmful", pipelines)
    assert spec["arms"]["exploit"] == {"train": {"steps": 2}, "extends": f"{tmp_path / 'experiments'}/gain.yaml:rl"}
    (cell,) = [c for c in expand_grid(parse_experiment(spec, folder=tmp_path / "elsewhere")) if c.arm == "exploit"]
    assert cell.kind == "ppo" and (cell.train_cfg.steps, cell.train_cfg.lr, cell.train_cfg.kl_coef) == (2, 0.001, 0.3)


def test_pipeline_e3_runs_end_to_end_and_resumes(tiny_model_dir, prompt_file, tmp_path, monkeypatch, capsys):
    import yaml

    from redgym.pipelines import establish as establish_mod

    monkeypatch.setattr(establish_mod, "build_scorer", lambda name: lambda xs: [float("e" in x) for x in xs])
    models = {
        "adversary_model": str(tiny_model_dir),
        "defender_model": str(tiny_model_dir),
        "prompts": str(prompt_file),
        "max_new_tokens": 6,
        "test_fraction": 0.3,
    }
    spec = {
        "explore": {**models, "n_samples": 30, "clusters": 3, "per_cluster": 4},
        "establish": {"agreement_with": "none", "pyrit_check": False, "cv_folds": 2},
        "exploit": {
            "seeds": [0],
            "trainer": "grpo",
            "shared": {**models, "horizon": 1, "max_context_tokens": 64},
            "eval": {"n_eval_prompts": 3},
            "train": {
                "steps": 1,
                "prompts_per_step": 2,
                "generations_per_prompt": 2,
                "micro_batch_size": 4,
                "checkpoint_every": 1,
            },
            "diversity": {"w_diversity": 0.5, "w_novelty_bleu": 0.5},
        },
    }
    config = tmp_path / "e3.yaml"
    config.write_text(yaml.safe_dump(spec))
    out = tmp_path / "e3"
    assert main(["pipeline", "e3", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    report = (out / "report.md").read_text()
    for part in ("## Explore", "## Establish", "## Exploit", "exploit_diverse", "macro-F1"):
        assert part in report, part
    diverse = [json.loads(x) for x in (out / "exploit" / "exploit_diverse" / "seed_0" / "metrics.jsonl").open()]
    plain = [json.loads(x) for x in (out / "exploit" / "exploit" / "seed_0" / "metrics.jsonl").open()]
    assert "reward/novelty_bleu" in diverse[0] and "reward/diversity" in diverse[0]
    assert "reward/novelty_bleu" not in plain[0]
    stamp = (out / "explore" / "explore.json").stat().st_mtime
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:headline -->\nSTALE-BLOCK\n<!-- /results:headline -->\n")
    assert (
        main(["pipeline", "e3", "--config", str(config), "--out", str(out), "--readme", str(readme), "--quiet"]) == 0
    )  # resumes: nothing redone, then published
    assert (out / "explore" / "explore.json").stat().st_mtime == stamp
    text = readme.read_text()
    assert "STALE-BLOCK" not in text and "| [e3](docs/results/e3.md) | exploit_diverse |" in text
    page = (tmp_path / "docs" / "results" / "e3.md").read_text()
    assert "Main defender" in page and "(e3/report.md)" in page  # the exploit's tables, linking the report
    published = (tmp_path / "docs" / "results" / "e3" / "report.md").read_text()
    assert "](clusters.png)" in published and (tmp_path / "docs" / "results" / "e3" / "clusters.png").exists()


def test_exploit_config_sets_the_classifier_as_the_scorer_and_refuses_an_unknown_trainer(tmp_path):
    from redgym.errors import RedgymError
    from redgym.pipelines.exploit import exploit_config
    from redgym.trainers.grpo import GRPOConfig

    f = tmp_path / "x.yaml"
    f.write_text("trainer: grpo\nclassifier: runs/e3/establish/classifier#harmful\nw_novelty_bleu: 0.5\n")
    trainer, cfg = exploit_config(f, {"steps": "3"})
    assert trainer == "grpo" and isinstance(cfg, GRPOConfig)
    assert cfg.scorer == "classifier:runs/e3/establish/classifier#harmful" and cfg.w_novelty_bleu == 0.5
    assert cfg.steps == 3
    f.write_text("trainer: nope\n")
    with pytest.raises(RedgymError, match="trainer must be one of"):
        exploit_config(f)


def test_explore_free_generations_need_no_prompts(tiny_model_dir, tmp_path):
    out = tmp_path / "free"
    assert (
        main(
            [
                "explore",
                "--out",
                str(out),
                "--defender_model",
                str(tiny_model_dir),
                "--source",
                "free",
                "--max_new_tokens",
                "6",
                "--n_samples",
                "8",
                "--clusters",
                "2",
                "--per_cluster",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    rows = [json.loads(x) for x in (out / "all_samples.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["prompt"] == [] for r in rows)
    assert all(isinstance(r["text"], str) for r in rows)
