"""Accuracy of the bias correction and of the standard errors on a sparse two-bath model (issue 13 item 3).

Measurement only: independent seeded runs of one model against its exact solution; for each quantity
and time, over the S seeds,

* ``mean_z``: the mean of z = (estimate - exact) / SE (0 for an unbiased estimate), ± its standard
  error sd(z) / sqrt(S), and the two-sided t-test p-value of mean_z = 0;
* ``bias``: mean(estimate) - exact, ± sd(estimate) / sqrt(S);
* ``exact_bias`` (S_obs, Sigma, D): the exact expected bias of the estimator, E[estimate] - exact, computed without
  sampling (the jackknife entropy is a sum of cell terms, so its expectation is a sum of binomial expectations:
  ``trajmc.estimate.entropy_residual``); ``exact_bias_z`` = exact_bias / scatter, the bias in z units that the
  seeds' ``mean_z`` estimates with noise;
* ``scatter``: the true scatter, sd(estimate) across seeds (ddof = 1);
* ``se_ratio``: mean(reported SE) / scatter, with a 95% interval from the chi-square distribution of the
  sample variance (the spread of the reported SE over seeds is far smaller and is left out);
* ``sd_z``: the standard deviation of z (1 for an honest error bar).

Issue 13's targets are |mean_z| <= 0.1 and se_ratio within [0.8, 1.2]; the column ``target`` says whether the
measured interval for each lies inside its target (``ok``), outside it (``FAIL``) or straddles an edge
(``?``).  For the entropies with a bias correction the reported SE is the square root of
``var/(N-1) + chi2 + sysb^2`` (docs/physics.md §6: for S_obs and Sigma ``sysb`` is the jackknife - Miller-Madow
disagreement; ``I`` is the jackknife less its residual under the independence null, its ``var`` and ``chi2`` from
that null, ``sysb = 0``);
``share_*`` give the mean share of each
term in SE^2, read from the estimator's own records (a diagnostic, trajmc.estimate internals).

Model (``sparse-two-baths``): the built-in ``two-baths`` example (3 levels 0, 1, 2, all-ones coupling, two baths
of 8 oscillators each, sqrt kernel, flat J) with the hot bath canonical at beta 0.3 on a grid to 125 and the
cold bath at beta 1.0 on a grid to 35: 13,608 joint states, about 3,000 occupied at each time by 2e5
trajectories (docs/physics.md §6 regime: many cells with few counts).

Run:  python analysis/se_accuracy.py [--seeds 40] [--trajectories 200000] [--seed0 130000] [--out se_accuracy]
      (~1 s per seed on one core; independent batches, e.g. --seed0 190000 and 200000 with different --out,
      can be pooled from their se_accuracy_runs.csv)
Out:  runs/analysis/<out>/se_accuracy.csv (the table), se_accuracy_runs.csv (every seed)
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

import trajmc  # noqa: E402
from trajmc import estimate as est_mod  # noqa: E402

COLS = ["I", "Sigma", "Sigma_tilde", "D", "S_obs"]
TIMES = [0.0, 0.5, 1.0, 2.0, 5.0]
SEED0 = 130_000
Z_TARGET = 0.1
RATIO_TARGET = (0.8, 1.2)


def sparse_two_baths():
    md = copy.deepcopy(trajmc.get_example("two-baths"))
    md["name"] = "sparse-two-baths"
    md["baths"][0]["emax"] = 125
    md["baths"][1]["emax"] = 35
    md["initial"]["baths"] = [{"state": "canonical", "beta": 0.3}, {"state": "canonical", "beta": 1.0}]
    md["times"] = {"values": TIMES}
    md.pop("simulation", None)
    return md


def se_parts(ens):
    """Per column the three terms of SE^2 (var/(N-1), chi2, sysb^2), from the estimator's records."""
    plan, acc = ens.plan, ens.acc
    M = est_mod.marginals(plan, acc)
    N = M.N
    out = {}
    net = plan.network
    est = {}
    for nu, b in enumerate(M.names):
        be = est_mod._bath_estimates(M, nu)
        est[f"D_{b}"] = be["D"]
    est_mod._joint_estimates(acc.counts.astype(float), N, net.lnV, acc.cross / plan.g_scale, plan.g0,
                             net.states[:, 0], net.states[:, 1:], M, est, reachable=True)
    cs = M.ps.astype(float)
    js, ms = est_mod.entropy_bias(cs)
    ps = cs / N
    var, _ = est_mod._var(ps, -est_mod._log(ps))
    S_sh = est_mod.Estimate(est_mod.shannon(ps) + js, var, est_mod._chi(est_mod._occupied(cs), N), js - ms)
    est["Sigma_tilde"] = est_mod._sigma_tilde(M, S_sh)
    for c in COLS:
        e = est[c]
        shape = (len(M.times),)
        out[c] = np.stack([np.asarray(e.var, float) / (N - 1), np.broadcast_to(np.asarray(e.chi2, float), shape),
                           np.broadcast_to(np.asarray(e.sysb, float), shape) ** 2])
    return out


def verdict(lo, hi, tlo, thi):
    if tlo <= lo and hi <= thi:
        return "ok"
    if hi < tlo or lo > thi:
        return "FAIL"
    return "?"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--trajectories", type=int, default=200_000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed0", type=int, default=SEED0, help="first seed (default %(default)s)")
    ap.add_argument("--out", default="se_accuracy", help="output folder under runs/analysis (default %(default)s)")
    a = ap.parse_args(argv)
    timer = C.Timer()
    out = C.out_dir(a.out)
    seed0 = a.seed0
    md = sparse_two_baths()
    sol = trajmc.solve(md)
    ex = sol.thermo()
    # the exact expected bias of the jackknife S_obs (and so of Sigma), by linearity over the cells
    pex = np.clip(sol.p, 0.0, None)
    pex = pex / pex.sum(axis=1, keepdims=True)
    resid = np.array([est_mod.entropy_residual(a.trajectories, p) for p in pex])
    exact_bias = {"S_obs": resid, "Sigma": resid - resid[0]}
    st = sol.network.states
    if all(b.get("state") == "canonical" for b in md["initial"]["baths"]):  # D = sum_b KL(p_b || pi_b) - jackknife
        exact_bias["D"] = -sum(np.array([est_mod.entropy_residual(a.trajectories, np.bincount(st[:, 1 + nu], p))
                                         for p in pex]) for nu in range(st.shape[1] - 1))
    rows = []
    for i in range(a.seeds):
        ens = trajmc.simulate(md, trajectories=a.trajectories, seed=seed0 + i, threads=a.threads)
        th = ens.thermo()
        parts = se_parts(ens)
        K = np.count_nonzero(ens.counts, axis=1)
        for c in COLS:
            se2 = parts[c].sum(axis=0)
            # the records reproduce the table's SE (t = 0 of a difference is set to 0 by definition)
            k = slice(1, None) if c in ("Sigma", "Sigma_tilde") else slice(None)
            np.testing.assert_allclose(np.sqrt(se2)[k], th[f"{c}_se"].to_numpy()[k], rtol=1e-9, atol=1e-15)
            for j, t in enumerate(TIMES):
                rows.append({"seed": seed0 + i, "col": c, "t": t, "est": th[c].iloc[j], "se": th[f"{c}_se"].iloc[j],
                             "exact": ex[c].iloc[j], "occupied": K[j],
                             **{f"share_{n}": parts[c][m, j] / se2[j] if se2[j] > 0 else np.nan
                                for m, n in enumerate(("delta", "chi2", "bias"))}})
        print(f"  seed {i + 1}/{a.seeds} done ({timer():.0f} s)", flush=True)
    runs = pd.DataFrame(rows)
    runs.to_csv(out / "se_accuracy_runs.csv", index=False)
    S = a.seeds
    table = []
    for (c, t), g in runs.groupby(["col", "t"], sort=False):
        if g["se"].max() == 0:  # zero by definition (Sigma, Sigma_tilde at t = 0)
            continue
        z = (g["est"] - g["exact"]) / g["se"]
        sd = g["est"].std(ddof=1)
        # 95% interval of the true scatter from (S-1) s^2 / sigma^2 ~ chi2(S-1)
        sd_lo = sd * np.sqrt((S - 1) / stats.chi2.ppf(0.975, S - 1))
        sd_hi = sd * np.sqrt((S - 1) / stats.chi2.ppf(0.025, S - 1))
        ratio = g["se"].mean() / sd
        mz, mz_se = z.mean(), z.std(ddof=1) / np.sqrt(S)
        tq = stats.t.ppf(0.975, S - 1)
        r_lo, r_hi = g["se"].mean() / sd_hi, g["se"].mean() / sd_lo
        table.append({"col": c, "t": t, "exact": g["exact"].iloc[0], "bias": g["est"].mean() - g["exact"].iloc[0],
                      "bias_se": sd / np.sqrt(S),
                      "exact_bias": exact_bias[c][TIMES.index(t)] if c in exact_bias else np.nan,
                      "exact_bias_z": exact_bias[c][TIMES.index(t)] / sd if c in exact_bias else np.nan,
                      "mean_z": mz, "mean_z_se": mz_se,
                      "t_test_p": stats.ttest_1samp(z, 0.0).pvalue, "sd_z": z.std(ddof=1),
                      "mean_SE": g["se"].mean(), "scatter": sd, "se_ratio": ratio,
                      "ratio_lo95": r_lo, "ratio_hi95": r_hi,
                      "share_delta": g["share_delta"].mean(), "share_chi2": g["share_chi2"].mean(),
                      "share_bias": g["share_bias"].mean(),
                      "z_target": verdict(mz - tq * mz_se, mz + tq * mz_se, -Z_TARGET, Z_TARGET),
                      "ratio_target": verdict(r_lo, r_hi, *RATIO_TARGET)})
    tab = pd.DataFrame(table)
    tab.to_csv(out / "se_accuracy.csv", index=False)
    occ = runs.groupby("t")["occupied"].mean()
    print(f"SE accuracy on {md['name']}: {sol.network.n_states} joint states, {a.trajectories} trajectories, "
          f"{S} seeds ({seed0}..{seed0 + S - 1}); occupied states per time: "
          + ", ".join(f"t={t:g}: {v:.0f}" for t, v in occ.items()))
    print(f"targets (issue 13): |mean_z| <= {Z_TARGET} (95% t-interval inside), "
          f"SE / scatter in {list(RATIO_TARGET)} (95% chi-square interval inside)")
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.float_format", "{:.3g}".format):
        print(tab.to_string(index=False))
    print(f"runtime {timer():.0f} s; outputs: {out}")


if __name__ == "__main__":
    main()
