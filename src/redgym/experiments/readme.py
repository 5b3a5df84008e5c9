"""Put an experiment's generated ``comparison.md`` into a README, so result tables are never typed by hand.

The README holds a block per experiment between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``;
``publish`` replaces what is between them with the comparison (its title demoted below the README's headings) and
copies its plots to ``docs/results/NAME/`` beside the README, rewriting the image links.
"""

from __future__ import annotations

import re
from pathlib import Path

from redgym.errors import RedgymError
from redgym.runfolder import atomic_write


def demote(markdown: str, levels: int = 2) -> str:
    """Every ATX heading ``levels`` deeper (``# x`` -> ``### x``), so a comparison nests under a README section."""
    return re.sub(r"(?m)^(#{1,6}) ", lambda m: "#" * min(6, len(m.group(1)) + levels) + " ", markdown)


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the block between the ``name`` markers replaced by ``body``; a one-line error without them."""
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise RedgymError(f"README has no block {start} ... {end}")
    return text[: i + len(start)] + "\n" + body.strip() + "\n" + text[j:]


def publish(comparison_dir: Path, readme: Path, name: str) -> None:
    """Copy ``comparison_dir``'s comparison.md (and plots) into ``readme``'s block ``name``."""
    md = (Path(comparison_dir) / "comparison.md").read_text(encoding="utf-8")
    plots = Path(comparison_dir) / "plots"
    target = Path(readme).parent / "docs" / "results" / name
    if plots.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        for png in plots.glob("*.png"):
            atomic_write(target / png.name, png.read_bytes())
    md = md.replace("](plots/", f"](docs/results/{name}/")
    md = md.replace("`comparison.csv`", f"`{Path(comparison_dir) / 'comparison.csv'}` (in the run folder)")
    atomic_write(Path(readme), replace_block(Path(readme).read_text(encoding="utf-8"), name, demote(md)))
