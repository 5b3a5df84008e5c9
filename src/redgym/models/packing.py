"""Rows packed into one sequence per pack: shared prefixes once, no padding, each row attending to its own tokens.

A training or scoring forward pass runs (context + continuation) rows. Padded to one width, a batch computes every
padding token, and G samples of one prompt compute their common context G times. Packed, the rows of a pack form a
prefix tree: a token run shared by several rows is one set of positions, each token attends to itself and its
ancestors (a 4-D mask), and its position id is its depth, so every row sees exactly the tokens and positions it sees
alone: the same log-probs to float tolerance, and gradients that sum over the rows sharing a token just as the
padded batch's do. Positions are ordered freely (the mask, not the order, says who sees whom): the positions whose
logits are wanted (those predicting a continuation token) go last, so ``logits_to_keep`` projects only them.

A pack's attention costs its length squared while its linear layers cost its length; ``PACK_TOKENS`` caps a pack's
length so the attention stays a small share (about 8% of a 135M model's flops at 256).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PACK_TOKENS = 256  # a new pack starts when a row would take the current one past this many positions


@dataclass
class Pack:
    """One packed sequence: ``ids`` and ``positions`` (its depth in its row) per position, ``visible[i, j]``: position
    i attends to position j; the last ``kept`` positions are those predicting continuation tokens. For the r-th row
    of the pack (``rows[r]``: its index among the rows given to ``pack_rows``), ``predictors[r]`` holds the index
    among those last ``kept`` of the position predicting each of its continuation tokens, and ``paths[r]`` the
    position of each of its tokens (context and continuation)."""

    ids: list[int]
    positions: list[int]
    visible: torch.Tensor  # (T, T) bool
    kept: int
    rows: list[int]
    predictors: list[list[int]]
    paths: list[list[int]]


class _Tree:
    """A prefix tree of token rows: node i holds one token, its parent and its depth; parents come first."""

    def __init__(self):
        self.children: dict[tuple[int, int], int] = {}
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.depths: list[int] = []

    def new_nodes(self, row: list[int]) -> int:
        """How many nodes ``row`` would add."""
        node = -1
        for i, t in enumerate(row):
            nxt = self.children.get((node, t))
            if nxt is None:
                return len(row) - i
            node = nxt
        return 0

    def add(self, row: list[int]) -> list[int]:
        """Insert ``row``; its nodes, one per token."""
        node, nodes = -1, []
        for t in row:
            nxt = self.children.get((node, t))
            if nxt is None:
                nxt = len(self.tokens)
                self.children[(node, t)] = nxt
                self.tokens.append(t)
                self.parents.append(node)
                self.depths.append(self.depths[node] + 1 if node >= 0 else 0)
            node = nxt
            nodes.append(node)
        return nodes


def _pack(tree: _Tree, index: list[int], nodes: list[list[int]], ctx_ids: list[list[int]]) -> Pack:
    """The pack of rows ``index`` (their ``nodes`` in ``tree``); a row's context length comes from ``ctx_ids``."""
    # per row, the nodes predicting its continuation tokens: its last context token's up to its second-last token's
    predicting = [row_nodes[len(ctx_ids[i]) - 1 : -1] for i, row_nodes in zip(index, nodes)]
    wanted = {x for row in predicting for x in row}
    n = len(tree.tokens)
    order = [i for i in range(n) if i not in wanted] + sorted(wanted)
    at = {node: i for i, node in enumerate(order)}
    ancestry = torch.zeros((n, n), dtype=torch.bool)  # ancestry[i, j]: node j is node i or one of its ancestors
    for i, parent in enumerate(tree.parents):
        if parent >= 0:
            ancestry[i] = ancestry[parent]
        ancestry[i, i] = True
    placed = torch.tensor(order)
    first_kept = n - len(wanted)
    return Pack(
        ids=[tree.tokens[i] for i in order],
        positions=[tree.depths[i] for i in order],
        visible=ancestry[placed][:, placed],
        kept=len(wanted),
        rows=index,
        predictors=[[at[x] - first_kept for x in row] for row in predicting],
        paths=[[at[x] for x in row_nodes] for row_nodes in nodes],
    )


def pack_rows(ctx_ids: list[list[int]], cont_ids: list[list[int]], max_tokens: int = PACK_TOKENS) -> list[Pack]:
    """(context, continuation) rows packed into as few packs as keep each within ``max_tokens`` positions (a longer
    row is a pack of its own). Rows are taken in the order of their tokens, so rows sharing a prefix (G samples of
    one prompt, a chosen and a rejected reply) meet in one pack wherever they stand in the batch. Every context needs
    at least one token and every continuation at least one."""
    if any(not ctx or not cont for ctx, cont in zip(ctx_ids, cont_ids)):
        raise ValueError("a packed row needs at least one context and one continuation token")
    packs: list[Pack] = []
    # the pack being filled: its tree, its rows' indices and their nodes
    tree, index, nodes = _Tree(), list[int](), list[list[int]]()
    for i in sorted(range(len(ctx_ids)), key=lambda i: list(ctx_ids[i]) + list(cont_ids[i])):
        row = list(ctx_ids[i]) + list(cont_ids[i])
        if index and len(tree.tokens) + tree.new_nodes(row) > max_tokens:
            packs.append(_pack(tree, index, nodes, ctx_ids))
            tree, index, nodes = _Tree(), [], []
        nodes.append(tree.add(row))
        index.append(i)
    if index:
        packs.append(_pack(tree, index, nodes, ctx_ids))
    return packs


def packed_inputs(
    packs: list[Pack], pad_id: int, dtype: torch.dtype, device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``(input_ids, attention_mask, position_ids, kept)`` of packs left-padded to one length T: the mask is 4-D
    (P, 1, T, T), additive (0 where visible, the dtype's minimum elsewhere: eager and SDPA attention both take it);
    a padding position sees only itself. The last ``kept`` positions of every pack hold its wanted ones."""
    width = max(len(p.ids) for p in packs)
    kept = max(p.kept for p in packs)
    ids = torch.full((len(packs), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(packs), width), dtype=torch.long)
    visible = torch.eye(width, dtype=torch.bool).repeat(len(packs), 1, 1)
    for b, p in enumerate(packs):
        s = width - len(p.ids)
        ids[b, s:] = torch.tensor(p.ids)
        pos[b, s:] = torch.tensor(p.positions)
        visible[b, s:, s:] = p.visible
    mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, torch.finfo(dtype).min)
    return ids.to(device), mask[:, None].to(device), pos.to(device), kept


def kept_logit_rows(packs: list[Pack], kept: int) -> dict[int, list[int]]:
    """For each row (its index among the rows given to ``pack_rows``), the index into a model output's kept logits
    flattened to (P * ``kept``, V) (``packed_inputs``' packs, each with its wanted positions last) of the position
    predicting each of its continuation tokens."""
    return {
        row: [p * kept + kept - pack.kept + i for i in predictors]
        for p, pack in enumerate(packs)
        for row, predictors in zip(pack.rows, pack.predictors)
    }


def can_pack(model: torch.nn.Module) -> bool:
    """Whether ``model`` takes a custom 4-D mask: transformers' eager or SDPA attention (redgym's CPU variant
    included) and no sliding-window layers (whose own mask a custom one would replace). Flash attention ignores
    such masks: those models run padded."""
    from transformers import PretrainedConfig

    config = next((m.config for m in model.modules() if isinstance(getattr(m, "config", None), PretrainedConfig)), None)
    if config is None:
        return False
    layers = getattr(config, "layer_types", None) or []
    sliding = getattr(config, "sliding_window", None) or "sliding_attention" in layers
    return getattr(config, "_attn_implementation", None) in ("eager", "sdpa", "redgym_sdpa") and not sliding
