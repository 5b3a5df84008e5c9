"""One exception type for every user-facing mistake (bad config, missing model, unreadable file).

The CLI turns it into a single line on stderr and exit code 2; library callers can catch it.
"""


class RedgymError(Exception):
    """A problem with the user's input, reported as one line, never as a traceback."""


class ServerError(RedgymError):
    """A defender server failed a request after its retries (the input was fine): a training step whose rollout
    hits it is not trained; the run stops (or, with ``http_skip_failed_steps``, skips the step)."""


class RequestBudgetSpent(RedgymError):
    """``http_max_requests`` is reached: the run stops before the request that would exceed it, never skips."""


class TrainingStopped(Exception):
    """Training stopped on SIGINT/SIGTERM after finishing a step and writing its checkpoint (resumable)."""

    def __init__(self, step: int, signum: int, out):
        import signal

        self.step, self.signum, self.out = step, signum, out
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; its checkpoint is saved")
