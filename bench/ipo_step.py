"""Time of one IPO update (``redgym.trainers.ipo.update``, step 4 of the trainer) next to its floor: the bare
forward+backward of the same sequences through the policy and a forward through the frozen reference.

Both sides get the same pairs (contexts and chosen / rejected continuations of SmolLM2-135M-Instruct token ids,
the default LoRA adversary of ``IPOConfig``), the same micro-batches (``micro_batch_size`` sequences) and the same
left-padded rows, and project only the continuation positions to the vocabulary, as the trainer does. What the
update adds on top of the floor: the log-softmax gather of the sequence log-probs, the IPO loss, the statistics,
gradient clipping and the optimizer step. Floor and update runs are interleaved and the best of the repeats is
kept. The last line is ``BENCH key=value ...`` with ratio = update seconds / floor seconds.

With ``--epochs E`` (``ipo_epochs``, as the experiments set it) the floor passes E times through the policy and
once through the reference, which does not move within a step (the update computes its log-probs once:
``ipo.reference_logps``); ``floor_ref_each_epoch_s`` is the floor that passes through it every epoch, as the update
did before, and ``ref_saving`` = 1 - floor / that floor.

    .venv/bin/python bench/ipo_step.py [--pairs 8 --ctx 160 --cont 24 --repeats 3 --epochs 4 --per-update 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from redgym.models.forward import left_padded
from redgym.models.lm import LM
from redgym.trainers.ipo import IPOConfig, PreferencePair, update
from redgym.trainers.policy import Policy
from redgym.trainers.run import start_frame


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=8, help="preference pairs in the update")
    p.add_argument("--ctx", type=int, default=160, help="context tokens per pair (a depth-3 tree node is ~150-250)")
    p.add_argument("--cont", type=int, default=24, help="tokens of each continuation (max_new_tokens)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved floor/update repeats; the best is kept")
    p.add_argument("--epochs", type=int, default=1, help="ipo_epochs: passes over the pairs in one update call")
    p.add_argument("--per-update", type=int, default=0, help="pairs_per_update: pairs an optimizer step (0 = all)")
    return p.parse_args()


def floor(
    policy: Policy, pairs: list[PreferencePair], ctx_ids: list[list[int]], per_mb: int, epochs: int, ref_each: bool
) -> float:
    """``epochs`` passes of forward+backward through the policy, and forward through the reference once (every
    pass with ``ref_each``), same micro-batches; seconds."""
    pad = policy.tokenizer.pad_token_id
    dev = next(policy.model.parameters()).device
    policy.model.train()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        for i in range(0, len(pairs), per_mb):
            mb, ctx = pairs[i : i + per_mb], ctx_ids[i : i + per_mb]
            conts = [p.chosen for p in mb] + [p.rejected for p in mb]
            ids, attn, pos = left_padded([x + c for x, c in zip(ctx + ctx, conts)], pad, dev)  # the trainer's rows
            k = len(conts[0])
            logits = policy.model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=k + 1).logits
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, -k:].flatten())
            loss.backward()
            if epoch == 0 or ref_each:
                with torch.no_grad():
                    policy.ref_model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=k + 1)
    seconds = time.perf_counter() - t0
    policy.model.zero_grad(set_to_none=True)
    return seconds


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    cfg = IPOConfig(ipo_epochs=args.epochs, pairs_per_update=args.per_update)
    t_load = time.perf_counter()
    frame = start_frame(cfg, Path(tempfile.mkdtemp()), False, cfg.adversary_model)  # the trainer's own set-up
    policy = frame.policy
    adversary = LM(policy.generation_model, policy.tokenizer, cfg.adversary_model, "plain", cfg.max_context_tokens)
    tok = policy.tokenizer
    vocab = len(tok)
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(1000, vocab, (n,), generator=g).tolist()  # noqa: E731 - ordinary word pieces
    # contexts as text, as the trainer holds them (re-encoded they come to about --ctx tokens; the mean is printed)
    contexts = [tok.decode(ids(args.ctx)) for _ in range(args.pairs)]
    ctx_ids = [adversary.encode_context(c, cfg.max_context_tokens - cfg.max_new_tokens) for c in contexts]
    pairs = [PreferencePair(c, ids(args.cont), ids(args.cont), 1.0, 0.0) for c in contexts]
    per_mb = max(1, cfg.micro_batch_size // 2)
    counters: dict = {}
    floor(policy, pairs[:per_mb], ctx_ids[:per_mb], per_mb, 1, False)  # warm-up: lazy initialisation untimed
    print(
        f"model {cfg.adversary_model} dtype={next(policy.model.parameters()).dtype} threads="
        f"{torch.get_num_threads()} pairs={args.pairs} ctx_tokens={sum(map(len, ctx_ids)) / len(ctx_ids):.0f} "
        f"cont={args.cont} micro_batch={cfg.micro_batch_size} sequences; setup {time.perf_counter() - t_load:.1f}s",
        flush=True,
    )
    floors, floors_each, updates = [], [], []
    for r in range(args.repeats):
        floors.append(floor(policy, pairs, ctx_ids, per_mb, args.epochs, False))
        floors_each.append(floor(policy, pairs, ctx_ids, per_mb, args.epochs, True))
        t0 = time.perf_counter()
        stats, _, _ = update(pairs, frame, adversary, cfg, counters, r)
        updates.append(time.perf_counter() - t0)
        assert len(stats["loss"]) == args.pairs * args.epochs and all(map(torch.isfinite, torch.tensor(stats["loss"])))
        print(
            f"  repeat {r + 1}: floor {floors[-1]:.2f}s (reference every epoch {floors_each[-1]:.2f}s)  "
            f"update {updates[-1]:.2f}s",
            flush=True,
        )
    f, fe, u = min(floors), min(floors_each), min(updates)
    print(
        f"\nfloor (fwd+bwd policy x{args.epochs}, fwd reference once) {f:.2f}s | IPO update {u:.2f}s | "
        f"ratio {u / f:.3f}"
    )
    print(
        f"BENCH ipo_update_s={u:.3f} floor_s={f:.3f} ratio={u / f:.3f} floor_ref_each_epoch_s={fe:.3f} "
        f"ref_saving={1 - f / fe:.3f} epochs={args.epochs} pairs={args.pairs} ctx={args.ctx} cont={args.cont}"
    )


if __name__ == "__main__":
    main()
