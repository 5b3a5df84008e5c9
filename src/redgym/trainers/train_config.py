"""The fields every trained model's run shares (``OptimConfig``: optimisation, adapter, bookkeeping; the red-team
trainers and the guard), and what the red-team trainers add over ``RunConfig`` (``TrainConfig``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from redgym.config import DeviceConfig, RunConfig, _f
from redgym.errors import RedgymError


@dataclass
class OptimConfig(DeviceConfig):
    """A trained LM's optimisation, adapter and bookkeeping: what ``trainers/run.start_frame`` reads."""

    # --- optimisation --------------------------------------------------------------------------------------
    steps: int = _f(100, "optimizer steps")
    max_minutes: float = _f(0.0, "stop after the step that crosses this wall-clock budget (0 = no limit)")
    lr: float = _f(1e-4, "AdamW learning rate")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    warmup_steps: int = _f(5, "linear learning-rate warmup over the first N optimizer steps")
    lr_decay_steps: int = _f(
        0,
        "the last N training steps decay the learning rate linearly toward 0 (warmup-stable-decay): a policy that "
        "has found its reward is easily pushed off it by full-size late updates; 0 = constant after warmup",
    )
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 = off)")
    grad_accum: int = _f(1, "micro-batches accumulated per optimizer step")
    micro_batch_size: int = _f(
        4,
        "sequences per forward/backward pass (4 on CPU: 0.6x the peak memory of 8 "
        "and 0.84x the time, bench/train_memory.py)",
    )
    gradient_checkpointing: bool = _f(
        False, "recompute activations in the backward pass: less peak memory, slower training passes"
    )
    # --- adapter ---------------------------------------------------------------------------------------------
    lora: bool = _f(True, "train a LoRA adapter (peft); false = full fine-tuning with a separate reference copy")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha")
    lora_dropout: float = _f(0.0, "LoRA dropout")
    lora_targets: str = _f("all-linear", "LoRA target modules: all-linear or a comma list (q_proj,v_proj)")
    load_in_4bit: bool = _f(False, "4-bit base weights (bitsandbytes; CUDA only)")
    fast_generation: bool = _f(
        True,
        "sample from peft-free copies (adapter merged / base): ~1.7x faster on CPU, "
        "+2 model copies in memory; float32 only (a bf16 merge rounds small updates "
        "away, so bf16/fp16 runs sample through peft); false = sample through peft",
    )
    # --- bookkeeping -----------------------------------------------------------------------------------------
    checkpoint_every: int = _f(25, "save a resumable checkpoint every N steps (and at the end)")
    keep_checkpoints: int = _f(2, "checkpoints kept on disk (oldest deleted first)")
    log_with: str = _f("none", "extra metric sink: none, tensorboard or wandb")

    def validate(self) -> None:
        super().validate()
        if self.steps < 1 or self.micro_batch_size < 1 or self.grad_accum < 1:
            raise RedgymError("config: steps, micro_batch_size and grad_accum must be >= 1")
        if self.lr <= 0:
            raise RedgymError(f"config: lr must be > 0, got {self.lr}")
        if not 0 <= self.lr_decay_steps <= self.steps:
            raise RedgymError(f"config: lr_decay_steps must lie in [0, steps {self.steps}], got {self.lr_decay_steps}")
        if self.log_with not in ("none", "tensorboard", "wandb"):
            raise RedgymError(f"config: log_with must be none, tensorboard or wandb, got {self.log_with!r}")
        if self.load_in_4bit and not torch.cuda.is_available():
            raise RedgymError("config: load_in_4bit needs CUDA (bitsandbytes); it is not available here")


@dataclass
class TrainConfig(OptimConfig, RunConfig):
    """A red-team trainer's config: the run's models, rollout, reward and evaluation (``RunConfig``), how the
    adversary is optimised (``OptimConfig``), and the fields below. ``validate`` runs both parts' checks."""

    prompts_per_step: int = _f(8, "training prompts rolled out per step")
    http_skip_failed_steps: bool = _f(
        False,
        "defender_backend openai: a step whose defender requests fail after their retries is skipped (untrained, "
        "counted in http/skipped_steps) instead of stopping the run at its last checkpoint",
    )
    reward_curriculum_steps: int = _f(
        0,
        "the reward starts as the adversary's own toxicity (exact: the trainer "
        "learns it fast, and the defender's toxicity follows it) and anneals "
        "linearly to the configured reward over the first N steps; 0 = off",
    )
    on_policy_sampling: bool = _f(
        True,
        "sample training rollouts from exactly the distribution the loss uses "
        "(temperature only: no top_p, top_k, repetition penalty or minimum "
        "length); evaluation keeps them",
    )
    eval_after: bool = _f(
        True, "redgym train: evaluate trained vs untuned adversary on the run's test prompts when training ends"
    )

    def validate(self) -> None:
        super().validate()  # OptimConfig's, then RunConfig's, then DeviceConfig's (once)
        if self.prompts_per_step < 1:
            raise RedgymError(f"config: prompts_per_step must be >= 1, got {self.prompts_per_step}")
        if self.reward_curriculum_steps < 0:
            raise RedgymError(f"config: reward_curriculum_steps must be >= 0, got {self.reward_curriculum_steps}")
