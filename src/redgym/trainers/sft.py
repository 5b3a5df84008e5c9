"""Supervised fine-tuning on the weak-supervision data: the baseline a learned red-teamer must beat.

    redgym train sft --config configs/experiments/main.yaml's sft arm (or any SFTConfig YAML) --out runs/sft

The adversary is taught the toxic rests of eliciting prompts (``data/weak.toxic_span_splits``: each taught
continuation scores above the toxicity threshold), the same data IPO's weak pairs use, with no defender in the
loop. Each step: (1) ``prompts_per_step`` (context, toxic rest) examples; (2) mean NLL of the rest given the
context under the policy; (3) update; (4) log and checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from redgym.config import _f
from redgym.data.weak import weak_pool
from redgym.models.lm import continuation_forward
from redgym.trainers.distributed import accumulate_locally, all_reduce_grads, rank_share
from redgym.trainers.metrics_log import finite_or_skip
from redgym.trainers.run import end_step, finish_run, start_run
from redgym.trainers.train_config import TrainConfig


@dataclass
class SFTConfig(TrainConfig):
    weak_prompts: str = _f("rtp", "toxicity-eliciting prompts whose toxic rests are taught (any prompt source)")


def train(cfg: SFTConfig, out: Path, resume: bool = False, progress: bool = True) -> dict:
    """Run (or resume) SFT into ``out``; returns the final step's metrics."""
    # 0 setup: policy (LoRA), the taught examples
    run = start_run(cfg, out, resume)
    policy, adversary, setup, acc, opt, sched = run.policy, run.adversary, run.setup, run.acc, run.opt, run.sched
    pool = weak_pool(cfg.weak_prompts, setup.scorer, cfg.toxic_threshold, cfg.scorer)
    tok, pad = policy.tokenizer, policy.tokenizer.pad_token_id
    budget = cfg.max_context_tokens - cfg.max_new_tokens
    counters = run.state.get("counters", {})
    metrics: dict[str, float] = {}

    for step in run.steps("sft", progress):  # each begins with Run.begin_step
        t0 = time.time()
        # 1 examples: a pure function of (seed, step), so a resumed run draws the same ones
        rng = np.random.default_rng([cfg.seed, step])
        batch = [pool[int(i)] for i in rng.integers(len(pool), size=cfg.prompts_per_step)]
        batch = rank_share(batch, acc)  # several processes: each its share of the step's examples
        ctx = [
            adversary.encode_context(adversary.render([("prompt", first)], "adversary"), budget) for first, _ in batch
        ]
        target = [tok(rest, add_special_tokens=False)["input_ids"][: cfg.max_new_tokens] for _, rest in batch]
        # 2-3 mean token NLL of the taught rests, accumulated over micro-batches into one update
        policy.model.train()
        losses = []
        n_tokens = sum(len(t) for t in target)
        with accumulate_locally(acc, policy.model):
            for i in range(0, len(batch), cfg.micro_batch_size):
                o = continuation_forward(
                    policy.model, ctx[i : i + cfg.micro_batch_size], target[i : i + cfg.micro_batch_size], pad
                )
                loss = -(o.logps * o.mask).sum() / n_tokens
                if not finite_or_skip(loss, counters, step):
                    continue
                acc.backward(loss)
                losses.append(float(loss.detach()))
            all_reduce_grads(acc, policy.model.parameters())
            if acc.sync_gradients and cfg.max_grad_norm > 0 and losses:
                acc.clip_grad_norm_(policy.model.parameters(), cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad()
        # 4 log + checkpoint
        metrics = {
            "loss/sft": float(np.sum(losses)) if losses else float("nan"),
            "train/lr": opt.param_groups[0]["lr"],  # in effect at the step's end
            "train/nonfinite_skipped": counters.get("nonfinite_skipped", 0),
            "time/step_s": time.time() - t0,
        }
        if end_step(run, step, metrics, {"counters": counters}):
            break
    finish_run(run)
    return metrics
