"""Model loading, the LM wrapper (generation with log-probs, continuation NLL) and the training forward."""

from redgym.assets import package_dir
from redgym.models.forward import ContinuationOutput, continuation_forward, continuation_logprobs
from redgym.models.lm import LM, Generation, SamplingParams, render_chat, render_plain
from redgym.models.loading import KNOWN_MODELS, cache_dir, load_model, resolve_device, resolve_dtype

__all__ = [
    "LM",
    "ContinuationOutput",
    "Generation",
    "SamplingParams",
    "continuation_forward",
    "continuation_logprobs",
    "render_chat",
    "render_plain",
    "KNOWN_MODELS",
    "cache_dir",
    "load_model",
    "package_dir",
    "resolve_device",
    "resolve_dtype",
]
