"""One exception type for every user-facing mistake (bad config, missing model, unreadable file).

The CLI turns it into a single line on stderr and exit code 2; library callers can catch it.
"""


class RedgymError(Exception):
    """A problem with the user's input, reported as one line, never as a traceback."""


class TrainingStopped(Exception):
    """Training stopped on SIGINT/SIGTERM after finishing a step and writing its checkpoint (resumable)."""

    def __init__(self, step: int, signum: int, out):
        import signal

        self.step, self.signum, self.out = step, signum, out
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; its checkpoint is saved")
