"""Stopping a training run cleanly on SIGINT / SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading

import torch

log = logging.getLogger("redgym.train")


class StopRequest:
    """SIGINT / SIGTERM during training: the first lets the current step finish, write a checkpoint and stop
    (``end_step`` raises ``TrainingStopped``); a second one interrupts at once (the last complete checkpoint
    stays). Handlers are installed only from the main thread and restored by ``restore``."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            self.restore()
            raise KeyboardInterrupt
        self.signum = signum
        log.warning(
            "%s: finishing this step, then a checkpoint, then stop (again to stop at once)", signal.Signals(signum).name
        )

    def requested(self, acc) -> int | None:
        """The signal to stop on, agreed by every process (one process's signal stops them all at one step)."""
        if acc.num_processes == 1:
            return self.signum
        got = acc.gather(torch.tensor([[float(self.signum or 0)]], device=acc.device)).max()
        return int(got) or None

    def restore(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old = {}
