"""Benchmark: the exact solver against scipy's expm_multiply on the full sparse generator.

Run:  python analysis/bench_solver.py [--quick]
For each benchmark model, in one run: state count, closed classes (shells), largest shell, the time of
``expm_multiply`` on the full generator (segment by segment for a driven model), of ``trajmc.solve`` end to
end (model, network and propagation) and of its propagation alone, their ratios, max |p - p_ref|, and the
time of the exact heat distribution of the first bath at three times (reusing the solution's shells).
Machines are shared and noisy: ratios measured in the same run are the result, absolute times only indicate.
``--quick`` leaves out the 271,794-state model (its baseline alone takes minutes).
"""
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # both sides single-threaded BLAS (set before numpy)

import numpy as np  # noqa: E402
from scipy.sparse.linalg import expm_multiply  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's trajmc, not an installed one
from bench_models import benchmark_model  # noqa: E402

import trajmc  # noqa: E402
import trajmc.solver as solver_mod  # noqa: E402
from trajmc import fluctuations as fl  # noqa: E402
from trajmc.network import build_segments  # noqa: E402
from trajmc.solver import propagate_segments  # noqa: E402

OFF3 = [[0, 1, 1], [1, 0, 1], [1, 1, 0]]


def spin_baths(emax):
    """3 levels (0, 1, 3) between a hot and a cold bath of ``emax`` spins each (sqrt kernel)."""
    bath = lambda name: {"name": name, "dos": {"model": "spins", "n": emax, "quantum": 1}, "emax": emax,  # noqa: E731
                         "kernel": {"model": "sqrt", "gamma": 1.0, "spectral": {"shape": "flat"}}}
    return {"name": f"spins-{emax}", "system": {"energies": [0, 1, 3], "coupling": OFF3},
            "baths": [bath("hot"), bath("cold")],
            "initial": {"system": [0.0, 0.0, 1.0], "baths": [{"state": "canonical", "beta": 0.2},
                                                             {"state": "canonical", "beta": 1.0}]},
            "times": {"stop": 5.0, "num": 26}}


def driven_two_baths():
    """The two-baths example driven: levels (0, 1, 2) -> (0, 2, 3) at t = 2 -> (0, 1, 3) at t = 3.5."""
    d = trajmc.get_example("two-baths")
    d["name"] = "two-baths-driven"
    d["protocol"] = [{"time": 2.0, "energies": [0, 2, 3]}, {"time": 3.5, "energies": [0, 1, 3]}]
    return d


def stiff():
    """3 levels (0, 2, 5) in an ideal bath (beta 0.3), golden kernel with an exponential cut-off and one weak
    transition: rates over 11 decades (1e-7 .. 2e4)."""
    return {"name": "stiff", "system": {"energies": [0, 2, 5], "coupling": [[0, 1, 1e-3], [1, 0, 1], [1e-3, 1, 0]]},
            "baths": [{"name": "B", "dos": {"model": "exponential", "beta": 0.3}, "emax": 36,
                       "kernel": {"model": "golden", "gamma": 1.0,
                                  "spectral": {"shape": "exponential", "cutoff": 3.0}}}],
            "initial": {"system": [0.0, 0.0, 1.0], "baths": [{"state": "canonical", "beta": 1.0}]},
            "times": {"stop": 1.0, "num": 26}}


MODELS = [("ref-A (1 bath)", benchmark_model), ("two-baths", lambda: trajmc.get_example("two-baths")),
          ("spins emax 150", lambda: spin_baths(150)), ("spins emax 300", lambda: spin_baths(300)),
          ("driven two-baths", driven_two_baths), ("stiff (1 bath)", stiff)]


def baseline(segments, times):
    """expm_multiply on each segment's full generator; linspace sample times in one call per segment."""
    times = np.asarray(times, dtype=float)
    cur = segments[0][1].p0
    out = np.empty((len(times), len(cur)))
    bounds = [t0 for t0, _ in segments] + [np.inf]
    for k, (t0, net) in enumerate(segments):
        W = net.generator().tocsc()
        t1 = bounds[k + 1]
        sel = np.flatnonzero((times >= t0) & (times < t1))
        rel = np.concatenate([times[sel] - t0, [t1 - t0] if np.isfinite(t1) else []])
        if (len(rel) > 2 and np.allclose(np.diff(rel[:len(sel)]), rel[1] - rel[0]) and rel[0] == 0
                and not np.isfinite(t1)):
            res = expm_multiply(W, cur, start=0.0, stop=rel[-1], num=len(rel), endpoint=True)
        else:
            res, prev, v = [], 0.0, cur
            for t in rel:
                if t > prev:
                    v = expm_multiply(W * (t - prev), v)
                res.append(v)
                prev = t
            res = np.array(res)
        out[sel] = res[:len(sel)]
        cur = res[-1]
    return out


def timed(f, repeat):
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_one(label, spec):
    model = trajmc.load_model(spec)
    segs = build_segments(model)
    net = segs[0][1]
    big = net.n_states > 100_000
    small = net.n_states < 5_000  # milliseconds: take the best of many runs (the machine is shared)
    t_ref, ref = timed(lambda: baseline(segs, model.times), 1 if net.n_states > 30_000 else 3)
    t_sol, sol = timed(lambda: trajmc.solve(spec, progress=False), 1 if big else 20 if small else 5)

    def propagate_only():  # from the network, as the baseline (the shells are rebuilt: not cached)
        solver_mod._SHELLS.clear()
        return propagate_segments(segs, net.p0, model.times, progress=False)

    t_prop, _ = timed(propagate_only, 1 if big else 20 if small else 5)
    idx = [len(model.times) // 4, len(model.times) // 2, len(model.times) - 1]
    t_heat, h = timed(lambda: fl.heat_distribution(sol.segments, 0, model.times[idx], progress=False), 1)
    rates = np.concatenate([nt.rate for _, nt in segs])
    routes = ", ".join(f"{k} {v}" for k, v in sol.info.items() if k in solver_mod.ROUTES and v)
    return {"model": label, "states": net.n_states, "shells": net.n_blocks,
            "largest": int(np.bincount(net.block).max()),
            "decades": np.log10(rates.max() / rates.min()), "t_ref": t_ref, "t_sol": t_sol, "t_prop": t_prop,
            "dp": float(np.abs(sol.p - ref).max()), "t_heat": t_heat if h is not None else np.nan, "routes": routes,
            "terms": sol.info["chebyshev_terms"]}


def main(quick=False):
    trajmc.solve(trajmc.get_example("two-baths"), progress=False)  # compile the kernels once
    rows = []
    for label, make in MODELS:
        if quick and "300" in label:
            continue
        r = bench_one(label, make())
        rows.append(r)
        print(f"{label:18s} done: expm_multiply {r['t_ref']:8.3f} s, solve {r['t_sol']:7.3f} s "
              f"({r['t_ref'] / r['t_sol']:6.1f}x), max|dp| {r['dp']:.1e}", flush=True)
    print()
    hdr = (f"{'model':18s} {'states':>8s} {'shells':>6s} {'largest':>7s} {'rate decades':>12s} {'expm_multiply':>13s} "
           f"{'solve':>8s} {'ratio':>7s} {'propagate':>9s} {'ratio':>7s} {'max|dp|':>8s} {'heat dist':>9s}")
    print(hdr)
    for r in rows:
        print(f"{r['model']:18s} {r['states']:8d} {r['shells']:6d} {r['largest']:7d} {r['decades']:12.1f} "
              f"{r['t_ref']:12.3f}s {r['t_sol']:7.3f}s {r['t_ref'] / r['t_sol']:6.1f}x {r['t_prop']:8.3f}s "
              f"{r['t_ref'] / r['t_prop']:6.1f}x {r['dp']:8.1e} " +
              (f"{r['t_heat']:8.3f}s" if np.isfinite(r["t_heat"]) else "  (limit)"))
    print()
    for r in rows:
        print(f"{r['model']:18s} routes: {r['routes']}; longest Chebyshev series {r['terms']} terms")
    print("solve = trajmc.solve end to end (model, network, propagation); propagate = from the network, as the "
          "baseline; ratio = expm_multiply time / that time (targets: >= 3x everywhere, >= 300x on ref-A); "
          "heat dist = exact heat distribution of the first bath at 3 times ((limit): more than HEAT_EXACT_LIMIT)")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
