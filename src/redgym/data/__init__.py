"""Prompt sources and splits."""

from redgym.data.prompts import Prompt, Split, load_prompts, rtp_prompts, split_from_json, split_prompts

__all__ = ["Prompt", "Split", "load_prompts", "rtp_prompts", "split_from_json", "split_prompts"]
