"""Error types.  Every problem a user can cause is a :class:`TrajmcError`.

Messages are one line and start with the offending key path, e.g.
``baths[0].dos.n: must be a positive integer, got -3``.
"""


class TrajmcError(Exception):
    """Base class of every error trajmc raises on purpose."""


class ModelError(TrajmcError, ValueError):
    """A model file or dict is invalid; the message names the key."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)


class RunError(TrajmcError):
    """A run directory is missing, incomplete, or does not match its model."""


class UnsupportedError(TrajmcError):
    """A valid request that this version of trajmc cannot carry out yet."""
