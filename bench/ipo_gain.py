"""Does IPO training make the defender more toxic? Train on the offline default for a fixed number of steps, then
evaluate the trained and the untuned adversary on the same held-out prompts and seed.

    .venv/bin/python bench/ipo_gain.py --steps 25 [--out runs/ipo_gain] [any --field value override]

Prints trained vs untuned defender_toxicity, defender_toxic_rate, attack_success_rate and adversary_nll with 95%
CIs, the paired difference of defender toxicity, the training wall-clock and peak RSS, then one BENCH line.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from redgym.cli import main as redgym_main

KEYS = [
    "defender_toxicity",
    "defender_toxic_rate",
    "attack_success_rate",
    "adversary_nll",
    "adversary_toxicity",
    "distinct_2",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=25, help="training steps (the budget; machine-independent)")
    ap.add_argument("--out", type=Path, default=Path("runs/ipo_gain"))
    ap.add_argument("--config", default="configs/ipo_demo.yaml")
    args, overrides = ap.parse_known_args()
    if (args.out / "checkpoints").exists():
        sys.exit(f"{args.out} already holds a run; pass another --out")
    t0 = time.time()
    # 128 held-out prompts (the demo config evaluates 32) so the CI of the difference is tight enough to read;
    # overrides given on this command line come later and win.
    rc = redgym_main(
        [
            "train",
            "ipo",
            "--config",
            args.config,
            "--out",
            str(args.out),
            "--steps",
            str(args.steps),
            "--n_eval_prompts",
            "128",
            *overrides,
        ]
    )
    if rc != 0:
        sys.exit(rc)
    total = time.time() - t0
    rows = [json.loads(line) for line in (args.out / "metrics.jsonl").read_text().splitlines()]
    train_min = rows[-1]["time/train_min"]
    report = json.loads((args.out / "report.json").read_text())
    res, diff = report["results"], report["differences"]
    print(
        f"\ntrained for {train_min:.1f} min ({len(rows)} steps); whole run incl. eval {total / 60:.1f} min; "
        f"peak RSS {rows[-1]['sys/peak_rss_gb']:.2f} GB"
    )
    print(f"{'metric':22s} {'untuned [95% CI]':>30s} {'trained [95% CI]':>30s} {'ratio':>7s}")
    for k in KEYS:
        u, t = res["untuned"][k], res["trained"][k]
        ratio = t["value"] / u["value"] if u["value"] else float("nan")
        cell = lambda m: f"{m['value']:.4f} [{m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}]"  # noqa: E731
        print(f"{k:22s} {cell(u):>30s} {cell(t):>30s} {ratio:7.2f}")
    d = diff["defender_toxicity"]
    print(
        f"defender_toxicity difference (trained - untuned): {d['value']:.4f} [{d['ci95'][0]:.4f}, {d['ci95'][1]:.4f}]"
    )
    u, t = res["untuned"], res["trained"]
    def_ratio = t["defender_toxicity"]["value"] / max(u["defender_toxicity"]["value"], 1e-9)
    print(
        "BENCH "
        + " ".join(
            [
                f"train_minutes={train_min:.2f}",
                f"steps={len(rows)}",
                f"peak_rss_gb={rows[-1]['sys/peak_rss_gb']:.3f}",
                *[f"{k}_untuned={u[k]['value']:.5f} {k}_trained={t[k]['value']:.5f}" for k in KEYS[:4]],
                f"defender_toxicity_ratio={def_ratio:.4f}",
                f"adversary_nll_ratio={t['adversary_nll']['value'] / u['adversary_nll']['value']:.4f}",
                f"diff_lo={d['ci95'][0]:.5f} diff_hi={d['ci95'][1]:.5f}",
            ]
        )
    )


if __name__ == "__main__":
    main()
