"""redgym's GRPO step next to TRL's GRPOTrainer on the same task, one after the other in one run.

The task is a redgym GRPO config (default configs/grpo_demo.yaml): each step, P prompts x G adversary samples
(SmolLM2-135M with LoRA), each answered K times by the frozen defender and scored by redgym's reward. Both sides
do the same work per step-equivalent:

- rollout: the adversary samples G continuations per prompt at the config's temperature (no top-p, top-k,
  repetition penalty; redgym's ``train_sampling``), up to ``max_new_tokens`` or one of the same stop tokens;
- reward: the same Python code on both sides (``defender_replies`` + ``score_conversations`` with the setup's
  defender, scorer, likelihood model and reward weights); TRL calls it as its reward function. The reward
  curriculum is switched off (``reward_curriculum_steps`` 0) so both use one set of weights;
- update: LoRA rank, alpha, dropout and targets, learning rate, beta (``kl_coef``, so both compute reference
  log-probs), clip range (TRL's ``epsilon`` / ``epsilon_high``), group-scaled rewards, epochs (TRL's
  ``num_iterations``) and the micro batch (TRL's ``per_device_train_batch_size``, one optimizer step per micro
  batch as redgym does) are matched: P*G/micro * epochs optimizer steps per generation. So are the precision and
  the activation memory: TRL's GRPOConfig defaults to bf16 and gradient checkpointing, redgym to its ``dtype``
  (float32 on a CPU) and ``gradient_checkpointing`` (off); TRL is given redgym's.

Timed: redgym, ``time/step_s`` of each training step (metrics.jsonl); TRL, the wall time of each block of
P*G/micro * epochs optimizer steps (one generation batch and its passes, logging included). The first step of each
side is warm-up and left out; the medians of the rest are compared. ratio = redgym / TRL (<= 0.67: redgym is at
least 1.5x faster). The last line is ``BENCH redgym_step_s=... trl_step_s=... ratio=...``.

TRL is not a redgym dependency: ``pip install -e '.[bench]'`` (``make bench-trl`` does it, then runs this).

Run: ``.venv/bin/python bench/vs_trl.py [--config configs/grpo_demo.yaml] [--steps 4] [--out runs/vs_trl]
[--set micro_batches=shuffled]`` (the demo's config takes whole groups as micro batches; TRL shuffles its generation
batch: ``--set micro_batches=shuffled`` measures redgym arranged as TRL is)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import torch

from redgym.config import load_config
from redgym.rollout.engine import defender_replies
from redgym.rollout.records import Conversation, Turn
from redgym.rollout.reward import score_conversations
from redgym.runfolder import read_jsonl
from redgym.setup import load_lm, prepare
from redgym.trainers import grpo
from redgym.trainers.policy import lora_config, train_sampling


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/grpo_demo.yaml", help="the redgym GRPO config that defines the task")
    p.add_argument("--steps", type=int, default=4, help="step-equivalents per side (the first is warm-up)")
    p.add_argument("--out", default="runs/vs_trl", help="folder for both sides' runs (replaced)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a config field over the config's value, for both sides (repeatable): e.g. micro_batches=shuffled",
    )
    args = p.parse_args()
    if bad := [item for item in args.set if "=" not in item]:
        p.error(f"--set takes FIELD=VALUE, got {bad[0]!r}")
    return args


def run_redgym(cfg: grpo.GRPOConfig, out: Path) -> list[float]:
    grpo.train(cfg, out, progress=False)
    return [
        float(r["time/step_s"])
        for r in read_jsonl(out / "metrics.jsonl", "bench", "written by grpo.train")
        if "time/step_s" in r
    ]


class StepClock:
    """A TrainerCallback that notes the time at every optimizer step's end."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                clock.times = [time.perf_counter()]

            def on_step_end(self, args, state, control, **kw):
                clock.times.append(time.perf_counter())

        self.times: list[float] = []
        self.callback = _Callback()


def run_trl(cfg: grpo.GRPOConfig, out: Path) -> list[float]:
    from datasets import Dataset
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    setup = prepare(cfg, need_embedder=False)
    adversary = load_lm(cfg, cfg.adversary_model, cfg.adversary_format)
    sampling = train_sampling(cfg, setup.params)
    # TRL stops generation (and masks the loss) at the model's eos ids: make them redgym's stop tokens
    adversary.model.generation_config.eos_token_id = list(adversary.stop_ids)
    prompts = setup.split.train
    rows = [
        {"prompt": adversary.render(Conversation(p.id, p.turns).history(), "adversary"), "turns": list(p.turns)}
        for p in prompts
    ]

    def redgym_reward(prompts, completions, turns, **kw) -> list[float]:
        convs = [Conversation("trl", tuple(t)) for t in turns]
        for c, text in zip(convs, completions):
            c.turns.append(Turn("adversary", text.strip()))
        replies = defender_replies(setup.defender, [c.history() for c in convs], setup.params, cfg.defender_samples)
        for c, reply in zip(convs, replies):
            c.turns.append(reply)
        score_conversations(convs, setup.scorer, setup.likelihood, setup.weights, setup.embedder)
        return [c.rewards[0] for c in convs]

    per_gen = cfg.prompts_per_step * cfg.generations_per_prompt
    optimizer_steps = per_gen // cfg.micro_batch_size * cfg.ppo_epochs
    args = TRLConfig(
        output_dir=str(out),
        max_steps=optimizer_steps * cfg.steps,
        per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=1,
        generation_batch_size=per_gen,
        num_generations=cfg.generations_per_prompt,
        num_iterations=cfg.ppo_epochs,
        max_completion_length=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        repetition_penalty=sampling.repetition_penalty,
        beta=cfg.kl_coef,
        epsilon=cfg.clip_range,
        epsilon_high=cfg.clip_range_high or cfg.clip_range,
        scale_rewards="group",
        learning_rate=cfg.lr,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=cfg.warmup_steps,
        max_grad_norm=cfg.max_grad_norm,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        bf16=adversary.model.dtype == torch.bfloat16,  # TRL's default is bf16: the adversary's own dtype instead
        fp16=adversary.model.dtype == torch.float16,
        gradient_checkpointing=cfg.gradient_checkpointing,  # TRL's default is on
    )
    clock = StepClock()
    trainer = GRPOTrainer(
        model=adversary.model,
        reward_funcs=redgym_reward,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=adversary.tokenizer,
        peft_config=lora_config(cfg),  # the adapter redgym trains
        callbacks=[clock.callback],
    )
    trainer.train()
    ends = clock.times[::optimizer_steps]
    return [b - a for a, b in zip(ends, ends[1:])]


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    fields = dict(item.split("=", 1) for item in args.set)
    cfg = load_config(grpo.GRPOConfig, args.config, {**fields, "steps": args.steps, "reward_curriculum_steps": 0})
    print(
        f"task {args.config}: {cfg.prompts_per_step} prompts x G {cfg.generations_per_prompt}, K "
        f"{cfg.defender_samples} defender replies, {cfg.ppo_epochs} epochs of micro batch {cfg.micro_batch_size}, "
        f"LoRA r{cfg.lora_r}, micro batches {cfg.micro_batches}, threads={torch.get_num_threads()}",
        flush=True,
    )
    ours = run_redgym(cfg, out / "redgym")
    print("redgym s/step: " + " ".join(f"{x:.1f}" for x in ours), flush=True)
    theirs = run_trl(cfg, out / "trl")
    print("TRL s/step-equivalent: " + " ".join(f"{x:.1f}" for x in theirs), flush=True)
    a, b = statistics.median(ours[1:]), statistics.median(theirs[1:])
    print(f"\nredgym {a:.1f} s/step, TRL {b:.1f} s/step-equivalent: ratio {a / b:.2f} ({b / a:.2f}x)")
    print(f"BENCH redgym_step_s={a:.2f} trl_step_s={b:.2f} ratio={a / b:.3f}")


if __name__ == "__main__":
    main()
