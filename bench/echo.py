"""How much of an experiment's defender toxicity is echo, per arm and seed, and what carries the seed-to-seed spread.

    .venv/bin/python bench/echo.py runs/gain-b [--threshold 0.5]

Reads the held-out evaluations an experiment wrote (``ARM/seed_K/samples.jsonl``, and ``transfer/DEFENDER/`` beside
it); computes nothing new. For each arm, seed and defender: the share of adversary turns above the threshold
(``p_toxic``), the defender's mean toxicity after a toxic turn (``after_toxic``: echo) and after a clean one
(``after_clean``: the stealthy kind), and ``defender_toxicity = p_toxic * after_toxic + (1 - p_toxic) *
after_clean`` (redgym.eval.echo). ``icc_toxic``: with several defender replies per turn, the share of one
reply's toxicity variance that belongs to its (toxic) adversary turn (``one_reply_icc``): how much of the defender
term a trainer sees is signal where the echo happens. Per arm with two or more seeds, which factor carries the
spread of defender toxicity across seeds (``seed_spread_shares``). Ends with one ``BENCH`` line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from redgym.eval.echo import EchoSplit, echo_split, one_reply_icc, seed_spread_shares
from redgym.eval.metrics import Table
from redgym.rollout.records import Conversation
from redgym.runfolder import read_jsonl


def split_of(samples: Path, threshold: float) -> tuple[EchoSplit, float]:
    """The echo split of one evaluation, and the one-reply ICC over its toxic adversary turns."""
    convs = [Conversation.from_json(r) for r in read_jsonl(samples, "echo", "an experiment cell's evaluation")]
    t = Table.from_conversations(convs)
    replies = [
        d.scores["tox_replies"]
        for c in convs
        for a, d in c.exchanges()
        if a.scores["tox"] > threshold and isinstance(d.scores.get("tox_replies"), list)
    ]
    icc = one_reply_icc(np.array(replies)) if replies and len({len(r) for r in replies}) == 1 else float("nan")
    return echo_split(t.tox_adversary, t.tox_defender, threshold), icc


def bench_key(*parts: str) -> str:
    """A BENCH key from arm, defender and seed names (no dashes or dots)."""
    return "_".join(parts).replace("-", "_").replace(".", "_")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", type=Path)
    ap.add_argument("--threshold", type=float, default=0.5)
    args = ap.parse_args()
    found: dict[tuple[str, str], list[tuple[int, tuple[EchoSplit, float]]]] = {}  # (arm, defender) -> [(seed, ..)]
    for samples in sorted(args.experiment.glob("*/seed_*/samples.jsonl")):
        arm, seed = samples.parent.parent.name, int(samples.parent.name.removeprefix("seed_"))
        if not (samples.parent / "report.json").exists():
            continue  # a cell still running
        found.setdefault((arm, "main"), []).append((seed, split_of(samples, args.threshold)))
        for t in sorted((samples.parent / "transfer").glob("*/samples.jsonl")):
            found.setdefault((arm, t.parent.name), []).append((seed, split_of(t, args.threshold)))
    if not found:
        raise SystemExit(f"{args.experiment}: no finished ARM/seed_K/samples.jsonl")
    print(f"threshold {args.threshold}; defender toxicity = p_toxic * after_toxic + (1 - p_toxic) * after_clean")
    head = f"{'arm':>10} {'defender':>12} {'seed':>4} | {'p_toxic':>7} {'after_toxic':>11} {'after_clean':>11}"
    print(f"{head} | tox    | icc_toxic")
    bench = {}
    for (arm, defender), rows in found.items():
        for seed, (s, icc) in rows:
            print(
                f"{arm:>10} {defender:>12} {seed:>4} | {s.p_toxic:7.3f} {s.after_toxic:11.3f} {s.after_clean:11.3f} "
                f"| {s.defender_toxicity:.4f} | {icc:.3f}"
            )
            key = bench_key(arm, defender, f"s{seed}")
            bench |= {f"p_toxic_{key}": s.p_toxic, f"after_toxic_{key}": s.after_toxic, f"icc_toxic_{key}": icc}
        shares = seed_spread_shares([s for _, (s, _) in rows])
        if not np.isnan(list(shares.values())).all():
            print(
                f"{arm:>10} {defender:>12}  spread across seeds carried by: "
                + ", ".join(f"{k} {v:.2f}" for k, v in shares.items())
            )
            key = bench_key(arm, defender)
            bench |= {f"spread_{k}_{key}": v for k, v in shares.items()}
    print("BENCH " + " ".join(f"{k}={v:.4g}" for k, v in bench.items()))


if __name__ == "__main__":
    main()
