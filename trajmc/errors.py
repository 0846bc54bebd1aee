"""Error types.  Every problem a user can cause is a :class:`TrajmcError`.

Messages are one line and start with the offending key path, e.g.
``baths[0].dos.n: must be a positive integer, got -3``.
"""


class TrajmcError(Exception):
    """Base class of every error trajmc raises on purpose.

    The command line prints such an error as one line, ``trajmc: error: <message>``, and exits with
    code 2; any other exception is a bug.
    """


class ModelError(TrajmcError, ValueError):
    """A model file or dict is invalid; the message names the key.

    Also a :class:`ValueError`, so code that catches that keeps working.  The message is
    ``"<key>: <problem>"`` (or ``problem`` alone when ``key`` is empty), on one line.

    Parameters
    ----------
    key : str
        Path of the offending key in the model file, e.g. ``"baths[0].dos.n"`` (``""`` for the model as a
        whole, e.g. a file that does not exist).
    problem : str
        What is wrong, e.g. ``"must be a positive integer, got -3"``.

    Attributes
    ----------
    key : str
        ``key``, on one line and at most 160 characters.
    problem : str
        ``problem``, on one line and at most 1000 characters.
    """

    def __init__(self, key: str, problem: str):
        self.key = key = _one_line(key, 160)
        self.problem = problem = _one_line(problem, 1000)
        super().__init__(f"{key}: {problem}" if key else problem)


def _one_line(text: str, limit: int) -> str:
    """A message part on one line and at most ``limit`` characters (the middle elided): a safety net behind
    the abbreviated values the validators echo."""
    text = str(text).replace("\r", "\\r").replace("\n", "\\n")
    if len(text) > limit:
        text = text[: limit // 2 - 2] + " ... " + text[-(limit // 2 - 3):]
    return text


class RunError(TrajmcError):
    """A run directory is missing, incomplete, or does not match its model."""


class UnsupportedError(TrajmcError):
    """A valid request that this version of trajmc cannot carry out yet."""
