"""``python -m trajmc analyze RUN_DIR``: fluctuation statistics with error bars and exact references.

Everything comes from what the kernel streamed, so it works for any run size (records are never needed):

* heat from each bath: distribution at chosen times and its first three cumulants
  (exact: :func:`trajmc.fluctuations.heat_distribution` and the counting-field moments);
* trajectory observational entropy production ``Delta s_obs`` against the exact ``p_x(t)`` (streamed
  when the run knew it): its mean against ``Delta S_obs``, ``<exp(-Delta s_obs)>`` against 1, or against
  the exact value below 1 when the start leaves states of an occupied shell empty (absolute
  irreversibility), and its histogram;
* two baths: the exchange fluctuation theorem ``ln P(sigma)/P(-sigma) = sigma`` (maximum-likelihood slope),
  from the streamed joint of the levels at 0 and t and the heat of the first bath;
* activity: mean and variance of the number of jumps (exact: counting field);
* driven models: work distribution, Jarzynski and Crooks.

The exact references need the enumerated network; without it the Monte Carlo columns stand alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import fluctuations as fl
from . import references
from .references import work_beta
from .rundir import atomic_text, load_run, locked, output_dir

__all__ = ["analyze_run", "analyze", "sample_cumulants", "exchange_ft", "ft_slope"]

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
    return [i for i in idx if 0 < i < n]  # (a run sampled at t = 0 only has no heat yet)


def heat_tables(ens, sol, idx):
    """Per bath: distribution table and cumulant table (MC ± SE, exact when the solution exists)."""
    if not idx:
        return (pd.DataFrame(columns=["bath", "t", "Q", "P_mc", "P_mc_se"]),
                pd.DataFrame(columns=["bath", "t", "k1_mc", "k1_se", "k2_mc", "k2_se", "k3_mc", "k3_se"]))
    N = ens.trajectories
    w = ens.acc.windows
    dists, cums = [], []
    for nu, name in enumerate(ens.model.bath_names):
        q = np.arange(w.qlo[nu], w.qlo[nu] + w.qwid[nu])
        exact_d = exact_k = None
        if sol is not None:
            exact_d = fl.heat_distribution(sol.segments, nu, ens.times[idx])
            if exact_d is not None:  # the exact distribution has every moment; no second propagation
                exact_k = fl.cumulants_from_distribution(*exact_d)
            elif 4 * sol.network.n_states <= COUNTING_LIMIT:
                exact_k = fl.cumulants_from_moments(fl.counting_moments(
                    sol.segments, lambda nk, nu=nu: fl.heat_weights(nk, nu), ens.times[idx]))
        for j, k in enumerate(idx):
            h = ens.acc.heat[k, w.qoff[nu]: w.qoff[nu] + w.qwid[nu]].astype(float)
            P = h / N
            df = pd.DataFrame({"bath": name, "t": ens.times[k], "Q": q, "P_mc": P, "P_mc_se": np.sqrt(P * (1 - P) / N)})
            if exact_d is not None:
                qq, Pe = exact_d
                df["P_exact"] = np.interp(q, qq, Pe[j], left=0.0, right=0.0)
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


def entropy_production_table(ens, sol):
    """Streamed <Delta s_obs> and <exp(-Delta s_obs)> with their exact values (None if not streamed)."""
    te = ens.trajectory_entropy()
    if te is None or sol is None:
        return None
    ex = sol.thermo()
    pred = fl.ift_prediction(sol.segments, ens.times, sol.p)
    mean, se, em, ese = (te[c].to_numpy() for c in ("mean_ds", "mean_ds_se", "exp_mds", "exp_mds_se"))
    with np.errstate(divide="ignore", invalid="ignore"):  # no spread (t = 0): no z-score
        return pd.DataFrame({"t": ens.times, "mean_ds": mean, "mean_ds_se": se, "Sigma_exact": ex["Sigma"].values,
                             "z_mean": np.where(se > 0, (mean - ex["Sigma"].values) / se, np.nan), "ift_mc": em,
                             "ift_se": ese, "ift_exact": pred,
                             "z_ift": np.where(ese > 0, (em - pred) / ese, np.nan)})


def delta_s_histogram(ens, t_index=-1):
    """The streamed histogram of Delta s_obs at one time as a table (bin centres, probability density)."""
    h = ens.delta_s_histogram(t_index)
    if h is None:
        return None
    edges, counts = h
    N = ens.trajectories
    width = edges[1] - edges[0]
    return pd.DataFrame({"ds_lo": edges[:-1], "ds_hi": edges[1:], "density": counts[1:-1] / (N * width),
                         "count": counts[1:-1]}), int(counts[0]), int(counts[-1])


def exchange_ft(ens, t_index=-1, min_count=10, sol=None):
    """Exchange fluctuation theorem for two canonical baths at ``times[t_index]``, from the streamed joint
    of (level at 0, level at t, heat of the first bath).

    ``sigma = ln p_s(s_0) - ln p_s(s_t) + beta_A q_A + beta_B q_B`` with ``q`` the energy each bath gained
    (the second bath's follows from energy conservation).  Returns (table of the pairs with ``min_count``
    trajectories on both sides, slope of :func:`ft_slope` over every pair, its SE) or None.  With the exact
    solution ``sol`` the table gains ``P_plus_exact``, ``P_minus_exact`` and ``log_ratio_exact`` (the exact
    ``ln P(sigma) / P(-sigma)``, equal to ``sigma`` by the theorem), and ``attrs["slope_exact"]`` is the
    maximum-likelihood slope of the exact distribution (the fit with infinitely many trajectories).
    """
    m = ens.model
    if ens.plan.driven or ens.acc.ft is None:
        return None
    if m.n_baths != 2 or m.bath_states is None or any(st.state != "canonical" for st in m.bath_states):
        return None
    ft = ens.acc.ft[t_index]  # (s0, st, Q_A index)
    w = ens.acc.windows
    QA = np.arange(w.qlo[0], w.qlo[0] + w.qwid[0])
    betas = np.array([m.beta_ref(0), m.beta_ref(1)])
    eps = m.energies.astype(float)
    with np.errstate(divide="ignore"):
        lps = np.log(m.p_system)
    s0, st, qi = np.nonzero(ft)
    cnt = ft[s0, st, qi]
    Q_A = QA[qi]
    Q_B = eps[st] - eps[s0] - Q_A  # heat into the system from B: the system's energy change minus A's
    sigma = lps[s0] - lps[st] - betas[0] * Q_A - betas[1] * Q_B
    key = np.round(sigma, 9)
    vals, inv = np.unique(key, return_inverse=True)
    tot = np.bincount(inv, weights=cnt)
    lookup = dict(zip(vals.tolist(), tot.tolist(), strict=True))
    rows = []
    for v, c in zip(vals, tot, strict=True):
        if v > 1e-9 and lookup.get(-v, 0) >= min_count and c >= min_count:
            cm = lookup[-v]
            rows.append({"sigma": v, "n_plus": int(c), "n_minus": int(cm), "log_ratio": np.log(c / cm),
                         "log_ratio_se": np.sqrt(1.0 / c + 1.0 / cm)})
    df = pd.DataFrame(rows, columns=["sigma", "n_plus", "n_minus", "log_ratio", "log_ratio_se"])
    mags = np.unique(np.abs(vals[np.isfinite(vals) & (np.abs(vals) > 1e-9)]))  # pairs seen on either side
    slope, se = ft_slope(mags, [lookup.get(v, 0.0) for v in mags], [lookup.get(-v, 0.0) for v in mags])
    ex = None if sol is None else fl.exchange_distribution(sol.segments, [ens.times[t_index]], m.p_system, betas)
    if ex is not None:
        xv, xp = ex
        P = dict(zip(xv.tolist(), xp[0].tolist(), strict=True))
        df["P_plus_exact"] = [P.get(v, 0.0) for v in df["sigma"]]
        df["P_minus_exact"] = [P.get(round(-v, 9), 0.0) for v in df["sigma"]]
        with np.errstate(divide="ignore"):
            df["log_ratio_exact"] = np.log(df["P_plus_exact"] / df["P_minus_exact"])
        pos = xv[xv > 1e-9]
        df.attrs["slope_exact"] = ft_slope(pos, [P[v] for v in pos], [P.get(round(-v, 9), 0.0) for v in pos])[0]
    return df, slope, se


def ft_slope(sigma, n_plus, n_minus, iterations=50):
    """Maximum-likelihood slope ``a`` of ``ln P(sigma)/P(-sigma) = a sigma`` and its standard error.

    Given the ``n = n_plus + n_minus`` trajectories with ``|sigma|`` equal to one value, ``n_plus`` is
    binomial with ``P = 1 / (1 + exp(-a sigma))`` (exactly, for multinomial counts), so ``a`` is a logistic
    regression without intercept over all pairs.  A weighted fit of the observed log ratios (weights from
    the observed counts, sparse pairs dropped) is biased low (issue 13: 0.986 +- 0.006 on two models); this
    fit uses every pair.  Returns (NaN, NaN) when no pair has both signs.
    """
    x, k, m = (np.asarray(a, dtype=float) for a in (sigma, n_plus, n_minus))
    keep = (x > 0) & np.isfinite(x) & (k + m > 0)
    x, k, m = x[keep], k[keep], m[keep]
    n = k + m
    if not np.any((k > 0) & (m > 0)):
        return np.nan, np.nan
    a = 1.0
    for _ in range(iterations):  # Newton on the concave log-likelihood
        q = 1.0 / (1.0 + np.exp(-a * x))
        info = np.sum(n * x * x * q * (1.0 - q))
        step = np.sum(x * (k - n * q)) / info
        a += step
        if abs(step) < 1e-13 * max(1.0, abs(a)):
            break
    q = 1.0 / (1.0 + np.exp(-a * x))
    return float(a), float(1.0 / np.sqrt(np.sum(n * x * x * q * (1.0 - q))))


def activity_table(ens, sol):
    """Jump-count statistics at each time: MC mean/variance ± SE (streamed) and exact (counting field)."""
    act = ens.activity()
    df = pd.DataFrame({"t": ens.times, "mean_mc": act["mean"].values, "mean_se": act["mean_se"].values,
                       "var_mc": act["var"].values, "var_se": act["var_se"].values})
    if sol is not None and 4 * sol.network.n_states <= COUNTING_LIMIT:
        exact = fl.cumulants_from_moments(fl.counting_moments(sol.segments, lambda nk: np.ones(nk.n_edges), ens.times))
        df["mean_exact"], df["var_exact"] = exact[:, 0], exact[:, 1]
    return df


def work_tables(ens, sol):
    """Driven models: work distribution at the last time (MC ± SE, and exact when ``sol`` is given), and
    Jarzynski over time; None for an undriven model."""
    if not ens.plan.driven:
        return None
    N = ens.trajectories
    wv = np.arange(-ens.plan.woff, ens.plan.woff + 1)
    Pm = ens.acc.work[-1] / N
    dist = pd.DataFrame({"W": wv, "P_mc": Pm, "P_mc_se": np.sqrt(Pm * (1 - Pm) / N)})
    mean_w = ens.acc.work / N @ wv
    if sol is not None:
        w_ex, P_ex = fl.work_distribution(sol.segments, ens.times)
        dist["P_exact"] = np.interp(wv, w_ex, P_ex[-1], left=0.0, right=0.0)
        dist = dist[(dist.P_mc > 0) | (dist.P_exact > 1e-14)]
    else:
        dist = dist[dist.P_mc > 0]
    beta, gibbs = work_beta(ens.model, sol.network if sol is not None else None)
    jar = None
    if beta is not None:
        mean, se = ens.jarzynski(beta)
        jar = pd.DataFrame({"t": ens.times, "beta": beta, "exp_mbW_mc": mean, "exp_mbW_se": se, "mean_W_mc": mean_w,
                            "mean_W_se": np.sqrt(np.maximum(ens.acc.work / N @ wv**2 - mean_w**2, 0.0)
                                                 / max(N - 1, 1))})
        if sol is not None:
            jar["exp_mbW_exact"] = fl.tilted_work_average(sol.segments, ens.times, beta)
            jar["Z_ratio"] = fl.gibbs_ratio(sol.segments, beta) if gibbs else np.nan
            jar["mean_W_exact"] = P_ex @ w_ex
    return dist, jar, gibbs, beta


def crooks_table(ens, beta):
    """Crooks: forward MC P_F(W) against the exact time-reversed P_R(-W), ``ln P_F/P_R = beta (W - dF)``."""
    r = fl.crooks_exact(ens.model, beta)
    if r is None:
        return None
    w, PF, PRn, dF = r
    N = ens.trajectories
    wv = np.arange(-ens.plan.woff, ens.plan.woff + 1)
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
    """All fluctuation statistics of an ensemble as a dict of DataFrames (and FT slope); ``sol`` may be None."""
    idx = _choose_times(ens.times, times)
    out = {}
    out["heat_distribution"], out["heat_cumulants"] = heat_tables(ens, sol, idx)
    out["activity"] = activity_table(ens, sol)
    if sol is not None:
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
    ep = entropy_production_table(ens, sol)
    if ep is not None:
        out["entropy_production"] = ep
        out["delta_s_histogram"], out["delta_s_under"], out["delta_s_over"] = delta_s_histogram(ens)
    r = exchange_ft(ens, sol=sol)
    if r is not None:
        out["exchange_ft"], out["ft_slope"], out["ft_slope_se"] = r
        if "slope_exact" in r[0].attrs:
            out["ft_slope_exact"] = r[0].attrs["slope_exact"]
    return out


def analyze_run(run_dir, times=None, quiet=False):
    """Analyze a run directory: writes ``analysis/*.csv``; returns (the dict of results, ensemble)."""

    run_dir = Path(run_dir)
    output_dir(run_dir, "analysis", create=False)  # a symbolic link there is refused before any work
    with locked(run_dir):  # a second writer is refused
        ens = load_run(run_dir)
        sol = references.exact_reference(ens.model, ens.plan, progress=False if quiet else None)
        res = analyze(ens, sol, times)
        tdir = output_dir(run_dir, "analysis")
        for name, val in res.items():
            if isinstance(val, pd.DataFrame):
                atomic_text(tdir / f"{name}.csv", val.to_csv(index=False))
    if not quiet:
        _print_summary(ens, res, run_dir, sol)
    return res, ens


def _print_summary(ens, res, run_dir, sol):
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 4):
        print(f"{ens.model.name}: {ens.trajectories} trajectories ({ens.plan.path} path)")
        if sol is None:
            print("no exact reference: the network is too large to enumerate (Monte Carlo values only)")
        print("heat cumulants (heat into the system; MC ± SE" + (" vs exact):" if sol is not None else "):"))
        print(res["heat_cumulants"].to_string(index=False))
        if "entropy_production" in res:
            ep = res["entropy_production"].iloc[-1]
            print(f"<Delta s_obs>(t={ep.t:g}) = {ep.mean_ds:.4f} ± {ep.mean_ds_se:.4f}  "
                  f"(exact Delta S_obs {ep.Sigma_exact:.4f})")
            note = " (absolute irreversibility: the start leaves states of its shells empty)" \
                if res.get("absolute_irreversibility") else ""
            print(f"<exp(-Delta s_obs)> = {ep.ift_mc:.4f} ± {ep.ift_se:.4f}  (exact {ep.ift_exact:.4f}){note}")
        else:
            why = "no exact p_x(t)" if sol is None or not ens.joint else "the run did not stream it"
            print(f"trajectory entropy production: not available ({why})")
        if "ft_slope" in res:
            exact = f"exact {res['ft_slope_exact']:.6f}, " if "ft_slope_exact" in res else ""
            print(f"exchange FT: slope of ln P(sigma)/P(-sigma) vs sigma = {res['ft_slope']:.4f} ± "
                  f"{res['ft_slope_se']:.4f} ({exact}theorem: 1)")
        if "jarzynski" in res:
            j = res["jarzynski"].iloc[-1]
            if "exp_mbW_exact" in j:
                ref = f"Z_final/Z_0 = {j.Z_ratio:.5f}" if res.get("gibbs_start") else f"exact {j.exp_mbW_exact:.5f}"
                print(f"work: <W> = {j.mean_W_mc:.4f} (exact {j.mean_W_exact:.4f}); <exp(-{j.beta:g} W)> = "
                      f"{j.exp_mbW_mc:.5f} ± {j.exp_mbW_se:.5f} vs {ref}"
                      + (" (Jarzynski)" if res.get("gibbs_start") else ""))
            else:
                print(f"work: <W> = {j.mean_W_mc:.4f} ± {j.mean_W_se:.4f}; <exp(-{j.beta:g} W)> = {j.exp_mbW_mc:.5f} ± "
                      f"{j.exp_mbW_se:.5f} (no exact reference)")
        if "crooks" in res and len(res["crooks"]):
            c = res["crooks"]
            print(f"Crooks (forward MC vs exact reversed protocol): ln P_F(W)/P_R(-W) - beta (W - dF) has largest "
                  f"|z| = {np.nanmax(np.abs(c.z)):.2f} over {len(c)} work values (Delta F = {c.Delta_F.iloc[0]:.5f})")
        act = res["activity"].iloc[-1]
        print(f"activity at t={act.t:g}: mean jumps {act.mean_mc:.4f} ± {act.mean_se:.4f}"
              + (f" (exact {act.mean_exact:.4f})" if "mean_exact" in act else ""))
    print(f"tables in {run_dir / 'analysis'}")
