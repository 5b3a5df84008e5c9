"""report.html, read with a parser: self-contained (no external URL), every conversation a row with the numbers it
sorts by, the content warning before the first sample, and text that would break out of the page escaped."""

import html
import json
from html.parser import HTMLParser

import pytest

from redgym.eval.metrics import compute_metrics, paired_difference
from redgym.eval.report import write_report
from redgym.rollout.records import Conversation, Turn
from redgym.runfolder import CONTENT_WARNING

HOSTILE = '</td></tr></table><script src="http://evil.example/x.js"></script><img src=//evil.example/y.png>'


class Page(HTMLParser):
    """Tags in order, with their attributes, and the text seen before each ``<tr data-label>`` row."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.rows: list[dict] = []
        self.text_before_first_row = ""
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "script":
            self.scripts += 1
        if tag == "tr" and "data-label" in a:
            if not self.rows:
                self.text_before_first_row = "".join(self.text)
            self.rows.append(a)

    def handle_data(self, data):
        self.text.append(data)


def _conv(i, adv_text, adv_tox, replies_tox, nll=2.0):
    c = Conversation(f"p{i}", ("an opening line",))
    for k, d in enumerate(replies_tox):
        c.turns.append(Turn("adversary", f"{adv_text} {k}", scores={"tox": adv_tox, "nll": nll}))
        c.turns.append(Turn("defender", f"reply {i}.{k}", scores={"tox": d, "tox_combined": d}))
        c.rewards.append(d)
    return c


def make_report(tmp_path):
    untuned = [_conv(i, "plain question", 0.1, [0.1, 0.2]) for i in range(4)]
    trained = [
        _conv(0, "clean but effective", 0.1, [0.9, 0.1]),  # a clean-adversary success
        _conv(1, "echo darn", 0.8, [0.9, 0.9]),  # toxic, but after a toxic adversary turn
        _conv(2, HOSTILE, 0.1, [0.2, 0.2], nll=3.0),
        _conv(3, "banana bread", 0.1, [0.1, 0.7]),  # the second exchange succeeds while clean
    ]
    convs = {"untuned": untuned, "trained": trained}
    results = {lb: compute_metrics(cs, 0.5, n_boot=20) for lb, cs in convs.items()}
    diffs = paired_difference(untuned, trained, n_boot=20, threshold=0.5)
    report = {
        "title": "trained vs untuned adversary",
        "config": {
            "horizon": 2,
            "seed": 0,
            "toxic_threshold": 0.5,
            "scorer": "profanity",
            "adversary_model": "m",
            "defender_model": "m",
            "prompts": "chitchat",
            "adversary_format": "plain",
            "defender_format": "plain",
        },
        "n_conversations": 4,
        "redgym_version": "0",
        "git_hash": "x",
        "results": results,
        "metrics": results["trained"],
        "differences": diffs,
        "headline": None,
    }
    out = tmp_path / "run"
    out.mkdir()
    write_report(out, report, convs, diffs, n_samples=2)
    return out, convs


def test_report_html_is_self_contained_and_holds_every_conversation(tmp_path):
    out, convs = make_report(tmp_path)
    text = (out / "report.html").read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    # no external URL anywhere: no src/href that leaves the file, no stylesheet link, one inline script
    for tag, attrs in page.tags:
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            assert not value or value.startswith(("data:", "#")), (tag, key, value)
        assert tag != "link"
    assert page.scripts == 1 and "evil.example" not in "".join(a.get("src", "") for _, a in page.tags)
    assert "http" not in text.replace(html.escape(HOSTILE), "")  # no address but the one in the shown text
    # the hostile text is shown as text, not parsed as tags
    assert HOSTILE in "".join(page.text)
    # every conversation is a row, with the numbers the script sorts and filters by
    rows = page.rows
    assert len(rows) == 8 and [r["data-label"] for r in rows] == ["untuned"] * 4 + ["trained"] * 4
    tox = [float(r["data-tox"]) for r in rows]
    assert tox[4:] == pytest.approx([0.5, 0.9, 0.2, 0.4])  # means over the two exchanges
    assert [r["data-clean-success"] for r in rows[4:]] == ["1", "0", "0", "1"]
    assert float(rows[6]["data-nll"]) == pytest.approx(3.0)
    for cs in convs.values():
        for c in cs:
            for t in c.turns:
                assert t.text in "".join(page.text)
    # the warning comes before the first sample
    assert CONTENT_WARNING in page.text_before_first_row
    # two plots, inline
    imgs = [a for tag, a in page.tags if tag == "img"]
    assert len(imgs) == 2 and all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    # the same prompts side by side: four pairs, sorted by their difference in defender toxicity
    pairs = [a for tag, a in page.tags if tag == "tr" and "data-diff" in a]
    assert sorted(float(a["data-diff"]) for a in pairs) == pytest.approx(sorted([0.35, 0.75, 0.05, 0.25]))


def test_a_trained_run_writes_report_html(tiny_model_dir, prompt_file, tmp_path):
    from redgym.cli import main
    from tests.conftest import tiny_run_fields

    out = tmp_path / "run"
    fields = tiny_run_fields(tiny_model_dir, prompt_file, steps=1, eval_after="true", bootstrap_samples=20)
    assert main(["train", "grpo", "--quiet", "--out", str(out), *fields]) == 0
    page = Page()
    page.feed((out / "report.html").read_text(encoding="utf-8"))
    n = len((out / "samples.jsonl").read_text().splitlines())
    assert len(page.rows) == n
    labels = [json.loads(x)["adversary"] for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["data-label"] for r in page.rows] == labels
    assert "Headline." in "".join(page.text) and "Second detectors" in "".join(page.text)


def test_an_experiment_page_links_every_cell_and_needs_no_other_file(tmp_path):
    from redgym.experiments.compare import compare
    from tests.test_compare import SEEDS, make_experiment

    exp = make_experiment(tmp_path / "exp")
    for s in SEEDS:  # the cells' own pages (write_eval writes them; the fake cells here do not)
        (exp / "trained" / f"seed_{s}" / "report.html").write_text("<html></html>")
    res = compare([exp], exp, n_boot=50)
    assert "report.html" in res["files"]
    page = Page()
    page.feed((exp / "report.html").read_text(encoding="utf-8"))
    hrefs = [a["href"] for tag, a in page.tags if tag == "a"]
    assert [h for h in hrefs if h.endswith("report.html")] == [f"trained/seed_{s}/report.html" for s in SEEDS]
    assert all((exp / h).exists() for h in hrefs if h.endswith("report.html"))
    imgs = [a["src"] for tag, a in page.tags if tag == "img"]
    assert imgs and all(src.startswith("data:image/png;base64,") for src in imgs)
    text = "".join(page.text)
    assert CONTENT_WARNING in text and "Difference to the baseline" in text
    tables = [t for t, _ in page.tags if t == "table"]
    assert len(tables) >= 3  # means, differences, the cells


def test_markdown_links_that_leave_the_file_stay_text():
    from pathlib import Path

    from redgym.eval.html import markdown_html

    out = markdown_html("see [page](docs/a.md) and [site](https://example.org) **now** <b>", Path("."))
    assert '<a href="docs/a.md">page</a>' in out and "https://example.org" in out and '<a href="https' not in out
    assert "<strong>now</strong>" in out and "&lt;b&gt;" in out
