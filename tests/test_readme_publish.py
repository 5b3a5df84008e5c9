import pytest

from redgym.errors import RedgymError
from redgym.experiments.readme import demote, publish, replace_block


def test_demote_and_replace_block():
    assert demote("# a\ntext # not a heading\n## b\n") == "### a\ntext # not a heading\n#### b\n"
    text = "intro\n<!-- results:main -->\nold table\n<!-- /results:main -->\nend\n"
    assert replace_block(text, "main", "new") == "intro\n<!-- results:main -->\nnew\n<!-- /results:main -->\nend\n"
    with pytest.raises(RedgymError, match="no block <!-- results:gain -->"):
        replace_block(text, "gain", "x")


def test_publish_copies_the_table_and_plots(tmp_path):
    exp = tmp_path / "runs" / "main"
    (exp / "plots").mkdir(parents=True)
    (exp / "plots" / "pareto.png").write_bytes(b"png")
    (exp / "comparison.md").write_text("# redgym comparison\n\n| arm | x |\n\n![pareto.png](plots/pareto.png)\n")
    readme = tmp_path / "README.md"
    readme.write_text("# title\n<!-- results:main -->\n<!-- /results:main -->\n")
    publish(exp, readme, "main")
    text = readme.read_text()
    assert "### redgym comparison" in text and "| arm | x |" in text
    assert "![pareto.png](docs/results/main/pareto.png)" in text
    assert (tmp_path / "docs" / "results" / "main" / "pareto.png").read_bytes() == b"png"
