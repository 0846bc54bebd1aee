"""Benchmark: a Dask LocalCluster of 2 worker processes against local numba threads, in one run.

Run:  python analysis/bench_dask.py [--trajectories N]
Prints throughput ratios (same machine, same chunks, bit-identical results) and the per-chunk
overhead of the Dask path (scheduling + serialisation), measured with chunks of a few trajectories
where the simulation itself costs almost nothing.  The overhead sets the smallest sensible chunk size.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import benchmark_model  # noqa: E402

from trajmc import engine  # noqa: E402
from trajmc.cluster import DaskSession, run_plan_dask  # noqa: E402


def timed_threads(plan, threads):
    acc = engine.new_accumulators(plan)
    t0 = time.perf_counter()
    engine.run_plan(plan, acc, threads)
    return time.perf_counter() - t0, acc


def timed_dask(plan, session):
    acc = engine.new_accumulators(plan)
    t0 = time.perf_counter()
    run_plan_dask(plan, acc, session)
    return time.perf_counter() - t0, acc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trajectories", type=int, default=400_000)
    args = ap.parse_args()
    spec = benchmark_model(stop=50.0)
    engine.compile_kernel()
    t0 = time.perf_counter()
    session = DaskSession(workers=2)
    t_start = time.perf_counter() - t0
    print(f"LocalCluster start-up (2 worker processes): {t_start:.2f} s (not in the figures below)")
    try:
        for cs in (4096, 16384):
            plan = engine.make_plan(spec, trajectories=args.trajectories, seed=1, chunk_size=cs, records=False)
            timed_dask(plan, session)  # warm: workers compile or load the kernel, arrays scattered
            tt, a1 = min((timed_threads(plan, 2) for _ in range(2)), key=lambda r: r[0])
            td, a2 = min((timed_dask(plan, session) for _ in range(2)), key=lambda r: r[0])
            same = np.array_equal(a1.counts, a2.counts) and np.array_equal(a1.cross, a2.cross)
            jumps = int(a1.jumps.sum())
            print(f"chunk {cs:6d} ({plan.n_chunks:4d} chunks): threads(2) {tt:.2f} s, dask(2 workers) {td:.2f} s "
                  f"-> dask/threads time {td / tt:.2f}x ({1e9 * td * 2 / jumps:.1f} vs {1e9 * tt * 2 / jumps:.1f} "
                  f"ns/jump/core); bit-identical: {same}")
        # per-chunk overhead: chunks of 8 trajectories cost ~0.1 ms to simulate
        plan = engine.make_plan(spec, trajectories=8 * 400, seed=1, chunk_size=8, records=False)
        timed_dask(plan, session)
        td, _ = min((timed_dask(plan, session) for _ in range(2)), key=lambda r: r[0])
        tt, _ = min((timed_threads(plan, 2) for _ in range(2)), key=lambda r: r[0])
        per = (td - tt) / plan.n_chunks
        print(f"per-chunk overhead of the Dask path: {1e3 * per:.2f} ms per chunk (400 tiny chunks: dask {td:.2f} s, "
              f"threads {tt:.3f} s)")
        # a chunk should cost >= ~50x the overhead: trajectories x jumps/trajectory x ns/jump
        plan_big = engine.make_plan(spec, trajectories=20_000, seed=2, records=False)
        tb, _ = timed_threads(plan_big, 1)
        ns_per_traj = 1e9 * tb / 20_000
        for k in (10, 50):
            print(f"chunk work >= {k}x the overhead (overhead <= {100 / k:.0f}%): chunk_size >= "
                  f"{k * per / (ns_per_traj * 1e-9):.0f} trajectories "
                  f"(one trajectory costs {ns_per_traj / 1e3:.2f} us)")
    finally:
        session.close()


if __name__ == "__main__":
    main()
