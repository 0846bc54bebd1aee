"""Progress of long work: a tqdm bar on a terminal, a plain status line on stderr every ~10 s otherwise (batch
jobs, SLURM logs, notebooks), nothing when disabled.

Every long-running entry point (:func:`trajmc.simulate`, :func:`trajmc.solve`,
:func:`trajmc.validate.validate_run`, :func:`trajmc.analyze.analyze_run`) takes ``progress=`` with the
values of :data:`PROGRESS_CHOICES`, in the spirit of QuTiP's ``progress_bar``:

=================  =================================================================================
``None``, True,    a bar when stderr is a terminal, status lines otherwise ("auto")
``"auto"``
``"tqdm"``         always a tqdm bar
``"text"``         always plain status lines
False, ``""``      nothing
=================  =================================================================================

Inside :func:`use_progress` (which those entry points apply to their own ``progress=``), a ``None`` given to
the work they call means the entry point's choice: ``validate_run(run, progress=False)`` silences every
step below it.

Short work prints nothing: a bar appears only after ``delay`` seconds, the first status line after
``interval`` seconds.  Between updates a background thread keeps the status lines coming (a single
chunk of a simulation may run for hours: the log still shows that the job is alive).

>>> with Progress(total=1000, desc="solve", unit="states") as bar:   # doctest: +SKIP
...     for chunk in work:
...         bar.update(len(chunk))
"""
from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
import time

from tqdm import tqdm

from .errors import ModelError

__all__ = ["Progress", "progress_mode", "use_progress", "PROGRESS_CHOICES"]

#: the values ``progress=`` accepts, besides None, True and False
PROGRESS_CHOICES = ("auto", "tqdm", "text", "")
#: what ``progress=None`` means here (set by :func:`use_progress`)
_CURRENT = contextvars.ContextVar("trajmc_progress", default="auto")


@contextlib.contextmanager
def use_progress(progress):
    """Within the ``with`` block, ``progress=None`` means ``progress`` (None: keep the enclosing choice).

    Parameters
    ----------
    progress : bool, str or None
        A ``progress=`` value (see :func:`progress_mode`).

    Yields
    ------
    str
        The mode now in force: ``"auto"``, ``"tqdm"``, ``"text"`` or ``"off"``.
    """
    mode = progress_mode(progress)
    token = _CURRENT.set(mode)
    try:
        yield mode
    finally:
        _CURRENT.reset(token)


def progress_mode(progress) -> str:
    """Normalise a ``progress=`` argument.

    Parameters
    ----------
    progress : bool, str or None
        True or ``"auto"``: a bar on a terminal, status lines otherwise; ``"tqdm"``: a bar;
        ``"text"``: status lines; False or ``""``: nothing; None: the choice of the enclosing
        :func:`use_progress` (``"auto"`` outside any).

    Returns
    -------
    str
        ``"auto"``, ``"tqdm"``, ``"text"`` or ``"off"``.

    Raises
    ------
    ModelError
        For any other value; the message lists the valid ones.
    """
    if progress is None:
        return _CURRENT.get()
    if progress is True:
        return "auto"
    if progress is False or progress == "":
        return "off"
    if isinstance(progress, str) and progress in PROGRESS_CHOICES:
        return progress
    raise ModelError("progress", f"must be True, False, None or one of 'auto', 'tqdm', 'text', '' (off), "
                                 f"got {progress!r}")


class Progress:
    """Report the progress of ``total`` units of work.

    Parameters
    ----------
    total : int
        Units of work (chunks, states, checks, ...).
    desc : str
        What is being done; starts every status line.
    unit : str
        Name of a unit, e.g. ``"chunks"``.
    enabled : bool, str or None
        A ``progress=`` value (see :func:`progress_mode`); None means the enclosing :func:`use_progress`'s
        choice, "auto" outside any.
    stream : file, optional
        Where to write (default ``sys.stderr``).
    interval : float
        Seconds between status lines (text mode).
    delay : float
        Seconds before a bar appears (tqdm mode).
    clock : callable, optional
        Returns the time in seconds (default :func:`time.monotonic`); a test may pass its own.
    initial : int
        Units already done before this report started (a resumed run); the time left is estimated from
        the units done since.
    heartbeat : bool
        Text mode: a background thread prints a status line every ``interval`` seconds even when no
        update arrives.  Off, :meth:`poll` does the same when called.

    Attributes
    ----------
    mode : str
        ``"tqdm"``, ``"text"`` or ``"off"`` (what was chosen for this stream).
    done : int
        Units done so far.
    """

    def __init__(self, total, desc="", unit="it", enabled=None, stream=None, interval=10.0, delay=2.0, clock=None,
                 initial=0, heartbeat=True):
        self.total = max(int(total), 0)
        self.desc = desc
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        self.interval = float(interval)
        self.clock = time.monotonic if clock is None else clock
        self.done = self._initial = min(max(int(initial), 0), self.total) if self.total else max(int(initial), 0)
        self._bar = None
        self._t0 = self.clock()
        self._last = self._t0
        self._printed = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        mode = progress_mode(enabled)
        if mode == "auto":
            mode = "tqdm" if _isatty(self.stream) else "text"
        self.mode = mode
        if mode == "tqdm":
            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream, delay=delay, leave=False,
                             unit_scale=True, dynamic_ncols=True, initial=self.done)
        elif mode == "text" and heartbeat and self.interval > 0:
            self._thread = threading.Thread(target=self._beat, name="trajmc-progress", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        """Whether anything is reported."""
        return self.mode != "off"

    def update(self, n=1):
        """Record ``n`` more units done.

        Parameters
        ----------
        n : int
            Units finished since the last call (ignored unless positive).
        """
        if self.mode == "off" or n <= 0:
            return
        with self._lock:
            self.done = min(self.done + int(n), self.total) if self.total else self.done + int(n)
        if self._bar is not None:
            self._bar.update(int(n))
            return
        self.poll()

    def poll(self):
        """Text mode: print a status line if ``interval`` seconds have passed since the last one."""
        if self.mode != "text":
            return
        with self._lock:
            now = self.clock()
            if now - self._last >= self.interval:
                self._last = now
                self._status(now)

    def set_description(self, desc):
        """Change what the bar or the next status line says is being done.

        Parameters
        ----------
        desc : str
        """
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc)

    def _status(self, now, final=None):
        el = now - self._t0
        frac = self.done / self.total if self.total else 0.0
        new = self.done - self._initial  # units done in this session set the pace
        eta = (f", ~{_duration(el * (self.total - self.done) / new)} left"
               if new > 0 and frac < 1 and final is None else "")
        state = {None: "elapsed", True: "done after", False: "stopped after"}[final]
        try:
            print(f"{self.desc}: {self.done:,}/{self.total:,} {self.unit} ({100 * frac:.0f}%), "
                  f"{_duration(el)} {state}{eta}", file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed or broken stream: progress is never worth failing the work
            self.mode = "off"
            return
        self._printed = True

    def _beat(self):
        while True:
            with self._lock:
                wait = max(self._last + self.interval - self.clock(), 0.05)
            if self._stop.wait(min(wait, self.interval)):
                return
            self.poll()

    def close(self, finished=True):
        """Finish: remove the bar, or print a last status line if any was printed.

        Parameters
        ----------
        finished : bool
            Whether the work is complete (the last line says "done"), or was cut short ("stopped").
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._printed and self.mode == "text":
            with self._lock:
                if finished:
                    self.done = self.total or self.done
                self._status(self.clock(), final=bool(finished))
                self._printed = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(finished=exc_type is None)
        return False


def _duration(seconds) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    s = int(round(seconds))
    if s < 100:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _isatty(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
