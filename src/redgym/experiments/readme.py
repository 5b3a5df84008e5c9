"""Put an experiment's generated comparison into the docs and its headline into a README, so result tables are never
typed by hand and the README stays a front page.

``publish`` writes the whole ``comparison.md`` to ``docs/results/NAME.md`` beside the README (its plots to
``docs/results/NAME/``), keeps ``headline.md``'s rows (one per trained arm) in ``docs/results/NAME.rows``, and
rebuilds the README's one results table, the block between ``<!-- results:headline -->`` and
``<!-- /results:headline -->``, from every experiment's rows; an experiment's sentences on its ablations
(``ablations.md``) go into the block ``NAME-ablations`` where the README has one.
"""

from __future__ import annotations

from pathlib import Path

from redgym.errors import RedgymError
from redgym.eval.markdown import table
from redgym.runfolder import atomic_write


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the block between the ``name`` markers replaced by ``body``; a one-line error without them."""
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise RedgymError(f"README has no block {start} ... {end}")
    return text[: i + len(start)] + "\n" + body.strip() + "\n" + text[j:]


def results_page(readme: Path, name: str) -> Path:
    """Where experiment ``name``'s full tables live: ``docs/results/NAME.md`` beside the README."""
    return Path(readme).parent / "docs" / "results" / f"{name}.md"


def pad_row(line: str, cells: int) -> str:
    """A table row with "–" cells added up to ``cells``: rows published before a column existed."""
    have = line.strip().strip("|").count(" | ") + 1
    return line.rstrip().rstrip("|").rstrip() + " | –" * max(0, cells - have) + " |"


def headline_block(readme: Path) -> str:
    """The README's one results table: the rows every published experiment left in ``docs/results/*.rows``."""
    from redgym.experiments.comparison_report import HEADLINE_HEAD

    rows = [
        pad_row(line, 1 + len(HEADLINE_HEAD))
        for f in sorted((Path(readme).parent / "docs" / "results").glob("*.rows"))
        for line in f.read_text(encoding="utf-8").splitlines()
        if line.startswith("| ")
    ]
    return "\n".join(
        [
            "Each trained arm against its experiment's baseline (the untuned adversary) on the same held-out prompts: "
            "mean over seeds [95% t CI across seeds] ×ratio of means, bold where the CI excludes 0. A gain in "
            "defender toxicity that comes with the adversary's own toxicity is echo; the stealth column is the "
            "defender's toxicity after clean adversary turns. Each experiment's link holds every metric, transfer, "
            "budget, ablation and plot.",
            "",
            *table(["experiment", *HEADLINE_HEAD], []),
            *rows,
        ]
    )


def publish_rows(readme: Path, name: str, headline_md: str) -> None:
    """Keep ``headline_md``'s table rows as experiment ``name``'s rows and refresh the README's headline block."""
    table = [line for line in headline_md.splitlines() if line.startswith("|")][2:]  # past the header
    link = f"[{name}](docs/results/{name}.md)"
    rows = "".join(f"| {link} {line}\n" for line in table)
    atomic_write(results_page(readme, name).with_name(f"{name}.rows"), rows)
    atomic_write(
        Path(readme), replace_block(Path(readme).read_text(encoding="utf-8"), "headline", headline_block(readme))
    )


def publish(comparison_dir: Path, readme: Path, name: str) -> None:
    """``comparison_dir``'s comparison.md (and plots) to ``docs/results/NAME.md``; its headline rows into the README's
    one results table (block ``headline``)."""
    comparison_dir = Path(comparison_dir)
    md = (comparison_dir / "comparison.md").read_text(encoding="utf-8")
    page = results_page(readme, name)
    plots = comparison_dir / "plots"
    if plots.is_dir():
        (page.parent / name).mkdir(parents=True, exist_ok=True)
        for png in plots.glob("*.png"):
            atomic_write(page.parent / name / png.name, png.read_bytes())
    md = md.replace("](plots/", f"]({name}/")
    md = md.replace("`comparison.csv`", f"`{comparison_dir / 'comparison.csv'}` (in the run folder)")
    atomic_write(page, md)
    publish_rows(readme, name, (comparison_dir / "headline.md").read_text(encoding="utf-8"))
    ablations = comparison_dir / "ablations.md"
    text = Path(readme).read_text(encoding="utf-8")
    if ablations.exists() and f"<!-- results:{name}-ablations -->" in text:
        body = ablations.read_text(encoding="utf-8").strip() or "(no ablation has finished yet)"
        atomic_write(Path(readme), replace_block(text, f"{name}-ablations", body))
