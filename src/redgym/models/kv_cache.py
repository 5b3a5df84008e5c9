"""A ``generate`` call's key-value cache kept for the next call (a rollout batch: fixed weights, growing histories):
which token prefixes it holds, and the cache the next call starts from. A value: ``LM.generate(keep=True)`` returns
it (``Generation.kept``), the batch hands it to the next call (``kept=``) and drops it when it ends."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


@dataclass
class KeptCache:
    """A ``generate`` call's key-value cache with the tokens behind each row: row r's tokens (its context and the
    tokens it generated, up to its stop) sit in columns ``starts[r]`` onwards, ``tokens[r]`` right-padded with -1."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each (rows, heads, columns, dim)
    tokens: torch.Tensor  # (rows, L) long
    starts: list[int]

    @classmethod
    def of(cls, cache, enc: dict[str, torch.Tensor], new: list[list[int]]) -> KeptCache | None:
        """The cache ``generate`` returned, for contexts ``enc`` and new tokens ``new``; None for a cache that cannot
        be spliced by column (a sliding window layer keeps only its last tokens)."""
        if not isinstance(cache, DynamicCache) or not all(type(la) is DynamicLayer for la in cache.layers):
            return None
        layers = [(la.keys, la.values) for la in cache.layers if la.keys is not None and la.values is not None]
        if len(layers) < len(cache.layers) or not layers:
            return None
        columns = layers[0][0].shape[2]
        attn = enc["attention_mask"]
        width = attn.shape[1]
        rows, starts = [], []
        for b in range(attn.shape[0]):
            starts.append(width - int(attn[b].sum()))
            rows.append((enc["input_ids"][b, starts[-1] :].tolist() + new[b])[: columns - starts[-1]])
        tokens = torch.full((len(rows), max(len(r) for r in rows)), -1, dtype=torch.long)
        for r, row in enumerate(rows):
            tokens[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        return cls(layers, tokens, starts)

    def reusable(self, rows: list[list[int]], limit: list[int], chunk: int = 16) -> tuple[list[int], list[int]]:
        """For each token row: how many of its leading tokens a kept row holds (at most ``limit``), and which row."""
        width = min(self.tokens.shape[1], max(len(r) for r in rows))
        held, src = [], []
        for s in range(0, len(rows), chunk):
            part = torch.full((len(rows[s : s + chunk]), width), -2, dtype=torch.long)
            for i, row in enumerate(rows[s : s + chunk]):
                part[i, : min(width, len(row))] = torch.tensor(row[:width], dtype=torch.long)
            same = part[:, None, :] == self.tokens[None, :, :width]  # (rows, kept rows, width)
            common = same.to(torch.int32).cumprod(-1).sum(-1)  # length of the common prefix
            best, which = common.max(-1)
            held += best.tolist()
            src += which.tolist()
        return [min(h, m) for h, m in zip(held, limit)], src

    def past(self, offsets: list[int], src: list[int], start: int) -> DynamicCache:
        """A cache of ``start`` columns for rows whose first token sits in column ``offsets[u]``: the columns from
        there to ``start`` copied from kept row ``src[u]`` (the row holds those tokens), the padding left zero."""
        pairs = []
        for keys, values in self.layers:
            k = keys.new_zeros((len(src), keys.shape[1], start, keys.shape[3]))
            v = values.new_zeros((len(src), values.shape[1], start, values.shape[3]))
            for u, (off, r) in enumerate(zip(offsets, src)):
                if (c := start - off) > 0:
                    k[u, :, off:] = keys[r, :, self.starts[r] : self.starts[r] + c]
                    v[u, :, off:] = values[r, :, self.starts[r] : self.starts[r] + c]
            pairs.append((k, v))
        return DynamicCache(pairs)


def run_length(rows: list) -> int:
    """k when ``rows`` are runs of k identical rows (G samples of one prompt, K replies to one turn), else 1."""
    n = len(rows)
    for k in range(n, 1, -1):
        if n % k == 0 and all(rows[i] == rows[i - i % k] for i in range(n)):
            return k
    return 1
