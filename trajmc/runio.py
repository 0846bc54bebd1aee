"""Run directories: resolved model, provenance, accumulators, estimates, figures.

Layout (INTERFACE.md)::

    RUN/model.toml          resolved model; its [simulation] holds the seed entropy, trajectories, chunk size
    RUN/provenance.json     schema, versions, git commit, seed, chunking, timings, status
    RUN/accumulators.npz    raw streaming sums from which load_run rebuilds the Ensemble
    RUN/records.npz         per-trajectory states and jump counts (optional)
    RUN/estimates.csv/.parquet, RUN/p_system.csv
    RUN/figures/

Every file is written to a temporary name and renamed, so a reader never sees
half a file; ``provenance.json`` says ``complete`` only after the rest is written.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import engine
from ._version import __version__
from .ensemble import Ensemble, execute, make_stats
from .errors import RunError
from .model import load_model

__all__ = ["RunWriter", "save_run", "load_run", "provenance", "default_run_dir"]

SCHEMA = 3
ACC_KEYS = ("counts", "cross", "heat", "work", "jumps", "fingerprint", "chunks_done", "wall_s", "states", "path_t",
            "path_x", "path_len", "checksum", "records_checksum")
_UMASK = os.umask(0)
os.umask(_UMASK)


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


def accumulator_checksum(acc) -> str:
    """SHA-256 over the raw accumulators and paths: any later change to the stored data is detected."""
    h = hashlib.sha256()
    for a in (acc.counts, acc.cross, acc.heat, acc.work, acc.jumps, acc.fingerprint, np.array(acc.chunks_done),
              acc.path_t, acc.path_x, acc.path_len):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _records_of(plan, acc):
    """The finished trajectories' records (a prefix) and their checksum; (None, "") without records."""
    if acc.rec_x is None:
        return None, ""
    done = min(acc.chunks_done * plan.chunk_size, plan.trajectories)
    rec = {"x": acc.rec_x[:done], "jumps": acc.rec_n[:done]}
    if acc.rec_w is not None:
        rec["work"] = acc.rec_w[:done]
    h = hashlib.sha256()
    for k in sorted(rec):
        h.update(np.ascontiguousarray(rec[k]).tobytes())
    return rec, h.hexdigest()


def provenance(plan, acc, stats=None, status="running", extra=None) -> dict:
    import numba
    import pandas
    import scipy

    d = {"schema_version": SCHEMA, "status": status,
         "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
         "software": {"trajmc": __version__, "python": platform.python_version(), "numpy": np.__version__,
                      "numba": numba.__version__, "scipy": scipy.__version__, "pandas": pandas.__version__,
                      "platform": platform.platform()},
         "git_commit": git_commit(), "command": sys.argv,
         "model": {"name": plan.model.name, "digest": plan.model.digest,
                   "states": plan.network.n_states, "edges": plan.network.n_edges},
         "seed": {"entropy": str(plan.entropy), "chunk_seeding": "SeedSequence(entropy, spawn_key=(chunk,))",
                  "generator": "xoshiro256++ per chunk, ziggurat exponentials"},
         "chunking": {"trajectories": plan.trajectories, "chunk_size": plan.chunk_size, "chunks": plan.n_chunks,
                      "chunks_done": acc.chunks_done},
         "records": plan.record, "paths": plan.paths,
         "checksums": {"accumulators_sha256": accumulator_checksum(acc)}}
    if stats is not None:
        d["timings"] = {"wall_s": stats["wall_s"], "compile_s": stats["compile_s"], "threads": stats["threads"],
                        "ns_per_jump_thread": stats["ns_per_jump"]}
        d["jumps"] = stats["jumps"]
        d["estimator"] = {"bias_correction": stats["bias_correction"], "se_method": stats["se_method"]}
        d["backend"] = {k: stats[k] for k in ("backend", "scheduler", "workers", "worker_compile_s") if k in stats}
    if extra:
        d.update(extra)
    return d


def _resolved_model_toml(plan):
    d = plan.model.to_dict()
    d["simulation"] = {"trajectories": plan.trajectories, "seed": plan.entropy, "chunk_size": plan.chunk_size}
    import tomli_w

    return tomli_w.dumps(d)


def _save_accumulators(run_dir, plan, acc):
    """Records first, then the accumulators with both checksums inside: one rename commits a checkpoint
    (records written ahead of an older accumulators file are only read up to its ``chunks_done``)."""
    rec, rec_sum = _records_of(plan, acc)
    if rec is not None:
        atomic_write(run_dir / "records.npz", lambda fh: np.savez_compressed(fh, **rec))
    arrays = {"counts": acc.counts, "cross": acc.cross, "heat": acc.heat, "work": acc.work, "jumps": acc.jumps,
              "fingerprint": acc.fingerprint,
              "chunks_done": np.array(acc.chunks_done), "wall_s": np.array(acc.wall_s),
              "states": plan.network.states, "path_t": acc.path_t, "path_x": acc.path_x, "path_len": acc.path_len,
              "checksum": np.array(accumulator_checksum(acc)), "records_checksum": np.array(rec_sum)}
    atomic_write(run_dir / "accumulators.npz", lambda fh: np.savez(fh, **arrays))


class RunWriter:
    """Owns a run directory while a simulation fills it."""

    def __init__(self, run_dir, plan, acc):
        self.dir = Path(run_dir)
        self.plan = plan
        self.acc = acc

    @classmethod
    def create(cls, run_dir, plan):
        run_dir = Path(run_dir)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise RunError(f"{run_dir}: run directory exists and is not empty (choose another --out, or --resume it)")
        acc = engine.new_accumulators(plan)  # allocate first: a request too large writes nothing
        run_dir.mkdir(parents=True, exist_ok=True)
        w = cls(run_dir, plan, acc)
        atomic_text(run_dir / "model.toml", _resolved_model_toml(plan))
        w.checkpoint(w.acc)
        return w

    @classmethod
    def resume(cls, run_dir):
        run_dir = Path(run_dir)
        plan, acc, prov = _read(run_dir, allow_partial=True)
        return cls(run_dir, plan, acc), prov

    def checkpoint(self, acc):
        _save_accumulators(self.dir, self.plan, acc)
        atomic_text(self.dir / "provenance.json", json.dumps(provenance(self.plan, acc), indent=2))

    def run(self, threads, progress=False, backend="threads", scheduler=None, workers=None) -> Ensemble:
        ens = execute(self.plan, self.acc, threads, progress, checkpoint=self.checkpoint, backend=backend,
                      scheduler=scheduler, workers=workers)
        with engine.StopFlag():  # the run is finished: a late Ctrl-C must not leave half a directory
            self.checkpoint(ens.acc)
            save_run(ens, self.dir)
        return ens


def save_run(ens: Ensemble, run_dir, figures=True):
    """Write a finished ensemble's run directory (estimates, accumulators, provenance, figures)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    plan, acc = ens.plan, ens.acc
    if not (run_dir / "model.toml").exists():
        atomic_text(run_dir / "model.toml", _resolved_model_toml(plan))
    _save_accumulators(run_dir, plan, acc)
    th = ens.thermo()
    atomic_text(run_dir / "estimates.csv", th.to_csv())
    atomic_write(run_dir / "estimates.parquet", lambda fh: th.to_parquet(fh))
    ps, pse = ens.p_system()
    import pandas as pd

    cols = {}
    for s in range(ps.shape[1]):
        cols[f"p_{s}"] = ps[:, s]
        cols[f"p_{s}_se"] = pse[:, s]
    atomic_text(run_dir / "p_system.csv", pd.DataFrame(cols, index=pd.Index(ens.times, name="t")).to_csv())
    if figures:
        from .plotting import summary_figure

        (run_dir / "figures").mkdir(exist_ok=True)
        summary_figure(ens, run_dir / "figures" / "summary.png")
    prov = provenance(plan, acc, ens.stats, status="complete")
    atomic_text(run_dir / "provenance.json", json.dumps(prov, indent=2))
    return run_dir


def _read(run_dir, allow_partial=False):
    run_dir = Path(run_dir)
    for name in ("model.toml", "provenance.json", "accumulators.npz"):
        if not (run_dir / name).is_file():
            raise RunError(f"{run_dir}: not a trajmc run directory (missing {name})")
    try:
        prov = json.loads((run_dir / "provenance.json").read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{run_dir}/provenance.json: not valid JSON ({exc})") from None
    model = load_model(run_dir / "model.toml")
    sim = model.simulation
    ch = prov.get("chunking", {})
    if str(sim["seed"]) != prov.get("seed", {}).get("entropy") or ch.get("trajectories") != sim["trajectories"] \
            or ch.get("chunk_size") != sim["chunk_size"]:
        raise RunError(f"{run_dir}: provenance.json (seed, trajectories, chunk size) disagrees with model.toml")
    plan = engine.make_plan(model, records=prov.get("records"), paths=prov.get("paths", 0))
    try:
        with np.load(run_dir / "accumulators.npz") as z:
            arr = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise RunError(f"{run_dir}/accumulators.npz: unreadable ({exc})") from None
    missing = [k for k in ACC_KEYS if k not in arr]
    if missing or prov.get("schema_version") != SCHEMA:
        raise RunError(f"{run_dir}: run directory schema {prov.get('schema_version')} (this trajmc reads {SCHEMA})"
                       + (f"; accumulators.npz lacks {', '.join(missing)}" if missing else ""))
    n_t, n = len(plan.times), plan.network.n_states
    if arr["states"].shape != plan.network.states.shape or not np.array_equal(arr["states"], plan.network.states):
        raise RunError(f"{run_dir}: the stored states do not belong to model.toml (was the model edited?)")
    if arr["counts"].shape != (n_t, n) or arr["jumps"].shape != (plan.n_chunks,):
        raise RunError(f"{run_dir}: accumulator shapes do not match model.toml")
    done = int(arr["chunks_done"])
    n_done = min(done * plan.chunk_size, plan.trajectories)
    if np.any(arr["counts"].sum(axis=1) != n_done) or np.any(arr["counts"] < 0):
        raise RunError(f"{run_dir}: occupation counts do not add up to the {n_done} trajectories run (tampered?)")
    if prov.get("model", {}).get("digest") != model.digest:
        raise RunError(f"{run_dir}: model.toml was changed after the run (its physics digest differs from provenance.json)")
    acc = engine.Accumulators(counts=arr["counts"], cross=arr["cross"], heat=arr["heat"], jumps=arr["jumps"],
                              chunks_done=done, work=arr["work"], fingerprint=arr["fingerprint"],
                              path_t=arr["path_t"], path_x=arr["path_x"],
                              path_len=arr["path_len"], wall_s=float(arr["wall_s"]))
    have = accumulator_checksum(acc)
    if str(arr["checksum"]) != have:
        raise RunError(f"{run_dir}: accumulators.npz does not match its own checksum (altered data?)")
    if prov.get("status") == "complete" and prov.get("checksums", {}).get("accumulators_sha256") != have:
        raise RunError(f"{run_dir}: accumulators.npz does not match the checksum in provenance.json (altered data?)")
    if done < plan.n_chunks and not allow_partial:
        raise RunError(f"{run_dir}: incomplete run ({done} of {plan.n_chunks} chunks); "
                       f"finish it with `python -m trajmc simulate --resume {run_dir}`")
    if plan.record:
        acc.rec_x = np.zeros((plan.trajectories, n_t), np.int32)
        acc.rec_n = np.zeros((plan.trajectories, n_t), np.int32)
        if plan.driven:
            acc.rec_w = np.zeros((plan.trajectories, n_t), np.int32)
        keys = ("x", "jumps") + (("work",) if plan.driven else ())
        try:
            with np.load(run_dir / "records.npz") as z:
                rec = {k: z[k] for k in keys}
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise RunError(f"{run_dir}/records.npz: missing or unreadable ({exc})") from None
        if any(len(r) < n_done for r in rec.values()):
            raise RunError(f"{run_dir}/records.npz: holds fewer than the {n_done} finished trajectories")
        for k, dst in zip(keys, (acc.rec_x, acc.rec_n, acc.rec_w)):
            dst[:n_done] = rec[k][:n_done]
        if _records_of(plan, acc)[1] != str(arr["records_checksum"]):
            raise RunError(f"{run_dir}/records.npz: does not match the checksum in accumulators.npz (altered?)")
    return plan, acc, prov


def load_run(run_dir) -> Ensemble:
    """Rebuild the :class:`Ensemble` of a finished run directory, identical to the one that wrote it."""
    plan, acc, prov = _read(run_dir)
    t = prov.get("timings", {})
    stats = make_stats(plan, acc, t.get("threads", 1), t.get("compile_s", float("nan")), 0.0)
    stats["run_dir"] = str(run_dir)
    stats.update(prov.get("backend", {}))
    return Ensemble(plan, acc, stats)


def resume_run(run_dir, threads, progress=False, backend="threads", scheduler=None, workers=None) -> Ensemble:
    """Finish an interrupted run in place; the result is bit-identical to an uninterrupted run
    (on any backend: chunks are seeded by index and summed exactly)."""
    w, prov = RunWriter.resume(run_dir)
    if prov.get("status") == "complete" and w.acc.chunks_done == w.plan.n_chunks:
        raise RunError(f"{run_dir}: run is already complete")
    if backend != "dask":
        return w.run(threads, progress)
    from .cluster import DaskSession

    session = DaskSession(scheduler, workers)  # connect before the run directory is touched
    try:
        return w.run(threads, progress, backend=backend, scheduler=session)
    finally:
        session.close()


def default_run_dir(name, root="runs"):
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{name}-{stamp}"
    d, i = base, 1
    while d.exists():
        d = Path(f"{base}-{i}")
        i += 1
    return d

