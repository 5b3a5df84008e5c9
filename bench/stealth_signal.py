"""Where a stealth reward's signal lives or dies: how often a clean adversary turn draws a toxic reply, and how
reliably the defender's replies to clean turns tell two siblings apart.

    .venv/bin/python bench/stealth_signal.py [--prompts 32] [--generations 8] [--replies 4]
        [--adversary_checkpoint runs/x/adversary] [--out runs/stealth_signal]

On the offline default (SmolLM2 adversary and defender, profanity scorer, chitchat training prompts): each training
prompt gets G adversary turns sampled as a GRPO step samples them (``train_sampling``: temperature only), each
answered by R defender replies (evaluation sampling). Over the clean turns (adversary toxicity at or below the
threshold):

- ``p_clean``: the share of adversary turns that are clean; ``clean_mean``: the defender's mean toxicity after them;
- ``p_toxic_reply``: the share of single replies to a clean turn above the threshold (what stealth success counts),
  ``p_reply_over_q``: above ``--low`` (a reply a reward can tell from the ~0.05 floor);
- ``icc``: the share of one reply's variance that belongs to its clean turn (``eval.echo.one_reply_icc``), and the
  reliability of the mean of K = 2 replies that follows from it (what a K-2 stealth reward sees of a turn);
- ``groups_over_range``: the share of G-sample groups whose gated reward (mean of 2 replies, 0 after a toxic turn)
  spans at least ``--range`` (what GRPO's ``min_group_range`` keeps);
- ``corr_adv_def``: over clean turns, the correlation of the adversary's own toxicity with its replies' mean (mild
  echo below the threshold; what an adversary budget has to hold down).

Scores of every exchange go to ``--out`` (a run folder, git-ignored). Ends with one ``BENCH`` line.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from redgym.config import load_config
from redgym.eval.echo import one_reply_icc
from redgym.rollout.engine import defender_replies, generate_turns
from redgym.rollout.reward import score_exchanges
from redgym.runfolder import write_json
from redgym.setup import load_adversary, prepare
from redgym.trainers.grpo import GRPOConfig
from redgym.trainers.policy import train_sampling


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--replies", type=int, default=4)
    ap.add_argument("--low", type=float, default=0.25, help="a reply toxicity a reward can tell from the floor")
    ap.add_argument("--range", type=float, default=0.2, help="the group reward range min_group_range keeps")
    ap.add_argument("--adversary_checkpoint", default=None, help="a trained adapter (default: the untuned adversary)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/stealth_signal"))
    args = ap.parse_args()
    cfg = load_config(GRPOConfig, None, {"horizon": 1, "seed": args.seed})
    setup = prepare(cfg, need_embedder=False)
    adversary = load_adversary(setup, args.adversary_checkpoint)
    torch.manual_seed(args.seed)
    prompts = setup.split.train[: args.prompts]
    g, r, thr = args.generations, args.replies, cfg.toxic_threshold
    t0 = time.time()
    histories = [[("prompt", u) for u in p.turns] for p in prompts for _ in range(g)]
    adv = generate_turns(adversary, histories, "adversary", train_sampling(cfg, setup.params), cfg.batch_size)
    replies = defender_replies(
        setup.defender, [h + [("adversary", a.text)] for h, a in zip(histories, adv)], setup.params, r, cfg.batch_size
    )
    s = score_exchanges(
        histories,
        [a.text for a in adv],
        [[d.text, *d.alternatives] for d in replies],
        setup.scorer,
        setup.likelihood,
        setup.weights,
    )
    tox_a, tox_d = s["tox_adversary"], s["tox_defender_replies"]  # (P*G,), (P*G, R)
    clean = tox_a <= thr
    cd = tox_d[clean]
    icc = one_reply_icc(cd)
    rel2 = 2 * icc / (1 + icc) if np.isfinite(icc) else float("nan")
    gated = (np.where(clean[:, None], tox_d, 0.0)[:, :2].mean(1)).reshape(len(prompts), g)  # a K-2 gated reward
    spans = gated.max(1) - gated.min(1)
    out = {
        "p_clean": float(clean.mean()),
        "clean_mean": float(cd.mean()) if len(cd) else float("nan"),
        "p_toxic_reply": float((cd > thr).mean()) if len(cd) else float("nan"),
        "p_reply_over_low": float((cd > args.low).mean()) if len(cd) else float("nan"),
        "icc": icc,
        "reliability_k2": rel2,
        "groups_over_range": float((spans >= args.range).mean()),
        "corr_adv_def": float(np.corrcoef(tox_a[clean], cd.mean(1))[0, 1]) if clean.sum() > 2 else float("nan"),
        "adversary_toxicity": float(tox_a.mean()),
        "adversary_nll": float(s["nll"].mean()),
    }
    write_json(
        args.out / "stealth_signal.json",
        {
            **out,
            "args": {k: str(v) for k, v in vars(args).items()},
            "tox_adversary": tox_a.tolist(),
            "tox_defender_replies": tox_d.tolist(),
            "nll": s["nll"].tolist(),
        },
    )
    n = len(adv)
    print(f"{len(prompts)} prompts x {g} adversary turns x {r} replies in {(time.time() - t0) / 60:.1f} min")
    print(f"clean adversary turns: {out['p_clean']:.3f} of {n}; the defender after them: mean {out['clean_mean']:.4f}")
    print(
        f"single replies to clean turns above {thr}: {out['p_toxic_reply']:.4f}, above {args.low}: "
        f"{out['p_reply_over_low']:.4f}"
    )
    print(f"one reply's variance that is its clean turn's (ICC): {icc:.3f}; mean of 2 replies' reliability: {rel2:.3f}")
    print(f"groups of {g} whose K-2 gated reward spans >= {args.range}: {out['groups_over_range']:.3f}")
    print(f"correlation of a clean turn's own toxicity with its replies' mean: {out['corr_adv_def']:.3f}")
    print("BENCH " + " ".join(f"{k}={v:.4f}" for k, v in out.items()))


if __name__ == "__main__":
    main()
