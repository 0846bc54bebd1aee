"""Benchmark: the exact shell solver against scipy's expm_multiply on the full sparse generator.

Run:  python analysis/bench_solver.py
Prints ratios measured in one run (machines are shared and noisy; absolute times are indicative only).
"""
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy.sparse.linalg import expm_multiply

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trajmc  # noqa: E402
from bench_models import benchmark_model  # noqa: E402
from trajmc.network import build_network  # noqa: E402
from trajmc.solver import propagate  # noqa: E402


def best(f, repeat):
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = f()
        ts.append(time.perf_counter() - t0)
    return min(ts), statistics.median(ts), out


def main():
    spec = benchmark_model()
    t_model, _, model = best(lambda: trajmc.load_model(spec), 5)
    t_net, _, net = best(lambda: build_network(model), 5)
    times = model.times
    W = net.generator().tocsc()
    t_ref, med_ref, ref = best(lambda: expm_multiply(W, net.p0, start=times[0], stop=times[-1],
                                                      num=len(times), endpoint=True), 3)
    t_sol, med_sol, (p, info) = best(lambda: propagate(net, net.p0, times), 20)
    t_full, _, _ = best(lambda: trajmc.solve(spec), 5)
    diff = np.abs(p - ref).max()
    print(f"model: {net.n_states} states, {net.n_edges} edges, {net.n_blocks} shells; methods {info}")
    print(f"build model            {t_model * 1e3:9.3f} ms")
    print(f"build network          {t_net * 1e3:9.3f} ms")
    print(f"expm_multiply (full W) {t_ref * 1e3:9.3f} ms   (median {med_ref * 1e3:.3f} ms)  [baseline]")
    print(f"shell solver           {t_sol * 1e3:9.3f} ms   (median {med_sol * 1e3:.3f} ms)")
    print(f"trajmc.solve end to end{t_full * 1e3:9.3f} ms   (load + network + solve)")
    print(f"speed-up (best of runs): {t_ref / t_sol:8.1f}x   (median: {med_ref / med_sol:.1f}x; target >= 300x)")
    print(f"max |p - p_ref|          {diff:.2e}   (target <= 1e-12)")


if __name__ == "__main__":
    main()
