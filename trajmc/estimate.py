"""Estimators from Monte Carlo counts, with honest error bars (PHYSICS.md §6).

* ``p_x(t)``: relative frequencies, multinomial standard errors.
* Entropies (``S_obs, S_sh, S_B, I, D``): plug-in through the same functionals
  as the exact solver (:mod:`trajmc.thermo`), bias-corrected by the delete-one
  jackknife over trajectories (exact from the counts).  Standard errors: the
  delta method (influence functions), plus the second-order chi-square term,
  plus the disagreement between the jackknife and Miller–Madow corrections
  (both first order: where they differ the run is too sparse to trust either,
  and the error bar says so).  A jackknife over a few chunks under-covers
  (PHYSICS.md §6), so nothing here depends on the chunking.
* ``Sigma`` and ``Sigma_tilde`` are differences of estimates from the same
  trajectories; their influence is ``phi_t(x_t) - phi_0(x_0)``, and the
  time-correlation term comes from the ``cross`` accumulator.
* Linear quantities (energies, heat, ``<ln V>``): plain means.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import xlogy

from .thermo import Space, assemble, functionals, marginal_bath, marginal_system, state_energies

__all__ = ["thermo_estimates", "BIAS_CORRECTION", "SE_METHOD"]

BIAS_CORRECTION = "delete-one jackknife (exact from counts); its disagreement with Miller-Madow enters the SE"
SE_METHOD = ("delta method (influence functions, time correlations included) + second-order chi-square term "
             "+ |jackknife - Miller-Madow| bias-correction uncertainty")


def _safe_log(q):
    with np.errstate(divide="ignore"):
        return np.where(q > 0, np.log(np.where(q > 0, q, 1.0)), 0.0)


def _var(p, f):
    """Variance of f(x) under p (rows), for f (n_t, n) or (n,); states of probability 0 do not count
    (f may be infinite there, e.g. ln pi_E where pi_E underflows)."""
    f = np.where(p > 0, f, 0.0)
    m = np.sum(p * f, axis=-1)
    return np.maximum(np.sum(p * f * f, axis=-1) - m * m, 0.0), m


def entropy_bias(c):
    """Bias corrections of the plug-in Shannon entropy of each row of counts ``c`` (rows, K).

    Returns ``(jackknife, miller_madow)``: delete-one jackknife correction (exact from the
    counts, Zahl 1977) and ``(K_occupied - 1) / (2N)``.  Both are first order; where they
    disagree the sample is too sparse for either, and the disagreement enters the error bar.
    """
    c = np.atleast_2d(np.asarray(c, dtype=float))
    N = c.sum(axis=1)
    xl = xlogy(c, c)
    S = xl.sum(axis=1)
    H = np.log(N) - S / N
    cm1 = np.where(c > 0, c - 1.0, 0.0)
    # sum over observations of the entropy with that observation removed
    inner = N * S - np.sum(c * xl, axis=1) + np.sum(c * xlogy(cm1, cm1), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sum_loo = N * np.log(N - 1.0) - inner / (N - 1.0)
        h_jk = N * H - (N - 1.0) / N * sum_loo
    jk = np.where(N > 1, h_jk - H, 0.0)
    mm = (np.count_nonzero(c > 0, axis=1) - 1) / (2.0 * N)
    return jk, mm


def thermo_estimates(times, counts, cross, heat, hoff, emax, N, space: Space, g0, levels=None, work=None,
                     woff=0) -> pd.DataFrame:
    """Thermodynamic table with ``<col>_se`` columns from the accumulators.

    Parameters
    ----------
    counts : (n_t, n) int64, cross : (n_t, n, 2) float64, heat : (n_t, H) int64
    hoff, emax : (N_b,) heat-histogram offsets and grid tops per bath
    N : int, number of trajectories
    g0 : (n, 2) the initial-state functions summed in ``cross`` (see engine)
    levels : (n_t, n_levels), optional   level energies in force (driven models)
    work : (n_t, 2 woff + 1) int64, optional   histogram of the work done so far (driven models)
    """
    p = counts / N
    s, E = space.s, space.E
    n_b = E.shape[1]
    cols = functionals(p, space, levels)
    cs = marginal_system(counts, space)
    cEs = [marginal_bath(counts, space, nu) for nu in range(n_b)]
    ps = cs / N
    pEs = [c / N for c in cEs]
    occ = lambda q: np.count_nonzero(q > 0, axis=-1)  # noqa: E731
    Kx, Ks = occ(p), occ(ps)
    KE = [occ(q) for q in pEs]
    # bias corrections (jackknife) and their uncertainty |jackknife - Miller-Madow|, per Shannon term
    bx, bs = entropy_bias(counts), entropy_bias(cs)
    bE = [entropy_bias(c) for c in cEs]
    se = {}
    # second-order variance of plug-in entropies, (K-1)/(2N^2) per term (chi-square law of 2N(S - S_plugin));
    # it dominates where the first-order influence is nearly constant (e.g. Sigma_tilde near equilibrium)
    q2 = {}
    sysb = {}  # systematic: how much the two bias corrections disagree
    chi = lambda K: np.maximum(K - 1, 0) / (2.0 * N * N)  # noqa: E731

    def correct(col, terms):
        """Add the signed combination ``terms`` [(sign, (jk, mm)), ...] of corrections to ``col``."""
        jk = sum(sg * b[0] for sg, b in terms)
        mm = sum(sg * b[1] for sg, b in terms)
        cols[col] = cols[col] + jk
        sysb[col] = jk - mm
        return jk, mm

    lnps = _safe_log(ps)[:, s]
    lnpE = [_safe_log(q)[:, E[:, nu]] for nu, q in enumerate(pEs)]
    a = -(_safe_log(p) - space.lnV)  # -ln(p_x / V_x) per state
    correct("S_obs", [(1, bx)])
    se["S_obs"], _ = _var(p, a)
    q2["S_obs"] = chi(Kx)
    correct("S_sh", [(1, bs)])
    se["S_sh"], _ = _var(p, -lnps)
    q2["S_sh"] = chi(Ks)
    correct("I", [(1, bs)] + [(1, b) for b in bE] + [(-1, bx)])
    se["I"], _ = _var(p, _safe_log(p) - lnps - sum(lnpE))
    q2["I"] = chi(np.maximum(Kx - Ks - sum(KE) + len(KE), 2))
    for nu, name in enumerate(space.bath_names):
        lv = space.bath_lnV[nu]
        lvx = np.where(np.isfinite(lv), lv, 0.0)[E[:, nu]]
        correct(f"S_B_{name}", [(1, bE[nu])])
        se[f"S_B_{name}"], _ = _var(p, -(lnpE[nu] - lvx))
        q2[f"S_B_{name}"] = chi(KE[nu])
        se[f"E_{name}"], _ = _var(p, E[:, nu].astype(float))
        pi = space.pi[nu]
        if pi is not None:
            correct(f"D_{name}", [(-1, bE[nu])])
            with np.errstate(divide="ignore"):
                lpi = np.log(pi)[E[:, nu]]
            se[f"D_{name}"], _ = _var(p, lnpE[nu] - lpi)
            q2[f"D_{name}"] = chi(KE[nu])
        else:
            se[f"D_{name}"] = np.full(len(times), np.nan)
    if all(pi is not None for pi in space.pi):
        cols["D"] = sum(cols[f"D_{name}"] for name in space.bath_names)
        sysb["D"] = sum(sysb[f"D_{name}"] for name in space.bath_names)
        with np.errstate(divide="ignore"):
            lpis = sum(np.log(space.pi[nu])[E[:, nu]] for nu in range(n_b))
        se["D"], _ = _var(p, sum(lnpE) - lpis)
        q2["D"] = sum(chi(k) for k in KE)
    else:
        se["D"] = np.full(len(times), np.nan)
    se["E_S"], _ = _var(p, state_energies(space, levels))
    if work is not None:
        wv = np.arange(-woff, woff + 1, dtype=float)
        hw = work / N
        cols["W"] = hw @ wv
        se["W"] = np.maximum(hw @ (wv * wv) - cols["W"] ** 2, 0.0)
    else:  # undriven: no work, exactly (the same columns as the exact solution's table)
        cols["W"] = np.zeros(len(times))
        se["W"] = np.zeros(len(times))
    se["lnV"], _ = _var(p, space.lnV)
    df = assemble(times, cols, space)
    # differences over time: Sigma, Sigma_tilde, Q (influence phi_t(x_t) - phi_0(x_0))
    df["Sigma"] = df["S_obs"] - df["S_obs"].iloc[0]
    sysb["Sigma"] = sysb["S_obs"] - sysb["S_obs"][0]
    se["Sigma"] = _diff_var(p, a, -cross[:, :, 0], -g0[:, 0], counts[0] / N, N)
    q2["Sigma"] = chi(Kx) + chi(Kx[0])
    h = -lnps + (E @ np.nan_to_num(space.beta))
    st = df["S_sh"] - df["S_sh"].iloc[0]
    for nu, name in enumerate(space.bath_names):
        d = np.arange(-emax[nu], emax[nu] + 1)
        hist = heat[:, hoff[nu] - emax[nu]: hoff[nu] + emax[nu] + 1] / N
        mean = hist @ d
        df[f"Q_{name}"] = -mean
        se[f"Q_{name}"] = np.maximum(hist @ (d * d) - mean**2, 0.0)
        st = st + space.beta[nu] * (df[f"E_{name}"] - df[f"E_{name}"].iloc[0])
    df["Sigma_tilde"] = st
    sysb["Sigma_tilde"] = sysb["S_sh"] - sysb["S_sh"][0]
    if np.all(np.isfinite(space.beta)):
        se["Sigma_tilde"] = _diff_var(p, h, cross[:, :, 1], g0[:, 1], counts[0] / N, N)
        q2["Sigma_tilde"] = chi(Ks) + chi(Ks[0])
    else:
        se["Sigma_tilde"] = np.full(len(times), np.nan)
    for c in list(df.columns):
        v = se.get(c)
        if v is None:
            df[f"{c}_se"] = np.nan
        else:
            var = np.asarray(v, dtype=float) / max(N - 1, 1) + q2.get(c, 0.0) + np.asarray(sysb.get(c, 0.0)) ** 2
            df[f"{c}_se"] = np.sqrt(var) if N > 1 else np.nan  # one trajectory has no spread to measure
    df.loc[df.index[0], ["Sigma", "Sigma_se"]] = 0.0
    if np.isfinite(df["Sigma_tilde"].iloc[0]):  # without a reference beta Sigma_tilde stays NaN throughout
        df.loc[df.index[0], ["Sigma_tilde", "Sigma_tilde_se"]] = 0.0
    for name in space.bath_names:
        df.loc[df.index[0], [f"Q_{name}", f"Q_{name}_se"]] = 0.0
    df.attrs["bias_correction"] = BIAS_CORRECTION
    df.attrs["se_method"] = SE_METHOD
    return df


def _diff_var(p, f_t, cross, f0, p0hat, N):
    """Var[f_t(x_t) - f_0(x_0)] per time from counts and the cross sums ``sum_{traj at y} f_0(x_0)``."""
    var_t, m_t = _var(p, f_t)
    var_0, m_0 = _var(p0hat, f0)
    e_cross = np.sum(f_t * cross, axis=-1) / N  # E[f_t(x_t) f_0(x_0)]
    cov = e_cross - m_t * m_0
    return np.maximum(var_t + var_0 - 2.0 * cov, 0.0)
