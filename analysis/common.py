"""Shared helpers of the claim scripts: model builders, output directories, plotting style.

Conventions of every claim script (see analysis/README.md):
* exact solution (``trajmc.solve``) drawn as lines, Monte Carlo (``trajmc.simulate``,
  fixed seed) as markers with 95% error bars (``Z95`` standard errors);
* outputs (PNG + CSV) go to ``runs/analysis/claimN/`` under the repository root.
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


def mc_errorbar(ax, t, y, se, color, label=None, marker="o", ms=3.5, **kw):
    """Monte Carlo estimate with a 95% (``Z95`` SE) error bar, open marker."""
    return ax.errorbar(t, y, yerr=Z95 * np.asarray(se), fmt=marker, ms=ms, mfc="white", mec=color, ecolor=color,
                       elinewidth=1.0, label=label, zorder=3, **kw)


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
