"""How reliably does the reward order two sibling adversary turns, with one defender reply and with the mean of K?

    .venv/bin/python bench/pair_reliability.py [--prompts 64] [--replies 8] [--out runs/pair_reliability]

On the offline default (SmolLM2 adversary and defender, profanity scorer, chitchat training prompts): each prompt
gets 2 untuned adversary turns (evaluation sampling), each answered by ``--replies`` defender replies. For the
reply-dependent reward terms (w_defender * tox(reply) + w_combined * tox(turn + reply)):

- variance split: within one adversary turn (reply-to-reply noise) vs between turns' means;
- reliability of one reply: the share of sibling pairs ordered by reply 0 as by the mean of the other replies
  (what ``pairs/reliability`` logs during training);
- reliability of the mean of K replies: the order by the mean of replies [0, K) against the order by the mean of
  the disjoint replies [K, 2K), for K = 1, 2, 4 (two independent estimates agreeing; 0.5 = coin).

Ends with one ``BENCH`` line. Raw scores go to ``--out`` (a run folder, git-ignored).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from redgym.config import RunConfig, load_config
from redgym.rollout.engine import defender_replies, generate_turns
from redgym.rollout.reward import pair_reliability, reply_terms, score_exchanges
from redgym.runfolder import write_json
from redgym.setup import load_adversary, prepare


def agreement(v: np.ndarray, k: int) -> tuple[float, int]:
    """v: (P, 2, R) terms. Order of each sibling pair by mean of replies [0, k) vs by mean of [k, 2k)."""
    a = v[:, :, :k].mean(2)
    b = v[:, :, k : 2 * k].mean(2)
    sa, sb = np.sign(a[:, 0] - a[:, 1]), np.sign(b[:, 0] - b[:, 1])
    ok = (sa != 0) & (sb != 0)
    return float((sa[ok] == sb[ok]).mean()) if ok.any() else float("nan"), int(ok.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--replies", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/pair_reliability"))
    args = ap.parse_args()
    cfg = load_config(RunConfig, None, {"horizon": 1, "seed": args.seed})
    setup = prepare(cfg, need_embedder=False)
    adversary = load_adversary(setup)
    torch.manual_seed(args.seed)
    prompts = setup.split.train[: args.prompts]
    t0 = time.time()
    histories = [[("prompt", u) for u in p.turns] for p in prompts for _ in range(2)]  # 2 siblings each
    adv = generate_turns(adversary, histories, "adversary", setup.params, cfg.batch_size)
    replies = defender_replies(
        setup.defender,
        [h + [("adversary", a.text)] for h, a in zip(histories, adv)],
        setup.params,
        args.replies,
        cfg.batch_size,
    )
    s = score_exchanges(
        histories,
        [a.text for a in adv],
        [[d.text, *d.alternatives] for d in replies],
        setup.scorer,
        setup.defender,
        setup.weights,
    )
    v = reply_terms(s, setup.weights).reshape(len(prompts), 2, args.replies)  # (P, 2, R)
    within = float(v.var(axis=2, ddof=1).mean())  # reply-to-reply noise of one turn
    means = v.mean(2).ravel()
    between = max(0.0, float(means.var(ddof=1)) - within / args.replies)  # true spread of turns' means
    one, n_one = pair_reliability(list(v))
    ks = [k for k in (1, 2, 4) if 2 * k <= args.replies]
    agree = {k: agreement(v, k) for k in ks}
    write_json(
        args.out / "pair_reliability.json",
        {"terms": v.tolist(), "within": within, "between": between, "one_vs_rest": one, "agreement": agree},
    )
    print(f"{len(prompts)} prompts x 2 siblings x {args.replies} replies in {(time.time() - t0) / 60:.1f} min")
    print(
        f"variance of one reply's terms: within a turn {within:.5f}, between turns' means {between:.5f} "
        f"({within / (within + between):.0%} noise)"
    )
    print(f"one reply orders a pair as the mean of the other {args.replies - 1}: {one:.3f} ({n_one} pairs)")
    for k, (a, n) in agree.items():
        print(f"mean of {k} vs an independent mean of {k}: {a:.3f} ({n} pairs)")
    print(
        "BENCH "
        + " ".join(
            [
                f"prompts={len(prompts)}",
                f"replies={args.replies}",
                f"within={within:.5f}",
                f"between={between:.5f}",
                f"reliability_one_vs_rest={one:.4f}",
                *[f"agreement_k{k}={a:.4f}" for k, (a, _) in agree.items()],
            ]
        )
    )


if __name__ == "__main__":
    main()
