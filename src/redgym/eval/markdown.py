"""The markdown every report writes (a run's report.md, compare's comparison.md and headline.md, the guard report,
the README blocks): tables, and headings moved down to nest a page under another."""

from __future__ import annotations

import re
from collections.abc import Iterable


def row(cells: Iterable[str]) -> str:
    """One table row: ``| a | b |``."""
    return "| " + " | ".join(cells) + " |"


def table(head: list[str], rows: Iterable[Iterable[str]]) -> list[str]:
    """A markdown table's lines: the header, the rule under it, one line per row."""
    return [row(head), "|" + "---|" * len(head), *(row(r) for r in rows)]


def demote(markdown: str, levels: int = 2) -> str:
    """Every ATX heading ``levels`` deeper (``# x`` -> ``### x``), so a page nests under a README section."""
    return re.sub(r"(?m)^(#{1,6}) ", lambda m: "#" * min(6, len(m.group(1)) + levels) + " ", markdown)
