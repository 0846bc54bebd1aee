"""Monte Carlo driver: chunking, seeding, threads, streaming accumulators, checkpoints.

Trajectories are split into chunks of a fixed size (a model setting, never the
thread count).  Chunk ``i`` draws from ``SeedSequence(entropy, spawn_key=(i,))``.
Chunks run in waves on numba threads, each into its own buffer, and buffers are
added into the accumulators in chunk order, so the result is bit-identical for
any number of threads and survives interruption: a checkpoint holds the
accumulators after the first ``k`` chunks, and ``resume`` continues at chunk ``k``.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field

import numba
import numpy as np

from . import _kernel, _rng
from .errors import ModelError, TrajmcError
from .model import load_model
from .network import Network, build_segments

__all__ = ["Plan", "Accumulators", "make_plan", "run_plan", "Interrupted", "resolve_seed"]

#: entries of per-trajectory records (trajectories x sample times) kept by default
AUTO_RECORD_LIMIT = 20_000_000
PATH_CAPACITY = 2000
#: per-chunk bookkeeping (jump counts, fingerprints) is O(chunks): keep it small
MAX_CHUNKS = 10_000_000
#: a wave of chunks aims at this many seconds: Ctrl-C and progress act between waves
WAVE_SECONDS = 0.5


class StopFlag:
    """While installed (main thread only), SIGINT/SIGTERM only set a flag, read between waves.

    A signal may be delivered to a numba worker thread in the middle of a wave; with a raising
    handler the KeyboardInterrupt would surface between the wave and its bookkeeping.  Here the
    run stops at the next wave boundary, so the checkpoint always matches ``chunks_done``.
    """

    def __init__(self):
        self.set = False
        self._old = None

    def _handler(self, signum, frame):
        self.set = True

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


def resolve_seed(seed) -> int:
    """``None | int | SeedSequence`` -> the entropy (int) that seeds every chunk."""
    if isinstance(seed, np.random.SeedSequence):
        if seed.spawn_key:
            raise ModelError("seed", "a SeedSequence with a spawn_key cannot seed a run; pass its entropy")
        return int(seed.entropy)
    if seed is None:
        return int(np.random.SeedSequence().entropy)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ModelError("seed", f"must be a non-negative integer, None or a SeedSequence, got {seed!r}")
    return int(seed)


@dataclass
class Plan:
    """Everything fixed before the first trajectory: the network, the kernel's arrays, the chunking."""

    model: object
    network: Network
    times: np.ndarray
    entropy: int
    trajectories: int
    chunk_size: int
    record: bool
    paths: int
    arrays: dict = field(repr=False)
    segments: list = field(default=None, repr=False)  # [(start time, Network)] of the protocol

    @property
    def driven(self) -> bool:
        return len(self.arrays["seg_t"]) > 1

    @property
    def n_chunks(self) -> int:
        return -(-self.trajectories // self.chunk_size)

    def chunk_sizes(self, start, stop):
        i = np.arange(start, stop)
        return np.minimum(self.chunk_size, self.trajectories - i * self.chunk_size).astype(np.int64)


@dataclass
class Accumulators:
    """Streaming sums; memory independent of the number of trajectories (records aside)."""

    counts: np.ndarray  # (n_t, n) int64
    cross: np.ndarray  # (n_t, n, 2) int64, fixed point: value * plan.arrays["g_scale"]
    heat: np.ndarray  # (n_t, H) int64
    jumps: np.ndarray  # (n_chunks,) int64 jumps per chunk
    chunks_done: int = 0
    work: np.ndarray | None = None  # (n_t, HW) int64 histogram of the work done so far (driven models)
    fingerprint: np.ndarray | None = None  # (n_chunks,) uint64 end state of each chunk's generator
    rec_w: np.ndarray | None = None  # (trajectories, n_t) int32
    rec_x: np.ndarray | None = None  # (trajectories, n_t) int32
    rec_n: np.ndarray | None = None
    path_t: np.ndarray | None = None
    path_x: np.ndarray | None = None
    path_len: np.ndarray | None = None
    wall_s: float = 0.0

    def as_dict(self):
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _edge_arrays(net: Network):
    """CSR rows, targets, cumulative jump probabilities and inverse exit rates of one segment."""
    src = net.source
    exit_rate = net.exit_rate
    with np.errstate(divide="ignore"):
        inv_exit = np.where(exit_rate > 0, 1.0 / np.where(exit_rate > 0, exit_rate, 1.0), 0.0)
    # cumulative jump probabilities within each row, the last of each row exactly 1
    for_rows = np.cumsum(net.rate)
    row_base = np.concatenate([[0.0], for_rows])[net.indptr[:-1]]
    cum = (for_rows - row_base[src]) / np.where(exit_rate[src] > 0, exit_rate[src], 1.0)
    last = net.indptr[1:][np.diff(net.indptr) > 0] - 1
    cum[last] = 1.0
    return net.indptr, net.target, cum, inv_exit


def _kernel_arrays(segments, times):
    """Everything the kernel reads, for the segment networks ``[(start time, Network)]``."""
    net = segments[0][1]
    model = net.model
    n = net.n_states
    parts = [_edge_arrays(nt) for _, nt in segments]
    offs = np.concatenate([[0], np.cumsum([len(p[1]) for p in parts])])
    indptr = np.stack([p[0] + o for p, o in zip(parts, offs)]).astype(np.int64)
    target = np.concatenate([p[1] for p in parts]).astype(np.int64)
    cum = np.concatenate([p[2] for p in parts])
    inv_exit = np.stack([p[3] for p in parts])
    seg_t = np.array([t0 for t0, _ in segments[1:]] + [np.inf])
    levels = np.stack([nt.energies for _, nt in segments])
    dlev = np.zeros_like(levels)
    dlev[1:] = levels[1:] - levels[:-1]
    wmax = int(np.abs(dlev).max(axis=1).sum())
    support = np.flatnonzero(net.p0 > 0).astype(np.int64)
    cum0 = np.cumsum(net.p0[support])
    cum0 /= cum0[-1]
    cum0[-1] = 1.0
    # functions of the initial state whose sums per (time, state) give the time correlations
    # of the delta-method error bars: -a_0 = ln(p0/V) (Sigma) and h_0 = -ln p_s(0) + sum beta E (Sigma_tilde)
    g0 = np.zeros((n, 2))  # float; the kernel sums a fixed-point copy (see make_plan)
    pos = net.p0 > 0
    g0[pos, 0] = np.log(net.p0[pos]) - net.lnV[pos]
    ps0 = np.bincount(net.states[:, 0], weights=net.p0, minlength=model.n_levels)
    with np.errstate(divide="ignore"):
        g0[pos, 1] = -np.log(ps0[net.states[pos, 0]])
    betas = np.array([model.beta_ref(nu) for nu in range(model.n_baths)])
    if np.all(np.isfinite(betas)):
        g0[pos, 1] += net.states[pos, 1:] @ betas
    E = np.ascontiguousarray(net.states[:, 1:])
    emax = np.array([b.emax for b in model.baths], dtype=np.int64)
    widths = 2 * emax + 1
    hoff = (np.concatenate([[0], np.cumsum(widths)[:-1]]) + emax).astype(np.int64)
    return {"cum0": cum0, "support": support, "indptr": indptr, "target": target, "cum": cum,
            "inv_exit": inv_exit, "seg_t": seg_t, "dlev": dlev, "s_of": net.states[:, 0].copy(),
            "times": np.append(np.asarray(times, dtype=np.float64), np.inf), "g0f": g0, "E": E,
            "hoff": hoff, "H": int(widths.sum()), "emax": emax, "woff": wmax, "HW": 2 * wmax + 1,
            "levels": levels}


def make_plan(model, trajectories=None, seed=None, times=None, chunk_size=None, records=None, paths=0) -> Plan:
    """Validate the run parameters and build the network: nothing is simulated yet."""
    model = load_model(model)
    if times is not None:
        model = model.with_times(times)
    sim = model.simulation
    trajectories = sim["trajectories"] if trajectories is None else trajectories
    if isinstance(trajectories, bool) or not isinstance(trajectories, (int, np.integer)) or trajectories < 1:
        raise ModelError("trajectories", f"must be a positive integer, got {trajectories!r}")
    chunk_size = sim["chunk_size"] if chunk_size is None else chunk_size
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ModelError("chunk_size", f"must be a positive integer, got {chunk_size!r}")
    if isinstance(paths, bool) or not isinstance(paths, (int, np.integer)) or not 0 <= paths <= 1000:
        raise ModelError("paths", f"must be an integer in 0..1000, got {paths!r}")
    if -(-int(trajectories) // int(chunk_size)) > MAX_CHUNKS:
        raise ModelError("trajectories", f"{trajectories} trajectories make more than {MAX_CHUNKS:.0e} chunks of "
                                         f"{chunk_size}; raise chunk_size")
    entropy = resolve_seed(sim["seed"] if seed is None else seed)
    segments = build_segments(model)
    net = segments[0][1]
    n_t = len(model.times)
    if records is None:
        records = int(trajectories) * n_t <= AUTO_RECORD_LIMIT
    arrays = _kernel_arrays(segments, model.times)
    # cross sums are exact int64 fixed point, so adding them is associative: the largest power-of-two
    # scale that cannot overflow for this many trajectories (resolution ~1e-8 or finer in practice)
    gmax = float(np.abs(arrays["g0f"]).max()) + 1.0
    scale = 2.0 ** min(40, np.floor(np.log2(2.0**62 / (gmax * (int(trajectories) + 1)))))
    arrays["g_scale"] = scale
    arrays["g0"] = np.round(arrays["g0f"] * scale).astype(np.int64)
    return Plan(model=model, network=net, times=model.times, entropy=entropy, trajectories=int(trajectories),
                chunk_size=int(chunk_size), record=bool(records), paths=int(min(paths, chunk_size, trajectories)),
                arrays=arrays, segments=segments)


def new_accumulators(plan: Plan) -> Accumulators:
    n_t, n = len(plan.times), plan.network.n_states
    acc = Accumulators(counts=np.zeros((n_t, n), np.int64), cross=np.zeros((n_t, n, 2), np.int64),
                       heat=np.zeros((n_t, plan.arrays["H"]), np.int64), jumps=np.zeros(plan.n_chunks, np.int64))
    acc.work = np.zeros((n_t, plan.arrays["HW"]), np.int64)
    acc.fingerprint = np.zeros(plan.n_chunks, np.uint64)
    if plan.record:
        acc.rec_x = np.zeros((plan.trajectories, n_t), np.int32)
        acc.rec_n = np.zeros((plan.trajectories, n_t), np.int32)
        if plan.driven:
            acc.rec_w = np.zeros((plan.trajectories, n_t), np.int32)
    acc.path_t = np.zeros((plan.paths, PATH_CAPACITY))
    acc.path_x = np.zeros((plan.paths, PATH_CAPACITY), np.int64)
    acc.path_len = np.zeros(plan.paths, np.int64)
    return acc


_COMPILED = {"seconds": None}


def compile_kernel() -> float:
    """Compile (or load from numba's cache) the kernel once per process; returns the seconds it took."""
    if _COMPILED["seconds"] is None:
        t0 = time.perf_counter()
        a = {"cum0": np.array([1.0]), "support": np.array([0], np.int64),
             "indptr": np.array([[0, 1, 2]], np.int64), "target": np.array([1, 0], np.int64),
             "cum": np.array([1.0, 1.0]), "inv_exit": np.array([[1.0, 1.0]]), "seg_t": np.array([np.inf]),
             "dlev": np.zeros((1, 2), np.int64), "s_of": np.array([0, 1], np.int64),
             "times": np.array([0.0, 1.0, np.inf]), "g0": np.zeros((2, 2), np.int64), "E": np.zeros((2, 1), np.int64),
             "hoff": np.array([0], np.int64), "woff": 0}
        T = numba.config.NUMBA_NUM_THREADS
        _call_wave(a, np.array([_rng.chunk_state(0, 0)]), np.array([3], np.int64), np.zeros((T, 2, 2), np.int64),
                   np.zeros((T, 2, 2, 2), np.int64), np.zeros((T, 2, 1), np.int64), np.zeros((T, 1, 1), np.int64),
                   np.zeros(1, np.int64), np.zeros(1, np.uint64), np.zeros((0, 2), np.int32), np.zeros((0, 2), np.int32),
                   np.zeros((0, 2), np.int32), np.zeros(1, np.int64), np.zeros((0, 1)), np.zeros((0, 1), np.int64),
                   np.zeros(0, np.int64))
        _COMPILED["seconds"] = time.perf_counter() - t0
    return _COMPILED["seconds"]


def _call_wave(a, states, sizes, counts, cross, heat, work, jumps, fprint, rec_x, rec_n, rec_w, rec_off, path_t,
               path_x, path_len):
    _kernel.run_wave(states, sizes, a["cum0"], a["support"], a["indptr"], a["target"], a["cum"], a["inv_exit"],
                     a["seg_t"], a["dlev"], a["s_of"], a["times"], a["g0"], a["E"], a["hoff"], counts, cross, heat,
                     work, a["woff"], jumps, fprint, rec_x, rec_n, rec_w, rec_off, path_t, path_x, path_len,
                     _rng.ZIG_K, _rng.ZIG_W, _rng.ZIG_F)


def resolve_threads(threads) -> int:
    limit = numba.config.NUMBA_NUM_THREADS
    if threads is None:
        return min(limit, os.cpu_count() or 1)
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ModelError("threads", f"must be a positive integer, got {threads!r}")
    if threads > limit:
        raise ModelError("threads", f"{threads} exceeds numba's thread limit {limit} (set NUMBA_NUM_THREADS)")
    return int(threads)


def run_plan(plan: Plan, acc: Accumulators, threads: int, progress=None, checkpoint=None,
             checkpoint_every=2.0, stop_after=None, stop=None) -> Accumulators:
    """Run the chunks ``acc.chunks_done .. n_chunks-1`` (or up to ``stop_after``) into ``acc``.

    ``checkpoint(acc)`` is called at most every ``checkpoint_every`` seconds and on
    interruption; ``progress(k)`` after each wave with the number of chunks finished.
    """
    a = plan.arrays
    n_t, n = len(plan.times), plan.network.n_states
    # chunks per wave: adapted so a wave lasts ~WAVE_SECONDS (Ctrl-C, progress and checkpoints act between
    # waves); the totals are integer sums, so the wave size never changes the result
    W = threads
    numba.set_num_threads(threads)
    # hand chunks to threads one at a time (jump counts per chunk vary), not in equal blocks
    old_chunksize = numba.set_parallel_chunksize(1)
    # one accumulator slot per thread; integer sums make the totals independent of the scheduling
    counts = np.zeros((threads, n, n_t), np.int64)  # state-major inside the kernel
    cross = np.zeros((threads, n, n_t, 2), np.int64)
    heat = np.zeros((threads, a["H"], n_t), np.int64)
    work = np.zeros((threads, a["HW"] if plan.driven else 1, n_t), np.int64)
    last_ck = time.perf_counter()
    end = plan.n_chunks if stop_after is None else min(plan.n_chunks, stop_after)
    t_start = time.perf_counter()
    wall0 = acc.wall_s

    def flush():  # thread slots -> accumulators (exact integer sums)
        for buf, total in ((counts, acc.counts), (cross, acc.cross), (heat, acc.heat)):
            total += np.swapaxes(buf.sum(axis=0), 0, 1)
            buf[:] = 0
        if plan.driven:
            acc.work += work.sum(axis=0).T
            work[:] = 0

    stop = stop if stop is not None else StopFlag()
    try:
        with stop:
            while acc.chunks_done < end:
                if stop.set:
                    raise KeyboardInterrupt
                c0 = acc.chunks_done
                c1 = min(end, c0 + W)
                t_wave = time.perf_counter()
                jumps = np.zeros(c1 - c0, np.int64)
                fprint = np.zeros(c1 - c0, np.uint64)
                states = np.array([_rng.chunk_state(plan.entropy, i) for i in range(c0, c1)])
                sizes = plan.chunk_sizes(c0, c1)
                rec_off = ((np.arange(c0, c1) - c0) * plan.chunk_size).astype(np.int64)
                if acc.rec_x is not None:
                    lo = c0 * plan.chunk_size
                    hi = lo + int(sizes.sum())
                    rx, rn = acc.rec_x[lo:hi], acc.rec_n[lo:hi]
                else:
                    rx = rn = np.zeros((0, n_t), np.int32)
                rw = acc.rec_w[lo:hi] if acc.rec_w is not None else np.zeros((0, n_t), np.int32)
                if c0 == 0 and plan.paths:
                    pt, px, pl = acc.path_t, acc.path_x, acc.path_len
                else:
                    pt, px, pl = np.zeros((0, 1)), np.zeros((0, 1), np.int64), np.zeros(0, np.int64)
                _call_wave(a, states, sizes, counts, cross, heat, work, jumps, fprint, rx, rn, rw, rec_off, pt, px, pl)
                acc.jumps[c0:c1] = jumps
                acc.fingerprint[c0:c1] = fprint
                acc.chunks_done = c1
                took = time.perf_counter() - t_wave
                W = int(min(64 * threads, max(threads, W * WAVE_SECONDS / max(took, 1e-6))))
                acc.wall_s = wall0 + time.perf_counter() - t_start
                if progress is not None:
                    progress(c1)
                if checkpoint is not None and time.perf_counter() - last_ck >= checkpoint_every:
                    flush()
                    checkpoint(acc)
                    last_ck = time.perf_counter()
            flush()
    except KeyboardInterrupt:
        flush()
        acc.wall_s = wall0 + time.perf_counter() - t_start
        if checkpoint is not None:
            with StopFlag():  # a second Ctrl-C must not cut the checkpoint in half
                checkpoint(acc)
        raise Interrupted(f"interrupted after {acc.chunks_done} of {plan.n_chunks} chunks") from None
    finally:
        numba.set_parallel_chunksize(old_chunksize)
    return acc


def simulate_chunk(arrays, entropy, chunk, size, n_t, n, driven, record, paths):
    """Run one chunk on this thread and return its accumulators (for distributed backends).

    The result is what :func:`run_plan` adds for that chunk: integer arrays, so any order of
    combination gives the same totals.  Records (if kept) are the chunk's own rows.
    """
    a = arrays
    counts = np.zeros((n, n_t), np.int64)
    cross = np.zeros((n, n_t, 2), np.int64)
    heat = np.zeros((a["H"], n_t), np.int64)
    work = np.zeros((a["HW"] if driven else 1, n_t), np.int64)
    rx = np.zeros((size if record else 0, n_t), np.int32)
    rn = np.zeros_like(rx)
    rw = np.zeros((size if (record and driven) else 0, n_t), np.int32)
    P = paths if chunk == 0 else 0
    pt = np.zeros((P, PATH_CAPACITY))
    px = np.zeros((P, PATH_CAPACITY), np.int64)
    pl = np.zeros(P, np.int64)
    st = _rng.chunk_state(entropy, chunk)
    jumps = _kernel.run_chunk(st, size, a["cum0"], a["support"], a["indptr"], a["target"], a["cum"], a["inv_exit"],
                              a["seg_t"], a["dlev"], a["s_of"], a["times"], a["g0"], a["E"], a["hoff"], counts, cross,
                              heat, work, a["woff"], rx, rn, rw, pt, px, pl, _rng.ZIG_K, _rng.ZIG_W, _rng.ZIG_F)
    out = {"chunk": chunk, "jumps": int(jumps), "fingerprint": np.uint64(st[0] ^ st[3]), "counts": counts.T.copy(),
           "cross": np.swapaxes(cross, 0, 1).copy(),
           "heat": heat.T.copy(), "work": work.T.copy() if driven else None}
    if record:
        out.update(rec_x=rx, rec_n=rn, rec_w=rw if driven else None)
    if P:
        out.update(path_t=pt, path_x=px, path_len=pl)
    return out


def add_chunk(plan, acc, res):
    """Add one chunk's result (from :func:`simulate_chunk`) into the accumulators; chunks in order."""
    c = res["chunk"]
    acc.counts += res["counts"]
    acc.cross += res["cross"]
    acc.heat += res["heat"]
    if res["work"] is not None:
        acc.work += res["work"]
    acc.jumps[c] = res["jumps"]
    acc.fingerprint[c] = res["fingerprint"]
    if acc.rec_x is not None and "rec_x" in res:
        lo = c * plan.chunk_size
        acc.rec_x[lo:lo + len(res["rec_x"])] = res["rec_x"]
        acc.rec_n[lo:lo + len(res["rec_n"])] = res["rec_n"]
        if acc.rec_w is not None and res.get("rec_w") is not None:
            acc.rec_w[lo:lo + len(res["rec_w"])] = res["rec_w"]
    if "path_t" in res:
        acc.path_t[:], acc.path_x[:], acc.path_len[:] = res["path_t"], res["path_x"], res["path_len"]
    acc.chunks_done = c + 1
