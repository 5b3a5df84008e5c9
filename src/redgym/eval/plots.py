"""The plotting set-up every report shares: matplotlib without a screen, figures written atomically and closed,
and mean-with-95%-interval points over turns (the per-turn plots of report.md and of compare)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen here; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

from redgym.runfolder import atomic_savefig  # noqa: E402

__all__ = ["plt", "save", "errorbar_turns"]


def save(fig, path: Path, dpi: int = 120) -> None:
    """Write ``fig`` to ``path`` (a half-written PNG is never left behind) and free it."""
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=dpi)
    plt.close(fig)


def errorbar_turns(
    ax, turns: list[int], values: list[float], below: list[float], above: list[float], label: str, i: int
):
    """One series of per-turn means with their intervals (``below``/``above``: distances from each mean to its
    bounds), shifted by ``i`` so several series stay apart."""
    ax.errorbar([k + 0.07 * i for k in turns], values, yerr=[below, above], marker="o", capsize=3, label=label)
    ax.set_xticks(turns)
