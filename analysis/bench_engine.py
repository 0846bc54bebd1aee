"""Benchmark: trajmc's Gillespie kernel against a competent plain numba kernel, measured in one run.

Run:  python analysis/bench_engine.py [--trajectories N] [--full]
Model: energies [0, 3, 7], all-ones coupling, 40 oscillators, emax 400, sqrt kernel, canonical bath
(mean energy 150), system in the top level, 51 sample times on [0, 50].

Baseline: CSR out-edges, linear cumulative search, one inlined xorshift-type 64-bit generator per
trajectory (seeded by splitmix64), exponential by -log(u) / rate, prange over trajectories, occupation
counts per thread.  Both kernels do the same work: exact SSA, state recorded at each sample time.
Figures are ratios; absolute times on these shared machines are indicative only.
--full additionally runs 1e8 trajectories (a few minutes) in a child process and reports its peak memory.
"""
import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numba as nb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import benchmark_model  # noqa: E402

import trajmc  # noqa: E402
from trajmc import _rng, engine  # noqa: E402
from trajmc.reference import reference_chunk  # noqa: E402

U = np.uint64


@nb.njit(inline="always")
def _splitmix(x):
    x = x + U(0x9E3779B97F4A7C15)
    z = x
    z = (z ^ (z >> U(30))) * U(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> U(27))) * U(0x94D049BB133111EB)
    return x, z ^ (z >> U(31))


@nb.njit(parallel=True, cache=True)
def baseline_kernel(seed, n_traj, cum0, support, indptr, target, cum, exit_rate, times, counts_per_thread):
    n_t = times.shape[0] - 1  # (trajmc's padded sample times: the last is +inf)
    jumps = np.zeros(n_traj, np.int64)
    for i in nb.prange(n_traj):
        tid = nb.get_thread_id()
        sm, s0 = _splitmix(U(seed) + U(i) * U(0x632BE59BD9B4E019))
        sm, s1 = _splitmix(sm)
        if s0 == U(0) and s1 == U(0):
            s0 = U(1)
        # xoroshiro128+ inlined
        r = s0 + s1
        s1 ^= s0
        s0 = ((s0 << U(24)) | (s0 >> U(40))) ^ s1 ^ (s1 << U(16))
        s1 = (s1 << U(37)) | (s1 >> U(27))
        u = float(r >> U(11)) * (1.0 / 9007199254740992.0)
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
                r = s0 + s1
                s1 ^= s0
                s0 = ((s0 << U(24)) | (s0 >> U(40))) ^ s1 ^ (s1 << U(16))
                s1 = (s1 << U(37)) | (s1 >> U(27))
                u = float(r >> U(11)) * (1.0 / 9007199254740992.0)
                tn = t - math.log(1.0 - u) / exit_rate[x]
            while k < n_t and times[k] < tn:
                counts_per_thread[tid, k, x] += 1
                k += 1
            if k == n_t:
                break
            r = s0 + s1
            s1 ^= s0
            s0 = ((s0 << U(24)) | (s0 >> U(40))) ^ s1 ^ (s1 << U(16))
            s1 = (s1 << U(37)) | (s1 >> U(27))
            u = float(r >> U(11)) * (1.0 / 9007199254740992.0)
            j = a
            while j < b - 1 and u >= cum[j]:
                j += 1
            x = target[j]
            t = tn
            nj += 1
        jumps[i] = nj
    return jumps.sum()


def run_baseline(plan, n, threads):
    a = plan.arrays
    nb.set_num_threads(threads)
    counts = np.zeros((nb.config.NUMBA_NUM_THREADS, len(plan.times), plan.network.n_states), np.int64)
    t0 = time.perf_counter()
    j = baseline_kernel(12345, n, a["cum0"], a["support"], plan.network.indptr, a["target"], a["cum"],
                        plan.network.exit_rate, a["times"], counts)
    return time.perf_counter() - t0, int(j)


def run_trajmc(plan, threads):
    acc = engine.new_accumulators(plan)
    t0 = time.perf_counter()
    engine.run_plan(plan, acc, threads)
    return time.perf_counter() - t0, int(acc.jumps.sum())


def best_of(f, repeat):
    runs = [f() for _ in range(repeat)]
    return min(runs, key=lambda r: r[0])


def memory_child(n):
    """Run n trajectories (records off) in this process and print peak RSS as JSON."""
    import resource

    t0 = time.perf_counter()
    ens = trajmc.simulate(benchmark_model(stop=50.0), trajectories=n, seed=1, records=False, chunk_size=8192)
    print(json.dumps({"trajectories": n, "jumps": ens.stats["jumps"], "wall_s": time.perf_counter() - t0,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def memory(n):
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(n)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trajectories", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="also run 1e8 trajectories for the memory figure")
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    spec = benchmark_model(stop=50.0)
    n = args.trajectories
    plan = engine.make_plan(spec, trajectories=n, seed=1, records=False, chunk_size=4096)
    print(f"model: {plan.network.n_states} states, {plan.network.n_edges} edges; {n} trajectories to t = 50")

    # compile times (numba cache: a second process loads instead of compiling)
    t0 = time.perf_counter()
    c = engine.compile_kernel()
    small = engine.make_plan(spec, trajectories=64, seed=1, records=False)
    t1 = time.perf_counter()
    run_baseline(small, 64, 1)
    cb = time.perf_counter() - t1
    print(f"compile or cache load: trajmc {c:.2f} s, baseline {cb:.2f} s   (excluded from all figures below)")
    del t0

    rows = {}
    for threads in (1, 2):
        tb, jb = best_of(lambda: run_baseline(plan, n, threads), args.repeat)
        tt, jt = best_of(lambda: run_trajmc(plan, threads), args.repeat)
        rows[threads] = (tb, jb, tt, jt)
        print(f"{threads} thread(s): baseline {1e9 * tb * threads / jb:6.2f} ns/jump-thread ({tb:.3f} s, {jb} jumps) | "
              f"trajmc {1e9 * tt * threads / jt:6.2f} ns/jump-thread ({tt:.3f} s, {jt} jumps)")
    nsb1 = rows[1][0] / rows[1][1]
    nst1 = rows[1][2] / rows[1][3]
    print(f"trajmc / baseline ns per jump, 1 thread: {nst1 / nsb1:.3f}   (target <= 0.8)")
    print(f"speed-up 1 -> 2 threads: trajmc {rows[1][2] / rows[2][2] * rows[2][3] / rows[1][3]:.2f}x, "
          f"baseline {rows[1][0] / rows[2][0] * rows[2][1] / rows[1][1]:.2f}x   (target >= 1.9x)")

    m = 300
    t0 = time.perf_counter()
    ref = reference_chunk(plan.arrays, _rng.chunk_state(1, 0), m)
    tp = time.perf_counter() - t0
    jp = sum(r["total_jumps"] for r in ref)
    print(f"pure-Python reference Gillespie: {1e9 * tp / jp:8.0f} ns/jump -> trajmc is {tp / jp / nst1:.0f}x faster "
          f"(target >= 20x)")

    for k in (10**5, 10**6) + ((10**8,) if args.full else ()):
        r = memory(k)
        print(f"peak RSS, {k:.0e} trajectories (records off): {r['peak_rss_mib']:.0f} MiB "
              f"({r['jumps']} jumps, {r['wall_s']:.1f} s)  (target < 1024 MiB at 1e8)")


if __name__ == "__main__":
    main()
