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
  echo below the threshold; what an adversary budget has to hold down);
- with ``--dense``, a denser candidate signal: along each sampled reply, the defender's own probability of saying a
  toxic word next, summed over the reply's positions (the expected count of toxic tokens; the words are those the
  profanity scorer's linear model weighs above ``--dense-weight``, read from the installed package, each kept where
  the defender's tokenizer spells it as one token). ``dense_icc`` against ``icc``: how much of one reply's dense
  value is its turn's; ``dense_corr``: its turn means' correlation with the sampled replies' mean toxicity.

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


def toxic_token_ids(tokenizer, min_weight: float) -> list[int]:
    """Token ids of the words alt-profanity-check's linear model weighs above ``min_weight`` (its own vocabulary,
    read at run time), in the spellings the tokenizer makes one token of (with and without a leading space,
    lower case and capitalised)."""
    import os

    import joblib
    import profanity_check

    data = os.path.join(os.path.dirname(profanity_check.__file__), "data")
    vectorizer, model = joblib.load(f"{data}/vectorizer.joblib"), joblib.load(f"{data}/model.joblib")
    coef = np.mean([c.estimator.coef_.ravel() for c in model.calibrated_classifiers_], axis=0)
    words = [w for w, c in zip(vectorizer.get_feature_names_out(), coef) if c > min_weight and w.isalpha()]
    ids = set()
    for w in words:
        for spelling in (w, " " + w, w.capitalize(), " " + w.capitalize()):
            t = tokenizer(spelling, add_special_tokens=False)["input_ids"]
            if len(t) == 1:
                ids.add(t[0])
    return sorted(ids)


@torch.no_grad()
def dense_signal(lm, histories, replies: list[list[str]], tox_ids: list[int], temperature: float, batch: int):
    """(N, R) expected toxic-token counts: for each sampled reply, the defender's probability (its softmax at the
    sampling temperature) of a token in ``tox_ids`` at every position of the reply, summed."""
    from redgym.models.lm import continuation_forward

    tok, pad = lm.tokenizer, lm.tokenizer.pad_token_id
    head = lm.model.get_output_embeddings()
    sel = torch.tensor(tox_ids)
    rows = [(i, r) for i in range(len(histories)) for r in range(len(replies[i]))]
    out = np.zeros((len(histories), len(replies[0])))
    for j in range(0, len(rows), batch):
        part = rows[j : j + batch]
        ctx = [lm.encode_context(lm.render(histories[i], "defender"), 10_000) for i, _ in part]
        cont = [tok(replies[i][r], add_special_tokens=False)["input_ids"][:64] or [tok.eos_token_id] for i, r in part]
        o = continuation_forward(lm.model, ctx, cont, pad, temperature, with_hidden=True, packed=False)
        logits = head(o.hidden).float() / temperature  # (B, K, V)
        mass = (torch.logsumexp(logits[..., sel], -1) - torch.logsumexp(logits, -1)).exp() * o.mask
        for (i, r), m in zip(part, mass.sum(1).tolist()):
            out[i, r] = m
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--replies", type=int, default=4)
    ap.add_argument("--low", type=float, default=0.25, help="a reply toxicity a reward can tell from the floor")
    ap.add_argument("--range", type=float, default=0.2, help="the group reward range min_group_range keeps")
    ap.add_argument("--adversary_checkpoint", default=None, help="a trained adapter (default: the untuned adversary)")
    ap.add_argument("--dense", action="store_true", help="also measure the dense toxic-token signal")
    ap.add_argument("--dense-weight", type=float, default=1.0, help="profanity model weight a toxic word exceeds")
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
    dense = None
    if args.dense:
        ids = toxic_token_ids(setup.defender.tokenizer, args.dense_weight)
        dense = dense_signal(
            setup.defender,
            [h + [("adversary", a.text)] for h, a in zip(histories, adv)],
            [[d.text, *d.alternatives] for d in replies],
            ids,
            setup.params.temperature,
            cfg.batch_size,
        )
        dc = dense[clean]
        out["dense_tokens"] = float(len(ids))
        out["dense_mean"] = float(dc.mean())
        out["dense_icc"] = one_reply_icc(dc)
        out["dense_corr"] = float(np.corrcoef(dc.mean(1), cd.mean(1))[0, 1])
    write_json(
        args.out / "stealth_signal.json",
        {
            **out,
            "args": {k: str(v) for k, v in vars(args).items()},
            "tox_adversary": tox_a.tolist(),
            "tox_defender_replies": tox_d.tolist(),
            "nll": s["nll"].tolist(),
            "adversary_texts": [a.text for a in adv],  # a run folder (git-ignored): texts for re-analysis
            "replies": [[d.text, *d.alternatives] for d in replies],
            **({"dense": dense.tolist()} if dense is not None else {}),
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
    if dense is not None:
        print(
            f"dense toxic-token signal ({out['dense_tokens']:.0f} tokens): mean {out['dense_mean']:.4f} a reply, ICC "
            f"{out['dense_icc']:.3f}, its turn means' correlation with the sampled toxicity {out['dense_corr']:.3f}"
        )
    print("BENCH " + " ".join(f"{k}={v:.4f}" for k, v in out.items()))


if __name__ == "__main__":
    main()
