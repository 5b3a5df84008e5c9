"""redgym guard report: one table read from the loop's run folders; folders not run yet say so."""

import json

from redgym.cli import main


def m(v, lo, hi):
    return {"value": v, "ci95": [lo, hi], "higher_is_better": True}


def system(f1):
    return {
        "f1": m(f1, f1 - 0.1, f1 + 0.1),
        "precision": m(0.9, 0.8, 1.0),
        "recall": m(0.7, 0.6, 0.8),
        "accuracy": m(0.8, 0.7, 0.9),
        "unparseable": {"count": 3, "share": 0.01},
    }


def test_the_guard_report_reads_every_column_from_its_folders(tmp_path):
    ev = tmp_path / "eval_sft"
    ev.mkdir()
    ev.joinpath("guard_report.json").write_text(
        json.dumps(
            {
                "n_test": 10,
                "test_labels": {"harmful": 5, "safe": 5},
                "systems": {"guard": system(0.812), "keyword": system(0.5)},
                "quality": {"guard": {"mean": m(0.61, 0.6, 0.62)}},
            }
        )
    )
    asr = tmp_path / "asr_sft"
    asr.mkdir()
    asr.joinpath("report.json").write_text(
        json.dumps(
            {
                "results": {
                    "trained": {"attack_success_rate": m(0.0112, 0, 0)},
                    "trained+guard": {"attack_success_rate": m(0.0028, 0, 0)},
                },
                "guard_effect": {"trained": {"attack_success_rate": m(-0.0084, -0.0154, -0.0028)}},
                "guard": {"model": "g", "turns_checked": 714, "turns_flagged": 40},
            }
        )
    )
    cfg = tmp_path / "report.yaml"
    cfg.write_text(
        f"rows:\n  - {{name: SFT, eval: {ev}, asr: {asr}}}\n"
        f"  - {{name: DPO, eval: {tmp_path / 'eval_dpo'}, asr: {tmp_path / 'asr_dpo'}}}\n"
    )
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:guard -->\nPLACEHOLDER\n<!-- /results:guard -->\nend\n")
    assert main(["guard", "report", "--config", str(cfg), "--out", str(tmp_path / "rep"), "--readme", str(readme)]) == 0
    table = (tmp_path / "rep" / "report.md").read_text()
    sft = next(line for line in table.splitlines() if line.startswith("| SFT |"))
    assert "0.812 [0.712, 0.912]" in sft and "0.010 (3)" in sft and "0.610 [0.600, 0.620]" in sft
    assert "0.0112 → 0.0028, Δ -0.0084 [-0.0154, -0.0028] (CI excludes 0); flagged 40/714 turns" in sft
    dpo = next(line for line in table.splitlines() if line.startswith("| DPO |"))
    assert dpo.count("not run") == 6
    assert any(line.startswith("| baseline: keyword | 0.500") for line in table.splitlines())
    text = readme.read_text()
    assert "PLACEHOLDER" not in text and "| SFT |" in text and text.endswith("<!-- /results:guard -->\nend\n")


def test_a_malformed_guard_report_file_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "report.yaml"
    cfg.write_text("rows:\n  - {eval: x}\n")
    assert main(["guard", "report", "--config", str(cfg), "--out", str(tmp_path / "rep")]) == 2
    assert "row 1 must be a mapping with name" in capsys.readouterr().err
