"""Run directories: resolved model, provenance, accumulators, estimates.

Layout::

    RUN/model.toml            resolved model; its [simulation] holds the seed entropy, trajectories, chunk size,
                              the path taken and whether records and Delta s_obs streaming were on
    RUN/provenance.json       schema, versions, git commit, seed, chunking, path, memory estimate, timings,
                              status, and the SHA-256 of every other file
    RUN/accumulators.npz      raw streaming sums from which load_run rebuilds the Ensemble
    RUN/entropy_reference.npz the exact -ln(p_t/V) the run streamed Delta s_obs against (if it did)
    RUN/records.npz           per-trajectory records (optional)
    RUN/estimates.csv/.parquet, RUN/p_system.csv

Every file is written to a temporary name and renamed, so a reader never sees half a file;
``provenance.json`` says ``complete`` only after the rest is written.  Figures are drawn by the
command line (``trajmc.plotting``), never here.

A process writes a run directory only while it holds its lock (``RUN/.lock``, :mod:`trajmc.runlock`);
taking the lock removes the temporary files a killed writer left.  An existing directory is reused only
when it holds nothing (or only such leftovers), or with ``overwrite=True`` when everything in it was
written by trajmc.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numba
import numpy as np
import pandas as pd
import scipy

from . import engine
from ._version import __version__
from .cluster import DaskSession
from .ensemble import Ensemble
from .errors import RunError, TrajmcError
from .model import load_model, toml_dumps
from .runlock import LOCK_NAME, run_lock
from .simulation import execute, extended, make_stats, plan_run
from .tables import windows_from

__all__ = ["RunWriter", "save_run", "save_new_run", "extend_run", "load_run", "resume_run",
           "provenance", "default_run_dir", "atomic_write",
           "atomic_text", "locked", "output_dir", "remove_leftovers"]

SCHEMA = 4
_UMASK = os.umask(0)
os.umask(_UMASK)
#: files whose SHA-256 a complete run's provenance.json records (with records.npz and _fixed_files; every
#: checkpoint records _fixed_files, so an interrupted run cannot be resumed under another model)
CHECKED_FILES = ("model.toml", "estimates.csv", "estimates.parquet", "p_system.csv", "accumulators.npz")
STATUSES = ("running", "complete")
BACKEND_KEYS = ("backend", "scheduler", "workers", "worker_compile_s")
#: everything trajmc writes into a run directory (``overwrite`` removes these and nothing else)
RUN_FILES = set(CHECKED_FILES) | {"provenance.json", "entropy_reference.npz", "records.npz", "validation.json",
                                  "validation.md", LOCK_NAME}
#: sub-directories of a run and the files trajmc writes into them
RUN_SUBDIRS = {"figures": (".png",), "analysis": (".csv",)}
#: the temporary files of atomic_write: ``.<name>.<8 random characters>.tmp`` (tempfile.mkstemp)
_TMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def atomic_write(path: Path, write):
    """``write(fileobj)`` into a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_text(path, text):
    atomic_write(path, lambda fh: fh.write(text.encode()))


def _sha(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_commit():
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _acc_arrays(acc) -> dict:
    """Everything of the accumulators that is saved (records aside), as plain arrays."""
    d = {k: v for k, v in acc.arrays().items() if not k.startswith("rec_")}
    w = acc.windows
    d.update(win_lo=w.lo, win_wid=w.wid, win_qlo=w.qlo, win_qwid=w.qwid, chunks_done=np.array(acc.chunks_done),
             wall_s=np.array(acc.wall_s))
    return d


def accumulator_checksum(acc) -> str:
    """SHA-256 over the raw accumulators, windows and paths: any later change to the stored data is detected."""
    h = hashlib.sha256()
    for k, a in sorted(_acc_arrays(acc).items()):
        if k == "wall_s":
            continue
        h.update(k.encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _records_of(plan, acc):
    """The finished trajectories' records (a prefix) and their checksum; (None, "") without records."""
    if acc.rec_x is None:
        return None, ""
    done = min(acc.chunks_done * plan.chunk_size, plan.trajectories)
    rec = {k: getattr(acc, f"rec_{k}")[:done] for k in ("x", "n", "w", "E") if getattr(acc, f"rec_{k}") is not None}
    h = hashlib.sha256()
    for k in sorted(rec):
        h.update(np.ascontiguousarray(rec[k]).tobytes())
    return rec, h.hexdigest()


def provenance(plan, acc, stats=None, status="running", files=None) -> dict:
    d = {"schema_version": SCHEMA, "status": status,
         "created": datetime.now(UTC).isoformat(timespec="seconds"),
         "software": {"trajmc": __version__, "python": platform.python_version(), "numpy": np.__version__,
                      "numba": numba.__version__, "scipy": scipy.__version__, "pandas": pd.__version__,
                      "platform": platform.platform()},
         "git_commit": git_commit(), "command": sys.argv,
         "model": {"name": plan.model.name, "digest": plan.model.digest, "states": plan.n_states},
         "engine": plan.info(),
         "seed": {"entropy": str(plan.entropy), "chunk_seeding": "SeedSequence(entropy, spawn_key=(chunk,))",
                  "generator": "xoshiro256++ per chunk, ziggurat exponentials"},
         "chunking": {"trajectories": plan.trajectories, "chunk_size": plan.chunk_size, "chunks": plan.n_chunks,
                      "chunks_done": acc.chunks_done},
         "records": plan.record, "paths": plan.paths,
         "checksums": {"accumulators_sha256": accumulator_checksum(acc)}}
    if files:
        d["checksums"]["files_sha256"] = files
    if stats is not None:
        d["timings"] = {"wall_s": stats["wall_s"], "compile_s": stats["compile_s"], "threads": stats["threads"],
                        "ns_per_jump_thread": stats["ns_per_jump"]}
        d["jumps"] = stats["jumps"]
        d["first_law"] = {"violations": int(acc.viol[0]), "samples": int(acc.viol[1])}
        d["estimator"] = {"bias_correction": stats["bias_correction"], "se_method": stats["se_method"]}
        d["backend"] = {k: stats[k] for k in BACKEND_KEYS if k in stats}
    return d


def _resolved_model_toml(plan):
    d = plan.model.to_dict()
    d["simulation"] = {"trajectories": plan.trajectories, "seed": plan.entropy, "chunk_size": plan.chunk_size,
                       "engine": plan.path, "records": plan.record, "trajectory_entropy": plan.trajectory_entropy}
    if plan.model.simulation.get("max_jumps") is not None:
        d["simulation"]["max_jumps"] = plan.model.simulation["max_jumps"]
    return toml_dumps(d)


def _save_accumulators(run_dir, plan, acc):
    """Records first, then the accumulators with both checksums inside: one rename commits a checkpoint
    (records written ahead of an older accumulators file are only read up to its ``chunks_done``)."""
    rec, rec_sum = _records_of(plan, acc)
    if rec is not None:
        atomic_write(run_dir / "records.npz", lambda fh: np.savez_compressed(fh, **rec))
    arrays = _acc_arrays(acc)
    if plan.network is not None:
        arrays["states"] = plan.network.states
    arrays.update(checksum=np.array(accumulator_checksum(acc)), records_checksum=np.array(rec_sum))
    atomic_write(run_dir / "accumulators.npz", lambda fh: np.savez(fh, **arrays))


def _save_reference(run_dir, plan):
    if plan.trajectory_entropy:
        tab = plan.tables
        atomic_write(run_dir / "entropy_reference.npz", lambda fh: np.savez(fh, lnq=tab.lnq, dsbin=tab.dsbin))


def _fixed_files(plan) -> tuple:
    """The files written once, before the first chunk: every checkpoint records their SHA-256."""
    return ("model.toml",) + (("entropy_reference.npz",) if plan.trajectory_entropy else ())


def _expected_files(plan, status) -> set:
    if status != "complete":
        return set(_fixed_files(plan))
    return set(_fixed_files(plan) + CHECKED_FILES + (("records.npz",) if plan.record else ()))


def output_dir(run_dir, name, create=True) -> Path:
    """``RUN/<name>`` (``figures``, ``analysis``) as a real directory of the run, created if missing (unless
    ``create`` is false: only the check).  A symbolic link there is refused, never followed: trajmc writes only
    inside the run directory."""
    d = Path(run_dir) / name
    if d.is_symlink():
        raise RunError(f"{d}: is a symbolic link; trajmc writes only inside the run directory and does not follow "
                       "it (remove the link; a real directory is created in its place)")
    if d.exists() and not d.is_dir():
        raise RunError(f"{d}: exists and is not a directory")
    if create:
        d.mkdir(exist_ok=True)
    return d


def remove_leftovers(run_dir) -> list:
    """Remove the temporary files (``.<name>.XXXXXXXX.tmp``) of writes cut short by a kill; called with the run's
    lock held (no other writer can be in the middle of a write).  Returns their paths within the run."""
    run_dir = Path(run_dir)
    gone = []
    for d in [run_dir] + [run_dir / n for n in RUN_SUBDIRS]:
        if d.is_symlink() or not d.is_dir():
            continue
        for p in d.iterdir():
            if _TMP.match(p.name) and not p.is_dir():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                gone.append(str(p.relative_to(run_dir)))
    return gone


@contextlib.contextmanager
def locked(run_dir):
    """Hold the run directory's lock for the ``with`` block (reentrant in a thread); the first holder removes the
    temporary files a killed writer left."""
    if not Path(run_dir).is_dir():
        raise RunError(f"{run_dir}: no such run directory")
    with run_lock(run_dir) as lock:
        if not getattr(lock, "cleaned", False):
            remove_leftovers(run_dir)
            lock.cleaned = True
        yield lock


def _foreign(run_dir):
    """The first entry of ``run_dir`` that trajmc did not write, or None."""
    for p in sorted(Path(run_dir).iterdir()):
        n = p.name
        if n in RUN_SUBDIRS:
            if p.is_symlink():  # overwrite removes the link, never what it points to
                continue
            if not p.is_dir():
                return n
            for q in sorted(p.iterdir()):
                if q.is_dir() or not (q.name.endswith(RUN_SUBDIRS[n]) or _TMP.match(q.name)):
                    return f"{n}/{q.name}"
        elif (n not in RUN_FILES and not _TMP.match(n)) or (p.is_dir() and not p.is_symlink()):
            return n
    return None


def _only_leftovers(run_dir) -> bool:
    """Nothing but a lock file and temporary files: what a run killed before its first file leaves."""
    return all(p.name == LOCK_NAME or _TMP.match(p.name) for p in Path(run_dir).iterdir())


def _state(run_dir):
    """What an existing run directory (trajmc's files only) holds: ('complete' | 'resumable' | 'damaged', detail)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan, acc, prov = _read(run_dir, allow_partial=True)
    except Exception as exc:  # noqa: BLE001 - whatever fails, the directory cannot be resumed
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return "damaged", text.removeprefix(f"{run_dir}: ").removeprefix(f"{run_dir}/")
    if prov.get("status") == "complete":
        return "complete", ""
    return "resumable", f"{acc.chunks_done} of {plan.n_chunks} chunks"


def _wipe(run_dir):
    """Remove what trajmc wrote into ``run_dir`` (everything in it, as :func:`_foreign` checked), except the lock."""
    for p in Path(run_dir).iterdir():
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _not_ours(run_dir, bad, overwrite):
    extra = " (--overwrite replaces only run directories written by trajmc)" if overwrite else ""
    return RunError(f"{run_dir}: run directory exists and is not empty: it holds {bad!r}, which trajmc did not "
                    f"write; choose another --out{extra}")


def _claim(run_dir, overwrite):
    """With the lock held: make ``run_dir`` ready for a new run, or refuse with what it holds and what to do."""
    bad = _foreign(run_dir)
    if bad is not None:
        raise _not_ours(run_dir, bad, overwrite)
    if _only_leftovers(run_dir):
        return
    if not overwrite:
        state, detail = _state(run_dir)
        if state == "complete":
            raise RunError(f"{run_dir}: holds a complete run; choose another --out, or replace it with --overwrite")
        if state == "resumable":
            raise RunError(f"{run_dir}: holds an interrupted run ({detail}); finish it with `python -m trajmc "
                           f"simulate --resume {run_dir}`, or start afresh with --overwrite")
        raise RunError(f"{run_dir}: holds an unfinished run that cannot be resumed ({detail}); reuse the "
                       "directory with --overwrite")
    _wipe(run_dir)


class RunWriter:
    """Owns a run directory while a simulation fills it: holds its lock from :meth:`create` or :meth:`resume`
    until :meth:`run` ends (or :meth:`close`)."""

    def __init__(self, run_dir, plan, acc, lock=None):
        self.dir = Path(run_dir)
        self.plan = plan
        self.acc = acc
        self._files = None
        self._lock = lock if lock is not None else contextlib.ExitStack()

    @classmethod
    def create(cls, run_dir, plan, overwrite=False):
        run_dir = Path(run_dir)
        if run_dir.exists() and not run_dir.is_dir():
            raise RunError(f"{run_dir}: exists and is not a directory")
        if run_dir.is_dir() and (bad := _foreign(run_dir)) is not None:  # refused without touching it
            raise _not_ours(run_dir, bad, overwrite)
        acc = engine.new_accumulators(plan)  # allocate first: a request too large writes nothing
        made = not run_dir.exists()
        lock = contextlib.ExitStack()
        try:
            # Ctrl-C / SIGTERM wait from the directory's creation to its first checkpoint: the directory is then
            # resumable (a signal between mkdir and the lock used to leave a directory holding only a lock file)
            with engine.StopFlag() as stop:
                run_dir.mkdir(parents=True, exist_ok=True)
                lock.enter_context(locked(run_dir))
                _claim(run_dir, overwrite)
                w = cls(run_dir, plan, acc, lock)
                atomic_text(run_dir / "model.toml", _resolved_model_toml(plan))
                _save_reference(run_dir, plan)
                w.checkpoint(w.acc)
            if stop.set:
                raise KeyboardInterrupt
        except BaseException:
            lock.close()
            if made:
                with contextlib.suppress(OSError):
                    run_dir.rmdir()  # refused before anything was written: leave no empty directory
            raise
        return w

    @classmethod
    def resume(cls, run_dir):
        run_dir = Path(run_dir)
        lock = contextlib.ExitStack()
        try:
            lock.enter_context(locked(run_dir))
            try:
                plan, acc, prov = _read(run_dir, allow_partial=True)
            except RunError as exc:
                if _foreign(run_dir) is None:  # trajmc's files (or only the leftovers of a killed start)
                    raise RunError(f"{exc}; nothing can be resumed: start afresh with `python -m trajmc simulate "
                                   f"MODEL --out {run_dir} --overwrite`") from None
                raise
        except BaseException:
            lock.close()
            raise
        return cls(run_dir, plan, acc, lock), prov

    def close(self):
        """Release the run directory's lock."""
        self._lock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def checkpoint(self, acc):
        if self._files is None:  # written before the first checkpoint and never again: hash them once
            self._files = {f: _sha(self.dir / f) for f in _fixed_files(self.plan)}
        _save_accumulators(self.dir, self.plan, acc)
        atomic_text(self.dir / "provenance.json", json.dumps(provenance(self.plan, acc, files=self._files), indent=2))

    def run(self, threads, progress=False, backend="threads", scheduler=None, workers=None) -> Ensemble:
        try:
            ens = execute(self.plan, self.acc, threads, progress, checkpoint=self.checkpoint, backend=backend,
                          scheduler=scheduler, workers=workers)
            with engine.StopFlag():  # the run is finished: a late Ctrl-C must not leave half a directory
                self.checkpoint(ens.acc)
                save_run(ens, self.dir)
        finally:
            self.close()
        ens.stats["run_dir"] = str(self.dir)
        return ens


def save_new_run(ens: Ensemble, run_dir, overwrite=False) -> Path:
    """Write a finished ensemble made in Python (``simulate`` without ``out``) as a new run directory.

    The files are those of ``simulate(..., out=run_dir)``; :func:`load_run` rebuilds the same ensemble.  A
    directory that exists must be empty (or, with ``overwrite``, hold only trajmc's files).
    """
    run_dir = Path(run_dir)
    if ens.acc.chunks_done != ens.plan.n_chunks:
        raise RunError(f"{run_dir}: the ensemble is unfinished ({ens.acc.chunks_done} of {ens.plan.n_chunks} chunks)")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir}: exists and is not a directory")
    if run_dir.is_dir() and (bad := _foreign(run_dir)) is not None:
        raise _not_ours(run_dir, bad, overwrite)
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with locked(run_dir), engine.StopFlag():
            _claim(run_dir, overwrite)
            _save_run(ens, run_dir)
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                if not any(run_dir.iterdir()):
                    run_dir.rmdir()
        raise
    ens.stats["run_dir"] = str(run_dir)
    return run_dir


#: what a finished run directory holds that describes its old result (removed when the run is extended)
_DERIVED = ("estimates.csv", "estimates.parquet", "p_system.csv", "validation.json", "validation.md")


def extend_run(run_dir, trajectories, out=None, threads=None, progress=False, overwrite=False) -> Ensemble:
    """Add trajectories to a finished run: the result is bit-identical to one run of ``trajectories`` with the
    same seed and chunk size (chunks are seeded by index; the new ones are run and added in order).

    Parameters
    ----------
    run_dir : str or os.PathLike
        A complete run directory.
    trajectories : int
        The total wanted (more than the run has; the run's own number must be a multiple of its chunk size).
    out : str or os.PathLike, optional
        Write the longer run there (a new or empty directory) and leave ``run_dir`` as it is.  Default: extend
        ``run_dir`` in place (its old estimates, figures and validation reports are removed first; an
        interrupted extension is finished with ``simulate --resume``).
    threads : int, optional
        Numba threads (default: all cores); never changes the result.
    progress : bool
        Report progress on stderr.
    overwrite : bool
        With ``out``: replace a run directory there that holds only trajmc's files.

    Returns
    -------
    Ensemble
        The longer run, as :func:`load_run` of the directory written gives it.

    Raises
    ------
    trajmc.RunError
        ``run_dir`` is not a complete run.
    trajmc.ModelError
        ``trajectories`` cannot be reached bit-identically (one line saying why).
    """

    threads = engine.resolve_threads(threads)
    w, prov = RunWriter.resume(run_dir)
    with w:
        if prov.get("status") != "complete" or w.acc.chunks_done != w.plan.n_chunks:
            raise RunError(f"{run_dir}: the run is unfinished ({w.acc.chunks_done} of {w.plan.n_chunks} chunks); "
                           f"finish it with `python -m trajmc simulate --resume {run_dir}` before extending it")
        plan, acc = extended(w.plan, w.acc, trajectories, threads)
        if out is not None:
            w.close()
            new = RunWriter.create(out, plan, overwrite=overwrite)
            new.acc = acc
            with engine.StopFlag():
                new.checkpoint(acc)
            return new.run(threads, progress)
        with engine.StopFlag():  # the directory goes from one consistent state to the next
            for f in _DERIVED:
                with contextlib.suppress(FileNotFoundError):
                    (w.dir / f).unlink()
            for sub, ends in RUN_SUBDIRS.items():
                d = w.dir / sub
                if d.is_dir() and not d.is_symlink():
                    for q in d.iterdir():
                        if q.name.endswith(ends) and q.is_file():
                            q.unlink()
            w.plan, w.acc, w._files = plan, acc, None
            atomic_text(w.dir / "model.toml", _resolved_model_toml(plan))
            w.checkpoint(acc)
        return w.run(threads, progress)


def save_run(ens: Ensemble, run_dir):
    """Write a finished ensemble's run directory (model, estimates, accumulators, provenance)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with locked(run_dir):
        return _save_run(ens, run_dir)


def _save_run(ens, run_dir):
    plan, acc = ens.plan, ens.acc
    if not (run_dir / "model.toml").exists():
        atomic_text(run_dir / "model.toml", _resolved_model_toml(plan))
        _save_reference(run_dir, plan)
    _save_accumulators(run_dir, plan, acc)
    th = ens.thermo()
    atomic_text(run_dir / "estimates.csv", th.to_csv())
    atomic_write(run_dir / "estimates.parquet", lambda fh: th.to_parquet(fh))
    ps, pse = ens.p_system(), ens.p_system_se()
    cols = {}
    for s in range(ps.shape[1]):
        cols[f"p_{s}"] = ps[:, s]
        cols[f"p_{s}_se"] = pse[:, s]
    atomic_text(run_dir / "p_system.csv", pd.DataFrame(cols, index=pd.Index(ens.times, name="t")).to_csv())
    files = {f: _sha(run_dir / f) for f in sorted(_expected_files(plan, "complete"))}
    prov = provenance(plan, acc, ens.stats, status="complete", files=files)
    atomic_text(run_dir / "provenance.json", json.dumps(prov, indent=2))
    return run_dir


def _json(path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: not valid JSON ({exc})") from None


def _field(d, path, types, run_dir, bool_ok=False):
    cur = d
    for k in path:
        if not isinstance(cur, dict) or k not in cur:
            raise RunError(f"{run_dir}/provenance.json: missing {'.'.join(path)}")
        cur = cur[k]
    if (isinstance(cur, bool) and not bool_ok) or not isinstance(cur, types):
        raise RunError(f"{run_dir}/provenance.json: {'.'.join(path)} has the wrong type ({type(cur).__name__})")
    return cur


def _read(run_dir, allow_partial=False):
    run_dir = Path(run_dir)
    for name in ("model.toml", "provenance.json", "accumulators.npz"):
        if not (run_dir / name).is_file():
            raise RunError(f"{run_dir}: not a trajmc run directory (missing {name})")
    prov = _json(run_dir / "provenance.json")
    if not isinstance(prov, dict):
        raise RunError(f"{run_dir}/provenance.json: not a provenance record (a JSON object)")
    if prov.get("schema_version") != SCHEMA:
        raise RunError(f"{run_dir}/provenance.json: run directory schema {prov.get('schema_version')!r} (this trajmc "
                       f"reads {SCHEMA})")
    status = prov.get("status")
    if status not in STATUSES:
        raise RunError(f"{run_dir}/provenance.json: status {status!r} is not one of {', '.join(STATUSES)}")
    acc_sum = _field(prov, ("checksums", "accumulators_sha256"), str, run_dir)
    files = _field(prov, ("checksums", "files_sha256"), dict, run_dir)
    if not all(isinstance(h, str) for h in files.values()):
        raise RunError(f"{run_dir}/provenance.json: checksums.files_sha256 holds a value that is not a string")
    try:
        model = load_model(run_dir / "model.toml")
    except TrajmcError as exc:
        raise RunError(f"{run_dir}/model.toml: {exc}") from None
    sim = model.simulation
    if str(sim["seed"]) != _field(prov, ("seed", "entropy"), str, run_dir) \
            or _field(prov, ("chunking", "trajectories"), int, run_dir) != sim["trajectories"] \
            or _field(prov, ("chunking", "chunk_size"), int, run_dir) != sim["chunk_size"]:
        raise RunError(f"{run_dir}: provenance.json (seed, trajectories, chunk size) disagrees with model.toml")
    if _field(prov, ("model", "digest"), str, run_dir) != model.digest:
        raise RunError(f"{run_dir}: model.toml was changed after the run (its physics digest differs from "
                       "provenance.json)")
    if _field(prov, ("model", "name"), str, run_dir) != model.name:
        raise RunError(f"{run_dir}: model.toml was changed after the run (its name differs from provenance.json)")
    paths = prov.get("paths", 0)
    if isinstance(paths, bool) or not isinstance(paths, int):
        raise RunError(f"{run_dir}/provenance.json: paths has the wrong type")
    entropy = bool(sim.get("trajectory_entropy"))
    with warnings.catch_warnings():  # the run's size was accepted (and warned about) when it was created:
        warnings.filterwarnings("ignore", message="trajmc: the run will make")  # reading it refuses nothing
        plan = plan_run(model, records=bool(sim.get("records")), paths=paths, engine_=sim.get("engine") or "auto",
                        threads=1, trajectory_entropy=False, max_jumps=math.inf)
    if entropy:
        try:
            with np.load(run_dir / "entropy_reference.npz") as z:
                lnq, dsbin = z["lnq"], z["dsbin"]
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError) as exc:
            raise RunError(f"{run_dir}/entropy_reference.npz: missing or unreadable ({exc})") from None
        if plan.network is None or lnq.shape != (plan.n_states, plan.n_t) or dsbin.shape != (2,):
            raise RunError(f"{run_dir}/entropy_reference.npz: does not match model.toml")
        plan.tables = plan.tables._replace(lnq=np.ascontiguousarray(lnq, dtype=np.float64),
                                           dsbin=np.ascontiguousarray(dsbin, dtype=np.float64))
        plan.trajectory_entropy = True
    got = {"engine.path": _field(prov, ("engine", "path"), str, run_dir),
           "engine.trajectory_entropy": _field(prov, ("engine", "trajectory_entropy"), bool, run_dir, bool_ok=True),
           "records": _field(prov, ("records",), bool, run_dir, bool_ok=True),
           "chunking.chunks": _field(prov, ("chunking", "chunks"), int, run_dir)}
    want = {"engine.path": plan.path, "engine.trajectory_entropy": plan.trajectory_entropy, "records": plan.record,
            "chunking.chunks": plan.n_chunks}
    for k in got:
        if got[k] != want[k]:
            raise RunError(f"{run_dir}: provenance.json {k} = {got[k]!r} disagrees with model.toml ({want[k]!r})")
    if set(files) != _expected_files(plan, status):
        raise RunError(f"{run_dir}/provenance.json: checksums.files_sha256 lists {sorted(files)}, not the files a "
                       f"{status} run has ({', '.join(sorted(_expected_files(plan, status)))})")
    for f in sorted(_expected_files(plan, status) - {"accumulators.npz", "records.npz"}):
        if not (run_dir / f).is_file() or _sha(run_dir / f) != files[f]:
            raise RunError(f"{run_dir}/{f}: missing or changed after the run (its SHA-256 differs from "
                           "provenance.json)")
    try:
        with np.load(run_dir / "accumulators.npz", allow_pickle=False) as z:
            arr = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError) as exc:
        raise RunError(f"{run_dir}/accumulators.npz: unreadable ({exc})") from None
    for k in ("win_lo", "win_wid", "win_qlo", "win_qwid", "chunks_done", "wall_s", "checksum", "records_checksum"):
        if k not in arr:
            raise RunError(f"{run_dir}/accumulators.npz: lacks {k}")
    try:
        win = windows_from(arr["win_lo"], arr["win_wid"], arr["win_qlo"], arr["win_qwid"], plan.n_levels)
        done = int(arr["chunks_done"])
        wall = float(arr["wall_s"])
        if any(a.shape != (plan.n_baths,) for a in win) or np.any(win.wid < 0) or np.any(win.qwid < 1):
            raise ValueError("windows of the wrong shape")
    except (TypeError, ValueError) as exc:
        raise RunError(f"{run_dir}/accumulators.npz: malformed bookkeeping ({exc})") from None
    w0 = plan.windows  # windows only grow from the plan's: stored ones must contain them
    if np.any(win.lo > w0.lo) or np.any(win.lo + win.wid < w0.lo + w0.wid) or np.any(win.qlo > w0.qlo) \
            or np.any(win.qlo + win.qwid < w0.qlo + w0.qwid):
        raise RunError(f"{run_dir}/accumulators.npz: its energy windows do not contain the model's (altered?)")
    acc = engine.new_accumulators(plan)
    engine.grow_accumulators(plan, acc, win)  # the windows the run grew to
    acc.chunks_done, acc.wall_s = done, wall
    for k, want in acc.arrays().items():
        if k.startswith("rec_"):
            continue
        if k not in arr:
            raise RunError(f"{run_dir}/accumulators.npz: lacks {k}")
        got = arr[k]
        if got.dtype != want.dtype or got.shape != want.shape:
            raise RunError(f"{run_dir}/accumulators.npz: {k} has the wrong shape or type for model.toml")
        setattr(acc, k, got)
    if plan.network is not None and ("states" not in arr or not np.array_equal(arr["states"], plan.network.states)):
        raise RunError(f"{run_dir}: the stored states do not belong to model.toml (was the model edited?)")
    if not 0 <= done <= plan.n_chunks:
        raise RunError(f"{run_dir}/accumulators.npz: chunks_done = {done} is not in 0..{plan.n_chunks}")
    n_done = min(done * plan.chunk_size, plan.trajectories)
    for k in ("sys2", "counts"):
        a = getattr(acc, k)
        if a is not None and (np.any(a.reshape(plan.n_t, -1).sum(axis=1) != n_done) or np.any(a < 0)):
            raise RunError(f"{run_dir}: occupation counts do not add up to the {n_done} trajectories run (tampered?)")
    have = accumulator_checksum(acc)
    if str(arr["checksum"]) != have:
        raise RunError(f"{run_dir}: accumulators.npz does not match its own checksum (altered data?)")
    if status == "complete":
        if acc_sum != have:
            raise RunError(f"{run_dir}: accumulators.npz does not match the checksum in provenance.json "
                           "(altered data?)")
        if _field(prov, ("chunking", "chunks_done"), int, run_dir) != done or done != plan.n_chunks \
                or _field(prov, ("jumps",), int, run_dir) != int(acc.jumps.sum()) \
                or _field(prov, ("first_law", "violations"), int, run_dir) != int(acc.viol[0]) \
                or _field(prov, ("first_law", "samples"), int, run_dir) != int(acc.viol[1]):
            raise RunError(f"{run_dir}: provenance.json (chunks done, jumps, first-law counts) disagrees with "
                           "accumulators.npz")
        for f in ("accumulators.npz",) + (("records.npz",) if plan.record else ()):
            if not (run_dir / f).is_file() or _sha(run_dir / f) != files[f]:
                raise RunError(f"{run_dir}/{f}: missing or changed after the run (its SHA-256 differs from "
                               "provenance.json)")
    if status != "complete" and not allow_partial:
        raise RunError(f"{run_dir}: incomplete run ({done} of {plan.n_chunks} chunks); "
                       f"finish it with `python -m trajmc simulate --resume {run_dir}`")
    if plan.record:
        try:
            with np.load(run_dir / "records.npz", allow_pickle=False) as z:
                rec = {k: z[k] for k in z.files}
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError) as exc:
            raise RunError(f"{run_dir}/records.npz: missing or unreadable ({exc})") from None
        for k in ("x", "n", "w", "E"):
            dst = getattr(acc, f"rec_{k}")
            if dst is None:
                continue
            if k not in rec or len(rec[k]) < n_done or rec[k].shape[1:] != dst.shape[1:]:
                raise RunError(f"{run_dir}/records.npz: holds fewer than the {n_done} finished trajectories")
            dst[:n_done] = rec[k][:n_done]
        if _records_of(plan, acc)[1] != str(arr["records_checksum"]):
            raise RunError(f"{run_dir}/records.npz: does not match the checksum in accumulators.npz (altered?)")
    return plan, acc, prov


def load_run(run_dir) -> Ensemble:
    """Rebuild the :class:`Ensemble` of a finished run directory, identical to the one that wrote it.

    Parameters
    ----------
    run_dir : str or os.PathLike
        A directory written by :func:`simulate` (``out=``) or ``python -m trajmc simulate``.

    Returns
    -------
    Ensemble
        The run's estimates, rebuilt from ``accumulators.npz`` and ``model.toml``.

    Raises
    ------
    trajmc.RunError
        The directory is missing or incomplete, or a file does not match the checksums in
        ``provenance.json`` (the message names the file).
    """
    plan, acc, prov = _read(run_dir)
    t = prov.get("timings", {}) if isinstance(prov.get("timings"), dict) else {}
    threads = t.get("threads", 1) if isinstance(t.get("threads", 1), int) else 1
    compile_s = t.get("compile_s", float("nan"))
    stats = make_stats(plan, acc, threads, compile_s if isinstance(compile_s, (int, float)) else float("nan"), 0.0)
    stats["run_dir"] = str(run_dir)
    if isinstance(prov.get("backend"), dict):  # descriptive only: never lets provenance.json overwrite a count
        stats.update({k: v for k, v in prov["backend"].items() if k in BACKEND_KEYS})
    return Ensemble(plan, acc, stats)


def resume_run(run_dir, threads, progress=False, backend="threads", scheduler=None, workers=None) -> Ensemble:
    """Finish an interrupted run in place; the result is bit-identical to an uninterrupted run
    (on any backend: chunks are seeded by index and summed exactly)."""
    w, prov = RunWriter.resume(run_dir)
    with w:
        if prov.get("status") == "complete" and w.acc.chunks_done == w.plan.n_chunks:
            raise RunError(f"{run_dir}: run is already complete (to add trajectories: `python -m trajmc simulate "
                           f"--resume {run_dir} --trajectories N`)")
        if backend != "dask":
            return w.run(threads, progress)
        session = DaskSession(scheduler, workers)  # connect before the run directory is touched
        try:
            return w.run(threads, progress, backend=backend, scheduler=session)
        finally:
            session.close()


def default_run_dir(name, root="runs"):
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{name.lstrip('.')}-{stamp}"
    d, i = base, 1
    while d.exists():
        d = Path(f"{base}-{i}")
        i += 1
    return d
