"""Monte Carlo driver: the plan, the accumulators, waves of chunks on numba threads, checkpoints.

Trajectories are split into chunks of a fixed size (a model setting, never the thread count).  Chunk
``i`` draws from ``SeedSequence(entropy, spawn_key=(i,))``.  Chunks run in waves on numba threads.
Integer accumulators are summed per thread (exact, so order-free); float sums are kept per chunk and
added in chunk order.  The totals are therefore bit-identical for any number of threads, workers or
interruptions.

The wave runs in a helper thread while the main thread waits for it and handles SIGINT/SIGTERM: a
signal sets a flag that the kernel polls, so a run stops within milliseconds even inside a chunk that
runs for minutes.  Work not yet folded into the accumulators (at most the last ~2 s) is discarded and
redone on ``resume``: a checkpoint always holds exactly the first ``chunks_done`` chunks.
"""
from __future__ import annotations

import copy
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field, fields

import numba
import numpy as np

from . import _kernel as K
from . import _rng
from ._validate import show
from .errors import ModelError, TrajmcError
from .model import MAX_SEED, load_model
from .network import segment_energies
from .resources import check_memory, format_bytes
from .resources import memory_budget as resolve_budget
from .tables import (
    DS_BINS,
    choose_path,
    enumerated_tables,
    grown_windows,
    implicit_tables,
    initial_exit_rates,
    initial_windows,
    make_clock,
    windows_from,
)

__all__ = ["Plan", "Accumulators", "make_plan", "new_accumulators", "run_plan", "Interrupted", "resolve_seed",
           "resolve_threads", "compile_kernel", "simulate_chunk", "add_chunk"]

PATH_CAPACITY = 2000
#: per-chunk bookkeeping (jump counts, fingerprints) is O(chunks): keep it small
MAX_CHUNKS = 10_000_000
#: a wave of chunks aims at this many seconds (progress and the wave size adapt between waves)
WAVE_SECONDS = 0.5
#: per-thread buffers are folded into the totals at least this often (and after every wave if small)
FLUSH_SECONDS = 2.0
SMALL_BUFFERS = 4_000_000
#: the main thread checks for signals this often while a wave runs
POLL_SECONDS = 0.05
#: expected jumps above which a run is refused (simulation.max_jumps) or a warning is given
DEFAULT_MAX_JUMPS = 1e13
WARN_JUMPS = 1e11
#: joint states x times up to which the exact p_x(t) is computed to stream Delta s_obs by default
AUTO_ENTROPY_LIMIT = 20_000_000


class StopFlag:
    """While installed (main thread only), SIGINT/SIGTERM only set a flag (and ``ctl[0]``, which the kernel
    polls), so the run stops at a consistent point: the checkpoint always matches ``chunks_done``."""

    def __init__(self, ctl=None):
        self.set = False
        self.ctl = ctl
        self._old = None

    def _handler(self, signum, frame):
        self.set = True
        if self.ctl is not None:
            self.ctl[0] = 1

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            for sig, h in self._old.items():
                signal.signal(sig, h)
        return False


class Interrupted(TrajmcError):
    """The run was interrupted; its finished chunks are in the checkpoint."""


class SimulationError(TrajmcError):
    """The dynamics cannot be simulated (e.g. time steps below double precision)."""


def resolve_seed(seed) -> int:
    """``None | int | SeedSequence`` -> the entropy (int) that seeds every chunk."""
    if isinstance(seed, np.random.SeedSequence):
        if seed.spawn_key:
            raise ModelError("seed", "a SeedSequence with a spawn_key cannot seed a run; pass its entropy")
        return int(seed.entropy)
    if seed is None:
        return int(np.random.SeedSequence().entropy)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ModelError("seed", f"must be an integer in 0..2^256-1, None or a SeedSequence, got {show(seed)}")
    return int(seed)


def resolve_threads(threads) -> int:
    limit = numba.config.NUMBA_NUM_THREADS
    if threads is None:
        return min(limit, os.cpu_count() or 1)
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ModelError("threads", f"must be a positive integer, got {show(threads)}")
    if threads > limit:
        raise ModelError("threads", f"{threads} exceeds numba's thread limit {limit} (set NUMBA_NUM_THREADS)")
    return int(threads)


def _count(v, key, lo=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ModelError(key, f"must be an integer >= {lo}, got {show(v)}")
    return int(v)


@dataclass
class Plan:
    """Everything fixed before the first trajectory: the path, its tables, the chunking, the estimates."""

    model: object
    path: str  # "enumerated" | "implicit"
    reason: str
    segments: list | None  # [(start, Network)] on the enumerated path
    times: np.ndarray
    entropy: int
    trajectories: int
    chunk_size: int
    record: bool
    paths: int
    clock: K.Clock = field(repr=False)
    tables: object = field(repr=False)  # K.Enumerated | K.Implicit
    windows: K.Windows = field(repr=False)
    g_scale: float = 1.0
    g0: np.ndarray | None = field(default=None, repr=False)  # enumerated: float ln(p0/V) per state
    ft: bool = False  # two baths: joint (s_0, s_t, heat of bath 0) accumulated
    trajectory_entropy: bool = False  # Delta s_obs streamed (enumerated, exact p_x(t) known)
    expected_jumps: float = 0.0
    memory: dict = field(default_factory=dict)
    n_states: int = 0  # enumerated: reachable joint states (0 on the implicit path)

    @property
    def network(self):
        return self.segments[0][1] if self.segments is not None else None

    @property
    def driven(self) -> bool:
        return len(self.clock.seg_t) > 1

    @property
    def n_chunks(self) -> int:
        return -(-self.trajectories // self.chunk_size)

    @property
    def n_t(self) -> int:
        return len(self.times)

    @property
    def n_levels(self) -> int:
        return self.model.n_levels

    @property
    def n_baths(self) -> int:
        return self.model.n_baths

    @property
    def woff(self) -> int:
        return int(self.clock.woff[0])

    @property
    def n_moments(self) -> int:
        return K.M_QQ + self.n_baths**2

    def chunk_sizes(self, start, stop):
        i = np.arange(start, stop)
        return np.minimum(self.chunk_size, self.trajectories - i * self.chunk_size).astype(np.int64)

    def info(self) -> dict:
        """What provenance records about the plan."""
        return {"path": self.path, "reason": self.reason, "states": self.n_states,
                "trajectory_entropy": self.trajectory_entropy, "expected_jumps": float(self.expected_jumps),
                "memory": self.memory}


@dataclass
class Accumulators:
    """Streaming sums: memory independent of the number of trajectories (records aside).

    Common to both paths (time first): ``sys2`` (n_t, n_s, n_s) levels at 0 and t; ``heat`` (n_t, sum qwid)
    windowed heat histograms; ``qsum`` (n_t, N, n_s, n_s) heat sums by levels; ``work`` (n_t, HW); ``viol``
    (2,) first-law violations and samples checked; ``mom`` (n_t, M) float sums (see ``_kernel.M_*``);
    ``ft`` (n_t, n_s, n_s, qwid_0) two baths.  Enumerated: ``counts``, ``cross`` (n_t, n), ``dsh``
    (n_t, B + 2).  Implicit: ``marg`` (n_t, sum wid n_s), ``cross1`` (one bath), ``visited`` (N, 2).
    """

    sys2: np.ndarray
    heat: np.ndarray
    qsum: np.ndarray
    work: np.ndarray
    viol: np.ndarray
    mom: np.ndarray
    jumps: np.ndarray  # (n_chunks,) i8
    fingerprint: np.ndarray  # (n_chunks,) u8
    windows: K.Windows
    ft: np.ndarray | None = None
    counts: np.ndarray | None = None
    cross: np.ndarray | None = None
    dsh: np.ndarray | None = None
    marg: np.ndarray | None = None
    cross1: np.ndarray | None = None
    visited: np.ndarray | None = None
    rec_x: np.ndarray | None = None
    rec_n: np.ndarray | None = None
    rec_w: np.ndarray | None = None
    rec_E: np.ndarray | None = None
    path_t: np.ndarray | None = None
    path_x: np.ndarray | None = None
    path_E: np.ndarray | None = None
    path_len: np.ndarray | None = None
    chunks_done: int = 0
    wall_s: float = 0.0

    #: the arrays that are sums over trajectories (saved, checksummed, added chunk by chunk)
    SUMS = ("sys2", "heat", "qsum", "work", "viol", "mom", "ft", "counts", "cross", "dsh", "marg", "cross1")

    def arrays(self) -> dict:
        """Every array field that is present (not None), by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), np.ndarray)}


# --------------------------------------------------------------------------- plan


def make_plan(model, trajectories=None, seed=None, times=None, chunk_size=None, records=None, paths=0,
              engine=None, memory_budget=None, max_jumps=None, threads=1, trajectory_entropy=None,
              exact=None) -> Plan:
    """Validate the run parameters, choose the path and build its tables: nothing is simulated yet.

    ``exact(segments, times) -> p (n_t, n)`` supplies the exact ``p_x(t)`` (the caller's solver) when
    ``trajectory_entropy`` asks for streamed ``Delta s_obs`` (default: on the enumerated path when the
    exact solution is small).  Refuses, before allocating anything, a run whose expected number of
    jumps exceeds ``max_jumps`` or whose memory exceeds the budget (one line naming what to change).
    """
    model = load_model(model)
    if times is not None:
        model = model.with_times(times)
    sim = model.simulation
    trajectories = _count(sim["trajectories"] if trajectories is None else trajectories, "trajectories")
    chunk_size = _count(sim["chunk_size"] if chunk_size is None else chunk_size, "chunk_size")
    if isinstance(paths, bool) or not isinstance(paths, (int, np.integer)) or not 0 <= paths <= 1000:
        raise ModelError("paths", f"must be an integer in 0..1000, got {show(paths)}")
    if -(-trajectories // chunk_size) > MAX_CHUNKS:
        raise ModelError("trajectories", f"{show(trajectories)} trajectories make more than {MAX_CHUNKS:.0e} "
                                         f"chunks of {show(chunk_size)}; raise chunk_size")
    if chunk_size > 2**31 - 1:
        raise ModelError("chunk_size", f"must be below 2^31, got {show(chunk_size)}")
    entropy = resolve_seed(sim["seed"] if seed is None else seed)
    engine = (sim.get("engine") or "auto") if engine is None else engine
    records = sim.get("records") if records is None else records
    records = bool(records) if records is not None else False
    if trajectory_entropy is None:
        trajectory_entropy = sim.get("trajectory_entropy")
    max_jumps = float(sim.get("max_jumps") or DEFAULT_MAX_JUMPS) if max_jumps is None else float(max_jumps)
    budget = resolve_budget(memory_budget)
    threads = resolve_threads(threads)
    n_t, n_s, N = len(model.times), model.n_levels, model.n_baths
    seg_levels = segment_energies(model)
    clock = make_clock(model, model.times, seg_levels)
    # per joint state: totals (counts, cross) and per-thread copies, 8 bytes each per time
    per_state = 8 * n_t * 2 * (threads + 1) + 64
    path, segments, reason = choose_path(model, engine, per_state, budget)
    if path == "enumerated":
        net = segments[0][1]
        if trajectory_entropy is None:
            trajectory_entropy = exact is not None and net.n_states * n_t <= AUTO_ENTROPY_LIMIT
        elif trajectory_entropy and exact is None:
            raise ModelError("trajectory_entropy", "needs the exact solution (call through trajmc.simulate)")
        p = exact(segments, model.times) if trajectory_entropy else None
        tables, g0f, scale = enumerated_tables(segments, trajectories, p)
    else:
        if trajectory_entropy:
            raise ModelError("trajectory_entropy", "Delta s_obs needs the exact p_x(t), i.e. the enumerated path "
                                                   f"(this run is implicit: {reason})")
        trajectory_entropy = False
        tables, scale = implicit_tables(model, trajectories)
        g0f = None
    mean_exit, top_exit = initial_exit_rates(path, tables, model)
    T_end = float(model.times[-1])
    expected = float(trajectories) * T_end * float(np.max(mean_exit)) if len(mean_exit) else 0.0
    _guard_work(expected, top_exit, T_end, max_jumps, threads)
    win = initial_windows(model, path, T_end * float(np.max(mean_exit)) if len(mean_exit) else 0.0, n_s)
    ft = N == 2 and n_s * n_s * int(win.qwid[0]) * n_t <= 4_000_000
    plan = Plan(model=model, path=path, reason=reason, segments=segments, times=model.times, entropy=entropy,
                trajectories=trajectories, chunk_size=chunk_size, record=records,
                paths=int(min(paths, chunk_size, trajectories)), clock=clock, tables=tables, windows=win,
                g_scale=float(scale), g0=g0f, ft=ft, trajectory_entropy=bool(trajectory_entropy),
                expected_jumps=expected, n_states=segments[0][1].n_states if segments is not None else 0)
    plan.memory = estimate_memory(plan, threads)
    _check_plan_memory(plan, budget)
    return plan


def _guard_work(expected, top_exit, T_end, max_jumps, threads):
    """Refuse (or warn about) runs that would take forever, before any work."""
    if top_exit > 0 and T_end * top_exit > 2.0**50:
        raise ModelError("times.stop", f"exit rates up to {top_exit:.3g} make time steps below the resolution of "
                                       f"double precision at t = {T_end:g}; lower the rates (kernel.gamma) or "
                                       "times.stop")
    hours = expected * 1e-8 / 3600 / max(threads, 1)  # ~10 ns per jump and thread
    if expected > max_jumps:
        raise ModelError("simulation.max_jumps", f"the run would make ~{expected:.3g} jumps (~{hours:.3g} h on "
                                                 f"{threads} threads), more than max_jumps = {max_jumps:.3g}; lower "
                                                 "trajectories or times.stop, or raise simulation.max_jumps")
    if expected > WARN_JUMPS:
        warnings.warn(f"trajmc: the run will make ~{expected:.3g} jumps (~{hours:.3g} h on {threads} threads)",
                      stacklevel=3)


def _sizes(plan, win, T, W):
    """Shapes of the per-thread/per-chunk buffers (T, W slots) and of the totals: {name: (shape, dtype)}."""
    n_t, n_s, N = plan.n_t, plan.n_levels, plan.n_baths
    Hq, Mw = int(win.qwid.sum()), int((win.wid * n_s).sum())
    enum = plan.path == "enumerated"
    n = plan.n_states
    q0 = int(win.qwid[0])
    HW = 2 * plan.woff + 1 if plan.driven else 1
    one = plan.path == "implicit" and N == 1
    return {"sys2": ((T, n_s, n_s, n_t), np.int64), "heat": ((T, Hq, n_t), np.int64),
            "qsum": ((T, N, n_s, n_s, n_t), np.int64), "work": ((T, HW, n_t), np.int64),
            "viol": ((T, 2), np.int64), "ft": ((T, n_s, n_s, q0, n_t) if plan.ft else (T, 0, 0, 0, 0), np.int64),
            "counts": ((T, n, n_t) if enum else (T, 0, 0), np.int64),
            "cross": ((T, n, n_t) if enum else (T, 0, 0), np.int64),
            "dsh": ((T, DS_BINS + 2, n_t) if plan.trajectory_entropy else (T, 0, 0), np.int64),
            "marg": ((T, Mw, n_t) if not enum else (T, 0, 0), np.int64),
            "cross1": ((T, Mw, n_t) if one else (T, 0, 0), np.int64),
            "ext": ((T, N, 4), np.int64), "visited": ((T, N, 2), np.int64),
            "jumps": ((W,), np.int64), "fprint": ((W,), np.uint64), "status": ((W,), np.int64),
            "mom": ((W, plan.n_moments, n_t), np.float64)}


def wave_slots(plan, threads) -> int:
    """Chunks per wave at most: 64 per thread, fewer when the per-chunk float sums are large (many times)."""
    per = plan.n_t * plan.n_moments * 8
    return int(min(64 * threads, max(threads, 2**28 // max(per, 1))))


def estimate_memory(plan, threads) -> dict:
    """Bytes the run will allocate: tables, totals, per-thread and per-chunk buffers, records, paths."""
    W = wave_slots(plan, threads)
    sz = _sizes(plan, plan.windows, threads, W)
    per_thread = sum(math.prod(s) * np.dtype(d).itemsize for k, (s, d) in sz.items()
                     if k not in ("jumps", "fprint", "status", "mom"))
    totals = per_thread / threads
    per_chunk = sum(math.prod(sz[k][0]) * np.dtype(sz[k][1]).itemsize for k in ("jumps", "fprint", "status", "mom"))
    tables = sum(a.nbytes for a in plan.tables)
    if plan.network is not None:
        nt = plan.network
        tables += sum(net.n_edges * 40 + net.n_states * (24 + 8 * plan.n_baths) for _, net in plan.segments) \
            + nt.n_states * 8
    rec = 0
    if plan.record:
        per = 4 * plan.n_t * (2 + (1 if plan.driven else 0) + (plan.n_baths if plan.path == "implicit" else 0))
        rec = per * plan.trajectories
    paths = plan.paths * PATH_CAPACITY * (16 + 8 * plan.n_baths)
    out = {"tables": int(tables), "totals": int(totals), "per_thread": int(per_thread), "per_chunk": int(per_chunk),
           "records": int(rec), "paths": int(paths), "chunk_bookkeeping": int(16 * plan.n_chunks)}
    out["total"] = int(sum(out.values()))
    out["threads"] = int(threads)
    return out


def _check_plan_memory(plan, budget):
    m = plan.memory
    biggest = max(("tables", "totals", "per_thread", "records"), key=lambda k: m[k])
    hint = {"records": "turn off per-trajectory records (records = false / --no-records)",
            "per_thread": "use fewer threads or fewer sample times (times.num)",
            "totals": "use fewer sample times (times.num)" + ("" if plan.path == "implicit" else
                                                              " or engine = 'implicit' (marginals only)"),
            "tables": "reduce emax or the number of levels"}[biggest]
    check_memory(m["total"], budget, f"this Monte Carlo run ({plan.path} path)", hint)


# --------------------------------------------------------------------------- accumulators


def _reset_ext(a):
    """Extremes buffers ((..., 2) min/max or (..., 4) two min/max pairs) to 'nothing seen'."""
    a[..., 0] = np.iinfo(np.int64).max
    a[..., 1] = np.iinfo(np.int64).min
    if a.shape[-1] == 4:
        a[..., 2] = np.iinfo(np.int64).max
        a[..., 3] = np.iinfo(np.int64).min


def new_accumulators(plan: Plan) -> Accumulators:
    """Zero totals in the layout of :class:`Accumulators` (allocates records when the plan keeps them)."""
    sz = _sizes(plan, plan.windows, 1, 1)
    tot = {}
    for k in Accumulators.SUMS:
        shape, dt = sz[k]
        tot[k] = np.zeros((shape[-1],) + shape[1:-1], dt) if k not in ("viol", "mom") else None
    tot["viol"] = np.zeros(2, np.int64)
    tot["mom"] = np.zeros((plan.n_t, plan.n_moments))
    acc = Accumulators(sys2=tot["sys2"], heat=tot["heat"], qsum=tot["qsum"], work=tot["work"], viol=tot["viol"],
                       mom=tot["mom"], jumps=np.zeros(plan.n_chunks, np.int64),
                       fingerprint=np.zeros(plan.n_chunks, np.uint64), windows=plan.windows)
    if plan.ft:
        acc.ft = tot["ft"]
    if plan.path == "enumerated":
        acc.counts, acc.cross = tot["counts"], tot["cross"]
        if plan.trajectory_entropy:
            acc.dsh = tot["dsh"]
    else:
        acc.marg = tot["marg"]
        if plan.n_baths == 1:
            acc.cross1 = tot["cross1"]
        acc.visited = np.zeros((plan.n_baths, 2), np.int64)
        _reset_ext(acc.visited)
    n_t = plan.n_t
    if plan.record:
        acc.rec_x = np.zeros((plan.trajectories, n_t), np.int32)
        acc.rec_n = np.zeros((plan.trajectories, n_t), np.int32)
        if plan.driven:
            acc.rec_w = np.zeros((plan.trajectories, n_t), np.int32)
        if plan.path == "implicit":
            acc.rec_E = np.zeros((plan.trajectories, n_t, plan.n_baths), np.int32)
    acc.path_t = np.zeros((plan.paths, PATH_CAPACITY))
    acc.path_x = np.zeros((plan.paths, PATH_CAPACITY), np.int64)
    acc.path_E = np.zeros((plan.paths, PATH_CAPACITY, plan.n_baths if plan.path == "implicit" else 0), np.int64)
    acc.path_len = np.zeros(plan.paths, np.int64)
    return acc


def _new_out(plan, acc, T, W):
    """Per-thread and per-chunk buffers on the accumulators' current windows; records/paths are acc's own."""
    sz = _sizes(plan, acc.windows, T, W)
    a = {k: np.zeros(s, d) for k, (s, d) in sz.items()}
    _reset_ext(a["ext"])
    _reset_ext(a["visited"])
    n_t = plan.n_t
    z32 = np.zeros((0, n_t), np.int32)
    return K.Out(**a, rec_x=acc.rec_x if acc.rec_x is not None else z32,
                 rec_n=acc.rec_n if acc.rec_n is not None else z32,
                 rec_w=acc.rec_w if acc.rec_w is not None else z32,
                 rec_E=acc.rec_E if acc.rec_E is not None else np.zeros((0, n_t, plan.n_baths), np.int32),
                 path_t=acc.path_t, path_x=acc.path_x, path_E=acc.path_E, path_len=acc.path_len)


def _fold(acc, out):
    """Per-thread buffers -> totals (exact integer sums, time axis first), then zero the buffers."""
    for k in Accumulators.SUMS:
        tot = getattr(acc, k)
        if tot is None or k in ("mom",):
            continue
        buf = getattr(out, k)
        if k == "viol":
            tot += buf.sum(axis=0)
        else:
            tot += np.moveaxis(buf.sum(axis=0), -1, 0)
        buf[...] = 0
    if acc.visited is not None:
        acc.visited[:, 0] = np.minimum(acc.visited[:, 0], out.visited[:, :, 0].min(axis=0))
        acc.visited[:, 1] = np.maximum(acc.visited[:, 1], out.visited[:, :, 1].max(axis=0))
    _reset_ext(out.visited)


def _discard(out):
    for k in Accumulators.SUMS:
        if k != "mom":
            getattr(out, k)[...] = 0
    _reset_ext(out.visited)
    _reset_ext(out.ext)


def _rewindow(arr, axis, unit, lo_old, wid_old, off_old, lo_new, wid_new, off_new):
    """Re-lay each bath's window segment of ``arr`` (along ``axis``; ``unit`` entries per energy) from the old
    windows onto the new ones, copying where they overlap (the rest of a larger window is zero)."""
    shape = list(arr.shape)
    shape[axis] = int((np.asarray(wid_new) * unit).sum())
    out = np.zeros(shape, arr.dtype)
    a = np.moveaxis(arr, axis, 0)
    b = np.moveaxis(out, axis, 0)
    for nu in range(len(lo_old)):
        lo = max(lo_old[nu], lo_new[nu])
        hi = min(lo_old[nu] + wid_old[nu], lo_new[nu] + wid_new[nu])
        if hi <= lo:
            continue
        src = off_old[nu] + (lo - lo_old[nu]) * unit
        dst = off_new[nu] + (lo - lo_new[nu]) * unit
        b[dst: dst + (hi - lo) * unit] = a[src: src + (hi - lo) * unit]
    return out


def grow_accumulators(plan, acc, win):
    """Re-lay the windowed totals of ``acc`` on the windows ``win`` (which must hold every nonzero entry)."""
    old = acc.windows
    n_s = plan.n_levels
    acc.heat = _rewindow(acc.heat, 1, 1, old.qlo, old.qwid, old.qoff, win.qlo, win.qwid, win.qoff)
    if acc.ft is not None:
        acc.ft = _rewindow(acc.ft, 3, 1, old.qlo[:1], old.qwid[:1], [0], win.qlo[:1], win.qwid[:1], [0])
    for name in ("marg", "cross1"):
        arr = getattr(acc, name)
        if arr is not None:
            setattr(acc, name, _rewindow(arr, 1, n_s, old.lo, old.wid, old.moff, win.lo, win.wid, win.moff))
    acc.windows = win


def canonical_windows(plan, acc):
    """The windows a run ends on: the plan's initial windows widened just enough to hold every sample.

    They depend on the samples only, never on when (in which wave, on which worker) a window had to grow,
    so the stored accumulators are the same arrays for any scheduling.
    """

    w0, w = plan.windows, acc.windows
    n_s = plan.n_levels
    lo, hi = w0.lo.copy(), w0.lo + w0.wid
    qlo, qhi = w0.qlo.copy(), w0.qlo + w0.qwid
    for nu in range(plan.n_baths):
        if acc.marg is not None:
            seg = acc.marg[:, w.moff[nu]: w.moff[nu] + w.wid[nu] * n_s].reshape(plan.n_t, -1, n_s)
            used = np.flatnonzero(seg.any(axis=(0, 2)))
            if len(used):
                lo[nu] = min(lo[nu], w.lo[nu] + used[0])
                hi[nu] = max(hi[nu], w.lo[nu] + used[-1] + 1)
        used = np.flatnonzero(acc.heat[:, w.qoff[nu]: w.qoff[nu] + w.qwid[nu]].any(axis=0))
        if len(used):
            qlo[nu] = min(qlo[nu], w.qlo[nu] + used[0])
            qhi[nu] = max(qhi[nu], w.qlo[nu] + used[-1] + 1)
    return windows_from(lo, hi - lo, qlo, qhi - qlo, n_s)


def canonicalize(plan, acc):
    """Re-lay ``acc`` on :func:`canonical_windows` (a no-op when it already is)."""
    win = canonical_windows(plan, acc)
    if not _same_windows(win, acc.windows):
        grow_accumulators(plan, acc, win)


def _merge_windows(a, b, n_s):
    """The smallest windows covering both ``a`` and ``b``."""

    lo = np.minimum(a.lo, b.lo)
    hi = np.maximum(a.lo + a.wid, b.lo + b.wid)
    qlo = np.minimum(a.qlo, b.qlo)
    qhi = np.maximum(a.qlo + a.qwid, b.qlo + b.qwid)
    return windows_from(lo, hi - lo, qlo, qhi - qlo, n_s)


def _same_windows(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------------- running


_COMPILED = {"seconds": None}


def _wave_fn(plan):
    return K.enumerated_wave if plan.path == "enumerated" else K.implicit_wave


def _chunk_fn(path):
    return K.enumerated_chunk if path == "enumerated" else K.implicit_chunk


def compile_kernel() -> float:
    """Compile (or load from numba's cache) both paths' kernels once per process; returns the seconds.

    The warm-up runs tiny plans built by the same constructors as every real run, so the compiled
    signatures are exactly the ones used later.
    """
    if _COMPILED["seconds"] is None:
        t0 = time.perf_counter()
        spec = {"name": "warm-up", "system": {"energies": [0, 1], "coupling": [[0, 1], [1, 0]]},
                "baths": [{"name": "B", "dos": {"model": "oscillators", "n": 2}, "emax": 4,
                           "kernel": {"model": "sqrt"}}],
                "initial": {"system": [0.0, 1.0], "baths": [{"state": "microcanonical", "energy": 2}]},
                "times": {"values": [0.0, 1.0]}}
        for path in ("enumerated", "implicit"):
            plan = make_plan(spec, trajectories=2, seed=0, chunk_size=2, engine=path, records=True, paths=1)
            acc = new_accumulators(plan)
            out = _new_out(plan, acc, numba.config.NUMBA_NUM_THREADS, 1)
            ctl = np.zeros(1, np.int64)
            one = np.zeros(1, np.int64)
            _wave_fn(plan)(np.array([_rng.chunk_state(0, 0)]), np.array([2], np.int64), one, one + 1, plan.clock,
                           plan.tables, acc.windows, out, ctl)
            _chunk_fn(path)(_rng.chunk_state(0, 0), 1, 0, 0, 0, True, plan.clock, plan.tables, acc.windows, out, ctl)
        _COMPILED["seconds"] = time.perf_counter() - t0
    return _COMPILED["seconds"]


def _in_thread(fn, args, threads, stop, ctl):
    """Run ``fn(*args)`` on a helper thread (numba's thread settings are per thread) while this thread
    waits and forwards a stop request to the kernel through ``ctl``."""
    err = []

    def target():
        try:
            numba.set_num_threads(threads)
            numba.set_parallel_chunksize(1)  # chunks one at a time: jump counts per chunk vary
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            err.append(exc)

    th = threading.Thread(target=target, name="trajmc-wave", daemon=True)
    th.start()
    while th.is_alive():
        th.join(POLL_SECONDS)
        if stop.set:
            ctl[0] = 1
    if err:
        raise err[0]


def run_plan(plan: Plan, acc: Accumulators, threads: int, progress=None, checkpoint=None,
             checkpoint_every=2.0, stop_after=None, stop=None) -> Accumulators:
    """Run the chunks ``acc.chunks_done .. n_chunks-1`` (or up to ``stop_after``) into ``acc``.

    ``checkpoint(acc)`` is called at most every ``checkpoint_every`` seconds and on interruption, always
    with accumulators that hold exactly the first ``acc.chunks_done`` chunks; ``progress(k)`` after each
    wave with the number of chunks finished.
    """
    end = plan.n_chunks if stop_after is None else min(plan.n_chunks, stop_after)
    Wmax = wave_slots(plan, threads)
    out = _new_out(plan, acc, threads, Wmax)
    small = sum(getattr(out, k).size for k in Accumulators.SUMS if k != "mom") < SMALL_BUFFERS
    ctl = np.zeros(1, np.int64)
    stop = stop if stop is not None else StopFlag()
    stop.ctl = ctl
    fn = _wave_fn(plan)
    W = threads
    t_start = time.perf_counter()
    wall0 = acc.wall_s
    flushed, mom_snap = acc.chunks_done, acc.mom.copy()
    last_fold = last_ck = time.perf_counter()

    def fold():
        nonlocal flushed, mom_snap, last_fold
        _fold(acc, out)
        flushed, mom_snap, last_fold = acc.chunks_done, acc.mom.copy(), time.perf_counter()

    def discard():  # back to the last fold: the chunks since then are run again
        _discard(out)
        acc.mom[...] = mom_snap
        acc.jumps[flushed:acc.chunks_done] = 0
        acc.fingerprint[flushed:acc.chunks_done] = 0
        acc.chunks_done = flushed

    try:
        with stop:
            while acc.chunks_done < end:
                if stop.set:
                    raise KeyboardInterrupt
                c0 = acc.chunks_done
                c1 = min(end, c0 + W)
                nw = c1 - c0
                idx = np.arange(c0, c1)
                states = np.array([_rng.chunk_state(plan.entropy, i) for i in idx])
                sizes = plan.chunk_sizes(c0, c1)
                rec0 = (idx * plan.chunk_size).astype(np.int64) if plan.record else np.zeros(nw, np.int64)
                first = (idx == 0).astype(np.int64)
                out.mom[:nw] = 0.0
                t_wave = time.perf_counter()
                _in_thread(fn, (states, sizes, rec0, first, plan.clock, plan.tables, acc.windows, out, ctl),
                           threads, stop, ctl)
                status = out.status[:nw]
                if stop.set or np.any(status == K.ABORTED):
                    raise KeyboardInterrupt
                if np.any(status == K.STALLED):
                    discard()
                    raise SimulationError("time stopped advancing in a trajectory (steps below double precision): "
                                          "the rates are too large for times.stop; lower kernel.gamma")
                if np.any(status == K.OVERFLOW):  # a window was too small: grow it, redo since the last fold
                    ext = np.stack([out.ext[..., 0].min(axis=0), out.ext[..., 1].max(axis=0),
                                    out.ext[..., 2].min(axis=0), out.ext[..., 3].max(axis=0)], axis=1)
                    discard()
                    grow_accumulators(plan, acc, grown_windows(acc.windows, ext, plan.model, plan.n_levels))
                    out = _new_out(plan, acc, threads, Wmax)
                    continue
                acc.jumps[c0:c1] = out.jumps[:nw]
                acc.fingerprint[c0:c1] = out.fprint[:nw]
                for c in range(nw):  # float sums: chunk order, whatever the scheduling
                    acc.mom += out.mom[c].T
                acc.chunks_done = c1
                took = time.perf_counter() - t_wave
                W = int(min(Wmax, max(threads, W * WAVE_SECONDS / max(took, 1e-6))))
                acc.wall_s = wall0 + time.perf_counter() - t_start
                now = time.perf_counter()
                due = checkpoint is not None and now - last_ck >= checkpoint_every
                if small or due or now - last_fold >= FLUSH_SECONDS:
                    fold()
                if progress is not None:
                    progress(c1)
                if due:
                    checkpoint(acc)
                    last_ck = time.perf_counter()
            fold()
            canonicalize(plan, acc)
    except KeyboardInterrupt:
        discard()
        acc.wall_s = wall0 + time.perf_counter() - t_start
        if checkpoint is not None:
            with StopFlag():  # a second Ctrl-C must not cut the checkpoint in half
                checkpoint(acc)
        raise Interrupted(f"interrupted after {acc.chunks_done} of {plan.n_chunks} chunks") from None
    return acc


# --------------------------------------------------------------------------- one chunk (distributed backends)


def worker_plan(plan) -> Plan:
    """A copy of ``plan`` without its networks: what a remote worker needs to run any chunk."""

    p = copy.copy(plan)
    p.segments = None
    return p


def simulate_chunk(plan, chunk, size, windows):
    """Run one chunk on this thread and return its contribution (time-first layout) and its windows.

    A window overflow is handled here: the chunk is run again on grown windows (the same draws).
    """
    while True:
        acc = _chunk_acc(plan, windows, size if plan.record else 0, chunk)
        out = _new_out(plan, acc, 1, 1)
        st = _rng.chunk_state(plan.entropy, chunk)
        ctl = np.zeros(1, np.int64)
        jumps = _chunk_fn(plan.path)(st, size, 0, 0, 0, chunk == 0, plan.clock, plan.tables, windows, out, ctl)
        if out.status[0] == K.OVERFLOW:
            ext = np.stack([out.ext[..., 0].min(axis=0), out.ext[..., 1].max(axis=0), out.ext[..., 2].min(axis=0),
                            out.ext[..., 3].max(axis=0)], axis=1)
            windows = grown_windows(windows, ext, plan.model, plan.n_levels)
            continue
        if out.status[0] != K.OK:
            raise SimulationError("time stopped advancing in a trajectory (steps below double precision)")
        _fold(acc, out)
        res = {k: getattr(acc, k) for k in Accumulators.SUMS if getattr(acc, k) is not None}
        res["mom"] = out.mom[0].T.copy()
        res.update(chunk=chunk, jumps=int(jumps), fingerprint=np.uint64(st[0] ^ st[3]), windows=windows,
                   visited=acc.visited)
        if plan.record:
            res.update(rec_x=acc.rec_x, rec_n=acc.rec_n, rec_w=acc.rec_w, rec_E=acc.rec_E)
        if chunk == 0 and plan.paths:
            res.update(path_t=acc.path_t, path_x=acc.path_x, path_E=acc.path_E, path_len=acc.path_len)
        return res


def _chunk_acc(plan, windows, rows, chunk):
    """Zero accumulators for one chunk (records: ``rows`` of their own)."""

    p = copy.copy(plan)
    p.windows = windows
    p.trajectories = max(rows, 1)
    p.record = rows > 0
    if chunk != 0:
        p.paths = 0
    acc = new_accumulators(p)
    return acc


def add_chunk(plan, acc, res):
    """Add one chunk's result (from :func:`simulate_chunk`) into the accumulators; chunks in order."""
    c = res["chunk"]
    win = res["windows"]
    if not _same_windows(win, acc.windows):
        merged = _merge_windows(acc.windows, win, plan.n_levels)
        if not _same_windows(merged, acc.windows):
            grow_accumulators(plan, acc, merged)
        if not _same_windows(merged, win):
            part = _chunk_acc(plan, win, 0, 1)
            for k in Accumulators.SUMS:
                if k in res and getattr(part, k) is not None:
                    setattr(part, k, res[k])
            grow_accumulators(plan, part, merged)
            res = dict(res, **{k: getattr(part, k) for k in Accumulators.SUMS if getattr(part, k) is not None})
    for k in Accumulators.SUMS:
        tot = getattr(acc, k)
        if tot is not None and k in res:
            tot += res[k]
    if acc.visited is not None and res.get("visited") is not None:
        acc.visited[:, 0] = np.minimum(acc.visited[:, 0], res["visited"][:, 0])
        acc.visited[:, 1] = np.maximum(acc.visited[:, 1], res["visited"][:, 1])
    acc.jumps[c] = res["jumps"]
    acc.fingerprint[c] = res["fingerprint"]
    if acc.rec_x is not None and res.get("rec_x") is not None:
        lo = c * plan.chunk_size
        for k in ("rec_x", "rec_n", "rec_w", "rec_E"):
            dst, src = getattr(acc, k), res.get(k)
            if dst is not None and src is not None:
                dst[lo:lo + len(src)] = src
    if "path_t" in res:
        for k in ("path_t", "path_x", "path_E", "path_len"):
            getattr(acc, k)[...] = res[k]
    acc.chunks_done = c + 1
    if acc.chunks_done == plan.n_chunks:
        canonicalize(plan, acc)


def describe_memory(m) -> str:
    return ", ".join(f"{k} {format_bytes(v)}" for k, v in m.items() if k not in ("total", "threads") and v) \
        + f"; total {format_bytes(m['total'])}"
