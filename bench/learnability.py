"""Stage A of learning: does the trainer move a clean signal fast, and stay likely?

The reward is the adversary's own toxicity (``reward_target: adversary``: exact, no defender noise). For each seed,
the trained adversary (arm ``grpo`` of the experiment config) and the untuned one are evaluated on the same
held-out prompts with the same seed; the paired difference of adversary toxicity (bootstrap over prompts) and the
NLL ratio are read from the cells' conversations.

    .venv/bin/python bench/learnability.py [--config configs/experiments/learnability.yaml] [--out DIR]

Runs (or resumes: run it again with the same --out) ``redgym experiment --only untuned,<arm>``, prints one row per
seed and ends with one line ``BENCH adversary_toxicity_ratio_s<seed>=… adversary_toxicity_ci_low_s<seed>=…
adversary_nll_ratio_s<seed>=… distinct2_s<seed>=… train_minutes_s<seed>=… …``. Works on an archive of the folder too
(``redgym archive``), which it then cannot resume; one under the repository's ``results/`` (a committed archive)
is only read, so that nothing is written into it.
"""

import argparse
import logging
import time
from pathlib import Path

from redgym.errors import RedgymError
from redgym.eval.metrics import paired_difference
from redgym.experiments.archive import conversations_file
from redgym.experiments.runner import load_experiment, run_experiment
from redgym.rollout.records import Conversation
from redgym.runfolder import read_json, read_jsonl


def cell_conversations(folder: Path) -> list[Conversation]:
    """A cell's conversations: its samples.jsonl, or an archive's scores.jsonl (the same, without the text)."""
    return [
        Conversation.from_json(r) for r in read_jsonl(conversations_file(folder)[0], "learnability", "an eval cell")
    ]


def seed_row(root: Path, arm: str, baseline: str, seed: int, n_boot: int, threshold: float) -> dict:
    """Trained (``arm``) vs untuned (``baseline``) at one seed: ratios of the means and the paired difference."""
    t_dir, u_dir = root / arm / f"seed_{seed}", root / baseline / f"seed_{seed}"
    t_res = read_json(t_dir / "report.json", "learnability")["results"][arm]
    u_res = read_json(u_dir / "report.json", "learnability")["results"][baseline]
    diff = paired_difference(cell_conversations(u_dir), cell_conversations(t_dir), n_boot, seed, threshold)
    steps = read_jsonl(t_dir / "metrics.jsonl", "learnability", "a training cell")
    ratio = lambda k: t_res[k]["value"] / u_res[k]["value"]  # noqa: E731
    return {
        "seed": seed,
        "tox_untuned": u_res["adversary_toxicity"]["value"],
        "tox_trained": t_res["adversary_toxicity"]["value"],
        "tox_ratio": ratio("adversary_toxicity"),
        "tox_diff": diff["adversary_toxicity"]["value"],
        "tox_ci": diff["adversary_toxicity"]["ci95"],
        "nll_ratio": ratio("adversary_nll"),
        "def_ratio": ratio("defender_toxicity"),
        "def_diff": diff["defender_toxicity"]["value"],
        # a policy collapsed onto a few utterances passes a toxicity bar too: its distinct bigrams say so
        "distinct2_untuned": u_res["distinct_2"]["value"],
        "distinct2_trained": t_res["distinct_2"]["value"],
        "def_ci": diff["defender_toxicity"]["ci95"],
        "train_min": steps[-1]["time/train_min"],
        "steps": len(steps),
        "kl": steps[-1]["objective/kl"],
        "peak_rss_gb": steps[-1]["sys/peak_rss_gb"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=Path("configs/experiments/learnability.yaml"))
    ap.add_argument("--out", type=Path, default=Path("runs/learnability"))
    ap.add_argument("--arm", default="grpo", help="the trained arm measured against the baseline arm")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("redgym").setLevel(logging.INFO)
    exp = load_experiment(args.config)
    if args.arm not in {a.name for a in exp.arms}:
        raise SystemExit(f"learnability: {args.config} has no arm {args.arm!r}")
    t0 = time.time()
    committed = Path(__file__).resolve().parents[1] / "results"
    if committed in args.out.resolve().parents:  # a committed archive is read as it is, never resumed into
        print(f"{args.out}: a committed archive (results/), read without running anything")
    else:
        try:
            run_experiment(args.config, args.out, only=[exp.baseline_arm, args.arm])
        except RedgymError as e:
            raise SystemExit(f"redgym: {e}") from None
    seeds = next(a for a in exp.arms if a.name == args.arm).seeds or exp.seeds  # an ablation may run fewer
    rows = [seed_row(args.out, args.arm, exp.baseline_arm, s, 1000, 0.5) for s in seeds]
    print(f"\n{args.arm} vs {exp.baseline_arm}, held-out adversary turns ({time.time() - t0:.0f} s this run)")
    print(
        f"{'seed':>4} {'steps':>5} {'train min':>9} {'adv tox untuned':>15} {'trained':>8} {'ratio':>6} "
        f"{'paired diff [95% CI]':>28} {'NLL ratio':>9} {'def tox ratio':>13} {'seq KL':>7} {'distinct-2':>15}"
    )
    for r in rows:
        print(
            f"{r['seed']:>4} {r['steps']:>5} {r['train_min']:>9.1f} {r['tox_untuned']:>15.4f} "
            f"{r['tox_trained']:>8.4f} {r['tox_ratio']:>6.2f} "
            f"{r['tox_diff']:>+9.4f} [{r['tox_ci'][0]:+.4f}, {r['tox_ci'][1]:+.4f}] {r['nll_ratio']:>9.3f} "
            f"{r['def_ratio']:>13.2f} {r['kl']:>7.2f} {r['distinct2_untuned']:>6.3f} -> {r['distinct2_trained']:.3f}"
        )
    print(
        "BENCH "
        + " ".join(
            f"adversary_toxicity_ratio_s{r['seed']}={r['tox_ratio']:.3f} "
            f"adversary_toxicity_ci_low_s{r['seed']}={r['tox_ci'][0]:.4f} "
            f"adversary_nll_ratio_s{r['seed']}={r['nll_ratio']:.3f} "
            f"defender_toxicity_ratio_s{r['seed']}={r['def_ratio']:.3f} "
            f"distinct2_s{r['seed']}={r['distinct2_trained']:.3f} "
            f"train_minutes_s{r['seed']}={r['train_min']:.2f}"
            for r in rows
        )
        + f" peak_rss_gb={max(r['peak_rss_gb'] for r in rows):.2f}"
    )


if __name__ == "__main__":
    main()
