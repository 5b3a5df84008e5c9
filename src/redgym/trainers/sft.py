"""Supervised fine-tuning on the weak-supervision data: the baseline a learned red-teamer must beat.

    redgym train sft --config configs/experiments/main.yaml's sft arm (or any SFTConfig YAML) --out runs/sft

The adversary is taught the toxic rests of eliciting prompts (``data/weak.toxic_span_splits``: each taught
continuation scores above the toxicity threshold), the same data IPO's weak pairs use, with no defender in the
loop; or, with ``weak_kind: clean_opening`` (stealth), whole eliciting openings that score clean
(``data/weak.clean_openings``), each taught as the adversary's turn after a training prompt. Each step:
(1) ``prompts_per_step`` (context, target) examples; (2) mean NLL of the target given the context under the policy;
(3) update; (4) log and checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from redgym.config import _f
from redgym.data.weak import clean_openings, weak_pool
from redgym.errors import RedgymError
from redgym.models.forward import continuation_forward
from redgym.trainers.distributed import accumulate_locally, rank_share
from redgym.trainers.metrics_log import finite_or_skip
from redgym.trainers.run import Frame, end_step, finish_run, start_run
from redgym.trainers.train_config import TrainConfig


@dataclass
class SFTConfig(TrainConfig):
    weak_prompts: str = _f("rtp", "toxicity-eliciting prompts whose toxic rests are taught (any prompt source)")
    weak_kind: str = _f(
        "toxic_rest",
        "toxic_rest: the toxic rest of an eliciting prompt after its first part (ASTPrompter's weak supervision); "
        "clean_opening: a whole eliciting prompt that scores clean, taught as the adversary's turn after a training "
        "prompt (stealth: RealToxicityPrompts openings whose continuations turned toxic)",
    )

    def validate(self) -> None:
        super().validate()
        if self.weak_kind not in ("toxic_rest", "clean_opening"):
            raise RedgymError(f"config: weak_kind must be toxic_rest or clean_opening, got {self.weak_kind!r}")


def sft_update(
    f: Frame, ctx: list[list[int]], target: list[list[int]], micro_batch_size: int, counters: dict, step: int
) -> list[float]:
    """Steps 2-3 of supervised fine-tuning (this trainer's and the guard's): the mean token NLL of each target
    given its context, over all the step's target tokens, accumulated over micro batches into one optimizer step.
    Returns the micro batches' losses, whose sum is the step's mean NLL (a non-finite one is skipped, counted)."""
    model, acc, pad = f.policy.model, f.acc, f.policy.tokenizer.pad_token_id
    model.train()
    losses: list[float] = []
    n_tokens = sum(len(t) for t in target)
    with accumulate_locally(acc, model):
        for i in range(0, len(ctx), micro_batch_size):
            o = continuation_forward(model, ctx[i : i + micro_batch_size], target[i : i + micro_batch_size], pad)
            loss = -(o.logps * o.mask).sum() / n_tokens
            if not finite_or_skip(loss, counters, step):
                continue
            acc.backward(loss)
            losses.append(float(loss.detach()))
        f.optimizer_step(trained=bool(losses))
    return losses


def train(cfg: SFTConfig, out: Path, resume: bool = False, progress: bool = True) -> dict:
    """Run (or resume) SFT into ``out``; returns the final step's metrics."""
    # 0 setup: policy (LoRA), the taught examples
    run = start_run(cfg, out, resume)
    policy, adversary, setup, acc, opt = run.policy, run.adversary, run.setup, run.acc, run.opt
    if cfg.weak_kind == "clean_opening":  # (training prompt's history, opening): said where a conversation stands
        openings = clean_openings(cfg.weak_prompts, setup.scorer, cfg.toxic_threshold, cfg.scorer)
        train = setup.split.train
        pool = [(train[i % len(train)].turns, o) for i, o in enumerate(openings)]
    else:  # (first part, toxic rest): the first part as the prompt
        pool = [
            ((first,), rest)
            for first, rest in weak_pool(cfg.weak_prompts, setup.scorer, cfg.toxic_threshold, cfg.scorer)
        ]
    tok = policy.tokenizer
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
            adversary.encode_context(adversary.render([("prompt", u) for u in turns], "adversary"), budget)
            for turns, _ in batch
        ]
        target = [tok(rest, add_special_tokens=False)["input_ids"][: cfg.max_new_tokens] for _, rest in batch]
        # 2-3 mean token NLL of the taught rests, accumulated over micro-batches into one update
        losses = sft_update(run, ctx, target, cfg.micro_batch_size, counters, step)
        # 4 log + checkpoint
        metrics = {
            "loss/sft": float(np.sum(losses)) if losses else float("nan"),
            "train/updates": 1,
            "budget/adversary_samples": 0,  # taught examples, nothing sampled or scored
            "budget/defender_replies": 0,
            "train/lr": opt.param_groups[0]["lr"],  # in effect at the step's end
            "train/nonfinite_skipped": counters.get("nonfinite_skipped", 0),
            "time/step_s": time.time() - t0,
        }
        if end_step(run, step, metrics, {"counters": counters}):
            break
    finish_run(run)
    return metrics
