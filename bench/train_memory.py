"""Peak memory and time of one IPO training micro-step (policy forward+backward and reference forward on
pairs of long depth-3 contexts) for micro-batch sizes and gradient checkpointing, each in a fresh process
(peak RSS is per process).

    .venv/bin/python bench/train_memory.py [--pairs 8 --ctx 230 --cont 24]

Prints, per setting, the RSS after loading, the peak RSS during training and seconds per pair, then one BENCH
line with the peaks and their ratio to the micro-batch-8 baseline.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

SETTINGS = {"mb8": (8, False), "mb4": (4, False), "mb2": (2, False), "mb8_ckpt": (8, True), "mb4_ckpt": (4, True)}


def one(name: str, pairs: int, ctx_len: int, cont_len: int) -> dict:
    import torch

    from redgym.trainers.ipo import IPOConfig, pair_logps
    from redgym.trainers.memory import peak_rss_gb
    from redgym.trainers.policy import build_policy

    mb, ckpt = SETTINGS[name]
    torch.manual_seed(0)
    cfg = IPOConfig(micro_batch_size=mb, gradient_checkpointing=ckpt)
    policy = build_policy(cfg, cfg.adversary_model)
    rss_loaded = peak_rss_gb()
    vocab = policy.model.config.vocab_size
    ctx = torch.randint(100, vocab, (pairs, ctx_len)).tolist()
    conts = torch.randint(100, vocab, (2 * pairs, cont_len)).tolist()
    pad = policy.tokenizer.pad_token_id
    policy.model.train()
    t0 = time.time()
    per_mb = max(1, mb // 2)
    for rep in range(2):
        for i in range(0, pairs, per_mb):
            c = ctx[i : i + per_mb]
            n = len(c)
            pol = pair_logps(policy.model, c, conts[i : i + n], conts[pairs + i : pairs + i + n], pad)
            pol.sum().backward()
        if rep == 0:
            t0 = time.time()  # the first pass warms up; time the second
    return {
        "rss_loaded_gb": rss_loaded,
        "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "s_per_pair": (time.time() - t0) / pairs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=230, help="context tokens (a depth-3 node of a 60-word prompt)")
    ap.add_argument("--cont", type=int, default=24)
    ap.add_argument("--one", choices=list(SETTINGS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.pairs, args.ctx, args.cont)))
        return
    res = {}
    for name in SETTINGS:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                name,
                "--pairs",
                str(args.pairs),
                "--ctx",
                str(args.ctx),
                "--cont",
                str(args.cont),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        res[name] = json.loads(out.stdout.strip().splitlines()[-1])
        r = res[name]
        print(
            f"{name:9s} loaded {r['rss_loaded_gb']:.2f} GB  peak {r['peak_gb']:.2f} GB  {r['s_per_pair']:.2f} s/pair",
            flush=True,
        )
    base = res["mb8"]
    print(
        "BENCH "
        + " ".join(
            [f"{n}_peak_gb={r['peak_gb']:.3f} {n}_s_per_pair={r['s_per_pair']:.3f}" for n, r in res.items()]
            + [
                f"{n}_peak_ratio={r['peak_gb'] / base['peak_gb']:.3f} "
                f"{n}_time_ratio={r['s_per_pair'] / base['s_per_pair']:.3f}"
                for n, r in res.items()
                if n != "mb8"
            ]
        )
    )


if __name__ == "__main__":
    main()
