import pytest

from redgym.errors import RedgymError
from redgym.eval.markdown import demote
from redgym.experiments.readme import publish, replace_block


def test_demote_and_replace_block():
    assert demote("# a\ntext # not a heading\n## b\n") == "### a\ntext # not a heading\n#### b\n"
    text = "intro\n<!-- results:main -->\nold table\n<!-- /results:main -->\nend\n"
    assert replace_block(text, "main", "new") == "intro\n<!-- results:main -->\nnew\n<!-- /results:main -->\nend\n"
    with pytest.raises(RedgymError, match="no block <!-- results:gain -->"):
        replace_block(text, "gain", "x")


def test_publish_puts_the_tables_in_docs_and_every_experiments_rows_in_one_readme_table(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# title\n<!-- results:headline -->\nSTALE\n<!-- /results:headline -->\nend\n")
    for name, arm in (("main", "grpo"), ("gain", "ppo")):
        exp = tmp_path / "runs" / name
        (exp / "plots").mkdir(parents=True)
        (exp / "plots" / "pareto.png").write_bytes(b"png")
        (exp / "comparison.md").write_text(f"# redgym comparison\n\n| arm | {name} |\n\n![p](plots/pareto.png)\n")
        (exp / "headline.md").write_text(f"caption\n\n| arm | seeds |\n|---|---|\n| {arm} | 3 |\n")
        publish(exp, readme, name)
    text = readme.read_text()
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table[0].startswith("| experiment | arm | seeds |") and "STALE" not in text and text.endswith("end\n")
    # one row per experiment's arm, the experiment linking its page, in the pages' name order
    # (rows with fewer cells than the header, e.g. published before a column existed, get "–" for the rest)
    pad = " | –" * 5
    assert table[2:] == [
        f"| [gain](docs/results/gain.md) | ppo | 3{pad} |",
        f"| [main](docs/results/main.md) | grpo | 3{pad} |",
    ]
    assert all(row.count(" | ") == table[0].count(" | ") for row in table[2:])
    page = (tmp_path / "docs" / "results" / "main.md").read_text()
    assert "| arm | main |" in page and "![p](main/pareto.png)" in page  # links resolve from the page
    assert (tmp_path / "docs" / "results" / "main" / "pareto.png").read_bytes() == b"png"
    publish(tmp_path / "runs" / "main", readme, "main")  # again: the same table, no duplicate rows
    assert [line for line in readme.read_text().splitlines() if line.startswith("|")] == table


def test_publish_fills_an_experiments_ablation_block_where_the_readme_has_one(tmp_path):
    readme = tmp_path / "README.md"
    head = "<!-- results:headline -->\n<!-- /results:headline -->\n"
    readme.write_text(head + "<!-- results:main-ablations -->\nSTALE\n<!-- /results:main-ablations -->\n")
    exp = tmp_path / "runs" / "main"
    exp.mkdir(parents=True)
    (exp / "comparison.md").write_text("# redgym comparison\n")
    (exp / "headline.md").write_text("caption\n\n| arm | seeds |\n|---|---|\n| ipo | 3 |\n")
    (exp / "ablations.md").write_text("- `ipo_no_nll` (...): defender toxicity +0.0100.\n")
    publish(exp, readme, "main")
    text = readme.read_text()
    assert (
        "STALE" not in text
        and "<!-- results:main-ablations -->\n- `ipo_no_nll` (...): defender toxicity +0.0100.\n<!--" in text
    )
    publish(exp, readme, "gain")  # another experiment: its block is absent, the README's main block unchanged
    assert readme.read_text().count("ipo_no_nll") == 1
    (exp / "ablations.md").write_text("")
    publish(exp, readme, "main")
    assert "(no ablation has finished yet)" in readme.read_text()
