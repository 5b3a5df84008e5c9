"""Grouped-query attention on a CPU without copying keys and values: transformers' SDPA attention with
``enable_gqa``.

SmolLM2 has 9 query heads and 3 key-value heads. transformers' SDPA attention passes ``enable_gqa`` to PyTorch only
without an attention mask (on CUDA a mask would send it to the slow math kernel); otherwise it first copies every
key and value 3 times (``repeat_kv``). A rollout always has a mask (left padding), and on a CPU PyTorch's flash
kernel takes GQA with a mask: the same numbers without the copies, which at batch 64 cost about as much as the
decoding step's attention itself. ``use_cpu_gqa`` switches a loaded model to this function (registered with
transformers' ``AttentionInterface``); on CUDA, or for a model without grouped heads, it runs transformers' own.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "redgym_sdpa"


def sdpa_gqa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa_attention_forward`` with ``enable_gqa`` on a CPU (query (B, H, T, D), key and value
    (B, H_kv, S, D))."""
    if query.device.type != "cpu" or getattr(module, "num_key_value_groups", 1) == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    if attention_mask is not None and attention_mask.ndim == 4:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
    if is_causal is None:  # as transformers: causal by flag only when no mask says it
        is_causal = query.shape[2] > 1 and attention_mask is None and getattr(module, "is_causal", True)
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=is_causal,
        enable_gqa=True,
    )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, sdpa_gqa_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # the same masks as transformers' SDPA


def use_cpu_gqa(model) -> None:
    """Run ``model``'s attention through ``sdpa_gqa_forward`` if it uses transformers' SDPA attention."""
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        model.set_attn_implementation(NAME)
