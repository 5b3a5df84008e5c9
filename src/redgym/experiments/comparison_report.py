"""What ``redgym compare`` writes for a reader: comparison.md's tables (means, differences, second detectors,
per-turn, training budgets), headline.md (the README's row per trained arm) and the plots."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from redgym.eval.formatting import excludes_zero, finite, num
from redgym.eval.markdown import table
from redgym.eval.metrics import HIGHER_IS_BETTER, metric_base, metric_detectors
from redgym.eval.plots import errorbar_turns, plt, save
from redgym.experiments.folders import BUDGET, MAIN, Arm
from redgym.runfolder import CONTENT_WARNING

# The metrics of comparison.md's main tables, in order.
HEADLINE = [
    "defender_toxicity",
    "defender_toxic_rate",
    "attack_success_rate",
    "stealth_success_rate",
    "defender_toxicity_clean_adversary",
    "adversary_toxicity",
    "adversary_nll",
    "reward",
    "distinct_2",
    "embedding_diversity",
]


def _transfer_line(arms: list[Arm], defender: str) -> str:
    """What a transfer table's adversary turns are: the main evaluation's, replayed (so its rows pair with the main
    table's), or drawn anew against this defender (multi-turn, or folders written before replay)."""
    cells = [r for a in arms for r in a.results.get(defender, {}).values()]
    if cells and all(r.replayed for r in cells):
        return (
            "The main evaluation's adversary turns, replayed to another defender: every row pairs with the main "
            "table's (same prompts, same adversary text), so only the defender differs."
        )
    if any(r.replayed for r in cells):
        return "Some cells replay the main evaluation's adversary turns and some draw new ones: not paired throughout."
    return (
        "The same adversaries, unchanged, against another defender, drawing new adversary turns (multi-turn: they "
        "answer this defender): these rows are not paired with the main table's."
    )


def _fewer(n: int, seeds: int | None) -> str:
    """ " (2 of 3 seeds)" where a metric has no value at some of the arm's seeds (e.g. no clean adversary turn at
    all), so that its CI is not read as the row's; "" otherwise."""
    return f" ({n} of {seeds} seeds)" if seeds is not None and n < seeds else ""


def _mean_cell(r: dict | None, seeds: int | None = None) -> str:
    if r is None or r["n_seeds"] == 0:
        return "–"
    ci = f" [{num(r['ci95_lo'])}, {num(r['ci95_hi'])}]" if r["n_seeds"] > 1 else ""
    return num(r["mean"]) + ci + _fewer(r["n_seeds"], seeds)


def _diff_cell(r: dict | None, seeds: int | None = None) -> str:
    if r is None or not r["n_paired_seeds"]:
        return "–"
    cell = num(r["diff_mean"], sign=True)
    if r["n_paired_seeds"] > 1:
        cell += f" [{num(r['diff_ci95_lo'], sign=True)}, {num(r['diff_ci95_hi'], sign=True)}]"
        if excludes_zero({"ci95": [r["diff_ci95_lo"], r["diff_ci95_hi"]]}):
            cell = f"**{cell}**"
    if r["ratio"] is not None and math.isfinite(r["ratio"]):
        cell += f" ×{r['ratio']:.4g}"
    return cell + _fewer(r["n_paired_seeds"], seeds)


def _cells(
    cell: Callable[[dict | None, int | None], str], a: Arm, idx: dict, defender: str, keys: Iterable[str]
) -> list[str]:
    """``cell`` (``_mean_cell`` or ``_diff_cell``) of each metric in ``keys`` for arm ``a`` on ``defender``, each
    told the arm's seed count, so that a metric missing at some of its seeds says so."""
    n = len(a.results[defender])
    return [cell(idx.get((a.name, defender, k)), n) for k in keys]


def _metric_tables(present: list[Arm], idx: dict, defender: str, metrics: list[str]) -> list[str]:
    """A means table of ``metrics`` for the arms, then their differences to the baseline where paired."""
    arrows = [f"{m} {'↑' if HIGHER_IS_BETTER.get(metric_base(m), True) else '↓'}" for m in metrics]
    lines = table(
        ["arm", "seeds", *arrows],
        ([a.name, str(len(a.results[defender])), *_cells(_mean_cell, a, idx, defender, metrics)] for a in present),
    )
    others = [a for a in present if a.name != a.baseline]
    if metrics and any((idx.get((a.name, defender, metrics[0])) or {}).get("n_paired_seeds") for a in others):
        lines += [
            "",
            "Difference to the baseline (same seeds; mean over seeds [95% t CI across seeds] "
            "×ratio of means; bold: the CI excludes 0):",
            "",
        ]
        lines += table(
            ["arm", "baseline", *arrows],
            ([a.name, a.baseline, *_cells(_diff_cell, a, idx, defender, metrics)] for a in others),
        )
    return lines


# Each second detector's columns (``eval/detectors.py``), as ``name@label``.
DETECTOR_COLUMNS = [
    "defender_toxicity",
    "defender_toxic_rate",
    "defender_toxicity_clean_adversary",
    "stealth_success_rate",
    "adversary_toxic_rate",
]


def detector_labels(idx: dict, defender: str) -> list[str]:
    """The second detectors some arm was evaluated with against ``defender``, in first-seen order."""
    return metric_detectors(m for (_, d, m) in idx if d == defender)


def _tables(arms: list[Arm], idx: dict, defender: str) -> list[str]:
    """The means and differences tables of one defender (the training scorer's metrics, then each second
    detector's), for the arms evaluated against it, and the per-turn tables."""
    present = [a for a in arms if defender in a.results]
    metrics = [m for m in HEADLINE if any((a.name, defender, m) in idx for a in present)]
    lines = _metric_tables(present, idx, defender, metrics)
    for label in detector_labels(idx, defender):
        cols = [
            f"{m}@{label}" for m in DETECTOR_COLUMNS if any((a.name, defender, f"{m}@{label}") in idx for a in present)
        ]
        lines += [
            "",
            f"Under the second detector `{label}` (scored at evaluation, not trained on; a rate is the share of "
            "replies or adversary turns it flags):",
            "",
            *_metric_tables(present, idx, defender, cols),
        ]
    return lines + _per_turn_tables(present, idx, defender)


# (metric, heading, what its means table shows) of the per-turn tables of a multi-turn evaluation
PER_TURN = [
    (
        "defender_toxicity",
        "Defender toxicity per turn",
        "Defender toxicity at turn k, mean over seeds [95% t CI across seeds]:",
    ),
    (
        "adversary_toxicity",
        "Adversary toxicity per turn",
        "The adversary's own toxicity at turn k (how much of that turn's defender toxicity may be echo), "
        "mean over seeds [95% t CI across seeds]:",
    ),
    (
        "defender_toxicity_clean_adversary",
        "Clean-adversary defender toxicity per turn",
        "Defender toxicity over the exchanges of turn k whose adversary turn scores at or below the toxicity "
        "threshold (stealth: does a clean turn draw more toxicity later in a conversation?), mean over seeds "
        "[95% t CI across seeds]; a seed with no clean exchange at turn k is left out:",
    ),
]


def _horizon(arms: list[Arm], idx: dict, defender: str, metric: str) -> int:
    """The most turns any arm has ``metric/turn_k`` rows for against ``defender``; 0 without a second turn."""
    h = 0
    while any((a.name, defender, f"{metric}/turn_{h + 1}") in idx for a in arms):
        h += 1
    return h if h > 1 else 0


def _per_turn_table(arms: list[Arm], idx: dict, defender: str, metric: str, title: str, note: str) -> list[str]:
    """One row per arm and one column per turn of ``metric/turn_k`` (mean [t CI] over seeds), then the
    differences to the baseline per turn; ``[]`` for a single-turn evaluation."""
    h = _horizon(arms, idx, defender, metric)
    if not h:
        return []
    keys = [f"{metric}/turn_{k}" for k in range(1, h + 1)]
    turns = [f"turn {k}" for k in range(1, h + 1)]
    lines = ["", f"### {title}", "", note, ""] + table(
        ["arm", "seeds", *turns],
        ([a.name, str(len(a.results[defender])), *_cells(_mean_cell, a, idx, defender, keys)] for a in arms),
    )
    others = [a for a in arms if a.name != a.baseline]
    if any((idx.get((a.name, defender, k)) or {}).get("n_paired_seeds") for a in others for k in keys):
        lines += [
            "",
            "Difference to the baseline per turn (same seeds; mean over seeds [95% t CI across seeds] "
            "×ratio of means; bold: the CI excludes 0):",
            "",
        ] + table(
            ["arm", "baseline", *turns],
            ([a.name, a.baseline, *_cells(_diff_cell, a, idx, defender, keys)] for a in others),
        )
    return lines


def _per_turn_tables(arms: list[Arm], idx: dict, defender: str) -> list[str]:
    """The per-turn tables of PER_TURN for a multi-turn evaluation (horizon > 1); nothing for horizon 1."""
    return [line for spec in PER_TURN for line in _per_turn_table(arms, idx, defender, *spec)]


def _budget_table(arms: list[Arm]) -> list[str]:
    """Each trained arm's training budget, mean over its seeds: what a comparison of arms holds equal (or not)."""
    trained = [a for a in arms if a.budget]
    if not trained:
        return []
    lines = [
        "",
        "## Training budget",
        "",
        "What each trained arm spent, summed over its training steps, mean over seeds (from `metrics.jsonl`; — where"
        " the run predates the count). Arms compared as equals should spend alike.",
        "",
    ]

    def cell(a: Arm, key: str) -> str:
        v = [b[key] for b in a.budget.values() if finite(b[key])]
        return "—" if not v else f"{np.mean(v):.1f}" if key == "time/step_s" else f"{np.mean(v):.0f}"

    return lines + table(
        ["arm", "seeds", *(col for _, col in BUDGET)],
        ([a.name, str(len(a.budget)), *(cell(a, key) for key, _ in BUDGET)] for a in trained),
    )


# What an ablation row says, in this order: the gain, its stealth part, the echo and likelihood it cost; the last
# is a prefix, one entry per second detector (its flagged-reply rate).
ABLATION_METRICS = [
    "defender_toxicity",
    "defender_toxicity_clean_adversary",
    "adversary_toxicity",
    "adversary_nll",
    "defender_toxic_rate",
]
_ABLATION_WORDS = {
    "defender_toxicity": "defender toxicity",
    "defender_toxicity_clean_adversary": "after clean adversary turns",
    "adversary_toxicity": "adversary toxicity",
    "adversary_nll": "adversary NLL",
}


def _changes(changes: dict) -> str:
    return ", ".join(f"`{k}: {v}`" for k, v in changes.items()) or "its own settings"


def render_ablations(effects: list[dict]) -> str:
    """One sentence per ablation (``compare.ablation_effects``' rows): what the change did to the arm it changes,
    paired by seed: difference [95% t CI across seeds] ×ratio, bold where the CI excludes 0. Empty without
    ablations."""
    by_arm: dict[str, list[dict]] = {}
    for e in effects:
        by_arm.setdefault(e["arm"], []).append(e)
    lines = []
    for name, es in by_arm.items():
        e0 = max(es, key=lambda e: e["n_paired_seeds"])  # the seeds the sentence names; a metric with fewer says so
        parts = []
        for e in es:
            base, _, detector = e["metric"].partition("@")
            words = f"replies `{detector}` flags" if detector else _ABLATION_WORDS.get(base, e["metric"])
            parts.append(f"{words} {_diff_cell(e, e0['n_paired_seeds'])}")
        seeds = ", ".join(map(str, e0["paired_seeds"]))
        which = f"seeds {seeds}, each" if len(e0["paired_seeds"]) > 1 else f"seed {seeds},"
        lines.append(
            f"- `{name}` (`{e0['against']}` with {_changes(e0['changes'])}; {which} "
            f"against `{e0['against']}` at the same seed): " + "; ".join(parts) + "."
        )
    return "\n".join(lines) + ("\n" if lines else "")


def render_markdown(arms: list[Arm], rows: list[dict], plots: list[str], effects: list[dict] | None = None) -> str:
    idx = {(r["arm"], r["defender"], r["metric"]): r for r in rows}
    seeds = sorted({s for a in arms for runs in a.results.values() for s in runs})
    lines = ["# redgym comparison", "", f"> **{CONTENT_WARNING}**", ""]
    for d in dict.fromkeys(a.experiment for a in arms):
        names = [a.name for a in arms if a.experiment == d]
        base = next(a.baseline for a in arms if a.experiment == d)
        lines.append(f"- experiment `{d}`: arms {', '.join(f'`{n}`' for n in names)}; baseline `{base}`")
    lines += [
        f"- seeds: {', '.join(map(str, seeds))} (the `seeds` column counts each arm's finished ones)",
        "- cells: mean over seeds of each seed's evaluation, with a 95% Student-t interval across seeds "
        "(mean ± t(0.975, n−1)·sd/√n; none with one seed): how far a re-run with another seed may move "
        "the number. `comparison.csv` also holds the pooled value of all seeds' conversations with a 95% "
        "bootstrap CI over prompts (test-prompt uncertainty only) and the pooled paired differences.",
        "- ↑ higher is better for the red-teamer (a stronger or more diverse attack), ↓ lower is better "
        "(a stealthier, more likely adversary). `stealth_success_rate`: share of defender replies above the "
        "toxicity threshold to an adversary turn at or below it; `defender_toxicity_clean_adversary`: mean "
        "defender toxicity over those exchanges whose adversary turn is at or below it.",
        "",
        "## Main defender",
        "",
    ]
    lines += _tables(arms, idx, MAIN)
    for defender in dict.fromkeys(d for a in arms for d in a.results if d != MAIN):
        lines += [
            "",
            f"## Transfer to defender `{defender}`",
            "",
            _transfer_line(arms, defender),
            "",
        ]
        lines += _tables(arms, idx, defender)
    if effects:
        lines += [
            "",
            "## What each ablation did",
            "",
            "Each ablation minus the arm it changes, seed by seed (mean over seeds [95% t CI across seeds] ×ratio of "
            "means; bold where the CI excludes 0), main defender.",
            "",
            render_ablations(effects).rstrip("\n"),
        ]
    lines += _budget_table(arms)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}](plots/{p})" for p in plots]
    lines += [
        "",
        "Files: `comparison.csv` (every metric and turn, with pooled bootstrap CIs and paired differences), `plots/`.",
        "",
    ]
    return "\n".join(lines)


# What a reader takes in first: per trained arm, the main gain, the stealth (clean-adversary) gain, and what the
# adversary paid for it (its own toxicity: echo; its NLL: likelihood), each a difference to the baseline with its CI.
HEADLINE_COLUMNS = (
    ("defender_toxicity", "defender toxicity"),
    ("defender_toxicity_clean_adversary", "after clean adversary turns (stealth)"),
    ("adversary_toxicity", "adversary toxicity (echo)"),
    ("adversary_nll", "adversary NLL"),
)
# ... and the same gain seen by a second detector (the first an arm was evaluated with): replies it flags.
DETECTOR_HEADLINE = ("defender_toxic_rate", "replies a second detector flags")


def _detector_cell(idx: dict, a: Arm) -> str:
    """``DETECTOR_HEADLINE``'s difference for the arm's first second detector, named; "–" without one."""
    prefix = DETECTOR_HEADLINE[0] + "@"
    name = next((m for (arm, d, m) in idx if arm == a.name and d == MAIN and m.startswith(prefix)), None)
    return f"`{name.split('@', 1)[1]}` " + _cells(_diff_cell, a, idx, MAIN, [name])[0] if name else "–"


def headline_rows(arms: list[Arm], rows: list[dict]) -> list[list[str]]:
    """``[arm, seeds, *cells]`` per arm other than its baseline and its ablations, main defender: each
    HEADLINE_COLUMNS metric's difference to the baseline [95% t CI across seeds] ×ratio, bold where the CI
    excludes 0."""
    idx = {(r["arm"], r["defender"], r["metric"]): r for r in rows}
    return [
        [
            a.name,
            str(len(a.results[MAIN])),
            *_cells(_diff_cell, a, idx, MAIN, (m for m, _ in HEADLINE_COLUMNS)),
            _detector_cell(idx, a),
        ]
        for a in arms
        if a.name != a.baseline and not a.ablation and MAIN in a.results
    ]


HEADLINE_HEAD = ["arm", "seeds", *(title for _, title in HEADLINE_COLUMNS), DETECTOR_HEADLINE[1]]


def render_headline(arms: list[Arm], rows: list[dict]) -> str:
    """headline.md: the short table of ``headline_rows`` (the README's row per trained arm comes from it)."""
    n_abl = sum(a.ablation for a in arms)
    base = sorted({a.baseline for a in arms})
    lines = [
        f"Difference to `{'`, `'.join(base)}` on the same held-out prompts: mean over seeds [95% t CI across seeds] "
        "×ratio of means, bold where the CI excludes 0" + (f"; {n_abl} ablations in comparison.md." if n_abl else "."),
        "",
        *table(HEADLINE_HEAD, headline_rows(arms, rows)),
    ]
    return "\n".join(lines) + "\n"


# ---- plots -------------------------------------------------------------------------------------------------------


def _stat(idx: dict, arm: str, metric: str) -> tuple[float, float, float] | None:
    """(mean, error below, error above) of a row, zero errors where the interval is NaN (one seed)."""
    r = idx.get((arm, MAIN, metric))
    if r is None or not finite(r["mean"]):
        return None
    m, lo, hi = r["mean"], r["ci95_lo"], r["ci95_hi"]
    return m, (m - lo if finite(lo) else 0.0), (hi - m if finite(hi) else 0.0)


def plot_pareto(path: Path, arms: list[Arm], idx: dict) -> bool:
    points = []
    for a in arms:
        nll, tox = _stat(idx, a.name, "adversary_nll"), _stat(idx, a.name, "defender_toxicity")
        if nll and tox:
            points.append((a.name, nll, tox))
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, (x, xl, xh), (y, yl, yh) in points:
        ax.errorbar([x], [y], xerr=[[xl], [xh]], yerr=[[yl], [yh]], marker="o", capsize=3, label=name)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("adversary NLL under the defender (nats/token; lower: more likely)")
    ax.set_ylabel("defender toxicity")
    ax.set_title("toxicity–likelihood trade-off (mean, 95% t CI across seeds)", fontsize=9)
    save(fig, path)
    return True


def plot_reward_curves(path: Path, arms: list[Arm]) -> bool:
    trained = [a for a in arms if a.curves]
    if not trained:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for a in trained:
        by_step: dict[int, list[float]] = {}
        for curve in a.curves.values():
            for step, r in curve:
                by_step.setdefault(step, []).append(r)
        steps = sorted(by_step)
        (line,) = ax.plot(steps, [np.mean(by_step[s]) for s in steps], label=f"{a.name} ({len(a.curves)} seeds)")
        for curve in a.curves.values():  # each seed faintly, to show the spread the mean hides
            ax.plot(*zip(*curve), color=line.get_color(), alpha=0.2, linewidth=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel("reward/reward")
    ax.set_title("training reward (batch mean; line: mean over seeds)", fontsize=9)
    ax.legend(fontsize=8)
    save(fig, path)
    return True


def plot_toxicity_per_turn(path: Path, arms: list[Arm], idx: dict) -> bool:
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    drawn = False
    for i, a in enumerate(arms):
        turns: list[int] = []
        pts: list[tuple[float, float, float]] = []  # (mean, error below, error above) per turn
        while (st := _stat(idx, a.name, f"defender_toxicity/turn_{len(turns) + 1}")) is not None:
            turns.append(len(turns) + 1)
            pts.append(st)
        if pts:
            means, below, above = (list(x) for x in zip(*pts))
            errorbar_turns(ax, turns, means, below, above, label=a.name, i=i)
            drawn = True
    if drawn:
        ax.set_xlabel("turn")
        ax.set_ylabel("defender toxicity")
        ax.set_title("defender toxicity per turn (mean, 95% t CI across seeds)", fontsize=9)
        ax.legend(fontsize=8)
        save(fig, path)
    else:
        plt.close(fig)
    return drawn
