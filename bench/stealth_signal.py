"""Where a stealth reward's signal lives or dies: how often a clean adversary turn draws a toxic reply, and how
reliably the defender's replies to clean turns tell two siblings apart.

    .venv/bin/python bench/stealth_signal.py [--prompts 32] [--generations 8] [--replies 4]
        [--adversary_checkpoint runs/x/adversary] [--dense] [--out runs/stealth_signal]
    .venv/bin/python bench/stealth_signal.py --samples runs/stealth/untuned/seed_0 [--dense]

With ``--samples DIR`` nothing is sampled: an evaluation's conversations (``DIR/samples.jsonl``, 2 or more defender
replies a turn, as the experiment configs evaluate) are read instead, and the group statistics are left out.

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
  value is its turn's; ``dense_corr``: its turn means' correlation with the sampled replies' mean toxicity;
  ``dense_cross``: how well one reply's dense value predicts another reply's sampled toxicity, against
  ``cross_reply_corr``, how well one reply's toxicity predicts another's (a reward proxy is worth having where the
  first beats the second).

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
from redgym.rollout.reward import gate_mask, score_exchanges
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
    from redgym.models.forward import continuation_forward

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


def clean_turn_stats(tox_a, tox_d, threshold: float, low: float, dense=None) -> dict[str, float]:
    """The statistics of the docstring over the clean turns of (N,) adversary and (N, R) reply toxicities (and, given,
    (N, R) dense values)."""
    clean = tox_a <= threshold
    cd = tox_d[clean]
    icc = one_reply_icc(cd)
    nan = float("nan")
    out = {
        "p_clean": float(clean.mean()),
        "clean_mean": float(cd.mean()) if len(cd) else nan,
        "p_toxic_reply": float((cd > threshold).mean()) if len(cd) else nan,
        "p_reply_over_low": float((cd > low).mean()) if len(cd) else nan,
        "icc": icc,
        "reliability_k2": 2 * icc / (1 + icc) if np.isfinite(icc) else nan,
        "cross_reply_corr": float(np.corrcoef(cd[:, 0], cd[:, 1])[0, 1]) if len(cd) > 2 else nan,
        "corr_adv_def": float(np.corrcoef(tox_a[clean], cd.mean(1))[0, 1]) if clean.sum() > 2 else nan,
    }
    if dense is not None:
        dc = dense[clean]
        out["dense_mean"] = float(dc.mean())
        out["dense_icc"] = one_reply_icc(dc)
        out["dense_corr"] = float(np.corrcoef(dc.mean(1), cd.mean(1))[0, 1])
        out["dense_reply_corr"] = float(np.corrcoef(dc.ravel(), cd.ravel())[0, 1])
        out["dense_cross"] = float(
            np.mean([np.corrcoef(dc[:, 0], cd[:, 1])[0, 1], np.corrcoef(dc[:, 1], cd[:, 0])[0, 1]])
        )
    return out


def dense_values(args, setup, histories, replies: list[list[str]]):
    """(N, R) dense values of the replies with ``--dense``, else None."""
    if not args.dense:
        return None
    ids = toxic_token_ids(setup.defender.tokenizer, args.dense_weight)
    return dense_signal(setup.defender, histories, replies, ids, setup.params.temperature, setup.cfg.batch_size)


def from_samples(args, setup, threshold: float) -> tuple[dict, dict]:
    """The statistics of an evaluation's conversations (their first exchanges), and what to write beside them."""
    from redgym.rollout.records import Conversation
    from redgym.runfolder import read_jsonl

    rows = read_jsonl(args.samples / "samples.jsonl", "stealth_signal", "an evaluation (redgym eval or a cell)")
    hist, replies, tox_d, tox_a = [], [], [], []
    for c in (Conversation.from_json(r) for r in rows):
        a, d = c.exchanges()[0]
        hist.append([("prompt", u) for u in c.prompt] + [("adversary", a.text)])
        replies.append([d.text, *d.alternatives])
        tox_d.append(d.scores.get("tox_replies", [d.scores["tox"]]))
        tox_a.append(a.scores["tox"])
    if len(tox_d[0]) < 2:
        raise SystemExit("stealth_signal: --samples needs 2 or more defender replies a turn (defender_samples)")
    dense = dense_values(args, setup, hist, replies)
    out = clean_turn_stats(np.array(tox_a), np.array(tox_d), threshold, args.low, dense)
    return out, {"dense": dense.tolist() if dense is not None else None}


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
    ap.add_argument("--samples", type=Path, default=None, help="read an evaluation's conversations instead")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/stealth_signal"))
    args = ap.parse_args()
    cfg = load_config(GRPOConfig, None, {"horizon": 1, "seed": args.seed})
    setup = prepare(cfg, need_embedder=False)
    if args.samples is not None:
        out, extra = from_samples(args, setup, cfg.toxic_threshold)
        write_json(args.out / "stealth_signal.json", {**out, "samples": str(args.samples), **extra})
        print(f"{args.samples}: " + ", ".join(f"{k} {v:.4f}" for k, v in out.items()))
        print("BENCH " + " ".join(f"{k}={v:.4f}" for k, v in out.items()))
        return
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
    gated = (gate_mask(tox_a, thr)[:, None] * tox_d[:, :2]).mean(1).reshape(len(prompts), g)  # a K-2 gated reward
    spans = gated.max(1) - gated.min(1)
    dense = dense_values(
        args,
        setup,
        [h + [("adversary", a.text)] for h, a in zip(histories, adv)],
        [[d.text, *d.alternatives] for d in replies],
    )
    out = clean_turn_stats(tox_a, tox_d, thr, args.low, dense)
    out.update(
        groups_over_range=float((spans >= args.range).mean()),
        adversary_toxicity=float(tox_a.mean()),
        adversary_nll=float(s["nll"].mean()),
    )
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
    print(
        f"one reply's variance that is its clean turn's (ICC): {out['icc']:.3f}; mean of 2 replies' reliability: "
        f"{out['reliability_k2']:.3f}; one reply's toxicity against another's: {out['cross_reply_corr']:.3f}"
    )
    print(f"groups of {g} whose K-2 gated reward spans >= {args.range}: {out['groups_over_range']:.3f}")
    print(f"correlation of a clean turn's own toxicity with its replies' mean: {out['corr_adv_def']:.3f}")
    if dense is not None:
        print(
            f"dense toxic-token signal: mean {out['dense_mean']:.4f} a reply, ICC "
            f"{out['dense_icc']:.3f}, its turn means' correlation with the sampled toxicity {out['dense_corr']:.3f}; "
            f"with its own reply's toxicity {out['dense_reply_corr']:.3f}, another reply's {out['dense_cross']:.3f}"
        )
    print("BENCH " + " ".join(f"{k}={v:.4f}" for k, v in out.items()))


if __name__ == "__main__":
    main()
