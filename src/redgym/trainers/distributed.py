"""Data parallelism under ``accelerate launch``: rank shares, averaged metrics and gradients, no sharding."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from redgym.errors import RedgymError


def rank_share(items: list, acc) -> list:
    """This process's share of a step's items (data parallelism: rank r takes items r, r + N, ...); all of them
    in a single process."""
    return items[acc.process_index :: acc.num_processes]


def mean_over_ranks(acc, metrics: dict) -> dict:
    """Numeric metrics averaged over the processes (each computed them on its own share of the step); other
    values as the main process has them. One process: ``metrics`` unchanged."""
    if acc.num_processes == 1:
        return metrics
    keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float, np.floating, np.integer)))
    mine = torch.tensor([[float(metrics[k]) for k in keys]], dtype=torch.float64, device=acc.device)
    every = acc.gather(mine).cpu().numpy()  # (processes, metrics)
    with warnings.catch_warnings():  # a metric no process could compute stays nan, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(np.where(np.isfinite(every), every, np.nan), axis=0)
    return {**metrics, **{k: float(v) for k, v in zip(keys, means)}}


def accumulate_locally(acc, model):
    """The context of an update that accumulates a step's micro-batches into one optimizer step. Processes may
    hold different numbers of micro-batches (IPO's pairs, SFT's examples), so under several DDP's sync on every
    backward is off and ``all_reduce_grads`` averages once, before clipping."""
    return acc.no_sync(model) if acc.num_processes > 1 else acc.accumulate(model)


def check_parallelism(acc) -> None:
    """Data parallelism (one full copy of the model per process, DDP) is what the trainers implement: IPO/SFT average
    gradients by hand and the merged sampler reads whole LoRA weights. Sharded set-ups (FSDP, DeepSpeed, Megatron)
    would silently train wrongly, so they are refused in one line."""
    kind = getattr(acc.distributed_type, "name", str(acc.distributed_type))
    if kind in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        raise RedgymError(
            f"accelerate config uses {kind}: redgym's trainers support data parallelism only "
            "(accelerate launch --multi_gpu, or a config with distributed_type MULTI_GPU)"
        )


def all_reduce_grads(acc, params) -> None:
    """Average the gradients of ``params`` over the processes, by hand: for updates whose number of backward
    passes differs between processes (IPO's pairs per step), run under ``acc.no_sync``. A process with no
    gradient for a parameter contributes zeros."""
    if acc.num_processes == 1:
        return
    for p in params:
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)
        p.grad /= acc.num_processes
