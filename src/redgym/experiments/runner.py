"""``redgym experiment``: a grid of arms x seeds, each cell a normal run folder, then ``comparison.md``.

    redgym experiment --config configs/experiments/main.yaml --out runs/main [--only untuned,grpo]

The YAML (typed below, unknown keys are one-line errors):

    seeds: [0, 1, 2]
    split_seed: 0               # one set of held-out prompts for every arm and seed
    shared: {...}               # RunConfig fields for training and evaluation (models, scorer, prompts, horizon, ...)
    eval: {...}                 # RunConfig fields for every evaluation only (n_eval_prompts, samples_per_prompt, ...)
    transfer_defenders: [gemma3-270m]   # each arm's adversary is also evaluated against these defenders
    arms:
      untuned: {kind: untuned}
      dataset: {kind: dataset, source: rtp}      # dataset texts as the adversary's turns (the human baseline)
      sft:  {kind: sft,  train: {steps: 20, ...}}
      grpo: {kind: grpo, train: {...}}
      echo: {extends: "gain.yaml:grpo", train: {steps: 12}}   # another file's arm (path from this file's folder),
                                                              # its train updated by this one's
    ablations:                  # an arm with overrides, by default at the first seed only
      grpo_no_nll: {arm: grpo, train: {w_nll: 0}}

Cells run seed by seed (every arm at seed 0 first), so a grid stopped early still holds comparable arms. A cell with
a ``report.json`` is finished and skipped; a training cell with checkpoints resumes from the latest one. Every
evaluation uses the same held-out prompts (``split_seed``), the cell's seed, and the ``eval`` settings.

Each cell's folder is held while it runs (``runfolder.hold_folder``), not the experiment folder: several commands
on one ``--out`` (``--seeds 0`` and ``--seeds 1`` side by side, or the same command twice) share the grid, each
skipping the cells another one is running.

``--reuse DIR`` (an experiment folder or its archive) copies in the cells DIR finished whose arm, seed, trainer and
resolved configs equal this grid's (``reuse_cells``): main.yaml's untuned, dataset, sft and grpo cells are gain.yaml's,
and a grid continued from its own archive needs no copy by hand.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from redgym.config import C, EvalConfig, RunConfig, load_config, read_yaml_mapping
from redgym.data.prompts import load_prompts
from redgym.errors import RedgymError
from redgym.eval.evaluate import compare as compare_adversaries
from redgym.eval.evaluate import evaluate_replay
from redgym.experiments.archive import REUSED
from redgym.models.loading import check_known_model
from redgym.models.replay import ReplaySpeaker
from redgym.runfolder import HOLDER_FILE, LOCK_FILE, FolderInUse, atomic_write, check_writable, hold_folder, write_json
from redgym.setup import load_adversary, prepare
from redgym.trainers.checkpoints import latest_checkpoint
from redgym.trainers.registry import TRAINERS
from redgym.trainers.train_config import TrainConfig

log = logging.getLogger("redgym.experiment")

KINDS = ("untuned", "dataset", *TRAINERS)
# RunConfig fields that only an evaluation reads (its EvalConfig part): under an arm's train they would silently do
# nothing.
EVAL_ONLY = {f.name for f in dataclasses.fields(EvalConfig)}
# The experiment file's keys, one line of help each: `redgym experiment --help` and docs/experiments.md show these
# tables, and a key outside them is a one-line error.
EXPERIMENT_KEYS = {
    "seeds": "list of seeds every arm runs at (default [0])",
    "split_seed": "seed of the one prompt split every arm and seed is evaluated on (default 0)",
    "shared": "RunConfig fields for training and evaluation (models, scorer, prompts, horizon, ...)",
    "eval": "RunConfig fields for every evaluation only (n_eval_prompts, samples_per_prompt, ...)",
    "arms": "name: a mapping of the arm keys below",
    "ablations": "name: a mapping of the ablation keys below (an arm with overrides)",
    "transfer_defenders": "models each arm's adversary is also evaluated against (DIR/ARM/seed_S/transfer/MODEL/)",
    "baseline_arm": "the arm the others are compared with (default untuned)",
}
ARM_KEYS = {
    "extends": "FILE:ARM, an arm of another experiment file (FILE relative to this one): its kind, source and train, "
    "this arm's keys over them (train key by key)",
    "kind": f"one of {', '.join(KINDS)} (default: the arm's name, or the extended arm's kind)",
    "train": "a trained kind: the trainer's config fields",
    "source": "kind dataset: the prompt source whose texts are the adversary's turns (default rtp)",
    "seeds": "this arm's seeds (default: the experiment's)",
}
ABLATION_KEYS = {
    "arm": "the arm it changes",
    "train": "config fields over the arm's train",
    "seeds": "its seeds (default: the experiment's first)",
}


@dataclass
class Arm:
    """One arm: ``kind`` is untuned, dataset or a trainer name; ``train`` its trainer's config fields."""

    name: str
    kind: str
    train: dict = field(default_factory=dict)
    source: str = "rtp"
    seeds: list[int] | None = None
    ablation_of: str | None = None  # an ablation: the arm it changes
    changes: dict = field(default_factory=dict)  # an ablation: its train fields that differ from that arm's


@dataclass
class ExperimentConfig:
    seeds: list[int]
    split_seed: int = 0
    shared: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    arms: list[Arm] = field(default_factory=list)
    transfer_defenders: list[str] = field(default_factory=list)
    baseline_arm: str = "untuned"


@dataclass
class Cell:
    """One (arm, seed): its folder (relative to the experiment), and its configs, validated at load time."""

    arm: str
    kind: str
    seed: int
    folder: Path
    eval_cfg: RunConfig
    train_cfg: TrainConfig | None = None
    source: str = "rtp"


def _mapping(x, where: str) -> dict:
    if x is None:
        return {}
    if not isinstance(x, dict):
        raise RedgymError(f"{where} must be a mapping of key: value")
    return x


def _keys(d: dict, allowed: set[str], where: str) -> None:
    bad = sorted(set(d) - allowed)
    if bad:
        raise RedgymError(f"{where}: unknown key {bad[0]!r} (known: {', '.join(sorted(allowed))})")


def _arm(name: str, spec, where: str, folder: Path, seen: tuple[str, ...]) -> Arm:
    """One arm from its mapping; an ``extends: FILE:ARM`` is resolved first (recursively; a loop is an error), then
    this mapping's keys go over it, ``train`` key by key. ``seeds`` are never inherited: they belong to the file."""
    spec = _mapping(spec, where)
    _keys(spec, set(ARM_KEYS), where)
    base = Arm(name, spec.get("kind", name))
    if "extends" in spec:
        ref = spec["extends"]
        file, sep, other = str(ref).rpartition(":") if isinstance(ref, str) else ("", "", "")
        if not sep or not file or not other:
            raise RedgymError(f"{where}: extends must be FILE:ARM (an arm of another experiment file), got {ref!r}")
        path = (folder / file).resolve()
        key = f"{path}:{other}"
        if key in seen:
            raise RedgymError(f"{where}: extends {ref!r} loops back on itself")
        arms = _mapping(read_yaml_mapping(path, f"{where}: extends file").get("arms"), f"{where}: extends {ref}: arms")
        if other not in arms:
            raise RedgymError(f"{where}: extends {ref!r}: {path.name} has no arm {other!r} (arms: {', '.join(arms)})")
        base = _arm(name, arms[other], f"{where}: extends {ref}", path.parent, (*seen, key))
    kind = spec.get("kind", base.kind)
    if kind not in KINDS:
        raise RedgymError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return Arm(
        name,
        kind,
        {**base.train, **_mapping(spec.get("train"), f"{where}: train")},
        spec.get("source", base.source),
        spec.get("seeds"),
    )


def parse_experiment(data: dict, where: str = "experiment", folder: Path | None = None) -> ExperimentConfig:
    """Check and type an experiment mapping (a loaded YAML file); ``folder``: where an arm's ``extends`` file is
    looked up (the experiment file's folder; default the working directory)."""
    data = _mapping(data, where)
    _keys(data, set(EXPERIMENT_KEYS), where)
    seeds = data.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise RedgymError(f"{where}: seeds must be a non-empty list of integers")
    arms = [
        _arm(str(name), spec, f"{where}: arm {name}", Path(folder or "."), ())
        for name, spec in _mapping(data.get("arms"), f"{where}: arms").items()
    ]
    by_name = {a.name: a for a in arms}
    for name, spec in _mapping(data.get("ablations"), f"{where}: ablations").items():
        spec = _mapping(spec, f"{where}: ablation {name}")
        _keys(spec, set(ABLATION_KEYS), f"{where}: ablation {name}")
        arm_name = spec.get("arm")
        base = by_name.get(arm_name) if isinstance(arm_name, str) else None
        if base is None:
            raise RedgymError(f"{where}: ablation {name}: arm {spec.get('arm')!r} is not one of the arms")
        changes = _mapping(spec.get("train"), f"ablation {name}")
        arms.append(
            Arm(
                str(name),
                base.kind,
                {**base.train, **changes},
                base.source,
                spec.get("seeds", seeds[:1]),
                base.name,
                changes,
            )
        )
    if not arms:
        raise RedgymError(f"{where}: no arms")
    if len({a.name for a in arms}) != len(arms):
        raise RedgymError(f"{where}: arm and ablation names must be distinct")
    transfer = data.get("transfer_defenders") or []
    if not isinstance(transfer, list) or not all(isinstance(t, str) for t in transfer):
        raise RedgymError(f"{where}: transfer_defenders must be a list of model names")
    return ExperimentConfig(
        seeds,
        int(data.get("split_seed", 0)),
        _mapping(data.get("shared"), f"{where}: shared"),
        _mapping(data.get("eval"), f"{where}: eval"),
        arms,
        transfer,
        str(data.get("baseline_arm", "untuned")),
    )


def load_experiment(path: Path) -> ExperimentConfig:
    data = read_yaml_mapping(path, "experiment file")
    return parse_experiment(data, f"experiment file {path}", Path(path).parent)


def expand_grid(exp: ExperimentConfig) -> list[Cell]:
    """Every (arm, seed) cell, seed-major (all arms of seed 0 first, the baseline arm first of all), with its
    configs built and validated."""
    cells = []
    arms = sorted(exp.arms, key=lambda a: a.name != exp.baseline_arm)  # the baseline first: others compare to it
    for seed in exp.seeds + sorted({s for a in exp.arms for s in (a.seeds or []) if s not in exp.seeds}):
        for arm in arms:
            if seed not in (arm.seeds if arm.seeds is not None else exp.seeds):
                continue
            fixed = {"seed": seed, "split_seed": exp.split_seed}
            where = f"arm {arm.name}, seed {seed}"
            eval_cfg = _build(RunConfig, {**exp.shared, **exp.eval, **fixed}, where)
            train_cfg: TrainConfig | None = None
            if arm.kind in TRAINERS:
                stray = sorted(k for k in arm.train if k in EVAL_ONLY)
                if stray:
                    raise RedgymError(f"{where}: {stray[0]!r} only affects evaluation; set it under eval")
                train_cfg = _build(
                    TRAINERS[arm.kind][0], {**exp.shared, **arm.train, **fixed, "eval_after": False}, where
                )
            cells.append(
                Cell(arm.name, arm.kind, seed, Path(arm.name) / f"seed_{seed}", eval_cfg, train_cfg, arm.source)
            )
    return cells


def _build(cls: type[C], values: Mapping[str, object], where: str) -> C:
    try:
        return load_config(cls, None, values)
    except RedgymError as e:
        raise RedgymError(f"{where}: {e}") from None


def _evaluate(cfg: RunConfig, out: Path, label: str, adversary_of, progress: bool) -> None:
    """Roll out one adversary (built by ``adversary_of(setup)``) on the test prompts and write the report."""
    setup = prepare(cfg)
    compare_adversaries(
        setup, {label: adversary_of(setup)}, out, f"{label} adversary (seed {cfg.seed})", progress, n_samples=5
    )


def run_cell(cell: Cell, root: Path, exp: ExperimentConfig, progress: bool = True) -> None:
    """Train (or resume) when the arm trains, then evaluate against the defender and every transfer defender (at
    horizon 1 by replaying the main evaluation's adversary turns, so transfer rows pair with the main ones; over
    several turns the adversary converses anew with each defender); each finished part (a report.json) is skipped
    when the grid runs again."""
    out = root / cell.folder
    checkpoint = None
    if cell.train_cfg is not None:
        checkpoint = str(out / "adversary")
        train_cfg = cell.train_cfg
        done = (out / "report.json").exists() or (
            (ck := latest_checkpoint(out)) is not None and int(ck.name.split("_")[1]) >= train_cfg.steps
        )
        if not done:
            resume = latest_checkpoint(out) is not None
            log.info("%s seed %d: training%s", cell.arm, cell.seed, " (resumed)" if resume else "")
            TRAINERS[cell.kind][1](train_cfg, out, resume=resume, progress=progress)

    def adversary_of(setup):
        if cell.kind == "dataset":
            texts = [p.text for p in load_prompts(cell.source, min_words=2)]
            return ReplaySpeaker(texts, cell.seed, name=f"dataset:{cell.source}")
        return load_adversary(setup, checkpoint)

    targets = [(out, cell.eval_cfg)] + [
        (out / "transfer" / d.replace("/", "_"), dataclasses.replace(cell.eval_cfg, defender_model=d))
        for d in exp.transfer_defenders
    ]
    for folder, cfg in targets:
        if (folder / "report.json").exists():
            continue
        if checkpoint is not None:
            cfg = dataclasses.replace(
                cfg, adversary_checkpoint=checkpoint, compare_untuned=False, split_from=str(out / "split.json")
            )
        if folder != out and cfg.horizon == 1:  # transfer: the main evaluation's turns again, paired with its rows
            log.info("%s seed %d: replaying its adversary turns to %s", cell.arm, cell.seed, cfg.defender_model)
            evaluate_replay(cfg, out, folder, progress)
            continue
        log.info("%s seed %d: evaluating against %s", cell.arm, cell.seed, cfg.defender_model)
        _evaluate(cfg, folder, cell.arm, adversary_of, progress)


def reuse_cells(exp: ExperimentConfig, cells: list[Cell], out: Path, other: Path) -> list[Cell]:
    """Copy into ``out`` each of ``cells`` that experiment folder (or archive) ``other`` finished with the same arm
    name, seed, kind, source and resolved train and eval configs, so it is not trained again; returns those copied.
    A cell ``out`` already holds (finished or partly run) is left as it is. Transfer evaluations come along for the
    defenders this grid lists (one it lists that ``other`` lacks is evaluated here, which needs ``other``'s
    samples.jsonl: an archive holds none)."""
    other = Path(other)
    if not (other / "experiment.yaml").is_file():
        raise RedgymError(f"--reuse {other}: no experiment.yaml there (not an experiment folder or its archive)")
    meta_config = ""
    if (other / "experiment.json").is_file():
        meta_config = str(json.loads((other / "experiment.json").read_text(encoding="utf-8")).get("config", ""))
    # an arm that `extends:` another file names it from the original config's folder, which the copy lacks
    folder = Path(meta_config).parent if meta_config and Path(meta_config).parent.is_dir() else other
    theirs = {
        (c.arm, c.seed): c
        for c in expand_grid(
            parse_experiment(
                read_yaml_mapping(other / "experiment.yaml", "experiment file"), f"--reuse {other}", folder
            )
        )
    }
    keep = {d.replace("/", "_") for d in exp.transfer_defenders}
    copied = []
    for c in cells:
        src, dst, o = other / c.folder, out / c.folder, theirs.get((c.arm, c.seed))
        if o is None or not (src / "report.json").is_file() or (dst.exists() and any(dst.iterdir())):
            continue
        if (o.kind, o.source, o.train_cfg, o.eval_cfg) != (c.kind, c.source, c.train_cfg, c.eval_cfg):
            log.info("%s seed %d: not reused from %s (its configs differ)", c.arm, c.seed, other)
            continue

        def ignore(folder: str, names: list[str], src: Path = src) -> list[str]:
            skip = [n for n in names if n in (LOCK_FILE, HOLDER_FILE)]  # another command's
            return skip + ([n for n in names if n not in keep] if Path(folder) == src / "transfer" else [])

        shutil.rmtree(dst, ignore_errors=True)  # an empty folder a stopped command left
        shutil.copytree(src, dst, ignore=ignore)
        atomic_write(dst / REUSED, f"{other.resolve()}\n".encode())  # so `redgym archive` leaves it where it was
        log.info("%s seed %d: reused from %s", c.arm, c.seed, other)
        copied.append(c)
    return copied


def run_experiment(
    config: Path,
    out: Path,
    only: list[str] | None = None,
    progress: bool = True,
    seeds: list[int] | None = None,
    reuse: list[Path] | None = None,
) -> Path:
    """Run every unfinished cell of the grid (or of the arms in ``only``, at the seeds in ``seeds``), then write the
    comparison. Parts of one grid may run at once into the same ``out``: each cell has its own folder. Cells that a
    folder in ``reuse`` finished under the same configs are copied, not run (``reuse_cells``)."""
    exp = load_experiment(config)
    cells = grid = expand_grid(exp)
    names = {c.arm for c in cells}
    if only:
        unknown = sorted(set(only) - names)
        if unknown:
            raise RedgymError(f"--only: no arm named {unknown[0]!r} (arms: {', '.join(sorted(names))})")
        cells = [c for c in cells if c.arm in only]
    if seeds is not None:
        grid_seeds = sorted({c.seed for c in grid})
        unknown_seeds = sorted(set(seeds) - set(grid_seeds))
        if unknown_seeds:
            raise RedgymError(f"--seeds: the grid has no seed {unknown_seeds[0]} (seeds: {grid_seeds})")
        cells = [c for c in cells if c.seed in seeds]
    check_writable(out)
    for name in dict.fromkeys(exp.transfer_defenders):  # evaluated last in a cell: a missing package, say so now
        check_known_model(name)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "experiment.yaml", Path(config).read_text(encoding="utf-8"))
    write_json(
        out / "experiment.json",
        {
            "arms": [a.name for a in exp.arms],
            "ablations": [a.name for a in exp.arms if a.ablation_of],
            "ablation_of": {a.name: {"arm": a.ablation_of, "changes": a.changes} for a in exp.arms if a.ablation_of},
            "seeds": exp.seeds,
            "arm_seeds": {a: sorted({c.seed for c in grid if c.arm == a}) for a in dict.fromkeys(c.arm for c in grid)},
            "baseline_arm": exp.baseline_arm,
            "transfer_defenders": exp.transfer_defenders,
            "config": str(config),
        },
    )
    for other in reuse or []:
        reuse_cells(exp, cells, out, other)
    t0 = time.time()
    elsewhere = []
    for i, cell in enumerate(cells):
        log.info(
            "[%d/%d] %s seed %d (%.1f min so far)", i + 1, len(cells), cell.arm, cell.seed, (time.time() - t0) / 60
        )
        try:
            with hold_folder(out / cell.folder, f"experiment --out {out}: {cell.folder}"):
                run_cell(cell, out, exp, progress)
        except FolderInUse as e:
            if not str(e).startswith(f"{out / cell.folder} is in use"):
                raise  # a folder inside the cell: not this loop's to skip
            log.info("%s seed %d: skipped, %s", cell.arm, cell.seed, str(e).split(" is ", 1)[1].split(";")[0])
            elsewhere.append(cell)
    if elsewhere:
        log.info("%d cell(s) were running in another command: rerun this one once they end", len(elsewhere))
    from redgym.experiments.compare import compare

    if any((out / exp.baseline_arm).glob("seed_*/report.json")):
        compare([out], out)
    else:
        log.info("no %s arm evaluated yet: comparison.md is written once it is", exp.baseline_arm)
    return out
