"""The per-step metrics log (``metrics.jsonl``, accelerate trackers) and the guard that skips a non-finite loss."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from redgym.runfolder import atomic_write

log = logging.getLogger("redgym.train")


class MetricsLog:
    """One JSON line per step in ``metrics.jsonl`` (the file replaced whole each time, through a temporary file),
    forwarded to accelerate trackers when configured."""

    def __init__(self, out: Path, accelerator=None):
        self.path, self.accelerator = out / "metrics.jsonl", accelerator

    @property
    def writes(self) -> bool:
        """Only the main process writes the file (one line per step under several processes)."""
        return self.accelerator is None or self.accelerator.is_main_process

    def keep_until(self, step: int) -> None:
        """Drop the lines after ``step`` (a resumed run restarts after its checkpoint's step: lines a killed run
        wrote for later steps would be there twice)."""
        if not self.path.exists() or not self.writes:
            return

        def before(line: str) -> bool:  # a line cut short by the kill is dropped too
            try:
                return json.loads(line).get("step", 0) <= step
            except ValueError:
                return False

        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line if line.endswith("\n") else line + "\n" for line in lines if line.strip() and before(line)]
        if kept != lines:
            atomic_write(self.path, "".join(kept))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.writes:
            return
        clean = {
            k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v) for k, v in metrics.items()
        }
        # the whole log rewritten through a temporary file: a kill never leaves a torn line
        before = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        atomic_write(self.path, before + json.dumps({"step": step, "time": time.time(), **clean}) + "\n")
        if self.accelerator is not None and self.accelerator.trackers:
            self.accelerator.log({k: v for k, v in clean.items() if isinstance(v, float)}, step=step)


def finite_or_skip(loss: torch.Tensor, counter: dict, step: int) -> bool:
    """True when ``loss`` is finite; otherwise log a warning, count it and tell the caller to skip the batch."""
    if torch.isfinite(loss).all():
        return True
    counter["nonfinite_skipped"] = counter.get("nonfinite_skipped", 0) + 1
    log.warning(
        "step %d: non-finite loss (%s); batch skipped (%d so far)",
        step,
        loss.detach().float().tolist(),
        counter["nonfinite_skipped"],
    )
    return False
