"""``redgym compare``: one table of an experiment's arms (adversaries), each evaluated at several seeds
(folders read by ``experiments/folders.py``, written for a reader by ``experiments/comparison_report.py``).

Two intervals answer two questions. Across seeds (Student t over the per-seed values): how far would a re-run of
the whole pipeline with another seed move the number; with 3 seeds t(0.975, 2) = 4.30 makes it wide. Pooled
(all seeds' conversations as one sample, bootstrap over prompts): how far would other test prompts move it; it
ignores seed-to-seed variation of training, so it is narrower and is not a substitute for the first.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from redgym.eval.formatting import finite
from redgym.eval.html import experiment_html
from redgym.eval.metrics import HIGHER_IS_BETTER, TEXT_METRICS, compute_metrics, metric_base, paired_difference
from redgym.experiments.comparison_report import (
    ABLATION_METRICS,
    plot_pareto,
    plot_reward_curves,
    plot_toxicity_per_turn,
    render_ablations,
    render_headline,
    render_markdown,
)
from redgym.experiments.folders import MAIN, Arm, SeedResult, load_arms
from redgym.rollout.records import Conversation
from redgym.runfolder import atomic_write, check_writable

log = logging.getLogger(__name__)

# Metrics whose sign can flip between arms: a ratio of means is meaningless there, only the difference is reported.
SIGNED = {"reward"}
COLUMNS = [
    "arm",
    "defender",
    "metric",
    "higher_is_better",
    "n_seeds",
    "mean",
    "sd",
    "ci95_lo",
    "ci95_hi",
    "pooled",
    "pooled_ci95_lo",
    "pooled_ci95_hi",
    "baseline",
    "n_paired_seeds",
    "diff_mean",
    "diff_ci95_lo",
    "diff_ci95_hi",
    "diff_pooled",
    "diff_pooled_ci95_lo",
    "diff_pooled_ci95_hi",
    "ratio",
]


# ---- pure maths over per-seed values ------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedStats:
    """Mean over seeds with a Student-t 95% interval; NaN bounds with fewer than two finite values."""

    n: int
    mean: float
    sd: float
    lo: float
    hi: float


def t_interval(values: Iterable[float], level: float = 0.95) -> SeedStats:
    """mean ± t(1 - (1 - level)/2, n - 1) · sd / √n over the finite values (sd with n - 1 in the denominator).

    A seed whose value is NaN (e.g. no clean exchange at all) is left out, so ``n`` counts the seeds used.
    """
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return SeedStats(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return SeedStats(1, mean, math.nan, math.nan, math.nan)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(1 - (1 - level) / 2, n - 1)) * sd / math.sqrt(n)
    return SeedStats(n, mean, sd, mean - half, mean + half)


def seed_differences(arm: dict[int, float], base: dict[int, float]) -> dict[int, float]:
    """``arm[s] - base[s]`` for every seed s where both values are finite: the arm and its baseline share the
    seed's prompts and sampling draws, so per-seed differences cancel what the seed does to both."""
    return {s: arm[s] - base[s] for s in sorted(arm) if s in base and finite(arm[s]) and finite(base[s])}


def mean_ratio(arm: dict[int, float], base: dict[int, float]) -> float:
    """mean(arm) / mean(base) over the seeds both have (those of ``seed_differences``); NaN when the baseline
    mean is 0 or no seed is shared."""
    common = seed_differences(arm, base)
    if not common:
        return math.nan
    b = float(np.mean([base[s] for s in common]))
    return float(np.mean([arm[s] for s in common])) / b if b else math.nan


def ablation_effects(arms: list[Arm], metrics: list[str], defender: str = MAIN) -> list[dict]:
    """What each ablation did to the arm it changes: per metric, the ablation's value minus that arm's at the same
    seed, mean over seeds [95% t CI] and the ratio of means (None for a SIGNED metric). One dict per (ablation,
    metric) present in both: ``arm``, ``against``, ``changes``, ``metric``, ``n_paired_seeds``, ``paired_seeds``
    (which: a sweep cell is run at a chosen seed), ``diff_mean``, ``diff_ci95_lo``, ``diff_ci95_hi``, ``ratio``.
    Ablations whose arm has no reports are left out."""
    by_name = {a.name: a for a in arms}
    out = []
    for a in arms:
        parent = by_name.get(a.ablation_of or "")
        if parent is None or defender not in a.results or defender not in parent.results:
            continue
        for name in metrics:
            mine = {s: r.values.get(name, math.nan) for s, r in a.results[defender].items()}
            theirs = {s: r.values.get(name, math.nan) for s, r in parent.results[defender].items()}
            paired = seed_differences(mine, theirs)
            d = t_interval(paired.values())
            if d.n == 0:
                continue
            out.append(
                {
                    "arm": a.name,
                    "against": parent.name,
                    "changes": a.changes,
                    "metric": name,
                    "n_paired_seeds": d.n,
                    "paired_seeds": sorted(paired),
                    "diff_mean": d.mean,
                    "diff_ci95_lo": d.lo,
                    "diff_ci95_hi": d.hi,
                    "ratio": None if metric_base(name) in SIGNED else mean_ratio(mine, theirs),
                }
            )
    return out


# ---- the table -------------------------------------------------------------------------------------------------


def _pooled(runs: dict[int, SeedResult], n_boot: int, seed: int) -> dict[str, dict]:
    """compute_metrics over all seeds' conversations; a prompt evaluated at several seeds is one cluster. Without
    the text (an archive's scores), the metrics of the text are left out."""
    pooled: list[Conversation] = []
    for r in runs.values():
        if r.convs is None:
            return {}
        pooled += r.convs
    try:
        out = compute_metrics(pooled, next(iter(runs.values())).threshold, n_boot=n_boot, seed=seed)
    except ValueError as e:  # horizons differ between seeds
        log.warning("pooled metrics skipped: %s", e)
        return {}
    if all(r.has_text for r in runs.values()):
        return out
    return {k: v for k, v in out.items() if metric_base(k) not in TEXT_METRICS}


def _pooled_difference(
    arm: dict[int, SeedResult], base: dict[int, SeedResult], n_boot: int, seed: int
) -> dict[str, dict]:
    """paired_difference (arm - base) over the pooled seeds both have, each seed's conversations paired with
    the baseline's of the same seed; ``{}`` when samples are missing or the prompts differ."""
    common: list[int] = []
    a: list[Conversation] = []  # the baseline's conversations
    b: list[Conversation] = []  # the arm's, seed by seed in the same order
    for s in arm:
        arm_convs, base_convs = arm[s].convs, (base[s].convs if s in base else None)
        if arm_convs is not None and base_convs is not None:
            common.append(s)
            a += base_convs
            b += arm_convs
    if not common:
        return {}
    try:
        return paired_difference(a, b, n_boot, seed, arm[common[0]].threshold)
    except ValueError as e:
        log.warning("pooled paired differences skipped: %s", e)
        return {}


def summarise(arm: Arm, base: Arm | None, defender: str, n_boot: int, seed: int) -> list[dict]:
    """The rows of one (arm, defender): one per metric, in COLUMNS; None marks a cell that does not apply."""
    runs = arm.results[defender]
    base_runs = base.results.get(defender) if base is not None and base is not arm else None
    names = list(dict.fromkeys(k for r in runs.values() for k in r.values))
    pooled = _pooled(runs, n_boot, seed)
    pooled_diff = _pooled_difference(runs, base_runs, n_boot, seed) if base_runs else {}
    rows = []
    for name in names:
        values = {s: r.values.get(name, math.nan) for s, r in runs.items()}
        st = t_interval(values.values())
        p = pooled.get(name)
        row = {
            "arm": arm.name,
            "defender": defender,
            "metric": name,
            "higher_is_better": HIGHER_IS_BETTER.get(metric_base(name)),
            "n_seeds": st.n,
            "mean": st.mean,
            "sd": st.sd,
            "ci95_lo": st.lo,
            "ci95_hi": st.hi,
            "pooled": p["value"] if p else None,
            "pooled_ci95_lo": p["ci95"][0] if p else None,
            "pooled_ci95_hi": p["ci95"][1] if p else None,
            "baseline": arm.baseline,
        }
        row.update(dict.fromkeys(COLUMNS[COLUMNS.index("n_paired_seeds") :]))
        if base_runs:
            base_values = {s: r.values.get(name, math.nan) for s, r in base_runs.items()}
            d = t_interval(seed_differences(values, base_values).values())
            q = pooled_diff.get(name)  # all-turn metrics of paired_difference only
            row.update(
                {
                    "n_paired_seeds": d.n,
                    "diff_mean": d.mean,
                    "diff_ci95_lo": d.lo,
                    "diff_ci95_hi": d.hi,
                    "diff_pooled": q["value"] if q else None,
                    "diff_pooled_ci95_lo": q["ci95"][0] if q else None,
                    "diff_pooled_ci95_hi": q["ci95"][1] if q else None,
                    "ratio": None if metric_base(name) in SIGNED else mean_ratio(values, base_values),
                }
            )
        rows.append(row)
    return rows


def _csv(rows: list[dict]) -> str:
    def cell(x):
        if x is None:
            return ""
        if isinstance(x, float):
            return "nan" if math.isnan(x) else repr(x)
        return str(x)

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([cell(r[c]) for c in COLUMNS])
    return buf.getvalue()


# ---- the command -------------------------------------------------------------------------------------------------


def compare(dirs: list[Path], out: Path, n_boot: int = 1000, seed: int = 0) -> dict:
    """Compare the arms of one or more experiment folders; writes comparison.csv, comparison.md, headline.md (the
    README's short table), report.html (comparison.md as one offline page, linking every cell's report.html) and
    plots/.

    Returns ``{"rows": [...one dict per (arm, defender, metric), keys COLUMNS...], "arms": [...],
    "baselines": {arm: baseline arm}, "defenders": [...], "files": [...]}``; None in a row marks a cell that does
    not apply (the baseline's own difference, the ratio of a signed metric), NaN a value that is undefined.
    """
    out = Path(out)
    check_writable(out)
    # 1 read every arm, seed and transfer defender (fails before writing anything)
    arms = load_arms([Path(d) for d in dirs])
    by_name = {a.name: a for a in arms}
    # 2 summarise each (arm, defender) against its experiment's baseline
    rows = [
        r for a in arms for defender in a.results for r in summarise(a, by_name[a.baseline], defender, n_boot, seed)
    ]
    idx = {(r["arm"], r["defender"], r["metric"]): r for r in rows}
    detectors = [m for (_, d, m) in idx if d == MAIN and m.startswith(ABLATION_METRICS[-1] + "@")]
    effects = ablation_effects(arms, ABLATION_METRICS[:-1] + list(dict.fromkeys(detectors)))
    # 3 write the plots, the table and the markdown
    plots = [
        name
        for name, drawn in [
            ("pareto.png", plot_pareto(out / "plots" / "pareto.png", arms, idx)),
            ("reward_curves.png", plot_reward_curves(out / "plots" / "reward_curves.png", arms)),
            ("toxicity_per_turn.png", plot_toxicity_per_turn(out / "plots" / "toxicity_per_turn.png", arms, idx)),
        ]
        if drawn
    ]
    atomic_write(out / "comparison.csv", _csv(rows))
    atomic_write(out / "comparison.md", render_markdown(arms, rows, plots, effects))
    atomic_write(out / "headline.md", render_headline(arms, rows))
    atomic_write(out / "ablations.md", render_ablations(effects))
    cells = {
        a.name: {s: os.path.relpath(d / "report.html", out) for s, d in a.cells.items() if (d / "report.html").exists()}
        for a in arms
    }
    page = experiment_html("redgym comparison", (out / "comparison.md").read_text(encoding="utf-8"), out, cells)
    atomic_write(out / "report.html", page)
    return {
        "rows": rows,
        "arms": [a.name for a in arms],
        "baselines": {a.name: a.baseline for a in arms},
        "defenders": list(dict.fromkeys(d for a in arms for d in a.results)),
        "ablations": effects,
        "files": ["comparison.csv", "comparison.md", "headline.md", "ablations.md", "report.html"]
        + [f"plots/{p}" for p in plots],
    }
