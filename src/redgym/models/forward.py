"""The forward pass over (context, continuation) rows that training and scoring share: per-token log-probs of
each continuation (with entropy or hidden states on request), packed into prefix trees where the model allows
(shared contexts once, no padding; ``models/packing.py``). The trainers' losses, ``LM.continuation_nll`` and the
guard's label scores all read it; sampling is ``models/lm.py``'s."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from redgym.models.packing import can_pack, kept_logit_rows, pack_rows, packed_inputs


@dataclass
class ContinuationOutput:
    """Per-token quantities at the K continuation positions of a batch, right-aligned, all (B, K) but ``hidden``.

    logps:   log p(token | prefix) at the given temperature (differentiable when grads are on)
    mask:    1 on real continuation tokens, 0 on padding
    entropy: entropy of the next-token distribution (computed when asked)
    hidden:  (B, K, H) last hidden state at the position *predicting* each token (for a value head)
    """

    logps: torch.Tensor
    mask: torch.Tensor
    entropy: torch.Tensor | None = None
    hidden: torch.Tensor | None = None

    def need_entropy(self) -> torch.Tensor:
        """``entropy``, which the forward pass computed (``with_entropy=True``)."""
        if self.entropy is None:
            raise ValueError("continuation_forward was called without with_entropy=True")
        return self.entropy

    def need_hidden(self) -> torch.Tensor:
        """``hidden``, which the forward pass kept (``with_hidden=True``)."""
        if self.hidden is None:
            raise ValueError("continuation_forward was called without with_hidden=True")
        return self.hidden


def left_padded(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, position ids) of token rows left-padded to one width, so every row ends at the last
    position; explicit position ids keep absolute-position models (GPT-2) correct."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, width - len(r) :] = torch.tensor(r)
        attn[b, width - len(r) :] = 1
    ids, attn = ids.to(device), attn.to(device)
    return ids, attn, (attn.cumsum(-1) - 1).clamp(min=0)


def continuation_forward(
    model,
    ctx_ids: list[list[int]],
    cont_ids: list[list[int]],
    pad_id: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    with_hidden: bool = False,
    packed: bool | None = None,
) -> ContinuationOutput:
    """One forward pass over (context + continuation) rows; quantities at the continuation positions.

    Packed (models/packing.py; ``packed`` None: where the model takes a custom mask): shared prefixes run once, no
    padding. Otherwise rows are left-padded so every continuation ends at the last position. Either way explicit
    position ids keep absolute-position models (GPT-2) correct, and only the positions predicting a continuation
    token are projected to the vocabulary.
    """
    if can_pack(model) if packed is None else packed:
        return _packed_continuation_forward(model, ctx_ids, cont_ids, pad_id, temperature, with_entropy, with_hidden)
    dev = next(model.parameters()).device
    ids, attn, pos = left_padded([x + c for x, c in zip(ctx_ids, cont_ids)], pad_id, dev)
    k = max(len(c) for c in cont_ids)
    cmask = torch.zeros((len(cont_ids), k))
    for b, c in enumerate(cont_ids):
        cmask[b, k - len(c) :] = 1
    cmask = cmask.to(dev)
    out = model(
        input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=k + 1, output_hidden_states=with_hidden
    )
    logp_all = torch.log_softmax(out.logits[:, :-1].float() / temperature, -1)  # (B, K, V)
    logps = logp_all.gather(-1, ids[:, -k:, None]).squeeze(-1) * cmask
    entropy = -(logp_all.exp() * logp_all).sum(-1) * cmask if with_entropy else None
    hidden = out.hidden_states[-1][:, -(k + 1) : -1] if with_hidden else None
    return ContinuationOutput(logps, cmask, entropy, hidden)


def _packed_continuation_forward(
    model,
    ctx_ids: list[list[int]],
    cont_ids: list[list[int]],
    pad_id: int,
    temperature: float,
    with_entropy: bool,
    with_hidden: bool,
) -> ContinuationOutput:
    """``continuation_forward`` over packed rows; the outputs laid out as the padded path's (right-aligned)."""
    param = next(model.parameters())
    packs = pack_rows(ctx_ids, cont_ids)
    ids, mask, pos, kept = packed_inputs(packs, pad_id, param.dtype, param.device)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=kept, output_hidden_states=with_hidden
    )
    # every continuation token: the kept position predicting it (flat over packs), its id, its place in (B, K)
    k = max(len(c) for c in cont_ids)
    src: list[int] = []
    target: list[int] = []
    dest: list[int] = []
    for b, predictors in kept_logit_rows(packs, kept).items():
        src += predictors
        target += cont_ids[b]
        dest += range(b * k + k - len(cont_ids[b]), (b + 1) * k)
    dev = param.device
    src_t, dest_t = torch.tensor(src, device=dev), torch.tensor(dest, device=dev)
    logits = out.logits.reshape(-1, out.logits.shape[-1]).index_select(0, src_t)  # (N, V): one row per token
    logp_all = torch.log_softmax(logits.float() / temperature, -1)
    flat = logp_all.gather(-1, torch.tensor(target, device=dev)[:, None]).squeeze(-1)

    def laid_out(values: torch.Tensor) -> torch.Tensor:  # (N, ...) -> (B, K, ...), zero where no token
        empty = values.new_zeros((len(cont_ids) * k, *values.shape[1:]))
        return empty.index_copy(0, dest_t, values).reshape(len(cont_ids), k, *values.shape[1:])

    cmask = laid_out(torch.ones_like(flat))
    entropy = laid_out(-(logp_all.exp() * logp_all).sum(-1)) if with_entropy else None
    hidden = None
    if with_hidden:
        last = out.hidden_states[-1][:, -kept:]  # (P, kept, H): the kept positions
        hidden = laid_out(last.reshape(-1, last.shape[-1]).index_select(0, src_t))
    return ContinuationOutput(laid_out(flat), cmask, entropy, hidden)


def continuation_logprobs(
    model, ctx_ids: list[list[int]], cont_ids: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logps, mask)``, both (B, K): per-token log p(continuation | context), right-aligned."""
    out = continuation_forward(model, ctx_ids, cont_ids, pad_id)
    return out.logps, out.mask
