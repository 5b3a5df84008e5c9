"""The ``redgym`` command: a thin layer over importable functions.

    redgym eval --config configs/eval_untuned.yaml --out runs/untuned [--horizon 2 --w_nll 0 ...]
    redgym eval --replay RUN_DIR --defender_model gemma3-270m --out DIR   (RUN_DIR's adversary turns, new defender)
    redgym train {ipo,grpo,ppo,sft} --config FILE --out DIR          (--resume DIR to continue)
    redgym experiment --config configs/experiments/main.yaml --out DIR   (rerun the same line to resume)
    redgym compare DIR [DIR ...] --out OUT
    redgym explore / establish / exploit --config FILE --out DIR          (E3, one step each)
    redgym pipeline e3 --config configs/e3_demo.yaml --out DIR            (E3 end to end, resumable)
    redgym guard train --stage sft --out DIR                              (a reasoning guard, LoRA SFT)
    redgym guard train --stage dpo --guard_model DIR/guard --out DIR2     (then DPO on reasoning quality)
    redgym guard eval --out DIR [--guard_model DIR/guard]                 (guard F1 beside its baselines)
    redgym docs --check | --write                                         (docs pages' field tables, from the code)

Any config field can be overridden as ``--field value``. Bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from redgym.config import ConfigFields, RunConfig, load_config, parse_overrides
from redgym.docs_fields import fields_epilog, keys_epilog, own_fields_epilog, sync
from redgym.errors import RedgymError, RequestBudgetSpent, ServerError, TrainingStopped
from redgym.guard.evaluate import GuardConfig
from redgym.guard.train import GuardTrainConfig
from redgym.pipelines.establish import EstablishConfig
from redgym.pipelines.exploit import ExploitKeys
from redgym.pipelines.explore import ExploreConfig
from redgym.runfolder import FolderInUse, hold_folder
from redgym.trainers.checkpoints import latest_checkpoint
from redgym.trainers.registry import TRAINERS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; we want one line and exit 2
        raise RedgymError(message)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import huggingface_hub
    import transformers

    transformers.logging.set_verbosity_error()
    huggingface_hub.utils.logging.set_verbosity_error()  # offline hub retries would print multi-line warnings
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("redgym").setLevel(logging.INFO)
    # accelerate's save_state drops the output layer's tensor, which the embedding shares (tied weights), and warns
    # at every checkpoint; load_state fills the same model, whose tie holds, so the warning says nothing to act on
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)


def config_command(sub, name: str, text: str, epilog: str, out: str, resumable: bool = False):
    """A command that reads config fields: ``--config FILE``, ``--out DIR`` (or, ``resumable``, ``--resume DIR``
    instead), ``--quiet``, and the fields listed in its ``--help`` (``epilog``)."""
    cmd = sub.add_parser(name, help=text, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog)
    cmd.add_argument("--config", type=Path, help="YAML file setting config fields")
    if resumable:
        where = cmd.add_mutually_exclusive_group(required=True)
        where.add_argument("--out", type=Path, help=out)
        where.add_argument("--resume", type=Path, help="run folder to continue from its latest checkpoint")
    else:
        cmd.add_argument("--out", type=Path, required=True, help=out)
    cmd.add_argument("--quiet", action="store_true", help="no progress bars")
    return cmd


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="redgym", description="Learned red-teaming of language models.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    ev = config_command(
        sub,
        "eval",
        "evaluate an adversary against the defender; writes a report",
        fields_epilog(RunConfig),
        "run folder to write the report into",
    )
    ev.add_argument(
        "--replay",
        type=Path,
        default=None,
        help="run folder whose recorded adversary turns (samples.jsonl) are put to this defender, none generated",
    )
    tr = sub.add_parser("train", help="train an adversary")
    trainers = tr.add_subparsers(dest="trainer", required=True, parser_class=_Parser)
    for name, (cls, _) in TRAINERS.items():
        config_command(trainers, name, f"{name} trainer", fields_epilog(cls), "new run folder", resumable=True)
    ex = sub.add_parser(
        "experiment",
        help="arms x seeds, each a run folder, then comparison.md (resumable)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=keys_epilog("experiment-keys", "experiment YAML keys (the command line takes no fields)"),
    )
    ex.add_argument("--config", type=Path, required=True, help="experiment YAML (arms, seeds, shared settings)")
    ex.add_argument("--out", type=Path, required=True, help="experiment folder; finished arms in it are skipped")
    ex.add_argument("--only", default=None, help="comma list of arm names to run now (the grid in parts)")
    ex.add_argument(
        "--seeds", default=None, help="comma list of the grid's seeds to run now (parts may run at once into --out)"
    )
    ex.add_argument(
        "--reuse",
        type=Path,
        action="append",
        default=[],
        help="an experiment folder (or archive) whose finished cells with this grid's configs are copied, not rerun "
        "(repeatable)",
    )
    ex.add_argument("--quiet", action="store_true", help="no progress bars")
    rs = sub.add_parser(
        "rescore",
        help="score finished evaluations again with second detectors (every report.json under the folders), "
        "generating nothing",
    )
    rs.add_argument("dirs", type=Path, nargs="+", help="run or experiment folders")
    rs.add_argument(
        "--eval_scorers",
        default=",".join(RunConfig().eval_scorers),
        help="comma list of scorer names (default %(default)s); the run's training scorer is skipped",
    )
    ar = sub.add_parser(
        "archive",
        help="copy an experiment folder without its generated text (numbers, ids and per-turn scores only), small "
        "enough to commit: compare tables it, and experiment --out on a copy of it runs only the unfinished cells",
    )
    ar.add_argument("src", type=Path, help="experiment (or evaluation) folder")
    ar.add_argument("dest", type=Path, help="the archive (an earlier archive of the same folder is updated)")
    _add_e3_commands(sub)
    _add_guard_commands(sub)
    cp = sub.add_parser("compare", help="compare experiment folders: comparison.md, comparison.csv, plots")
    cp.add_argument("dirs", type=Path, nargs="+", help="experiment folders")
    cp.add_argument("--out", type=Path, default=None, help="where to write (default: the first folder)")
    cp.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="also publish: comparison.md to docs/results/NAME.md beside this README, its rows into the README's "
        "results table (block <!-- results:headline -->; NAME from --section)",
    )
    cp.add_argument("--section", default=None, help="README block name (default: the first folder's name)")
    dc = sub.add_parser("docs", help="the config field tables of the docs pages, rendered from the config classes")
    what = dc.add_mutually_exclusive_group(required=True)
    what.add_argument("--check", action="store_true", help="exit 2 when a page's table differs from the code")
    what.add_argument("--write", action="store_true", help="rewrite the tables that differ (make docs)")
    dc.add_argument("--docs", type=Path, default=Path("docs"), help="folder of the docs pages")
    return p


def _add_e3_commands(sub) -> None:
    """explore, establish, exploit and pipeline e3, each with its fields in --help."""
    steps: tuple[tuple[str, str, type[ConfigFields]], ...] = (
        ("explore", "E3 step 1: sample, embed and cluster what a target says; a subsample to label", ExploreConfig),
        ("establish", "E3 step 2: labels -> a classifier, saved as a scorer", EstablishConfig),
    )
    for name, text, step_cls in steps:
        config_command(sub, name, text, fields_epilog(step_cls), "output folder")
    xp = sub.add_parser(
        "exploit",
        help="E3 step 3: train an adversary against a classifier with diversity terms",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=fields_epilog(ExploitKeys, "exploit's own keys (in the YAML, or --key value)")
        + "\n\n"
        + fields_epilog(
            TRAINERS["grpo"][0],
            "and the fields of its trainer, here the default grpo (another's: redgym train NAME --help)",
        ),
    )
    xp.add_argument("--config", type=Path, help="YAML: trainer, classifier and the trainer's fields")
    xp.add_argument("--out", type=Path, required=True, help="run folder (rerun to resume)")
    xp.add_argument("--quiet", action="store_true", help="no progress bars")
    pl = sub.add_parser("pipeline", help="multi-step jobs")
    pipes = pl.add_subparsers(dest="pipeline", required=True, parser_class=_Parser)
    e3 = pipes.add_parser(
        "e3",
        help="explore -> establish -> exploit into one folder and report.md (resumable)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(
            [
                "the YAML has three sections; the command line takes no fields",
                own_fields_epilog(
                    ExploreConfig,
                    "explore: redgym explore's fields (its own, with the model, rollout, scorer, prompt, device parts)",
                ),
                own_fields_epilog(
                    EstablishConfig,
                    "establish: redgym establish's fields (its own, with the scorer and device parts; samples is set)",
                ),
                keys_epilog(
                    "e3-exploit-keys", "exploit: a redgym experiment of arms untuned, exploit, exploit_diverse"
                ),
            ]
        ),
    )
    e3.add_argument("--config", type=Path, required=True, help="YAML with explore, establish and exploit sections")
    e3.add_argument("--out", type=Path, required=True, help="pipeline folder")
    e3.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="also publish the report and the exploit tables to docs/results/e3*, its rows into this README's "
        "results table",
    )
    e3.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_guard_commands(sub) -> None:
    """guard eval, train and report, each with its fields in --help."""
    gd = sub.add_parser("guard", help="a reasoning safety classifier")
    gsub = gd.add_subparsers(dest="guard_command", required=True, parser_class=_Parser)
    config_command(
        gsub,
        "eval",
        "F1 of the guard and the baselines on held-out requests",
        fields_epilog(GuardConfig),
        "output folder",
    )
    gt = config_command(
        gsub,
        "train",
        "train a guard (LoRA SFT on reasoning + label, then DPO on reasoning quality)",
        fields_epilog(GuardTrainConfig),
        "new run folder",
        resumable=True,
    )
    gt.add_argument(
        "--stage",
        choices=["sft", "dpo"],
        default="sft",
        help="sft: reasoning + label, loss on the answer; dpo: reasoning quality, from an SFT guard",
    )
    gr = gsub.add_parser(
        "report",
        help="one table of the guard loop (F1, quality, attack success with and without "
        "the guard) from its run folders",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=keys_epilog("guard-report-keys", "YAML: rows, a list of mappings with these keys"),
    )
    gr.add_argument("--config", type=Path, required=True, help="YAML listing rows: {name, eval, asr, redteam}")
    gr.add_argument("--out", type=Path, required=True, help="folder for report.md")
    gr.add_argument("--readme", type=Path, default=None, help="also fill this README's block <!-- results:guard -->")


def refuse_overrides(overrides: dict[str, str], why: str) -> None:
    """One line for config fields given to a command that takes none on its command line."""
    if overrides:
        raise RedgymError(f"{why} (got {', '.join('--' + k for k in overrides)})")


def cmd_eval(args, overrides: dict[str, str]) -> int:
    from redgym.eval.evaluate import evaluate

    cfg = load_config(RunConfig, args.config, overrides)
    if args.replay is not None:
        from redgym.eval.evaluate import evaluate_replay

        report = evaluate_replay(cfg, args.replay, args.out, progress=not args.quiet)
    else:
        report = evaluate(cfg, args.out, progress=not args.quiet)
    m = report["metrics"]
    print(
        f"defender_toxicity {m['defender_toxicity']['value']:.4f}  "
        f"attack_success_rate {m['attack_success_rate']['value']:.4f}  "
        f"adversary_nll {m['adversary_nll']['value']:.3f}"
    )
    print(f"report: {args.out / 'report.md'}")
    return 0


def cmd_train(args, overrides: dict[str, str]) -> int:
    cls, train_fn = TRAINERS[args.trainer]
    if args.resume is not None:
        saved = args.resume / "config.yaml"
        if not saved.exists():
            raise RedgymError(f"cannot resume: {saved} not found (was {args.resume} made by redgym train?)")
        cfg = load_config(cls, args.config or saved, overrides)
        out, resume = args.resume, True
    else:
        cfg = load_config(cls, args.config, overrides)
        out, resume = args.out, False
        if (out / "checkpoints").exists():
            raise RedgymError(f"{out} already holds a training run; use --resume {out} or another --out")
    metrics = train_fn(cfg, out, resume=resume, progress=not args.quiet)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under accelerate launch: the main process reports and evaluates
        return 0
    print(
        "final step: "
        + "  ".join(
            f"{k} {v:.4g}"
            for k, v in metrics.items()
            if k.startswith(("reward/reward", "loss/", "pairs/count", "sys/"))
        )
    )
    if cfg.eval_after:
        from redgym.eval.evaluate import evaluate_run

        report = evaluate_run(out, progress=not args.quiet)
        d = report["differences"]["defender_toxicity"]
        print(f"defender_toxicity trained - untuned {d['value']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]")
        for label, det in ((report.get("headline") or {}).get("detectors") or {}).items():
            r = det["defender_toxic_rate"]
            print(
                f"replies flagged by {label} (second detector) {det['rates'][0]:.1%} -> {det['rates'][1]:.1%}, "
                f"trained - untuned {r['value']:+.4f} [{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}]"
            )
        print(f"report: {out / 'report.md'}")
    return 0


def cmd_experiment(args, overrides: dict[str, str]) -> int:
    from redgym.experiments.runner import run_experiment

    refuse_overrides(overrides, "experiment: set fields in the experiment YAML, not on the command line")
    only = [a.strip() for a in args.only.split(",")] if args.only else None
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        raise RedgymError(f"--seeds takes a comma list of integers, got {args.seeds!r}") from None
    out = run_experiment(args.config, args.out, only=only, progress=not args.quiet, seeds=seeds, reuse=args.reuse)
    print(f"comparison: {out / 'comparison.md'}")
    return 0


def cmd_archive(args, overrides: dict[str, str]) -> int:
    from redgym.experiments.archive import archive_experiment

    refuse_overrides(overrides, "archive takes two folders only")
    cells = archive_experiment(args.src, args.dest)
    print(f"archived {len(cells)} evaluations of {args.src} to {args.dest} (no generated text: scores.jsonl)")
    return 0


def cmd_rescore(args, overrides: dict[str, str]) -> int:
    from redgym.eval.evaluate import rescore_run

    refuse_overrides(overrides, "rescore takes --eval_scorers only")
    names = [n.strip() for n in args.eval_scorers.split(",") if n.strip()]
    if not names:
        raise RedgymError("rescore: --eval_scorers names no scorer")
    folders = sorted({p.parent for d in args.dirs for p in Path(d).rglob("report.json")})
    if not folders:
        raise RedgymError(f"rescore: no report.json under {', '.join(map(str, args.dirs))}")
    done = 0
    for folder in folders:
        try:
            with hold_folder(folder, "rescore"):
                rescore_run(folder, names)
            done += 1
        except FolderInUse as e:
            print(f"{folder}: skipped ({e})", file=sys.stderr)
    print(f"rescored {done} of {len(folders)} evaluations with {', '.join(names)}")
    return 0


def cmd_compare(args, overrides: dict[str, str]) -> int:
    from redgym.experiments.compare import compare

    refuse_overrides(overrides, "compare takes no config fields")
    out = args.out or args.dirs[0]
    compare(args.dirs, out)
    print(f"comparison: {out / 'comparison.md'}")
    if args.readme is not None:
        from redgym.experiments.readme import publish

        publish(out, args.readme, args.section or args.dirs[0].name)
        print(f"published into {args.readme}")
    return 0


def cmd_explore(args, overrides: dict[str, str]) -> int:
    from redgym.pipelines.explore import explore

    s = explore(load_config(ExploreConfig, args.config, overrides), args.out, progress=not args.quiet)
    print(
        f"{s['n_samples']} samples, {s['clusters']} clusters, {s['subsample']} to label in "
        f"{args.out / 'samples.csv'} ({s['time_total_s']} s)"
    )
    return 0


def cmd_establish(args, overrides: dict[str, str]) -> int:
    from redgym.pipelines.establish import establish

    r = establish(load_config(EstablishConfig, args.config, overrides), args.out, progress=not args.quiet)
    f1 = r["heldout"]["macro_f1"]
    print(f"held-out macro-F1 {f1['value']:.3f} [{f1['ci95'][0]:.3f}, {f1['ci95'][1]:.3f}]  scorer: {r['scorer']}")
    return 0


def cmd_exploit(args, overrides: dict[str, str]) -> int:
    from redgym.pipelines.exploit import exploit

    report = exploit(args.config, args.out, overrides, progress=not args.quiet)
    d = report["differences"]["defender_toxicity"]
    print(f"harm score of the defender, trained - untuned {d['value']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]")
    print(f"report: {args.out / 'report.md'}")
    return 0


def cmd_pipeline(args, overrides: dict[str, str]) -> int:
    from redgym.pipelines.e3 import run_e3

    refuse_overrides(overrides, "pipeline: set fields in the pipeline YAML, not on the command line")
    print(f"report: {run_e3(args.config, args.out, progress=not args.quiet)}")
    if args.readme is not None:
        from redgym.pipelines.e3 import publish_e3

        print(f"published: {publish_e3(args.out, args.readme)} and {args.readme}")
    return 0


def cmd_guard(args, overrides: dict[str, str]) -> int:
    from redgym.guard.evaluate import evaluate_guard

    if args.guard_command == "report":
        from redgym.guard.report import guard_report

        print(f"guard report: {guard_report(args.config, args.out, args.readme)}")
        return 0
    if args.guard_command == "train":
        from redgym.guard.train import train_guard

        out = args.resume or args.out
        if args.resume is None and (out / "checkpoints").exists():
            raise RedgymError(f"{out} already holds a guard run; use --resume {out} or another --out")
        config = args.config or (out / "config.yaml" if args.resume is not None else None)
        metrics = train_guard(
            load_config(GuardTrainConfig, config, overrides),
            out,
            args.stage,
            resume=args.resume is not None,
            progress=not args.quiet,
        )
        loss = metrics.get(f"loss/{args.stage}", float("nan"))
        print(f"final step: loss/{args.stage} {loss:.4g}; guard: {out / 'guard'}")
        return 0

    report = evaluate_guard(load_config(GuardConfig, args.config, overrides), args.out, progress=not args.quiet)
    f1 = report["systems"]["guard"]["f1"]
    print(
        f"guard F1 (harmful) {f1['value']:.3f} [{f1['ci95'][0]:.3f}, {f1['ci95'][1]:.3f}], unparseable "
        f"{report['systems']['guard']['unparseable']['share']:.3f}; report: {args.out / 'guard_report.md'}"
    )
    return 0


def cmd_docs(args, overrides: dict[str, str]) -> int:
    refuse_overrides(overrides, "docs takes no config fields")
    stale = sync(args.docs, write=args.write)
    if args.write:
        print(f"rewrote {len(stale)} page(s): {', '.join(map(str, stale)) or 'none needed it'}")
        return 0
    if stale:
        raise RedgymError(f"{stale[0]}: a fields block differs from the config classes; run make docs")
    print(f"docs fields blocks up to date in {args.docs}")
    return 0


COMMANDS = {
    "docs": cmd_docs,
    "guard": cmd_guard,
    "explore": cmd_explore,
    "establish": cmd_establish,
    "exploit": cmd_exploit,
    "pipeline": cmd_pipeline,
    "eval": cmd_eval,
    "train": cmd_train,
    "experiment": cmd_experiment,
    "compare": cmd_compare,
    "rescore": cmd_rescore,
    "archive": cmd_archive,
}
# Commands that take no lock on their --out: compare and docs write no run folder of their own (compare reads a
# running experiment's finished cells); experiment and rescore hold each cell's folder instead, so parts of a grid
# run side by side. Every other command holds its --out / --resume folder while it runs (runfolder.hold_folder).
UNLOCKED = ("compare", "docs", "experiment", "rescore")
# Which config class a shipped configs/<kind>_*.yaml file is read with (tests load every shipped config).
CONFIG_CLASSES: dict[str, type[RunConfig]] = {"eval": RunConfig, **{name: cls for name, (cls, _) in TRAINERS.items()}}


def main(argv: list[str] | None = None) -> int:
    try:
        args, rest = build_parser().parse_known_args(argv)
        overrides = parse_overrides(rest)
        _quiet_libraries()
        folder = getattr(args, "resume", None) or getattr(args, "out", None)
        # under accelerate launch every process runs this line; the main one (RANK 0) holds the folder for all
        if args.command in UNLOCKED or folder is None or os.environ.get("RANK", "0") != "0":
            return COMMANDS[args.command](args, overrides)
        with hold_folder(folder, " ".join(argv if argv is not None else sys.argv[1:])):
            return COMMANDS[args.command](args, overrides)
    except (ServerError, RequestBudgetSpent) as e:  # the input was fine: a run stopped at its last checkpoint
        again, folder = "", getattr(args, "resume", None) or getattr(args, "out", None)
        if args.command == "train" and folder is not None and latest_checkpoint(folder) is not None:
            again = f"; nothing of the failed step was trained: resume with: redgym train {args.trainer} --resume "
            again += str(folder)
        elif args.command in ("experiment", "pipeline"):
            again = "; rerun the same command: finished parts are skipped and this training resumes"
        print(f"redgym: error: {e}{again}", file=sys.stderr)
        return 2
    except RedgymError as e:
        print(f"redgym: error: {e}", file=sys.stderr)
        return 2
    except TrainingStopped as e:  # SIGINT/SIGTERM: the step finished and its checkpoint is saved
        if args.command == "train":
            again = f"resume with: redgym train {args.trainer} --resume {e.out}"
        elif args.command == "guard":
            again = f"resume with: redgym guard train --stage {args.stage} --resume {e.out}"
        else:
            again = "rerun the same command: finished parts are skipped and this training resumes"
        print(f"redgym: {e}; {again}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("redgym: interrupted", file=sys.stderr)
        return 130
