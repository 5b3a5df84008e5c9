"""Which dtype should the policy and its sampler use on this device? Speed and exactness, measured in one run.

    .venv/bin/python bench/sampler_dtype.py [--device cpu]

For SmolLM2-135M (LoRA r 16 on all linear layers, as the trainers build it) in float32 and bfloat16:
- sampling time of 16 contexts x 24 new tokens from the merged copy, and one training pass (forward + backward of
  8 sequences through peft);
- how much of a small adapter update survives the merge into the sampler: every LoRA weight moved by +-delta
  (delta 1e-4 and 1e-3, the size of one Adam step at those learning rates); the share of the policy's log-prob
  change (adapter on vs off, on fixed text) that the merged copy reproduces: 1 - |merged - policy| / |policy - base|.
Ends with one ``BENCH`` line of ratios.
"""

from __future__ import annotations

import argparse
import time

import torch

from redgym.config import load_config
from redgym.data.prompts import chitchat_prompts
from redgym.models.lm import LM, SamplingParams
from redgym.trainers.policy import MergedCopy, Policy, build_policy, sequence_logps
from redgym.trainers.train_config import TrainConfig


def kept_share(policy: Policy, delta: float, ctx, cont, pad) -> float:
    """Share of the adapter's log-prob change that the merged sampler reproduces, after one +-delta step on every
    LoRA weight from its initialisation (B from 0, A from its random init: the first Adam step at lr = delta)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in policy.model.named_parameters():
            if "lora_" in n:
                p.add_(delta * torch.sign(torch.randn_like(p)))
    policy.sync_sampler()
    with torch.no_grad():
        want = sequence_logps(policy.model, ctx, cont, pad)
        base = sequence_logps(policy.ref_model, ctx, cont, pad)
        got = sequence_logps(policy.sampler.model, ctx, cont, pad)
    # 1 - |sampler - policy| / |policy - base|: 1 = the sampler moved exactly as the policy did; 0 = its error is as
    # large as the whole update (rounding erased it, or replaced it with noise)
    return float(1 - (got - want).abs().sum() / (want - base).abs().sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    texts = [p.text for p in chitchat_prompts()[:24]]
    out = {}
    for dtype in ("float32", "bfloat16"):
        cfg = load_config(TrainConfig, None, {"dtype": dtype, "device": args.device})
        policy = build_policy(cfg, cfg.adversary_model)
        if policy.sampler is None:  # the trainers refuse a bf16 merged copy; build one here to measure it
            import copy

            policy.frozen_sampler = copy.deepcopy(policy.ref_model.peft_model.base_model.model)
            policy.sampler = MergedCopy(policy.frozen_sampler)
            policy.sampler.sync(policy.model)
        lm = LM(policy.sampler.model, policy.tokenizer, "smollm2-135m", "plain")
        torch.manual_seed(0)
        lm.generate(texts[:4], SamplingParams(max_new_tokens=4))  # warm-up
        t = time.time()
        lm.generate(texts[:16], SamplingParams())
        gen_s = time.time() - t
        ctx, cont = lm.encode_pairs(texts[:8], texts[8:16])
        pad = policy.tokenizer.pad_token_id
        policy.model.train()
        t = time.time()
        sequence_logps(policy.model, ctx, cont, pad).sum().backward()
        train_s = time.time() - t
        policy.model.eval()
        init = {n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora_" in n}
        kept = {}
        for d in (1e-4, 1e-3):
            with torch.no_grad():
                for n, p in policy.model.named_parameters():
                    if n in init:
                        p.copy_(init[n])
            kept[d] = kept_share(policy, d, ctx, cont, pad)
        out[dtype] = (gen_s, train_s, kept)
        print(
            f"{dtype:9s} sample 16x24 {gen_s:.2f}s  train pass 8 seqs {train_s:.2f}s  update kept by the merged "
            f"sampler: delta 1e-4 {kept[1e-4]:.1%}, 1e-3 {kept[1e-3]:.1%}"
        )
    f, b = out["float32"], out["bfloat16"]
    print(
        "BENCH "
        + " ".join(
            [
                f"device={args.device}",
                f"sample_time_fp32_over_bf16={f[0] / b[0]:.3f}",
                f"train_time_fp32_over_bf16={f[1] / b[1]:.3f}",
                f"kept_1e-4_fp32={f[2][1e-4]:.4f}",
                f"kept_1e-4_bf16={b[2][1e-4]:.4f}",
                f"kept_1e-3_fp32={f[2][1e-3]:.4f}",
                f"kept_1e-3_bf16={b[2][1e-3]:.4f}",
            ]
        )
    )


if __name__ == "__main__":
    main()
