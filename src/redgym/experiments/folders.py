"""Reading experiment folders for ``redgym compare``: every arm's finished seeds, their reports, conversations,
training curves and budgets, and the transfer evaluations beside them.

An experiment folder holds, per arm and seed, what ``redgym.eval.evaluate.write_eval`` writes::

    EXP/experiment.json                              {"arms": [...], "seeds": [...], "baseline_arm": "untuned"}
    EXP/<arm>/seed_<s>/report.json, samples.jsonl    the arm's adversary against the main defender
    EXP/<arm>/seed_<s>/metrics.jsonl                 training curve (trained arms only)
    EXP/<arm>/seed_<s>/transfer/<defender>/...       the same adversary against another defender

An archive (``experiments/archive.py``) holds ``scores.jsonl`` (the conversations without their text) in place of
samples.jsonl: read alike, the metrics computed from text (``TEXT_METRICS``) are then the reports' only.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from redgym.errors import RedgymError
from redgym.eval.metrics import HIGHER_IS_BETTER, compute_metrics
from redgym.experiments.archive import conversations_file
from redgym.rollout.records import Conversation
from redgym.runfolder import read_json

log = logging.getLogger(__name__)

MAIN = ""  # the defender name of the main (non-transfer) evaluation


@dataclass
class SeedResult:
    """One evaluation of one arm at one seed against one defender (a report.json and its samples.jsonl)."""

    seed: int
    values: dict[str, float]  # metric -> value of the report's last label
    convs: list[Conversation] | None  # that label's conversations; None without samples.jsonl
    threshold: float
    replayed: bool = False  # a transfer report whose adversary turns are the main evaluation's, replayed
    has_text: bool = True  # False: an archive's conversations, scores without text (experiments/archive.py)


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
    ablation_of: str | None = None  # an ablation: the arm it changes (folders written since it was recorded)
    changes: dict = field(default_factory=dict)  # ... and the train fields it changes
    cells: dict[int, Path] = field(default_factory=dict)  # seed -> the cell's run folder (main defender)


def read_seed(folder: Path, seed: int) -> SeedResult:
    """The last label's metrics of ``folder/report.json`` and its conversations from ``folder/samples.jsonl``."""
    report = read_json(folder / "report.json", "compare")
    results = report.get("results") or {}
    label = list(results)[-1] if results else None
    metrics = results[label] if label is not None else report.get("metrics", {})
    values = {k: float(m["value"]) if m.get("value") is not None else math.nan for k, m in metrics.items()}
    threshold = float(report.get("config", {}).get("toxic_threshold", 0.5))
    convs = None
    samples, has_text = conversations_file(folder)
    if samples.exists():
        try:
            rows = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
            convs = [Conversation.from_json(r) for r in rows if label is None or r.get("adversary", label) == label]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RedgymError(f"cannot read {samples} ({e!r})") from None
    # Reports written before a metric existed lack it; the samples hold every score it needs (all but the
    # embedding distance, which needs the embedding model).
    if convs and has_text and not (set(HIGHER_IS_BETTER) - {"embedding_diversity"}) <= set(values):
        try:
            for k, m in compute_metrics(convs, threshold, n_boot=1).items():
                values.setdefault(k, m["value"])
        except (ValueError, KeyError) as e:  # uneven horizons, a score missing
            log.warning("%s: metrics missing from report.json not recomputed (%r)", folder, e)
    return SeedResult(seed, values, convs or None, threshold, "replay_of" in report, has_text)


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
        of = (meta.get("ablation_of") or {}).get(name) or {}
        arm = Arm(
            name,
            folder,
            baseline,
            ablation=name in (meta.get("ablations") or []),
            ablation_of=of.get("arm"),
            changes=dict(of.get("changes") or {}),
        )
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
            a.ablation_of = rename.get(a.ablation_of) if a.ablation_of else None  # None: its arm has no reports
    return [a for arms in per_dir for a in arms]
