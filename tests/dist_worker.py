"""One rank of the multi-process trainer test (tests/test_distributed.py), started by ``accelerate launch``:

    accelerate launch --cpu --num_processes 2 tests/dist_worker.py TRAINER OUT key=value ...

Trains with the real trainer, then every rank writes its trainable parameters to ``OUT/rank_<i>.pt`` so the test
can compare them across ranks (the run folder itself is written by the main process only)."""

import sys
from pathlib import Path

import torch

from redgym.config import load_config
from redgym.trainers import run as frame
from redgym.trainers.registry import TRAINERS

RUNS = []
_finish = frame.finish_run


def finish_run(run):  # keep a handle on the run's policy for the comparison below
    RUNS.append(run)
    _finish(run)


frame.finish_run = finish_run  # end_step's call, on a stop signal
for _, _train in TRAINERS.values():  # each trainer's own call, through the name it imported
    sys.modules[_train.__module__].finish_run = finish_run


def main() -> None:
    name, out, *pairs = sys.argv[1:]
    config_cls, train = TRAINERS[name]
    cfg = load_config(config_cls, None, dict(p.split("=", 1) for p in pairs))
    train(cfg, Path(out), progress=False)
    from accelerate import PartialState

    state = PartialState()
    model = RUNS[-1].acc.unwrap_model(RUNS[-1].policy.model)
    torch.save(
        {
            "rank": state.process_index,
            "world": state.num_processes,
            "params": {k: v.detach().cpu().clone() for k, v in model.named_parameters() if v.requires_grad},
        },
        Path(out) / f"rank_{state.process_index}.pt",
    )


if __name__ == "__main__":
    main()
