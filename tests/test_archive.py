"""redgym archive: an experiment folder without its generated text, which compare tables as it tables the folder."""

import json
import math

import pytest
from test_compare import make_experiment

from redgym.cli import main
from redgym.errors import RedgymError
from redgym.eval.metrics import TEXT_METRICS, metric_base
from redgym.experiments.archive import archive_experiment, without_text
from redgym.experiments.compare import compare


def test_without_text_removes_every_utterance_and_keeps_every_score():
    row = {
        "adversary": "trained",
        "prompt_id": "p7",
        "prompt": ["an opening line", "a second line"],
        "turns": [
            {"speaker": "adversary", "text": "well damn", "n_tokens": 3, "tox": 0.9, "nll": 2.5},
            {"speaker": "defender", "text": "oh no", "n_tokens": 2, "tox": 0.1, "alternatives": ["hmm", "sure"]},
        ],
        "rewards": [0.4],
        "reward_terms": [{"tox_defender": 0.1}],
    }
    assert without_text(row) == {
        "adversary": "trained",
        "prompt_id": "p7",
        "prompt": [],
        "turns": [
            {"speaker": "adversary", "n_tokens": 3, "tox": 0.9, "nll": 2.5, "text": ""},
            {"speaker": "defender", "n_tokens": 2, "tox": 0.1, "text": "", "alternatives": ["", ""]},
        ],
        "rewards": [0.4],
        "reward_terms": [{"tox_defender": 0.1}],
    }
    assert row["turns"][0]["text"] == "well damn"  # the input is left as it was


def test_an_archive_holds_no_text_and_compares_as_the_folder_does(tmp_path, capsys):
    src = make_experiment(tmp_path / "exp", transfer=True)
    cell = src / "trained" / "seed_0"
    (cell / "report.md").write_text("samples quoted here")
    (cell / "adversary").mkdir()
    (cell / "adversary" / "adapter_model.safetensors").write_bytes(b"weights")
    texts = set()
    for path in src.rglob("samples.jsonl"):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            texts |= set(r["prompt"]) | {t["text"] for t in r["turns"]}
    assert "a neutral reply" in texts and len(texts) > 3

    assert main(["archive", str(src), str(tmp_path / "arch")]) == 0
    arch = tmp_path / "arch"
    assert "archived 12 evaluations" in capsys.readouterr().out  # 2 arms x 3 seeds x (main + 1 transfer)
    files = sorted(p.relative_to(arch).as_posix() for p in arch.rglob("*") if p.is_file())
    assert {p.rsplit("/", 1)[-1] for p in files} == {"experiment.json", "report.json", "metrics.jsonl", "scores.jsonl"}
    assert len([p for p in files if p.endswith("scores.jsonl")]) == 12
    for p in arch.rglob("*"):
        if p.is_file():
            content = p.read_text()
            assert not [t for t in texts if t and t in content], p  # no utterance, prompt or reply survives

    want, got = (compare([d], tmp_path / name, n_boot=50) for d, name in ((src, "c_src"), (arch, "c_arch")))
    key = lambda r: (r["arm"], r["defender"], r["metric"])  # noqa: E731
    got_rows = {key(r): r for r in got["rows"]}
    assert got_rows.keys() == {key(r) for r in want["rows"]}
    for r in want["rows"]:
        g = got_rows[key(r)]
        if metric_base(r["metric"]) in TEXT_METRICS:  # from the reports only: not pooled again without the text
            assert g["mean"] == pytest.approx(r["mean"]) and g["pooled"] is None and r["pooled"] is not None
        else:  # every column the same: the scores alone give the pooled and paired numbers
            for k, v in r.items():
                assert g[k] == v or (isinstance(v, float) and math.isnan(v) and math.isnan(g[k])), (key(r), k)


def test_archive_leaves_out_a_cell_reused_from_another_folder_and_keeps_one_reused_from_itself(tmp_path, capsys):
    src = make_experiment(tmp_path / "exp", transfer=True)
    arch = tmp_path / "arch"
    (src / "trained" / "seed_0" / "reused_from.txt").write_text(f"{tmp_path / 'gain'}\n")  # another archive's
    (src / "trained" / "seed_1" / "reused_from.txt").write_text(f"{arch}\n")  # a cell resumed from this archive
    assert main(["archive", str(src), str(arch)]) == 0
    assert "archived 10 evaluations" in capsys.readouterr().out  # 12 less the reused cell and its transfer
    assert not (arch / "trained" / "seed_0").exists()
    assert (arch / "trained" / "seed_1" / "report.json").is_file()
    assert (arch / "trained" / "seed_1" / "transfer").is_dir()
    assert not list(arch.rglob("reused_from.txt"))


def test_archive_refuses_a_folder_without_reports_and_a_destination_inside_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RedgymError, match="no evaluation"):
        archive_experiment(tmp_path / "empty", tmp_path / "a")
    src = make_experiment(tmp_path / "exp")
    with pytest.raises(RedgymError, match="must lie outside"):
        archive_experiment(src, src / "archive")


def test_an_experiment_goes_on_from_its_archive(tiny_model_dir, prompt_file, tmp_path, monkeypatch):
    # The next machine copies the archive and runs the same experiment into it: finished cells are skipped, the
    # rest run, and the comparison reads archived and new cells alike.
    import yaml
    from test_experiment import spec

    from redgym.experiments import runner

    data = spec(tiny_model_dir, prompt_file)
    data["seeds"], data["ablations"] = [0], {}
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    runner.run_experiment(cfg, tmp_path / "runs", only=["untuned"], progress=False)
    archive_experiment(tmp_path / "runs", tmp_path / "arch")
    assert not (tmp_path / "arch" / "untuned" / "seed_0" / "samples.jsonl").exists()

    evaluated = []
    real_eval = runner._evaluate
    monkeypatch.setattr(runner, "_evaluate", lambda c, folder, *a: (evaluated.append(folder), real_eval(c, folder, *a)))
    out = runner.run_experiment(cfg, tmp_path / "arch", only=["untuned", "dataset"], progress=False)
    assert evaluated == [out / "dataset" / "seed_0"]  # the archived untuned cell was not run again
    table = (out / "comparison.md").read_text()
    assert "| dataset | untuned |" in table  # the new cell differenced against the archived baseline
    # ... and its archive again, for the machine after: the cell archived earlier keeps its scores as they were
    archive_experiment(out, tmp_path / "arch2")
    old, new = (tmp_path / name / "untuned" / "seed_0" / "scores.jsonl" for name in ("arch", "arch2"))
    assert new.read_bytes() == old.read_bytes() and old.stat().st_size > 0
    assert (tmp_path / "arch2" / "dataset" / "seed_0" / "scores.jsonl").is_file()
