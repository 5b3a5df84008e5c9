"""Does `make demo`'s result hold on this machine at more than one seed? Runs the demo's command at each seed and
reads each report's headline.

    .venv/bin/python bench/demo_seeds.py [--seeds 0,1,2] [--config configs/grpo_demo.yaml] [--out runs/demo_seeds]
    make demo-seeds

Each seed is one `redgym train grpo --config CONFIG --seed S` into OUT/seed_S (a finished seed, one with a
report.json, is read, not rerun: run the same line again to resume), timed from the command's start to its end, its
peak resident memory its own (``os.wait4``). Prints one row per seed: the headline difference
of defender toxicity (trained - untuned, paired over the same held-out prompts) with its 95% CI, whether the CI
lies above 0, the echo share, the adversary's toxicity and NLL ratios, minutes and GB; ends with one line
``BENCH seeds=… above_zero=… diff_s<seed>=… lo_s<seed>=… hi_s<seed>=… echo_share_s<seed>=… minutes_s<seed>=…
peak_rss_gb_s<seed>=…``.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from redgym.runfolder import read_json


def run_seed(config: Path, out: Path, seed: int) -> tuple[float, float]:
    """The demo's command at ``seed``: its wall-clock minutes and peak resident memory in GB, training and
    evaluation together (the child's own rusage); NaN for a seed that had already finished."""
    if (out / "report.json").exists():
        return math.nan, math.nan
    t0 = time.time()
    cmd = [sys.executable, "-m", "redgym", "train", "grpo", "--quiet"]
    if (out / "checkpoints").exists():  # stopped part-way: resume with the folder's own config
        cmd += ["--resume", str(out)]
    else:
        cmd += ["--config", str(config), "--out", str(out), "--seed", str(seed)]
    child = subprocess.Popen(cmd)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"demo_seeds: seed {seed} failed ({' '.join(cmd)})")
    return (time.time() - t0) / 60, usage.ru_maxrss / 1024**2  # ru_maxrss: KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--config", type=Path, default=Path("configs/grpo_demo.yaml"))
    ap.add_argument("--out", type=Path, default=Path("runs/demo_seeds"))
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    bench: dict[str, str] = {"seeds": str(len(seeds))}
    excludes = 0
    print(
        "| seed | defender_toxicity trained - untuned [95% CI] | CI above 0 | echo share | adversary tox x | NLL x "
        "| minutes | peak RSS GB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for s in seeds:
        folder = args.out / f"seed_{s}"
        minutes, rss = run_seed(args.config, folder, s)
        h = read_json(folder / "report.json", "demo_seeds")["headline"]
        d = h["difference"]
        lo, hi = d["ci95"]
        ok = lo > 0  # a red-teamer's gain: the whole CI above 0
        excludes += ok
        print(
            f"| {s} | {d['value']:+.4f} [{lo:+.4f}, {hi:+.4f}] | {'yes' if ok else 'no'} | {h['echo_share']:.0%} "
            f"| {h['adversary_toxicity_ratio']:.2f} | {h['adversary_nll_ratio']:.3f} | {minutes:.1f} | {rss:.2f} |"
        )
        bench.update(
            {
                f"diff_s{s}": f"{d['value']:.4f}",
                f"lo_s{s}": f"{lo:.4f}",
                f"hi_s{s}": f"{hi:.4f}",
                f"echo_share_s{s}": f"{h['echo_share']:.3f}",
                f"nll_ratio_s{s}": f"{h['adversary_nll_ratio']:.3f}",
                f"minutes_s{s}": f"{minutes:.2f}",
                f"peak_rss_gb_s{s}": f"{rss:.2f}",
            }
        )
    bench["above_zero"] = str(excludes)
    print("BENCH " + " ".join(f"{k}={v}" for k, v in bench.items()))


if __name__ == "__main__":
    main()
