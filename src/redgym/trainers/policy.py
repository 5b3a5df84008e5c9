"""The adversary policy (LoRA or full): its frozen reference, merged sampler, frozen base, on-policy sampling."""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from redgym.models.forward import continuation_logprobs
from redgym.models.lm import SamplingParams
from redgym.models.loading import load_model
from redgym.trainers.train_config import OptimConfig, TrainConfig

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

log = logging.getLogger("redgym.train")


class AdapterOff(torch.nn.Module):
    """The base model under a peft model, with the adapter switched off: the frozen defender and reference
    without a second copy of the weights in memory."""

    def __init__(self, peft_model):
        super().__init__()
        self.peft_model = peft_model

    def forward(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model.generate(*args, **kwargs)


class MergedCopy:
    """A plain (peft-free) copy of the base weights that ``sync`` overwrites with base + LoRA delta.

    Sampling through peft's wrapped layers costs ~1.7x on a CPU for a 135M model (Python overhead in 200+
    small modules); sampling from this copy runs at the base model's speed. Training still goes through peft.
    """

    def __init__(self, base_model: torch.nn.Module):
        self.model = copy.deepcopy(base_model).eval().requires_grad_(False)

    @torch.no_grad()
    def sync(self, peft_model) -> None:
        target = dict(self.model.named_modules())
        for name, module in peft_model.named_modules():
            if hasattr(module, "lora_A") and hasattr(module, "base_layer") and "default" in module.lora_A:
                w = module.base_layer.weight
                merged = w.float() + module.get_delta_weight("default").float()
                target[name.removeprefix("base_model.model.")].weight.copy_(merged.to(w.dtype))


@dataclass
class Policy:
    """The trainable adversary and its frozen reference (``ref_model`` is an ``AdapterOff`` view under LoRA).

    ``sampler`` / ``frozen_sampler``: peft-free copies used only for generation when ``fast_generation`` is on
    (the adapter merged in, and the untouched base); None otherwise.
    """

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    ref_model: torch.nn.Module
    sampler: MergedCopy | None = None
    frozen_sampler: torch.nn.Module | None = None

    @property
    def float32(self) -> bool:
        """Whether the weights are float32: sampling and a forward pass then give the same log-probs to float
        tolerance (in bf16/fp16 a cached generation and a fresh forward pass round differently)."""
        return getattr(unwrap(self.model), "dtype", torch.float32) == torch.float32  # a peft model: its base's

    @property
    def reference(self) -> torch.nn.Module:
        """The frozen reference for forward passes without gradients: the peft-free copy of the base weights when
        there is one (the same weights as ``ref_model``, without peft's per-layer overhead), else ``ref_model``."""
        return self.frozen_sampler if self.frozen_sampler is not None else self.ref_model

    def sync_sampler(self) -> None:
        if self.sampler is not None:
            self.sampler.sync(unwrap(self.model))

    @property
    def base(self) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
        """The frozen base weights and tokenizer, for a defender that is the same model (a peft-free copy of them
        when ``fast_generation`` is on, else the adapter-disabled view): no second copy in memory."""
        return (self.frozen_sampler if self.frozen_sampler is not None else self.ref_model), self.tokenizer

    @property
    def generation_model(self) -> torch.nn.Module:
        return self.sampler.model if self.sampler is not None else unwrap(self.model)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (what ``accelerate`` prepares under several processes);
    forward passes that train go through the wrapper (its gradient sync), everything else through the model."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def model_config(model: torch.nn.Module) -> PretrainedConfig:
    """The transformers config of a causal LM, of a peft model over one, or of either inside a DDP wrapper."""
    from transformers import PretrainedConfig

    config = unwrap(model).config
    if not isinstance(config, PretrainedConfig):
        raise TypeError(f"{type(model).__name__} has no transformers config")
    return config


def lora_config(cfg: OptimConfig):
    """The peft ``LoraConfig`` of the adversary's adapter (rank, alpha, dropout, target modules)."""
    from peft import LoraConfig

    targets = "all-linear" if cfg.lora_targets == "all-linear" else [t.strip() for t in cfg.lora_targets.split(",")]
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )


def build_policy(cfg: OptimConfig, name: str) -> Policy:
    """The model trained from ``name`` (a known model, a folder, an adapter): LoRA over it with the adapter-off
    view as the reference, or all of it with a frozen copy as the reference (``lora: false``)."""
    model, tok = load_model(name, cfg.dtype, cfg.device)
    if not cfg.lora:
        ref = copy.deepcopy(model).eval().requires_grad_(False)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return Policy(model.train(), tok, ref, frozen_sampler=ref)
    from peft import get_peft_model

    lora = lora_config(cfg)
    # autocast_adapter_dtype keeps the adapter in float32 over a bf16 base: AdamW updates stay exact.
    fast = cfg.fast_generation and next(model.parameters()).dtype == torch.float32
    if cfg.fast_generation and not fast:
        log.info(
            "fast_generation needs float32 weights (a bf16 merge rounds small updates away); sampling through "
            "the adapter instead"
        )
    frozen = copy.deepcopy(model).eval().requires_grad_(False) if fast else None
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model = get_peft_model(model, lora, autocast_adapter_dtype=True)
    peft_model.peft_config["default"].base_model_name_or_path = name  # reload by redgym name
    sampler = MergedCopy(frozen) if frozen is not None else None
    return Policy(peft_model, tok, AdapterOff(peft_model), sampler, frozen)


def train_sampling(cfg: TrainConfig, eval_params: SamplingParams) -> SamplingParams:
    """The adversary's sampling in training rollouts: with ``on_policy_sampling`` the plain softmax at the
    configured temperature (no top-p, no top-k, no repetition penalty, no minimum length, which would mask the
    stop token), the distribution whose log-probs the losses use."""
    if not cfg.on_policy_sampling:
        return eval_params
    return dataclasses.replace(eval_params, top_p=1.0, top_k=0, repetition_penalty=1.0, min_new_tokens=0)


def sequence_logps(model, ctx_ids: list[list[int]], cont_ids: list[list[int]], pad_id: int) -> torch.Tensor:
    """(B,) summed log-probs of each continuation given its context (differentiable when grads are on)."""
    logps, mask = continuation_logprobs(model, ctx_ids, cont_ids, pad_id)
    return (logps * mask).sum(-1)
