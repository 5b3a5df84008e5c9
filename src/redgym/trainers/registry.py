"""Trainer names -> (config class, train function): the one table the CLI and the experiment runner read."""

from redgym.trainers import grpo, ipo, ppo, sft

TRAINERS = {
    "ipo": (ipo.IPOConfig, ipo.train),
    "grpo": (grpo.GRPOConfig, grpo.train),
    "ppo": (ppo.PPOConfig, ppo.train),
    "sft": (sft.SFTConfig, sft.train),
}
