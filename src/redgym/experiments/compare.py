"""``redgym compare``: one table of an experiment's arms (adversaries), each evaluated at several seeds.

An experiment folder holds, per arm and seed, what ``redgym.eval.evaluate.write_eval`` writes::

    EXP/experiment.json                              {"arms": [...], "seeds": [...], "baseline_arm": "untuned"}
    EXP/<arm>/seed_<s>/report.json, samples.jsonl    the arm's adversary against the main defender
    EXP/<arm>/seed_<s>/metrics.jsonl                 training curve (trained arms only)
    EXP/<arm>/seed_<s>/transfer/<defender>/...       the same adversary against another defender

Two intervals answer two questions. Across seeds (Student t over the per-seed values): how far would a re-run of
the whole pipeline with another seed move the number; with 3 seeds t(0.975, 2) = 4.30 makes it wide. Pooled
(all seeds' conversations as one sample, bootstrap over prompts): how far would other test prompts move it; it
ignores seed-to-seed variation of training, so it is narrower and is not a substitute for the first.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen here; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from redgym.errors import RedgymError  # noqa: E402
from redgym.eval.html import experiment_html  # noqa: E402
from redgym.eval.metrics import HIGHER_IS_BETTER, compute_metrics, metric_base, paired_difference  # noqa: E402
from redgym.rollout.records import Conversation  # noqa: E402
from redgym.runfolder import CONTENT_WARNING, atomic_savefig, atomic_write, check_writable, read_json  # noqa: E402

log = logging.getLogger(__name__)

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
MAIN = ""  # the defender name of the main (non-transfer) evaluation


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


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def seed_differences(arm: dict[int, float], base: dict[int, float]) -> dict[int, float]:
    """``arm[s] - base[s]`` for every seed s where both values are finite: the arm and its baseline share the
    seed's prompts and sampling draws, so per-seed differences cancel what the seed does to both."""
    return {s: arm[s] - base[s] for s in sorted(arm) if s in base and _finite(arm[s]) and _finite(base[s])}


def mean_ratio(arm: dict[int, float], base: dict[int, float]) -> float:
    """mean(arm) / mean(base) over the seeds both have (those of ``seed_differences``); NaN when the baseline
    mean is 0 or no seed is shared."""
    common = seed_differences(arm, base)
    if not common:
        return math.nan
    b = float(np.mean([base[s] for s in common]))
    return float(np.mean([arm[s] for s in common])) / b if b else math.nan


# ---- reading experiment folders ------------------------------------------------------------------------------


@dataclass
class SeedResult:
    """One evaluation of one arm at one seed against one defender (a report.json and its samples.jsonl)."""

    seed: int
    values: dict[str, float]  # metric -> value of the report's last label
    convs: list[Conversation] | None  # that label's conversations; None without samples.jsonl
    threshold: float
    replayed: bool = False  # a transfer report whose adversary turns are the main evaluation's, replayed


@dataclass
class Arm:
    """One adversary of an experiment over its seeds; ``name`` is unique across the compared folders."""

    name: str
    experiment: Path
    baseline: str  # name of the experiment's baseline arm (this arm's own name for the baseline)
    results: dict[str, dict[int, SeedResult]] = field(default_factory=dict)  # defender (MAIN: main) -> seed -> ..
    curves: dict[int, list[tuple[int, float]]] = field(default_factory=dict)  # seed -> [(step, reward/reward)]
    budget: dict[int, dict[str, float]] = field(default_factory=dict)  # seed -> read_budget's totals
    ablation: bool = False  # listed under the experiment's ablations (the headline leaves it to the full tables)
    cells: dict[int, Path] = field(default_factory=dict)  # seed -> the cell's run folder (main defender)


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


def read_seed(folder: Path, seed: int) -> SeedResult:
    """The last label's metrics of ``folder/report.json`` and its conversations from ``folder/samples.jsonl``."""
    report = read_json(folder / "report.json", "compare")
    results = report.get("results") or {}
    label = list(results)[-1] if results else None
    metrics = results[label] if label is not None else report.get("metrics", {})
    values = {k: float(m["value"]) if m.get("value") is not None else math.nan for k, m in metrics.items()}
    threshold = float(report.get("config", {}).get("toxic_threshold", 0.5))
    convs = None
    if (folder / "samples.jsonl").exists():
        try:
            rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines() if line.strip()]
            convs = [Conversation.from_json(r) for r in rows if label is None or r.get("adversary", label) == label]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RedgymError(f"cannot read {folder / 'samples.jsonl'} ({e!r})") from None
    # Reports written before a metric existed lack it; the samples hold every score it needs (all but the
    # embedding distance, which needs the embedding model).
    if convs and not (set(HIGHER_IS_BETTER) - {"embedding_diversity"}) <= set(values):
        try:
            for k, m in compute_metrics(convs, threshold, n_boot=1).items():
                values.setdefault(k, m["value"])
        except (ValueError, KeyError) as e:  # uneven horizons, a score missing
            log.warning("%s: metrics missing from report.json not recomputed (%r)", folder, e)
    return SeedResult(seed, values, convs or None, threshold, "replay_of" in report)


def read_metrics(path: Path) -> list[dict]:
    """The rows of a training run's metrics.jsonl that carry a step; a torn last line of a running job is
    skipped."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def read_curve(rows: list[dict]) -> list[tuple[int, float]]:
    """(step, reward/reward) of ``read_metrics``' rows."""
    return [
        (int(r["step"]), float(r["reward/reward"])) for r in rows if isinstance(r.get("reward/reward"), (int, float))
    ]


# (metrics.jsonl key summed over a run's steps, the budget table's column)
BUDGET = [
    ("train/updates", "optimizer updates"),
    ("budget/adversary_samples", "adversary samples scored"),
    ("budget/defender_replies", "defender replies drawn"),
    ("time/step_s", "training minutes"),
]


def read_budget(rows: list[dict]) -> dict[str, float]:
    """What one training run spent, from ``read_metrics``' rows: each BUDGET key summed over the steps (seconds
    turned into minutes), NaN for a key no step logged (runs from before it was logged). A step logged twice (a
    resumed run redoes the steps after its last checkpoint) counts once, its last entry."""
    by_step = {r["step"]: r for r in rows if isinstance(r["step"], int)}
    out = {}
    for key, _ in BUDGET:
        values = [float(r[key]) for r in by_step.values() if isinstance(r.get(key), (int, float))]
        total = float(np.sum(values)) if values else math.nan
        out[key] = total / 60 if key == "time/step_s" else total
    return out


def _seed_dirs(arm_dir: Path, seeds: list[int] | None) -> dict[int, Path]:
    found = {}
    for d in arm_dir.glob("seed_*"):
        try:
            s = int(d.name.removeprefix("seed_"))
        except ValueError:
            continue
        if (d / "report.json").exists() and (seeds is None or s in seeds):
            found[s] = d
    return dict(sorted(found.items()))


def read_experiment_folder(folder: Path) -> list[Arm]:
    """The arms of one experiment folder with every finished seed; the baseline arm first if not listed."""
    if not folder.is_dir():
        raise RedgymError(f"experiment folder {folder} does not exist")
    meta = read_json(folder / "experiment.json", "compare") if (folder / "experiment.json").exists() else {}
    baseline = meta.get("baseline_arm", "untuned")
    seeds = [int(s) for s in meta["seeds"]] if meta.get("seeds") is not None else None
    arm_seeds = meta.get("arm_seeds") or {}  # an arm's own seeds (ablations: the first; arms may set theirs)
    names = list(meta.get("arms") or [])
    if not names:
        names = sorted(d.name for d in folder.iterdir() if d.is_dir() and _seed_dirs(d, seeds))
        names.sort(key=lambda a: a != baseline)  # stable: baseline first, the rest alphabetical
    arms = []
    for name in names:
        want = [int(s) for s in arm_seeds[name]] if name in arm_seeds else seeds
        dirs = _seed_dirs(folder / name, want)
        if not dirs:
            log.warning("%s: arm %s has no report.json yet; left out", folder, name)
            continue
        if want is not None and len(dirs) < len(want):
            log.warning("%s: arm %s has reports for seeds %s of %s", folder, name, list(dirs), want)
        arm = Arm(name, folder, baseline, ablation=name in (meta.get("ablations") or []))
        for s, d in dirs.items():
            arm.cells[s] = d
            arm.results.setdefault(MAIN, {})[s] = read_seed(d, s)
            for t in sorted((d / "transfer").glob("*/report.json")):
                arm.results.setdefault(t.parent.name, {})[s] = read_seed(t.parent, s)
            if (d / "metrics.jsonl").exists():  # a trained arm (SFT logs no reward curve, but a budget)
                rows = read_metrics(d / "metrics.jsonl")
                if curve := read_curve(rows):
                    arm.curves[s] = curve
                arm.budget[s] = read_budget(rows)
        arms.append(arm)
    if not arms:
        raise RedgymError(f"{folder}: no evaluation reports found (expected <arm>/seed_<s>/report.json)")
    if baseline not in [a.name for a in arms]:
        raise RedgymError(
            f"{folder}: baseline arm '{baseline}' has no reports (arms with reports: {', '.join(a.name for a in arms)})"
        )
    return arms


def load_arms(dirs: list[Path]) -> list[Arm]:
    """Every experiment's arms; a name that occurs in several folders is prefixed with its folder's name."""
    per_dir = [read_experiment_folder(Path(d)) for d in dict.fromkeys(Path(d) for d in dirs)]
    counts: dict[str, int] = {}
    for arms in per_dir:
        for a in arms:
            counts[a.name] = counts.get(a.name, 0) + 1
    names_taken: set[str] = set()
    for arms in per_dir:
        rename = {}
        for a in arms:
            new = a.name if counts[a.name] == 1 else f"{a.experiment.name}/{a.name}"
            if new in names_taken:  # two folders of the same name
                new = f"{a.experiment}/{a.name}"
            names_taken.add(new)
            rename[a.name] = new
        for a in arms:
            a.name, a.baseline = rename[a.name], rename[a.baseline]
    return [a for arms in per_dir for a in arms]


# ---- the table -------------------------------------------------------------------------------------------------


def _pooled(runs: dict[int, SeedResult], n_boot: int, seed: int) -> dict[str, dict]:
    """compute_metrics over all seeds' conversations; a prompt evaluated at several seeds is one cluster."""
    pooled: list[Conversation] = []
    for r in runs.values():
        if r.convs is None:
            return {}
        pooled += r.convs
    try:
        return compute_metrics(pooled, next(iter(runs.values())).threshold, n_boot=n_boot, seed=seed)
    except ValueError as e:  # horizons differ between seeds
        log.warning("pooled metrics skipped: %s", e)
        return {}


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


# ---- markdown ----------------------------------------------------------------------------------------------------


def _fmt(x: float | None, sign: bool = False) -> str:
    if x is None:
        return ""
    if math.isnan(x):
        return "nan"
    return f"{x:+.4f}" if sign else f"{x:.4f}"


def _mean_cell(r: dict | None) -> str:
    if r is None or r["n_seeds"] == 0:
        return "–"
    ci = f" [{_fmt(r['ci95_lo'])}, {_fmt(r['ci95_hi'])}]" if r["n_seeds"] > 1 else ""
    return _fmt(r["mean"]) + ci


def _diff_cell(r: dict | None) -> str:
    if r is None or not r["n_paired_seeds"]:
        return "–"
    cell = _fmt(r["diff_mean"], sign=True)
    if r["n_paired_seeds"] > 1:
        cell += f" [{_fmt(r['diff_ci95_lo'], True)}, {_fmt(r['diff_ci95_hi'], True)}]"
        if r["diff_ci95_lo"] > 0 or r["diff_ci95_hi"] < 0:
            cell = f"**{cell}**"
    if r["ratio"] is not None and math.isfinite(r["ratio"]):
        cell += f" ×{r['ratio']:.4g}"
    return cell


def _metric_tables(present: list[Arm], idx: dict, defender: str, metrics: list[str]) -> list[str]:
    """A means table of ``metrics`` for the arms, then their differences to the baseline where paired."""

    def head(first: str) -> list[str]:
        arrows = [f"{m} {'↑' if HIGHER_IS_BETTER.get(metric_base(m), True) else '↓'}" for m in metrics]
        return [f"| {first} | " + " | ".join(arrows) + " |", "|---|" + "---|" * (len(metrics) + 1)]

    lines = head("arm | seeds")
    for a in present:
        lines.append(
            f"| {a.name} | {len(a.results[defender])} | "
            + " | ".join(_mean_cell(idx.get((a.name, defender, m))) for m in metrics)
            + " |"
        )
    others = [a for a in present if a.name != a.baseline]
    if metrics and any((idx.get((a.name, defender, metrics[0])) or {}).get("n_paired_seeds") for a in others):
        lines += [
            "",
            "Difference to the baseline (same seeds; mean over seeds [95% t CI across seeds] "
            "×ratio of means; bold: the CI excludes 0):",
            "",
        ]
        lines += head("arm | baseline")
        for a in others:
            lines.append(
                f"| {a.name} | {a.baseline} | "
                + " | ".join(_diff_cell(idx.get((a.name, defender, m))) for m in metrics)
                + " |"
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
    return list(dict.fromkeys(m.split("@", 1)[1] for (arm, d, m) in idx if d == defender and "@" in m and "/" not in m))


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

    def head(first: str) -> list[str]:
        turns = " | ".join(f"turn {k}" for k in range(1, h + 1))
        return [f"| {first} | {turns} |", "|---|" + "---|" * (h + 1)]

    lines = ["", f"### {title}", "", note, ""] + head("arm | seeds")
    lines += [
        f"| {a.name} | {len(a.results[defender])} | "
        + " | ".join(_mean_cell(idx.get((a.name, defender, k))) for k in keys)
        + " |"
        for a in arms
    ]
    others = [a for a in arms if a.name != a.baseline]
    if any((idx.get((a.name, defender, k)) or {}).get("n_paired_seeds") for a in others for k in keys):
        lines += [
            "",
            "Difference to the baseline per turn (same seeds; mean over seeds [95% t CI across seeds] "
            "×ratio of means; bold: the CI excludes 0):",
            "",
        ] + head("arm | baseline")
        lines += [
            f"| {a.name} | {a.baseline} | "
            + " | ".join(_diff_cell(idx.get((a.name, defender, k))) for k in keys)
            + " |"
            for a in others
        ]
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
        "| arm | seeds | " + " | ".join(col for _, col in BUDGET) + " |",
        "|---|---|" + "---|" * len(BUDGET),
    ]
    for a in trained:
        cells = []
        for key, _ in BUDGET:
            v = [b[key] for b in a.budget.values() if _finite(b[key])]
            cells.append("—" if not v else f"{np.mean(v):.1f}" if key == "time/step_s" else f"{np.mean(v):.0f}")
        lines.append(f"| {a.name} | {len(a.budget)} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(arms: list[Arm], rows: list[dict], plots: list[str]) -> str:
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


def _detector_cell(idx: dict, arm: str) -> str:
    """``DETECTOR_HEADLINE``'s difference for the arm's first second detector, named; "–" without one."""
    name = next((m for (a, d, m) in idx if a == arm and d == MAIN and m.startswith(DETECTOR_HEADLINE[0] + "@")), None)
    return f"`{name.split('@', 1)[1]}` " + _diff_cell(idx[(arm, MAIN, name)]) if name else "–"


def headline_rows(arms: list[Arm], rows: list[dict]) -> list[list[str]]:
    """``[arm, seeds, *cells]`` per arm other than its baseline and its ablations, main defender: each
    HEADLINE_COLUMNS metric's difference to the baseline [95% t CI across seeds] ×ratio, bold where the CI
    excludes 0."""
    idx = {(r["arm"], r["defender"], r["metric"]): r for r in rows}
    return [
        [
            a.name,
            str(len(a.results[MAIN])),
            *(_diff_cell(idx.get((a.name, MAIN, m))) for m, _ in HEADLINE_COLUMNS),
            _detector_cell(idx, a.name),
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
        "| " + " | ".join(HEADLINE_HEAD) + " |",
        "|" + "---|" * len(HEADLINE_HEAD),
        *("| " + " | ".join(r) + " |" for r in headline_rows(arms, rows)),
    ]
    return "\n".join(lines) + "\n"


# ---- plots -------------------------------------------------------------------------------------------------------


def _stat(idx: dict, arm: str, metric: str) -> tuple[float, float, float] | None:
    """(mean, error below, error above) of a row, zero errors where the interval is NaN (one seed)."""
    r = idx.get((arm, MAIN, metric))
    if r is None or not _finite(r["mean"]):
        return None
    m, lo, hi = r["mean"], r["ci95_lo"], r["ci95_hi"]
    return m, (m - lo if _finite(lo) else 0.0), (hi - m if _finite(hi) else 0.0)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


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
    _save(fig, path)
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
    _save(fig, path)
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
            ax.errorbar(
                [k + 0.06 * i for k in turns],
                [m for m, _, _ in pts],
                yerr=[[lo for _, lo, _ in pts], [hi for _, _, hi in pts]],
                marker="o",
                capsize=3,
                label=a.name,
            )
            ax.set_xticks(turns)
            drawn = True
    if drawn:
        ax.set_xlabel("turn")
        ax.set_ylabel("defender toxicity")
        ax.set_title("defender toxicity per turn (mean, 95% t CI across seeds)", fontsize=9)
        ax.legend(fontsize=8)
        _save(fig, path)
    else:
        plt.close(fig)
    return drawn


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
    atomic_write(out / "comparison.md", render_markdown(arms, rows, plots))
    atomic_write(out / "headline.md", render_headline(arms, rows))
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
        "files": ["comparison.csv", "comparison.md", "headline.md", "report.html"] + [f"plots/{p}" for p in plots],
    }
