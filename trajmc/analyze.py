"""``python -m trajmc analyze RUN_DIR``: fluctuation statistics with error bars and exact references.

Tables (CSV) go to ``RUN_DIR/analysis/``, figures to ``RUN_DIR/figures/``:

* heat from each bath: distribution at chosen times and its first three cumulants
  (exact: :func:`trajmc.fluctuations.heat_distribution` and the counting-field moments);
* trajectory observational entropy production ``Delta s_obs`` with the exact ``p_x(t)``:
  its mean against ``Delta S_obs`` and ``<exp(-Delta s_obs)>`` against 1, or against the exact
  value below 1 when the start leaves states of an occupied shell empty (absolute irreversibility);
* two baths: the exchange fluctuation theorem ``ln P(sigma)/P(-sigma) = sigma`` (fitted slope);
* activity: the distribution of the number of jumps.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import fluctuations as fl

__all__ = ["analyze_run", "analyze", "sample_cumulants", "delta_s_obs", "exchange_ft"]

#: largest augmented counting-field system (order+1) * states solved exactly
COUNTING_LIMIT = 4_000_000


def sample_cumulants(values, weights):
    """First three cumulants of a weighted sample (weights = counts) and their delta-method SEs."""
    w = np.asarray(weights, dtype=float)
    v = np.asarray(values, dtype=float)
    N = w.sum()
    m1 = np.dot(w, v) / N
    d = v - m1
    m = {k: np.dot(w, d**k) / N for k in (2, 3, 4, 6)}
    k = np.array([m1, m[2], m[3]])
    var = np.array([m[2], m[4] - m[2] ** 2, m[6] - m[3] ** 2 - 6 * m[4] * m[2] + 9 * m[2] ** 3]) / N
    return k, np.sqrt(np.maximum(var, 0.0))


def _choose_times(times, chosen=None):
    n = len(times)
    if chosen is None:
        idx = sorted({max(1, n // 4), max(1, n // 2), n - 1})
    else:
        idx = sorted({int(np.argmin(np.abs(times - t))) for t in chosen})
    return [i for i in idx if i > 0]


def heat_tables(ens, sol, idx):
    """Per bath: distribution table and cumulant table (MC ± SE, exact)."""
    net = sol.network
    N = ens.trajectories
    dists, cums = [], []
    for nu, name in enumerate(ens.model.bath_names):
        a = ens.plan.arrays
        em, off = int(a["emax"][nu]), int(a["hoff"][nu])
        q = -np.arange(-em, em + 1)  # heat into the system = -(bath energy change)
        exact_d = fl.heat_distribution(sol.segments, nu, ens.times[idx])
        exact_k = None
        if exact_d is not None:  # the exact distribution has every moment; no second propagation
            exact_k = fl.cumulants_from_distribution(*exact_d)
        elif 4 * net.n_states <= COUNTING_LIMIT:
            exact_k = fl.cumulants_from_moments(fl.counting_moments(
                sol.segments, lambda nk, nu=nu: fl.heat_weights(nk, nu), ens.times[idx]))
        for j, k in enumerate(idx):
            h = ens.acc.heat[k, off - em: off + em + 1].astype(float)
            P = h / N
            df = pd.DataFrame({"bath": name, "t": ens.times[k], "Q": q, "P_mc": P, "P_mc_se": np.sqrt(P * (1 - P) / N)})
            if exact_d is not None:
                qq, Pe = exact_d
                df["P_exact"] = np.interp(q, qq, Pe[j])  # same integer grid, reversed order
            keep = (df["P_mc"] > 0) | (df.get("P_exact", 0) > 1e-12)
            dists.append(df[keep].sort_values("Q"))
            kk, se = sample_cumulants(q, h)
            row = {"bath": name, "t": ens.times[k]}
            for i, lab in enumerate(("k1", "k2", "k3")):
                row[f"{lab}_mc"], row[f"{lab}_se"] = kk[i], se[i]
                if exact_k is not None:
                    row[f"{lab}_exact"] = exact_k[j, i]
                    row[f"{lab}_z"] = (kk[i] - exact_k[j, i]) / se[i] if se[i] > 0 else np.nan
            cums.append(row)
    return pd.concat(dists, ignore_index=True), pd.DataFrame(cums)


def delta_s_obs(ens, sol):
    """Per-trajectory ``Delta s_obs`` at every time, (N, n_t), from records and the exact ``p_x(t)``."""
    x = ens.records["x"]
    lnV = sol.network.lnV
    with np.errstate(divide="ignore"):
        lnp = np.log(sol.p)  # (n_t, n)
    s = -(lnp[np.arange(len(ens.times))[None, :], x] - lnV[x])
    return s - s[:, :1]


def entropy_production_table(ens, sol, ds):
    N = ds.shape[0]
    ex = sol.thermo()
    pred = fl.ift_prediction(sol.segments, ens.times, sol.p)
    with np.errstate(over="ignore"):
        e = np.exp(-ds)
    mean, se = ds.mean(axis=0), ds.std(axis=0, ddof=1) / np.sqrt(N)
    em, ese = e.mean(axis=0), e.std(axis=0, ddof=1) / np.sqrt(N)
    with np.errstate(divide="ignore", invalid="ignore"):  # no spread (t = 0): no z-score
        df = pd.DataFrame({"t": ens.times, "mean_ds": mean, "mean_ds_se": se, "Sigma_exact": ex["Sigma"].values,
                           "z_mean": np.where(se > 0, (mean - ex["Sigma"].values) / se, np.nan), "ift_mc": em,
                           "ift_se": ese, "ift_exact": pred, "z_ift": np.where(ese > 0, (em - pred) / ese, np.nan)})
    return df


def exchange_ft(ens, t_index=-1, min_count=10):
    """Exchange fluctuation theorem for two canonical baths (PHYSICS.md §5.8) at ``times[t_index]``.

    Returns (table of sigma, ln P(sigma)/P(-sigma) ± SE; fitted slope, its SE) or None.
    """
    m = ens.model
    if ens.plan.driven:  # the exchange FT is a statement about undriven dynamics (PHYSICS.md §5.8)
        return None
    if m.n_baths != 2 or m.bath_states is None or any(st.state != "canonical" for st in m.bath_states):
        return None
    st = ens.network.states
    x0, xt = ens.records["x"][:, 0], ens.records["x"][:, t_index]
    betas = np.array([m.beta_ref(0), m.beta_ref(1)])
    with np.errstate(divide="ignore"):
        lps = np.log(m.p_system)
    q = st[xt, 1:] - st[x0, 1:]  # energy gained by each bath
    sigma = lps[st[x0, 0]] - lps[st[xt, 0]] + q @ betas
    key = np.round(sigma, 9)
    vals, cnt = np.unique(key, return_counts=True)
    lookup = dict(zip(vals.tolist(), cnt.tolist()))
    rows = []
    for v, c in zip(vals, cnt):
        # both signs seen often enough that ln(count) is not biased by small numbers
        if v > 1e-9 and lookup.get(-v, 0) >= min_count and c >= min_count:
            cm = lookup[-v]
            rows.append({"sigma": v, "n_plus": c, "n_minus": cm, "log_ratio": np.log(c / cm),
                         "log_ratio_se": np.sqrt(1.0 / c + 1.0 / cm)})
    df = pd.DataFrame(rows)
    if df.empty:
        return df, np.nan, np.nan
    w = 1.0 / df["log_ratio_se"] ** 2
    denom = np.sum(w * df["sigma"] ** 2)
    slope = float(np.sum(w * df["sigma"] * df["log_ratio"]) / denom)
    return df, slope, float(1.0 / np.sqrt(denom))


def activity_table(ens, sol):
    """Jump-count statistics at each time: MC mean/variance ± SE and exact (counting field)."""
    rec = ens.records
    N = ens.trajectories
    exact = None
    if 4 * sol.network.n_states <= COUNTING_LIMIT:
        exact = fl.cumulants_from_moments(fl.counting_moments(sol.segments, lambda nk: np.ones(nk.n_edges),
                                                              ens.times))
    rows = []
    for k, t in enumerate(ens.times):
        row = {"t": t}
        if rec is not None:
            vals, cnt = np.unique(rec["jumps"][:, k], return_counts=True)
            kk, se = sample_cumulants(vals, cnt)
            row.update(mean_mc=kk[0], mean_se=se[0], var_mc=kk[1], var_se=se[1])
        elif k == len(ens.times) - 1:
            row.update(mean_mc=ens.stats["jumps"] / N, mean_se=np.nan)
        if exact is not None:
            row.update(mean_exact=exact[k, 0], var_exact=exact[k, 1])
        rows.append(row)
    return pd.DataFrame(rows)


def work_tables(ens, sol):
    """Driven models: work distribution at the last time (MC ± SE, exact), and Jarzynski over time."""
    if not ens.plan.driven:
        return None
    a = ens.plan.arrays
    N = ens.trajectories
    wv = np.arange(-a["woff"], a["woff"] + 1)
    w_ex, P_ex = fl.work_distribution(sol.segments, ens.times)
    Pm = ens.acc.work[-1] / N
    dist = pd.DataFrame({"W": wv, "P_mc": Pm, "P_mc_se": np.sqrt(Pm * (1 - Pm) / N),
                         "P_exact": np.interp(wv, w_ex, P_ex[-1], left=0.0, right=0.0)})
    dist = dist[(dist.P_mc > 0) | (dist.P_exact > 1e-14)]
    beta = fl.global_gibbs_beta(ens.model, sol.network)
    gibbs = beta is not None
    if beta is None:
        finite = [ens.model.beta_ref(nu) for nu in range(ens.model.n_baths) if np.isfinite(ens.model.beta_ref(nu))]
        beta = finite[0] if finite else None
    jar = None
    if beta is not None:
        e = np.exp(-beta * wv)
        h = ens.acc.work / N
        mean = h @ e
        se = np.sqrt(np.maximum(h @ e**2 - mean**2, 0.0) / max(N - 1, 1))
        exact = fl.tilted_work_average(sol.segments, ens.times, beta)
        jar = pd.DataFrame({"t": ens.times, "beta": beta, "exp_mbW_mc": mean, "exp_mbW_se": se, "exp_mbW_exact": exact,
                            "Z_ratio": fl.gibbs_ratio(sol.segments, beta) if gibbs else np.nan,
                            "mean_W_mc": h @ wv, "mean_W_exact": P_ex @ w_ex})
    return dist, jar, gibbs, beta


def crooks_table(ens, beta):
    """Crooks: forward MC P_F(W) against the exact time-reversed P_R(-W), ``ln P_F/P_R = beta (W - dF)``."""
    r = fl.crooks_exact(ens.model, beta)
    if r is None:
        return None
    w, PF, PRn, dF = r
    N = ens.trajectories
    a = ens.plan.arrays
    wv = np.arange(-a["woff"], a["woff"] + 1)
    cnt = np.interp(w, wv, ens.acc.work[-1].astype(float), left=0.0, right=0.0)
    P = cnt / N
    keep = (cnt > 0) & (PRn > 0)
    with np.errstate(divide="ignore"):
        lr = np.log(P[keep] / PRn[keep])
    se = np.sqrt((1 - P[keep]) / cnt[keep])  # delta method: SE of ln(count / N)
    pred = beta * (w[keep] - dF)
    return pd.DataFrame({"W": w[keep], "P_F_mc": P[keep], "P_F_exact": PF[keep], "P_R_exact_minus_W": PRn[keep],
                         "log_ratio_mc": lr, "log_ratio_se": se, "beta_W_minus_dF": pred, "z": (lr - pred) / se,
                         "Delta_F": dF, "beta": beta})


def analyze(ens, sol, times=None):
    """All fluctuation statistics of an ensemble as a dict of DataFrames (and FT slope)."""
    idx = _choose_times(ens.times, times)
    out = {}
    out["heat_distribution"], out["heat_cumulants"] = heat_tables(ens, sol, idx)
    out["activity"] = activity_table(ens, sol)
    out["absolute_irreversibility"] = fl.absolute_irreversibility(sol.segments)
    wt = work_tables(ens, sol)
    if wt is not None:
        out["work_distribution"], jar, out["gibbs_start"], beta = wt
        if jar is not None:
            out["jarzynski"] = jar
        if out["gibbs_start"]:
            cr = crooks_table(ens, beta)
            if cr is not None:
                out["crooks"] = cr
    if ens.records is not None:
        ds = delta_s_obs(ens, sol)
        out["entropy_production"] = entropy_production_table(ens, sol, ds)
        out["delta_s_final"] = ds[:, -1]
        r = exchange_ft(ens)
        if r is not None:
            out["exchange_ft"], out["ft_slope"], out["ft_slope_se"] = r
    return out


def analyze_run(run_dir, times=None, quiet=False):
    """Analyze a run directory: writes ``analysis/*.csv`` and ``figures/*.png``; returns the dict."""
    from .plotting import analysis_figures
    from .runio import atomic_text, load_run
    from .solver import solve

    run_dir = Path(run_dir)
    ens = load_run(run_dir)
    sol = solve(ens.model, progress=False if quiet else None)
    res = analyze(ens, sol, times)
    tdir = run_dir / "analysis"
    tdir.mkdir(exist_ok=True)
    for name, val in res.items():
        if isinstance(val, pd.DataFrame):
            atomic_text(tdir / f"{name}.csv", val.to_csv(index=False))
    analysis_figures(ens, res, run_dir / "figures")
    if not quiet:
        _print_summary(ens, res, run_dir)
    return res


def _print_summary(ens, res, run_dir):
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 4):
        print(f"{ens.model.name}: {ens.trajectories} trajectories")
        print("heat cumulants (heat into the system; MC ± SE vs exact):")
        print(res["heat_cumulants"].to_string(index=False))
        if "entropy_production" in res:
            ep = res["entropy_production"].iloc[-1]
            print(f"<Delta s_obs>(t={ep.t:g}) = {ep.mean_ds:.4f} ± {ep.mean_ds_se:.4f}  (exact Delta S_obs {ep.Sigma_exact:.4f})")
            note = " (absolute irreversibility: the start leaves states of its shells empty)" \
                if res["absolute_irreversibility"] else ""
            print(f"<exp(-Delta s_obs)> = {ep.ift_mc:.4f} ± {ep.ift_se:.4f}  (exact {ep.ift_exact:.4f}){note}")
        else:
            print("trajectory entropy production: skipped (the run kept no per-trajectory records)")
        if "ft_slope" in res:
            print(f"exchange FT: slope of ln P(sigma)/P(-sigma) vs sigma = {res['ft_slope']:.4f} ± "
                  f"{res['ft_slope_se']:.4f} (theorem: 1)")
        if "jarzynski" in res:
            j = res["jarzynski"].iloc[-1]
            ref = f"Z_final/Z_0 = {j.Z_ratio:.5f}" if res.get("gibbs_start") else f"exact {j.exp_mbW_exact:.5f}"
            print(f"work: <W> = {j.mean_W_mc:.4f} (exact {j.mean_W_exact:.4f}); <exp(-{j.beta:g} W)> = "
                  f"{j.exp_mbW_mc:.5f} ± {j.exp_mbW_se:.5f} vs {ref}" + (" (Jarzynski)" if res.get("gibbs_start") else ""))
        if "crooks" in res and len(res["crooks"]):
            c = res["crooks"]
            print(f"Crooks (forward MC vs exact reversed protocol): ln P_F(W)/P_R(-W) - beta (W - dF) has largest "
                  f"|z| = {np.nanmax(np.abs(c.z)):.2f} over {len(c)} work values (Delta F = {c.Delta_F.iloc[0]:.5f})")
        act = res["activity"].iloc[-1]
        print(f"activity at t={act.t:g}: mean jumps {act.get('mean_mc', np.nan):.4f} (exact {act.get('mean_exact', np.nan):.4f})")
    print(f"tables in {run_dir / 'analysis'}, figures in {run_dir / 'figures'}")
