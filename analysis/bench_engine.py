"""Benchmark: trajmc's Gillespie kernels against a plain numba kernel and the physical floor, in one run.

Run:  python analysis/bench_engine.py [--trajectories N] [--repeat R] [--full]

Every figure is a ratio measured in the same run, interleaved and best-of-R (these machines are shared
and noisy; absolute times are indicative only).  Compile (or numba-cache load) time is reported apart.

1. ref-A (analysis/bench_models.py: levels [0, 3, 7], 40 oscillators, emax 400, 51 sample times to t = 50):
   trajmc (both paths) against
   * the baseline: a competent plain numba SSA (CSR out-edges, linear cumulative search, one inlined
     xoroshiro128+ per trajectory, exponential by -log(u) / rate, prange, occupation counts per thread);
   * the floor: two random draws, one log and one table look-up per jump, nothing recorded.
2. ns/jump against the number of levels (2..32; 40 oscillators, emax 600, Gaussian J of width 2, all levels
   coupled, 2 sample times so that jumps dominate) and the number of baths (1..3), both paths.
3. 1 -> 2 threads on a run of a few seconds.
4. Peak RSS (child processes) against grid size per bath (10^2..10^6, three baths, implicit path) and
   trajectories (10^4..10^6; 10^8 with --full).
"""
import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numba as nb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import benchmark_model  # noqa: E402

import trajmc  # noqa: E402
from trajmc import engine  # noqa: E402

U = np.uint64


@nb.njit(inline="always")
def _splitmix(x):
    x = x + U(0x9E3779B97F4A7C15)
    z = x
    z = (z ^ (z >> U(30))) * U(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> U(27))) * U(0x94D049BB133111EB)
    return x, z ^ (z >> U(31))


@nb.njit(inline="always")
def _xoroshiro(s0, s1):
    r = s0 + s1
    s1 ^= s0
    s0 = ((s0 << U(24)) | (s0 >> U(40))) ^ s1 ^ (s1 << U(16))
    s1 = (s1 << U(37)) | (s1 >> U(27))
    return s0, s1, float(r >> U(11)) * (1.0 / 9007199254740992.0)


@nb.njit(parallel=True, cache=True)
def baseline_kernel(seed, n_traj, cum0, support, indptr, target, cum, exit_rate, times, counts_per_thread):
    n_t = times.shape[0]
    jumps = np.zeros(n_traj, np.int64)
    for i in nb.prange(n_traj):
        tid = nb.get_thread_id()
        sm, s0 = _splitmix(U(seed) + U(i) * U(0x632BE59BD9B4E019))
        sm, s1 = _splitmix(sm)
        if s0 == U(0) and s1 == U(0):
            s0 = U(1)
        s0, s1, u = _xoroshiro(s0, s1)
        x = support[np.searchsorted(cum0, u, side="right")]
        t = 0.0
        k = 0
        nj = 0
        while True:
            a = indptr[x]
            b = indptr[x + 1]
            if a == b:
                tn = np.inf
            else:
                s0, s1, u = _xoroshiro(s0, s1)
                tn = t - math.log(1.0 - u) / exit_rate[x]
            while k < n_t and times[k] < tn:
                counts_per_thread[tid, k, x] += 1
                k += 1
            if k == n_t:
                break
            s0, s1, u = _xoroshiro(s0, s1)
            j = a
            while j < b - 1 and u >= cum[j]:
                j += 1
            x = target[j]
            t = tn
            nj += 1
        jumps[i] = nj
    return jumps.sum()


@nb.njit(cache=True)
def _floor_walk(seed, i, x, inv_rate, table, degree, t_end):
    sm, s0 = _splitmix(U(seed) + U(i) * U(0x632BE59BD9B4E019))
    sm, s1 = _splitmix(sm)
    t = 0.0
    nj = 0
    while True:
        s0, s1, u = _xoroshiro(s0, s1)
        t -= math.log(1.0 - u) * inv_rate[x]
        if t >= t_end:
            return nj
        s0, s1, u = _xoroshiro(s0, s1)
        x = table[x * degree + int(u * degree)]
        nj += 1


@nb.njit(parallel=True, cache=True)
def floor_kernel(seed, n_traj, x0, inv_rate, table, degree, t_end):
    """Two draws, one log, one look-up per jump: a walk on a fixed table, nothing recorded."""
    total = np.zeros(n_traj, np.int64)
    for i in nb.prange(n_traj):
        total[i] = _floor_walk(seed, i, x0, inv_rate, table, degree, t_end)
    return total.sum()


def baseline_inputs(plan):
    net = plan.network
    cum = np.cumsum(net.rate)
    base = np.concatenate([[0.0], cum])[net.indptr[:-1]]
    src = net.source
    with np.errstate(invalid="ignore", divide="ignore"):
        c = (cum - base[src]) / np.where(net.exit_rate[src] > 0, net.exit_rate[src], 1.0)
    support = plan.tables.support
    return (plan.tables.cum0, support, net.indptr, net.target, c, net.exit_rate, plan.times)


def run_baseline(plan, n, threads):
    nb.set_num_threads(threads)
    counts = np.zeros((nb.config.NUMBA_NUM_THREADS, plan.n_t, plan.n_states), np.int64)
    t0 = time.perf_counter()
    j = baseline_kernel(12345, n, *baseline_inputs(plan), counts)
    return time.perf_counter() - t0, int(j)


def floor_inputs(plan):
    """A table walk with the same mean rate and degree as the network (what cannot be beaten)."""
    net = plan.network
    d = int(np.diff(net.indptr).max())
    table = np.zeros(net.n_states * d, np.int64)
    for x in range(net.n_states):
        row = net.target[net.indptr[x]:net.indptr[x + 1]]
        table[x * d:(x + 1) * d] = row[np.arange(d) % max(len(row), 1)] if len(row) else x
    with np.errstate(divide="ignore"):
        inv = np.where(net.exit_rate > 0, 1.0 / net.exit_rate, 1e300)
    return int(plan.tables.support[0]), inv, table, d, float(plan.times[-1])


def run_floor(plan, n, threads):
    nb.set_num_threads(threads)
    args = floor_inputs(plan)
    t0 = time.perf_counter()
    j = floor_kernel(12345, n, *args)
    return time.perf_counter() - t0, int(j)


def run_trajmc(plan, threads):
    acc = engine.new_accumulators(plan)
    t0 = time.perf_counter()
    engine.run_plan(plan, acc, threads)
    return time.perf_counter() - t0, int(acc.jumps.sum())


def interleaved(fns, repeat):
    """Best of ``repeat`` for each function, the functions taking turns (drifts hit all alike)."""
    best = [None] * len(fns)
    for _ in range(repeat):
        for i, f in enumerate(fns):
            r = f()
            if best[i] is None or r[0] < best[i][0]:
                best[i] = r
    return best


def ns(r, threads=1):
    return 1e9 * r[0] * threads / max(r[1], 1)


def level_model(L, baths=1, jumps=200.0):
    """The level/bath family: energies 0..L-1, all levels coupled, Gaussian J (width 2), 40 oscillators per
    bath, microcanonical start mid-grid; the stop time is set so a trajectory makes ~``jumps`` jumps whatever
    L, so that per-trajectory costs weigh the same at every size."""
    off = (np.ones((L, L)) - np.eye(L)).tolist()
    emax = 600 if baths == 1 else 60
    md = {"name": f"levels{L}-baths{baths}", "system": {"energies": list(range(L)), "coupling": off},
          "baths": [{"name": f"B{i}", "dos": {"model": "oscillators", "n": 40}, "emax": emax,
                     "kernel": {"model": "sqrt", "spectral": {"shape": "gaussian", "width": 2.0}}}
                    for i in range(baths)],
          "initial": {"system": [1.0 / L] * L, "baths": [{"state": "microcanonical", "energy": emax // 2}] * baths},
          "times": {"values": [0.0, 1.0]}}
    rate = engine.make_plan(md, trajectories=1, seed=0, engine="implicit").expected_jumps
    md["times"] = {"values": [0.0, jumps / rate]}
    return md


def memory_child(kind, value):
    """Run one configuration in this process and print its peak RSS as JSON."""
    t0 = time.perf_counter()
    if kind == "grid":
        G = int(value)
        md = {"name": "grid", "system": {"energies": [0, 1, 3], "coupling": [[0, 1, 1], [1, 0, 1], [1, 1, 0]]},
              "baths": [{"name": f"B{i}", "dos": {"model": "exponential", "beta": 0.5}, "emax": G - 1,
                         "kernel": {"model": "sqrt", "spectral": {"shape": "gaussian", "width": 2.0}}}
                        for i in range(3)],
              "initial": {"system": [0, 0, 1.0], "baths": [{"state": "microcanonical", "energy": G // 2}] * 3},
              "times": {"stop": 4.0, "num": 21}}
        ens = trajmc.simulate(md, trajectories=200_000, seed=1, engine="implicit")
    else:
        ens = trajmc.simulate(benchmark_model(stop=50.0), trajectories=int(value), seed=1, chunk_size=8192)
    print(json.dumps({"kind": kind, "value": value, "jumps": ens.stats["jumps"], "path": ens.stats["path"],
                      "wall_s": time.perf_counter() - t0, "estimate_mib": ens.stats["memory_estimate"] / 2**20,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def memory(kind, value):
    out = subprocess.run([sys.executable, __file__, "--memory-child", kind, str(value)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trajectories", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="also 1e8 trajectories for the memory figure")
    ap.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    n = args.trajectories
    spec = benchmark_model(stop=50.0)
    t0 = time.perf_counter()
    c = engine.compile_kernel()
    plan = engine.make_plan(spec, trajectories=n, seed=1, chunk_size=4096, engine="enumerated")
    implicit = engine.make_plan(spec, trajectories=n, seed=1, chunk_size=4096, engine="implicit")
    t1 = time.perf_counter()
    small = engine.make_plan(spec, trajectories=64, seed=1)
    run_baseline(small, 64, 1)
    run_floor(small, 64, 1)
    cb = time.perf_counter() - t1
    print(f"ref-A: {plan.n_states} states, {plan.network.n_edges} edges; {n} trajectories to t = 50, 51 times")
    print(f"compile or cache load: trajmc {c:.2f} s (both paths), baseline + floor {cb:.2f} s  (excluded below)")
    del t0

    print("\n1. ref-A, 1 thread (best of interleaved repeats)")
    b, f, te, ti = interleaved([lambda: run_baseline(plan, n, 1), lambda: run_floor(plan, n, 1),
                                lambda: run_trajmc(plan, 1), lambda: run_trajmc(implicit, 1)], args.repeat)
    print(f"   baseline {ns(b):6.2f} ns/jump | floor {ns(f):6.2f} | trajmc enumerated {ns(te):6.2f} | implicit "
          f"{ns(ti):6.2f}")
    print(f"   trajmc / baseline: enumerated {ns(te) / ns(b):.3f}, implicit {ns(ti) / ns(b):.3f}   (target <= 0.65)")
    print(f"   trajmc / floor:    enumerated {ns(te) / ns(f):.2f}, implicit {ns(ti) / ns(f):.2f}   "
          f"(baseline / floor {ns(b) / ns(f):.2f})")

    print("\n2. ns/jump against levels (1 bath, emax 600) and baths (3 levels, emax 60 each), 1 thread")
    rows = {}
    for L in (2, 4, 8, 16, 32):
        md = level_model(L)
        pe = engine.make_plan(md, trajectories=20_000, seed=2, engine="enumerated")
        pi = engine.make_plan(md, trajectories=20_000, seed=2, engine="implicit")
        rb, re_, ri = interleaved([lambda pe=pe: run_baseline(pe, 20_000, 1), lambda pe=pe: run_trajmc(pe, 1),
                                   lambda pi=pi: run_trajmc(pi, 1)], args.repeat)
        rows[L] = (ns(rb), ns(re_), ns(ri))
        print(f"   {L:2d} levels: baseline {ns(rb):6.2f} | enumerated {ns(re_):6.2f} | implicit {ns(ri):6.2f} ns/jump "
              f"({re_[1] / 20_000:.0f} jumps per trajectory)")
    for k, name in ((1, "enumerated"), (2, "implicit"), (0, "baseline")):
        print(f"   {name}: 32 levels / 2 levels = {rows[32][k] / rows[2][k]:.2f}" + ("   (target <= 2)" if k else ""))
    for B in (1, 2, 3):
        md = level_model(3, baths=B)
        pe = engine.make_plan(md, trajectories=20_000, seed=3, engine="enumerated")
        pi = engine.make_plan(md, trajectories=20_000, seed=3, engine="implicit")
        rb, rf, re_, ri = interleaved([lambda pe=pe: run_baseline(pe, 20_000, 1),
                                       lambda pe=pe: run_floor(pe, 20_000, 1),
                                       lambda pe=pe: run_trajmc(pe, 1), lambda pi=pi: run_trajmc(pi, 1)], args.repeat)
        print(f"   {B} bath(s): baseline {ns(rb):6.2f} | floor {ns(rf):6.2f} | enumerated {ns(re_):6.2f} "
              f"({pe.n_states} states) | implicit {ns(ri):6.2f} ns/jump")

    print("\n3. threads (ref-A)")
    one, two = interleaved([lambda: run_trajmc(plan, 1), lambda: run_trajmc(plan, 2)], args.repeat)
    print(f"   1 thread {one[0]:.2f} s, 2 threads {two[0]:.2f} s: speed-up {one[0] / two[0]:.2f}x   (target >= 1.9x)")

    print("\n4. peak RSS (child processes)")
    for G in (10**2, 10**4, 10**6):
        r = memory("grid", G)
        print(f"   3 levels + 3 baths of {G:.0e} grid points, 2e5 trajectories ({r['path']}): peak RSS "
              f"{r['peak_rss_mib']:.0f} MiB (estimate {r['estimate_mib']:.0f} MiB), {r['wall_s']:.1f} s"
              + ("   (target < 1024 MiB)" if G == 10**6 else ""))
    for k in (10**4, 10**6) + ((10**8,) if args.full else ()):
        r = memory("trajectories", k)
        print(f"   ref-A, {k:.0e} trajectories: peak RSS {r['peak_rss_mib']:.0f} MiB ({r['jumps']} jumps, "
              f"{r['wall_s']:.1f} s)")


if __name__ == "__main__":
    main()
