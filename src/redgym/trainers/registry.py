"""Trainer names -> (config class, train function): the one table the CLI and the experiment runner read."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from redgym.trainers import grpo, ipo, ppo, sft
from redgym.trainers.train_config import TrainConfig


class TrainFn(Protocol):
    """A trainer's ``train``. Its ``cfg`` is an instance of the config class in the same entry of ``TRAINERS``:
    a pairing that one dict's type cannot state, so the checker sees ``Any`` there."""

    def __call__(self, cfg: Any, out: Path, resume: bool = False, progress: bool = True) -> dict[str, Any]: ...


TRAINERS: dict[str, tuple[type[TrainConfig], TrainFn]] = {
    "ipo": (ipo.IPOConfig, ipo.train),
    "grpo": (grpo.GRPOConfig, grpo.train),
    "ppo": (ppo.PPOConfig, ppo.train),
    "sft": (sft.SFTConfig, sft.train),
}
