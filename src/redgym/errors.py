"""One exception type for every user-facing mistake (bad config, missing model, unreadable file).

The CLI turns it into a single line on stderr and exit code 2; library callers can catch it.
"""


class RedgymError(Exception):
    """A problem with the user's input, reported as one line, never as a traceback."""
