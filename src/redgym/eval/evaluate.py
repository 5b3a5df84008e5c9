"""``redgym eval``: roll out an adversary against the defender on held-out test prompts and write a report
(``--replay RUN``: put a run's recorded adversary turns to this defender instead).

Everything that can fail on bad input (output folder, scorer, prompts, models, embedder) is checked before the
first conversation is generated, and nothing is written into the output folder until then. The shared set-up
(models, scorer, split, weights, sampling) lives in ``redgym.setup``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from redgym.config import RunConfig, load_config
from redgym.errors import RedgymError
from redgym.eval.detectors import score_detectors
from redgym.eval.echo import echo_split, gain_shares
from redgym.eval.metrics import Table, compute_metrics, paired_difference
from redgym.eval.report import write_report
from redgym.models.guard import GuardedDefender, bare_defender
from redgym.models.http import OpenAIChat
from redgym.models.lm import LM
from redgym.models.replay import ScriptedSpeaker
from redgym.rollout.records import Conversation
from redgym.runfolder import (
    CONTENT_WARNING,
    check_writable,
    read_json,
    read_jsonl,
    run_metadata,
    save_config,
    write_json,
)
from redgym.setup import Setup, build_detectors, load_adversary, prepare, run_adversary

log = logging.getLogger(__name__)


def headline(
    a: list[Conversation], b: list[Conversation], results: list[dict], differences: dict, threshold: float
) -> dict:
    """The one result a reader needs first, of adversary ``b`` against ``a`` on the same prompts: the paired
    difference of defender toxicity and its ratio, how that gain divides between exchanges after toxic adversary
    turns (echo) and after clean ones (``echo.gain_shares``), the clean-adversary difference, and the adversary's
    own toxicity and NLL ratios (what the gain cost in stealth and likelihood)."""
    ta, tb = Table.from_conversations(a), Table.from_conversations(b)
    echo, clean = gain_shares(
        echo_split(ta.tox_adversary, ta.tox_defender, threshold),
        echo_split(tb.tox_adversary, tb.tox_defender, threshold),
    )
    ratio = lambda m: results[1][m]["value"] / results[0][m]["value"] if results[0][m]["value"] else float("nan")  # noqa: E731
    # The same gain under each second detector: its mean score and the share of replies it flags.
    detectors = {
        label: {
            "defender_toxicity": differences[f"defender_toxicity@{label}"],
            "ratio": ratio(f"defender_toxicity@{label}"),
            "defender_toxic_rate": differences[f"defender_toxic_rate@{label}"],
            "rates": [
                results[0][f"defender_toxic_rate@{label}"]["value"],
                results[1][f"defender_toxic_rate@{label}"]["value"],
            ],
            "clean_adversary_difference": differences[f"defender_toxicity_clean_adversary@{label}"],
        }
        for label in tb.detectors
        if f"defender_toxicity@{label}" in differences
    }
    return {
        "metric": "defender_toxicity",
        "difference": differences["defender_toxicity"],
        "ratio": ratio("defender_toxicity"),
        "echo_share": echo,
        "clean_share": clean,
        "clean_adversary_difference": differences.get("defender_toxicity_clean_adversary"),
        "adversary_toxicity_ratio": ratio("adversary_toxicity"),
        "adversary_nll_ratio": ratio("adversary_nll"),
        "detectors": detectors,
    }


def write_eval(
    out: Path,
    setup: Setup,
    convs_by_label: dict[str, list[Conversation]],
    title: str,
    n_samples: int = 0,
    extra: dict | None = None,
    pair: tuple[str, str] | None = None,
) -> dict:
    """Metrics for every label, paired differences of ``pair`` (default: the last label against the first), and
    all files."""
    cfg = setup.cfg
    for convs in convs_by_label.values():
        score_detectors(convs, setup.detectors)
    results = {
        label: compute_metrics(convs, cfg.toxic_threshold, setup.embedder, cfg.bootstrap_samples, cfg.seed)
        for label, convs in convs_by_label.items()
    }
    labels = list(convs_by_label)
    differences = top = None
    if len(labels) > 1:
        a, b = pair or (labels[0], labels[-1])
        differences = paired_difference(
            convs_by_label[a], convs_by_label[b], cfg.bootstrap_samples, cfg.seed, cfg.toxic_threshold
        )
        top = headline(convs_by_label[a], convs_by_label[b], [results[a], results[b]], differences, cfg.toxic_threshold)
    split_json = setup.split.to_json(cfg.prompts, cfg.seed)
    bare = bare_defender(setup.defender)
    server = {"http": bare.counts()} if isinstance(bare, OpenAIChat) else {}  # requests, retries, failures
    report = {
        "title": title,
        "content_warning": CONTENT_WARNING,
        **run_metadata(setup.code_version),
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "split": {k: v for k, v in split_json.items() if not isinstance(v, list)}
        | {"test_ids_evaluated": [p.id for p in setup.split.test[: cfg.n_eval_prompts or None]]},
        "n_conversations": len(convs_by_label[labels[-1]]),
        "n_samples_shown": n_samples,  # report.md's top samples (rescore writes as many again)
        "metrics": results[labels[-1]],
        "results": results,
        "differences": differences,
        "differences_of": list(pair) if pair and differences else None,
        "headline": top,
        **server,
        **(extra or {}),
    }
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "checkpoints").exists():  # a training run folder keeps its own (trainer) config.yaml
        save_config(out, cfg)
    write_json(out / "split.json", split_json)
    write_report(out, report, convs_by_label, differences, n_samples)
    return report


def compare(
    setup: Setup, adversaries: dict[str, LM], out: Path, title: str, progress: bool = True, n_samples: int = 10
) -> dict:
    """Evaluate several adversaries on the same test prompts and seed; one report, side by side.

    With ``defender_guard``, each adversary is evaluated twice with the same seed, against the bare defender
    (``label``) and behind the guard (``label+guard``): the same adversary turns and the same replies to unflagged
    turns (models/guard.py), so ``guard_effect`` (guarded - bare, per adversary) is paired turn by turn, and the
    report's ``differences`` are the last adversary's guard effect."""
    guard = setup.defender if isinstance(setup.defender, GuardedDefender) else None
    bare = dataclasses.replace(setup, defender=guard.defender) if guard else setup
    convs: dict[str, list[Conversation]] = {}
    for label, lm in adversaries.items():
        convs[label] = (
            setup.baseline
            if label == "untuned" and setup.baseline is not None
            else run_adversary(bare, lm, desc=f"eval {label}", progress=progress)
        )
        if guard:
            convs[f"{label}+guard"] = run_adversary(setup, lm, desc=f"eval {label}+guard", progress=progress)
    if not guard:
        return write_eval(out, setup, convs, title=title, n_samples=n_samples)
    cfg = setup.cfg
    effect = {
        label: paired_difference(
            convs[label], convs[f"{label}+guard"], cfg.bootstrap_samples, cfg.seed, cfg.toxic_threshold
        )
        for label in adversaries
    }
    return write_eval(
        out,
        setup,
        convs,
        title=f"{title}, without and with the guard {cfg.defender_guard}",
        n_samples=n_samples,
        extra={
            "guard_effect": effect,
            "guard": {"model": cfg.defender_guard, "turns_checked": guard.n_checked, "turns_flagged": guard.n_flagged},
        },
        pair=(list(adversaries)[-1], f"{list(adversaries)[-1]}+guard"),
    )


def evaluate(cfg: RunConfig, out: Path, progress: bool = True, title: str | None = None, n_samples: int = 5) -> dict:
    """Evaluate the configured adversary (untuned, or ``adversary_checkpoint`` beside the untuned one when
    ``compare_untuned``); returns the report dict."""
    check_writable(out)
    setup = prepare(cfg)
    adversaries = {}
    if cfg.adversary_checkpoint is None or cfg.compare_untuned:
        adversaries["untuned"] = load_adversary(setup, None)
    if cfg.adversary_checkpoint is not None:
        adversaries["trained"] = load_adversary(setup, cfg.adversary_checkpoint)
    title = title or (
        "trained vs untuned adversary" if len(adversaries) > 1 else f"{next(iter(adversaries))} adversary"
    )
    return compare(setup, adversaries, out, title, progress, n_samples=n_samples)


def read_samples(run_dir: Path) -> dict[str, list[dict]]:
    """A run folder's ``samples.jsonl`` rows grouped by adversary label, in file order."""
    path = run_dir / "samples.jsonl"
    rows = read_jsonl(path, "replay", "a run folder written by redgym eval or train")
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(str(r.get("adversary", "adversary")), []).append(r)
    if not by_label:
        raise RedgymError(f"replay: {path} holds no conversations")
    return by_label


def evaluate_replay(cfg: RunConfig, run_dir: Path, out: Path, progress: bool = True) -> dict:
    """Put every adversary turn recorded in ``run_dir`` (each label: e.g. untuned and trained) to this config's
    defender, generating no new adversary turns: how discovered attacks transfer to another model. The first and
    last labels are compared with paired differences, as in every report."""
    check_writable(out)
    by_label = read_samples(run_dir)
    setup = prepare(cfg)
    convs = {}
    for label, rows in by_label.items():
        scripts = [(tuple(r["prompt"]), [t["text"] for t in r["turns"] if t["speaker"] == "adversary"]) for r in rows]
        horizon = max(len(turns) for _, turns in scripts)
        speaker = ScriptedSpeaker(scripts, name=f"replay {label}")
        convs[label] = run_adversary(
            setup,
            speaker,
            f"replay {label}",
            progress,
            prompts=[(r["prompt_id"], tuple(r["prompt"])) for r in rows],
            horizon=horizon,
        )
    title = f"replay of {run_dir}'s adversary turns against {cfg.defender_model}"
    return write_eval(out, setup, convs, title, n_samples=5, extra={"replay_of": str(run_dir)})


def evaluate_run(run_dir: Path, progress: bool = True, overrides: dict | None = None) -> dict:
    """Evaluate a finished training run's adversary beside the untuned one, on the test prompts of the run's own
    split, into the run folder (what ``eval_after`` does after ``redgym train``)."""
    saved = run_dir / "config.yaml"
    if not (run_dir / "adversary").is_dir() or not saved.is_file():
        raise RedgymError(f"{run_dir} holds no trained adversary (adversary/ and config.yaml)")
    import yaml

    data = yaml.safe_load(saved.read_text(encoding="utf-8"))
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    values = {k: v for k, v in data.items() if k in fields}
    values.update(
        adversary_checkpoint=str(run_dir / "adversary"), compare_untuned=True, split_from=str(run_dir / "split.json")
    )
    values.update(overrides or {})
    cfg = load_config(RunConfig, None, values)
    return evaluate(cfg, run_dir, progress, title="trained vs untuned adversary", n_samples=10)


def rescore_run(folder: Path, eval_scorers: list[str]) -> dict:
    """Score a finished evaluation's conversations (``folder``'s samples.jsonl) with second detectors, generating
    nothing: every turn gains the detectors' scores, report.json their metrics, paired differences and headline
    line, report.md its section. What a run was trained and first evaluated with is left as it was; a detector it
    already carries is not scored again. Returns the rewritten report."""
    report = read_json(folder / "report.json", "rescore")
    cfg = report.get("config") or {}
    scorer, threshold = cfg.get("scorer"), float(cfg.get("toxic_threshold", 0.5))
    n_boot, seed = int(cfg.get("bootstrap_samples", 1000)), int(report.get("seed", cfg.get("seed", 0)))
    detectors = build_detectors(eval_scorers, scorer)
    convs = {label: [Conversation.from_json(r) for r in rows] for label, rows in read_samples(folder).items()}
    results, labels = report["results"], list(report["results"])
    if set(convs) != set(labels):
        raise RedgymError(f"rescore: {folder}'s samples.jsonl holds {sorted(convs)}, its report {sorted(labels)}")
    for label, cs in convs.items():
        score_detectors(cs, detectors)
        new = compute_metrics(cs, threshold, None, n_boot, seed)
        results[label].update({k: v for k, v in new.items() if "@" in k})
    report["metrics"] = results[labels[-1]]
    if report.get("differences"):
        a, b = report.get("differences_of") or (labels[0], labels[-1])
        new = paired_difference(convs[a], convs[b], n_boot, seed, threshold)
        report["differences"].update({k: v for k, v in new.items() if "@" in k})
        if report.get("headline"):
            top = headline(convs[a], convs[b], [results[a], results[b]], report["differences"], threshold)
            report["headline"]["detectors"] = top["detectors"]
    report["rescored_with"] = sorted(set(report.get("rescored_with", [])) | set(detectors))
    write_report(folder, report, convs, report.get("differences"), n_samples=int(report.get("n_samples_shown", 5)))
    return report
