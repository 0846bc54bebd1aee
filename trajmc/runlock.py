"""One writer per run directory: ``RUN/.lock``.

A process that writes a run directory (``simulate``, ``simulate --resume``, ``validate`` and ``analyze``,
figures included) opens ``RUN/.lock`` (never through a symbolic link) and holds ``fcntl.flock(LOCK_EX)`` on
it for as long as it writes; the file records its pid, host, command and start time, for the message a
second writer gets.  The kernel drops a flock when its process dies, however it dies (SIGKILL included), so a
lock file left by a killed process -- whatever pid or host it records -- is free: the next writer takes it
over (with a warning that names the process that left it).  The file is removed when the lock is released.

On a file system that does not support flock (``ENOLCK``, ``EOPNOTSUPP``), the record decides: the lock file
is created with ``O_EXCL``; an existing one whose process ran on this host and no longer exists is stale and
taken over; one recorded by another host is refused (its process cannot be checked from here), with the
advice to remove the file if that process is gone.

Locks are reentrant within a thread (``analyze`` takes the lock, then draws its figures under it); another
thread or process is refused.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import threading
import time
import warnings
from pathlib import Path

from .errors import RunError

try:  # POSIX; elsewhere only the O_EXCL record is used
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["LOCK_NAME", "run_lock", "RunLock", "lock_record"]

LOCK_NAME = ".lock"
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}
_held: dict = {}  # (real path, thread id) -> [RunLock, depth]
_guard = threading.Lock()


def _record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv)[:300]}


def lock_record(run_dir):
    """The record in ``RUN/.lock`` (a dict), or None if there is none or it cannot be read."""
    try:
        with open(Path(run_dir) / LOCK_NAME, "rb") as fh:
            rec = json.loads(fh.read(4096).decode("utf-8", "replace") or "null")
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _who(rec) -> str:
    if not rec:
        return "a process that left no record"
    pid, host = rec.get("pid", "?"), rec.get("host", "?")
    cmd = str(rec.get("command", ""))[:120]
    return f"pid {pid} on {host}" + (f", since {rec['started']}" if rec.get("started") else "") + \
        (f": {cmd}" if cmd else "")


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, TypeError):
        return True  # another user's process, or a record we cannot interpret: assume it runs
    return True


def _write_record(fd):
    data = json.dumps(_record()).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _read_fd(fd):
    try:
        rec = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "null")
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _busy(run_dir, rec, extra=""):
    return RunError(f"{run_dir}: in use by another trajmc process ({_who(rec)}); wait for it to finish or stop "
                    f"it{extra}")


class RunLock:
    """The lock on one run directory, held by this process until :meth:`release`."""

    def __init__(self, run_dir):
        self.dir = Path(run_dir)
        self.path = self.dir / LOCK_NAME
        self.fd = None
        self.stale = None  # the record of a stale lock this one took over

    def acquire(self):
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        for _ in range(100):  # only a lock released (and its file removed) between open and flock repeats
            if self.path.is_symlink():
                raise RunError(f"{self.path}: is a symbolic link; trajmc does not follow it (remove it)")
            if fcntl is None:
                return self._acquire_excl()
            try:
                fd, created = os.open(self.path, flags | os.O_EXCL, 0o644), True
            except FileExistsError:
                try:
                    fd, created = os.open(self.path, flags & ~os.O_CREAT), False
                except FileNotFoundError:  # removed by its releasing owner meanwhile
                    continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                rec = _read_fd(fd)
                os.close(fd)
                raise _busy(self.dir, rec) from None
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    os.close(fd)
                    raise
                if created:  # created with O_EXCL: ours, as the fallback would have it
                    _write_record(fd)
                    self.fd = fd
                    return self
                os.close(fd)
                return self._acquire_excl()
            try:  # the file we locked must still be the one at the path (a releasing owner removes it)
                same = os.path.samestat(os.fstat(fd), os.stat(self.path, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            rec = _read_fd(fd)
            if rec is not None:
                self.stale = rec
            _write_record(fd)
            self.fd = fd
            return self
        raise RunError(f"{self.path}: could not be locked (it keeps being replaced)")  # pragma: no cover

    def _acquire_excl(self):
        """Without flock: O_EXCL creation, and the record decides whether an existing lock is stale."""
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        for _ in range(2):
            try:
                fd = os.open(self.path, flags, 0o644)
            except FileExistsError:
                rec = lock_record(self.dir)
                if rec is None or rec.get("host") != socket.gethostname():
                    raise _busy(self.dir, rec, f" (this file system has no flock, so a lock of another host cannot "
                                               f"be checked: remove {self.path} if that process is gone)") from None
                if _alive(rec.get("pid")):
                    raise _busy(self.dir, rec) from None
                self.stale = rec
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                continue
            _write_record(fd)
            self.fd = fd
            return self
        raise _busy(self.dir, lock_record(self.dir))

    def release(self):
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still holding the flock: a waiting opener sees the file change
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None


@contextlib.contextmanager
def run_lock(run_dir):
    """Hold the lock on ``run_dir`` (an existing directory) for the ``with`` block; reentrant in a thread."""
    key = (os.path.realpath(run_dir), threading.get_ident())
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is None:
        lock = RunLock(run_dir).acquire()
        if lock.stale is not None:
            warnings.warn(f"trajmc: {run_dir}: took over the lock left by {_who(lock.stale)} (no process holds it "
                          "any more)", stacklevel=3)
        entry = [lock, 1]
        with _guard:
            _held[key] = entry
    try:
        yield entry[0]
    finally:
        with _guard:
            entry[1] -= 1
            last = entry[1] == 0
            if last:
                del _held[key]
        if last:
            entry[0].release()
