"""A small progress reporter for long work: a tqdm bar on a terminal, a one-line status on stderr every
``interval`` seconds otherwise, nothing when disabled.

Short work prints nothing: the bar appears only after ``delay`` seconds, the first status line after
``interval`` seconds.

>>> with Progress(total=1000, desc="solve", unit="states") as bar:   # doctest: +SKIP
...     for chunk in work:
...         bar.update(len(chunk))
"""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

__all__ = ["Progress"]


class Progress:
    """Report progress of ``total`` units of work.

    Parameters
    ----------
    total : int
    desc : str
    unit : str
    enabled : bool or None
        False: silent.  None or True: report (a bar on a terminal, status lines otherwise).
    stream : file, optional
        Where to write (default ``sys.stderr``).
    interval : float
        Seconds between status lines when ``stream`` is not a terminal.
    delay : float
        Seconds before a terminal bar appears.
    """

    def __init__(self, total, desc="", unit="it", enabled=None, stream=None, interval=10.0, delay=2.0):
        self.total = max(int(total), 0)
        self.desc = desc
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        self.interval = float(interval)
        self.done = 0
        self._bar = None
        self._t0 = time.monotonic()
        self._last = self._t0
        self._printed = False
        self.enabled = enabled is not False
        if self.enabled and _isatty(self.stream):

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream, delay=delay, leave=False,
                             unit_scale=True, dynamic_ncols=True)

    def update(self, n=1):
        """``n`` more units done."""
        if not self.enabled or n <= 0:
            return
        self.done = min(self.done + int(n), self.total) if self.total else self.done + int(n)
        if self._bar is not None:
            self._bar.update(int(n))
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._status(now)

    def set_description(self, desc):
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc)

    def _status(self, now):
        el = now - self._t0
        frac = self.done / self.total if self.total else 0.0
        eta = f", ~{el * (1 - frac) / frac:.0f} s left" if 0 < frac < 1 else ""
        print(f"{self.desc}: {self.done:,}/{self.total:,} {self.unit} ({100 * frac:.0f}%), {el:.0f} s{eta}",
              file=self.stream, flush=True)
        self._printed = True

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._printed:
            self.done = self.total
            self._status(time.monotonic())
            self._printed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _isatty(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
