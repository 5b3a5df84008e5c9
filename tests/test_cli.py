"""The CLI end to end on a tiny model, and every bad input: one line on stderr, exit code 2, nothing written."""

import json
import math

import pytest

from redgym.cli import main

EXPECTED_METRICS = [
    "reward",
    "defender_toxicity",
    "defender_toxic_rate",
    "attack_success_rate",
    "combined_toxicity",
    "adversary_toxicity",
    "adversary_nll",
    "adversary_perplexity",
    "distinct_1",
    "distinct_2",
    "self_bleu",
    "embedding_diversity",
]


def tiny_args(model_dir, prompts, out, *extra):
    return [
        "eval",
        "--out",
        str(out),
        "--quiet",
        "--adversary_model",
        str(model_dir),
        "--defender_model",
        str(model_dir),
        "--prompts",
        str(prompts),
        "--test_fraction",
        "0.5",
        "--max_new_tokens",
        "4",
        "--horizon",
        "2",
        "--bootstrap_samples",
        "50",
        "--dtype",
        "float32",
        *extra,
    ]


def test_eval_writes_every_file_with_finite_metrics(tiny_model_dir, prompt_file, tmp_path, capsys, caplog):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 3\nbatch_size: 2\n")
    out = tmp_path / "run"
    assert main(tiny_args(tiny_model_dir, prompt_file, out, "--config", str(cfg))) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    for f in [
        "report.json",
        "report.md",
        "samples.jsonl",
        "split.json",
        "config.yaml",
        "plots/toxicity_per_turn.png",
        "plots/toxicity_vs_nll.png",
    ]:
        assert (out / f).stat().st_size > 0, f
    report = json.loads((out / "report.json").read_text())
    assert report["seed"] == 3 and report["config"]["batch_size"] == 2 and report["config"]["horizon"] == 2
    assert report["redgym_version"] and report["git_hash"] and "Content warning" in report["content_warning"]
    split = json.loads((out / "split.json").read_text())
    n_test = split["n_test"]  # 9 prompts, half held out for test
    assert n_test == 4 and report["split"]["test_ids_evaluated"] == split["test"]
    assert "n_eval_prompts 64 exceeds the test split; evaluating all 4 test prompts" in caplog.text  # the default 64
    for name in EXPECTED_METRICS + [f"{m}/turn_{k}" for m in EXPECTED_METRICS for k in (1, 2)]:
        m = report["metrics"][name]
        assert math.isfinite(m["value"]) and len(m["ci95"]) == 2 and isinstance(m["higher_is_better"], bool), name
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == n_test and {r["prompt_id"] for r in rows} == set(split["test"])
    assert [t["speaker"] for t in rows[0]["turns"]] == ["adversary", "defender"] * 2
    assert {"tox", "nll"} <= set(rows[0]["turns"][0]) and {"tox", "tox_combined"} <= set(rows[0]["turns"][1])
    assert len(rows[0]["rewards"]) == 2
    md = (out / "report.md").read_text()
    assert "Content warning" in md and "| defender_toxicity ↑ |" in md


def test_report_names_the_code_the_run_started_from(tiny_model_dir, prompt_file, tmp_path, monkeypatch):
    from redgym import setup

    hashes = iter(["abc123-at-start"])
    monkeypatch.setattr(setup, "git_hash", lambda: next(hashes, "def456-later"))  # HEAD moves during the run
    out = tmp_path / "run"
    assert main(tiny_args(tiny_model_dir, prompt_file, out, "--horizon", "1")) == 0
    assert json.loads((out / "report.json").read_text())["git_hash"] == "abc123-at-start"
    assert "at abc123-at-start;" in (out / "report.md").read_text()


def _bad(args, capsys, out, msg):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("redgym: error: ") and msg in err, err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


def test_missing_model(tiny_model_dir, prompt_file, tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny_args(tiny_model_dir, prompt_file, out, "--defender_model", "no-such-model-xyz")
    _bad(args, capsys, out, "cannot load model 'no-such-model-xyz'")


@pytest.mark.parametrize(
    "name,content,msg",
    [
        ("empty.txt", b"", "has no prompts"),
        ("bad.jsonl", b"{oops\n", "line 1: not valid JSON"),
        ("latin.txt", "ol\u00e9\n".encode("latin-1"), "is not UTF-8 text"),
    ],
)
def test_bad_prompt_files(tiny_model_dir, tmp_path, capsys, name, content, msg):
    f = tmp_path / name
    f.write_bytes(content)
    out = tmp_path / "run"
    _bad(tiny_args(tiny_model_dir, f, out), capsys, out, msg)


def test_unknown_config_key_in_file_and_on_command_line(tiny_model_dir, prompt_file, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("temperatur: 0.5\n")
    out = tmp_path / "run"
    _bad(
        tiny_args(tiny_model_dir, prompt_file, out, "--config", str(cfg)),
        capsys,
        out,
        "unknown config key 'temperatur' (did you mean 'temperature'?)",
    )
    _bad(tiny_args(tiny_model_dir, prompt_file, out, "--horizn", "2"), capsys, out, "unknown config key 'horizn'")


def test_wrong_type(tiny_model_dir, prompt_file, tmp_path, capsys):
    out = tmp_path / "run"
    _bad(
        tiny_args(tiny_model_dir, prompt_file, out, "--batch_size", "many"),
        capsys,
        out,
        "batch_size expects int, got 'many'",
    )


def test_output_folder_cannot_be_written(tiny_model_dir, prompt_file, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "run"
    _bad(tiny_args(tiny_model_dir, prompt_file, out), capsys, out, "cannot be written")
    _bad(tiny_args(tiny_model_dir, prompt_file, blocker), capsys, tmp_path / "nothing", "is not a folder")


@pytest.mark.parametrize(
    "scorer,msg",
    [
        ("nosuch", "unknown scorer 'nosuch'"),
        ("hf:/nonexistent/classifier", "scorer 'hf:/nonexistent/classifier' could not load its classifier"),
    ],
)
def test_scorer_that_cannot_load(tiny_model_dir, prompt_file, tmp_path, capsys, scorer, msg):
    out = tmp_path / "run"
    _bad(tiny_args(tiny_model_dir, prompt_file, out, "--scorer", scorer), capsys, out, msg)


def test_missing_config_file_and_missing_out(tmp_path, capsys):
    _bad(
        ["eval", "--out", str(tmp_path / "r"), "--config", str(tmp_path / "none.yaml")],
        capsys,
        tmp_path / "r",
        "config file not found",
    )
    _bad(["eval"], capsys, tmp_path / "r", "the following arguments are required: --out")


def test_baseline_from_reuses_the_untuned_conversations(tiny_model_dir, prompt_file, tmp_path, capsys):
    first = tmp_path / "first"
    assert main(tiny_args(tiny_model_dir, prompt_file, first)) == 0
    rows = [json.loads(line) for line in (first / "samples.jsonl").read_text().splitlines()]
    # mark the stored baseline: a reused conversation carries the mark, a re-generated one would not
    rows[0]["turns"][0]["text"] = "reused turn"
    rows[0]["reward_terms"][0]["tox_defender"] = 7.0
    (first / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    second = tmp_path / "second"
    # other reward weights are allowed: the rewards are recomputed from the stored terms
    assert (
        main(
            tiny_args(
                tiny_model_dir,
                prompt_file,
                second,
                "--baseline_from",
                str(first),
                "--bootstrap_samples",
                "20",
                "--w_nll",
                "0.3",
            )
        )
        == 0
    )
    again = [json.loads(line) for line in (second / "samples.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] for r in again] == [r["prompt_id"] for r in rows]
    t = rows[0]["reward_terms"][0]
    assert again[0]["turns"][0]["text"] == "reused turn"
    assert again[0]["rewards"][0] == pytest.approx(7.0 + 0.5 * t["tox_combined"] - 0.3 * t["nll"])
    rows = again
    expected = sum(sum(r["rewards"]) for r in rows) / sum(len(r["rewards"]) for r in rows)
    assert json.loads((second / "report.json").read_text())["metrics"]["reward"]["value"] == pytest.approx(expected)

    # a baseline evaluated with other generation settings is refused before anything runs
    third = tmp_path / "third"
    _bad(
        tiny_args(tiny_model_dir, prompt_file, third, "--baseline_from", str(first), "--max_new_tokens", "3"),
        capsys,
        third,
        "max_new_tokens (4 there, 3 here)",
    )
