"""Shared helpers of the claim scripts: model builders, output directories, plotting style.

Conventions of every claim script (see analysis/README.md):
* exact solution (``trajmc.solve``) drawn as lines, Monte Carlo (``trajmc.simulate``,
  fixed seed) as markers with 95% error bars (``Z95`` standard errors);
* outputs (PNG + CSV) go to ``runs/analysis/claimN/`` under the repository root;
* every case has stated criteria (:class:`Verdict`): exact statements to a tolerance, Monte Carlo
  agreement as ``max |z| < z*`` with ``z*`` from a family-wise false-alarm rate (:func:`z_threshold`).
  The script prints CONFIRMED only when every criterion of every case holds, otherwise NOT CONFIRMED with
  the failing cases, and exits with code 1.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402
from scipy.special import gammaln, logsumexp  # noqa: E402
from scipy.stats import norm  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
#: half-width of a 95% interval in standard errors
Z95 = 1.96

#: the 3-level system used throughout: energies in grid units, all-ones off-diagonal coupling
ENERGIES3 = [0, 1, 3]
COUPLING3 = [[0, 1, 1], [1, 0, 1], [1, 1, 0]]

#: largest canonical mass we let the grid cut off (trajmc refuses > 1e-9)
CUT_TOL = 1e-12


def out_dir(claim: str) -> Path:
    """``<repo>/runs/analysis/<claim>/``, created if needed."""
    d = REPO_ROOT / "runs" / "analysis" / claim
    d.mkdir(parents=True, exist_ok=True)
    return d


# --------------------------------------------------------------------------- Einstein-solid baths

def lnV_oscillators(n, E):
    """ln V_E of ``n`` oscillators (quantum 1): ln C(E+n-1, E)."""
    E = np.asarray(E, dtype=float)
    return gammaln(E + n) - gammaln(E + 1.0) - gammaln(n)


def beta_of_energy(n, E):
    """Microcanonical inverse temperature of ``n`` oscillators at energy ``E`` (quanta): ln(1 + n/E)."""
    return math.log1p(n / E)


def energy_of_beta(n, beta):
    """Canonical mean energy of ``n`` oscillators at ``beta``: n / (e^beta - 1)."""
    return n / math.expm1(beta)


def canonical_emax(n, beta, headroom=0, tol=CUT_TOL):
    """Smallest grid top that keeps the canonical tail of ``n`` oscillators at ``beta`` below ``tol``
    (plus ``headroom`` quanta, so states near the top can still exchange energy with the system)."""
    top = int(4 * energy_of_beta(n, beta) + 60 / beta + 100)
    E = np.arange(top + 1)
    x = lnV_oscillators(n, E) - beta * E
    tail = np.logaddexp.accumulate(x[::-1])[::-1] - logsumexp(x)  # ln P(E' >= E)
    ok = np.flatnonzero(tail <= math.log(tol))
    if not len(ok):
        raise RuntimeError(f"canonical_emax: grid too short for n={n}, beta={beta}")
    return int(ok[0]) + int(headroom)


# --------------------------------------------------------------------------- model builders

def sqrt_flat_kernel(gamma=1.0):
    return {"model": "sqrt", "gamma": float(gamma), "spectral": {"shape": "flat"}}


def osc_bath(n, emax, name="B", gamma=1.0):
    return {"name": name, "dos": {"model": "oscillators", "n": int(n), "quantum": 1}, "emax": int(emax),
            "kernel": sqrt_flat_kernel(gamma)}


def three_level_model(n, initial, emax, times, name="claim", energies=ENERGIES3, coupling=COUPLING3, gamma=1.0):
    """3-level system (``energies``) + ``n`` oscillators (quantum 1), sqrt kernel, flat J.

    ``initial`` is the model's ``[initial]`` table; ``times`` an array of sample times starting at 0.
    """
    return {"name": name,
            "system": {"energies": list(energies), "coupling": coupling},
            "baths": [osc_bath(n, emax, gamma=gamma)],
            "initial": initial,
            "times": {"values": [float(t) for t in times]}}


def canonical_product(n, beta, p_system, name="claim", times=(0.0, 1.0), headroom=None, **kw):
    """Product start ``p_s(0) x pi_E`` with the canonical bath of ``n`` oscillators at ``beta``."""
    emax = canonical_emax(n, beta, headroom=max(kw.get("energies", ENERGIES3)) if headroom is None else headroom)
    ini = {"system": p_system, "baths": [{"state": "canonical", "beta": float(beta)}]}
    return three_level_model(n, ini, emax, times, name=name, **kw)


def microcanonical_product(n, E0, p_system, beta_ref=None, name="claim", times=(0.0, 1.0), **kw):
    """Product start ``p_s(0) x delta_{E, E0}``; the grid reaches ``E0 + max(eps) + 2``."""
    emax = int(E0) + max(kw.get("energies", ENERGIES3)) + 2
    st = {"state": "microcanonical", "energy": int(E0)}
    if beta_ref is not None:
        st["beta"] = float(beta_ref)
    ini = {"system": p_system, "baths": [st]}
    return three_level_model(n, ini, emax, times, name=name, **kw)


# --------------------------------------------------------------------------- ordinary Pauli master equation

def pauli_generator(energies, coupling, beta, gamma=1.0, J=lambda w: 1.0):
    """Generator ``W`` (columns = source) of the ordinary Pauli ME with the sqrt-kernel rates of
    docs/physics.md §5.5: ``k(s -> s') = gamma |S_ss'|^2 J(eps_s - eps_s') exp(beta (eps_s - eps_s') / 2)``."""
    eps = np.asarray(energies, dtype=float)
    S2 = np.abs(np.asarray(coupling, dtype=complex)) ** 2
    n = len(eps)
    W = np.zeros((n, n))
    for s in range(n):
        for s2 in range(n):
            if s2 != s:
                w = eps[s] - eps[s2]
                W[s2, s] = gamma * S2[s, s2] * J(w) * math.exp(beta * w / 2.0)
    W[np.arange(n), np.arange(n)] = -W.sum(axis=0)
    return W


def pauli_solution(energies, coupling, beta, p0, times, gamma=1.0):
    """``p_s(t) = expm(W t) p0`` at each time: (n_t, n_s)."""
    W = pauli_generator(energies, coupling, beta, gamma)
    p0 = np.asarray(p0, dtype=float)
    return np.array([scipy.linalg.expm(W * t) @ p0 for t in times])


def gibbs(energies, beta):
    x = -beta * np.asarray(energies, dtype=float)
    return np.exp(x - logsumexp(x))


# --------------------------------------------------------------------------- fits, plotting, timing

def power_law_fit(x, y):
    """Least-squares fit ``ln y = ln a + b ln x``; returns (a, b, se_b)."""
    from scipy.stats import linregress

    r = linregress(np.log(x), np.log(y))
    return math.exp(r.intercept), r.slope, r.stderr


def style():
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "font.size": 9, "axes.titlesize": 10,
                         "axes.labelsize": 9, "legend.fontsize": 7.5, "axes.grid": True, "grid.alpha": 0.3,
                         "lines.linewidth": 1.5, "errorbar.capsize": 2.5})


COLORS = plt.get_cmap("tab10").colors

# Axis labels with units (docs/physics.md, "Conventions": energies in grid steps delta, time in 1/gamma,
# entropies in k_B), shared by every script so that the figures agree.
T_LABEL = r"time $t$ [$1/\gamma$]"
TAU_LABEL = r"driving time $\tau$ [$1/\gamma$]"
S_UNIT = r"[$k_B$]"
E_UNIT = r"[$\delta$]"
ENTROPY_LABEL = r"entropy production [$k_B$]"
#: Sigma and Sigma_tilde are told apart by colour, line style (exact) and marker (Monte Carlo)
SIGMA_STYLE = {"Sigma": dict(color=COLORS[0], ls="-", marker="o", label=r"$\Sigma = \Delta S_{\rm obs}$"),
               "Sigma_tilde": dict(color=COLORS[3], ls="--", marker="s", label=r"$\tilde\Sigma$")}


def mc_errorbar(ax, t, y, se, color, label=None, marker="o", ms=3.5, mfc="white", **kw):
    """Monte Carlo estimate with a 95% (``Z95`` SE) error bar, open marker (``mfc=color``: filled)."""
    return ax.errorbar(t, y, yerr=Z95 * np.asarray(se), fmt=marker, ms=ms, mfc=mfc, mec=color, ecolor=color,
                       elinewidth=1.0, label=label, zorder=3, **kw)


def exact_stems(ax, x, p, color, label=None, min_p=0.0, ms=5):
    """An exact discrete distribution (heat, work, bath energy): stems from 0 with open markers; values
    below ``min_p`` are left out (invisible on a linear axis)."""
    x, p = np.asarray(x, dtype=float), np.asarray(p, dtype=float)
    keep = p > min_p
    st = ax.stem(x[keep], p[keep], linefmt="-", markerfmt="o", basefmt=" ", label=label)
    st.markerline.set(color=color, mfc="none", ms=ms)
    st.stemlines.set(color=color, lw=1.2, alpha=0.6)
    return st


def mc_points(ax, x, p, se, color, label=None, ms=3, **kw):
    """Monte Carlo frequencies of a discrete distribution: filled markers with 95% error bars, no line."""
    return ax.errorbar(x, p, yerr=Z95 * np.asarray(se), fmt="o", ms=ms, color=color, ecolor=color, elinewidth=1.0,
                       ls="none", label=label, zorder=3, **kw)


def exact_mc_legend_note(ax, loc="lower right"):
    """A legend entry explaining the line / marker convention."""
    from matplotlib.lines import Line2D

    h = [Line2D([], [], color="0.3", lw=1.5, label="exact (solve)"),
         Line2D([], [], color="0.3", marker="o", mfc="white", ls="none", label=f"MC ± {Z95} SE")]
    return ax.legend(handles=h, loc=loc, frameon=True)


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self):
        return time.perf_counter() - self.t0


def zscores(est, se, exact):
    """(est - exact) / se where se > 0 (NaN elsewhere)."""
    est, se, exact = map(np.asarray, (est, se, exact))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(se > 0, (est - exact) / se, np.nan)


# --------------------------------------------------------------------------- verdicts

#: family-wise false-alarm rate of the Monte Carlo checks of one claim script (a correct run says NOT
#: CONFIRMED with at most this probability)
ALPHA_MC = 1e-3
#: exact statements hold to this tolerance (the solver's accuracy is ~1e-14)
EXACT_TOL = 1e-12


def z_threshold(n_tests, alpha=ALPHA_MC):
    """Two-sided |z| threshold of ``n_tests`` normal z-tests at a family-wise false alarm ``alpha``
    (Bonferroni, valid however the z are correlated, e.g. times of one run sharing its trajectories)."""
    return float(norm.isf(alpha / (2 * max(int(n_tests), 1))))


def checked_z(est, se, exact, second_order=None, tol=EXACT_TOL):
    """z-scores to test: entries flagged second order (``th.attrs['second_order']``; not normal, a z-test of
    them would false-alarm) are left out; an entry with SE 0 counts as z = 0 if it equals the exact value
    and as z = inf otherwise; a NaN estimate or SE is z = inf (never a pass).  Returns (z, n_left_out)."""
    est, se, exact = (np.asarray(a, dtype=float).ravel() for a in (est, se, exact))
    keep = np.ones(len(est), bool) if second_order is None else ~np.asarray(second_order, bool).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (est - exact) / se, np.where(np.abs(est - exact) <= tol, 0.0, np.inf))
    z = np.where(np.isfinite(est) & np.isfinite(se), z, np.inf)
    return z[keep], int((~keep).sum())


def max_abs(z):
    """Largest |z|, NaN when nothing was tested (a criterion on it then fails: not checkable is not a pass)."""
    z = np.asarray(z, dtype=float)
    return float(np.max(np.abs(z))) if z.size else float("nan")


def flags(th, col, rows=slice(None)):
    """The second-order flags of one column of an estimates table (all False if it has none)."""
    f = np.asarray(th.attrs.get("second_order", {}).get(col, [False] * len(th)), dtype=bool)
    return f[rows]


class Verdict:
    """Criteria of one claim script, case by case: each with its measured value and its stated threshold."""

    def __init__(self, claim):
        self.claim = claim
        self.rows = []

    def check(self, case, criterion, value, ok, rule):
        """Record one criterion: ``value`` (a number or text), ``ok`` (bool), ``rule`` (the stated threshold)."""
        ok = bool(ok) and not (isinstance(value, float) and math.isnan(value))
        self.rows.append({"case": str(case), "criterion": criterion, "value": value, "rule": rule,
                          "result": "pass" if ok else "FAIL"})
        return ok

    def report(self, extra=""):
        """Print the criteria table and the verdict; return the exit code (0 confirmed, 1 not)."""
        import pandas as pd

        df = pd.DataFrame(self.rows)
        df["value"] = [f"{v:.4g}" if isinstance(v, float | np.floating) else str(v) for v in df["value"]]
        print(f"criteria of {self.claim} (each case must pass every one):")
        with pd.option_context("display.width", 220, "display.max_colwidth", 90, "display.max_rows", 500):
            print(df.to_string(index=False))
        failed = df[df.result != "pass"]
        if len(failed):
            cases = ", ".join(f"{r.case}: {r.criterion} = {r.value} (needs {r.rule})" for r in failed.itertuples())
            print(f"VERDICT: NOT CONFIRMED — {len(failed)} of {len(df)} criteria fail: {cases}{extra}")
            return 1
        print(f"VERDICT: CONFIRMED — all {len(df)} criteria of {df.case.nunique()} cases pass{extra}")
        return 0
