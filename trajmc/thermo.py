"""Thermodynamic functionals of distributions over the joint states (docs/physics.md §4).

Pure functions of arrays: the exact solver and the Monte Carlo estimators both
call them.  Every ``p`` is (n_t, n_states) (or (n_states,)); 0 ln 0 = 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import xlogy

__all__ = ["Space", "space_of", "marginal_system", "marginal_bath", "observational_entropy", "shannon",
           "bath_observational_entropy", "total_correlation", "relative_entropy", "pairwise_information",
           "thermo_table"]


@dataclass(frozen=True, eq=False)
class Space:
    """What the functionals need to know about the joint states (``n`` states, ``N`` baths).

    Parameters
    ----------
    s : ndarray (n,) int64
        Level of each state.
    E : ndarray (n, N) int64
        Bath energies of each state (grid steps).
    lnV : ndarray (n,) float64
        ``ln V_x``.
    eps : ndarray (n,) float64
        System energy of each state (grid steps).
    n_levels : int
        Number of system levels.
    bath_names : tuple of str
        The baths' names (column suffixes).
    bath_lnV : tuple of ndarray (emax+1,) float64
        Per bath, ``ln V_E`` on its grid.
    beta : ndarray (N,) float64
        Reference inverse temperatures (NaN: none).
    pi : tuple of (ndarray (emax+1,) float64 or None)
        Per bath, the canonical reference ``pi_E`` on its grid, or None.
    """

    s: np.ndarray  # (n,) level of each state
    E: np.ndarray  # (n, N) bath energies
    lnV: np.ndarray  # (n,) ln V_x
    eps: np.ndarray  # (n,) system energy of each state
    n_levels: int
    bath_names: tuple
    bath_lnV: tuple  # per bath (emax+1,) ln V grid
    beta: np.ndarray  # (N,) reference inverse temperatures (NaN if none)
    pi: tuple  # per bath canonical reference on the grid, or None


def space_of(network, energies=None) -> Space:
    """The :class:`Space` of a network's states.

    Parameters
    ----------
    network : trajmc.Network
        The enumerated network.
    energies : array_like (n_levels,) of int, optional
        Level energies to use (default: the network's).

    Returns
    -------
    Space
    """
    m = network.model
    eps_levels = network.energies if energies is None else np.asarray(energies)
    return Space(s=network.states[:, 0], E=network.states[:, 1:], lnV=network.lnV,
                 eps=eps_levels[network.states[:, 0]].astype(float), n_levels=m.n_levels,
                 bath_names=tuple(m.bath_names), bath_lnV=tuple(b.lnV for b in m.baths),
                 beta=np.array([m.beta_ref(nu) for nu in range(m.n_baths)]),
                 pi=tuple(m.canonical_pi(nu) for nu in range(m.n_baths)))


def _bin(p, idx, size):
    p2 = np.atleast_2d(p)
    out = np.zeros((p2.shape[0], size))
    for t in range(p2.shape[0]):
        out[t] = np.bincount(idx, weights=p2[t], minlength=size)
    return out if np.ndim(p) == 2 else out[0]


def marginal_system(p, space: Space):
    """The system marginal ``p_s``.

    Parameters
    ----------
    p : ndarray (n_t, n) or (n,) float64
        Distributions over the joint states of ``space`` (one per row).
    space : Space
        The states ``p`` is defined on.

    Returns
    -------
    ndarray (n_t, n_levels) or (n_levels,) float64
        ``p_s = sum_(x: level s) p_x``.
    """
    return _bin(p, space.s, space.n_levels)


def marginal_bath(p, space: Space, nu: int):
    """The energy distribution ``p_E`` of one bath, on its grid.

    Parameters
    ----------
    p : ndarray (n_t, n) or (n,) float64
        Distributions over the joint states of ``space`` (one per row).
    space : Space
        The states ``p`` is defined on.
    nu : int
        Bath index.

    Returns
    -------
    ndarray (n_t, emax+1) or (emax+1,) float64
        ``p_b(E) = sum_(x: E_b = E) p_x``.
    """
    return _bin(p, space.E[:, nu], len(space.bath_lnV[nu]))


def shannon(q):
    """Shannon entropy ``-sum q ln q`` over the last axis (``0 ln 0 = 0``).

    Parameters
    ----------
    q : array_like of float
        Probabilities along the last axis.

    Returns
    -------
    ndarray or float
        The entropies (nats), one per row.
    """
    return -np.sum(xlogy(q, q), axis=-1)


def observational_entropy(p, lnV):
    """Observational entropy ``S_obs = -sum_x p_x ln(p_x / V_x)`` (Eq. 9).

    Parameters
    ----------
    p : array_like (..., n) of float
        Distributions over the joint states (last axis).
    lnV : array_like (n,) of float
        ``ln V_x`` (finite).

    Returns
    -------
    ndarray or float
        ``S_obs`` (nats) per row.
    """
    return shannon(p) + np.sum(np.asarray(p) * lnV, axis=-1)


def bath_observational_entropy(pE, lnV_grid):
    """Observational entropy of one bath, ``S_obs^B = -sum_E p_E ln(p_E / V_E)``.

    Parameters
    ----------
    pE : array_like (..., G) of float
        Energy distributions on the grid (last axis); no weight where there are no microstates.
    lnV_grid : array_like (G,) of float
        ``ln V_E`` on the grid (``-inf`` where there are no microstates).

    Returns
    -------
    ndarray or float
        ``S_obs^B`` (nats) per row.
    """
    lv = np.where(np.isfinite(lnV_grid), lnV_grid, 0.0)
    return shannon(pE) + np.sum(pE * lv, axis=-1)


def relative_entropy(q, r):
    """Relative entropy ``D[q || r] = sum q ln(q / r)`` over the last axis.

    Parameters
    ----------
    q : array_like (..., G) of float
        Distributions (last axis).
    r : array_like (G,) or (..., G) of float
        The reference distribution.

    Returns
    -------
    ndarray or float
        ``D`` (nats) per row; ``inf`` where ``q > 0`` and ``r = 0``.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, xlogy(q, q) - xlogy(q, np.where(q > 0, r, 1.0)), 0.0)
    return np.sum(terms, axis=-1)


def total_correlation(p, space: Space, ps=None, pEs=None):
    """Total correlation ``I = sum_x p_x ln(p_x / (p_s prod_nu p_{E_nu}))`` (mutual information for one bath).

    Parameters
    ----------
    p : ndarray (n_t, n) or (n,) float64
        Distributions over the joint states of ``space`` (one per row).
    space : Space
        The states ``p`` is defined on.
    ps : ndarray (n_t, n_levels) float64, optional
        The system marginal, if already computed.
    pEs : list of ndarray (n_t, emax+1) float64, optional
        The bath marginals, if already computed.

    Returns
    -------
    ndarray (n_t,) or float
        ``I`` (nats).
    """
    p2 = np.atleast_2d(p)
    ps = marginal_system(p2, space) if ps is None else np.atleast_2d(ps)
    pEs = [marginal_bath(p2, space, nu) for nu in range(space.E.shape[1])] if pEs is None else pEs
    with np.errstate(divide="ignore"):
        ln_prod = np.log(ps[:, space.s])
        for nu, pE in enumerate(pEs):
            ln_prod = ln_prod + np.log(np.atleast_2d(pE)[:, space.E[:, nu]])
    terms = np.where(p2 > 0, xlogy(p2, p2) - p2 * np.where(p2 > 0, ln_prod, 0.0), 0.0)
    out = terms.sum(axis=1)
    return out if np.ndim(p) == 2 else out[0]


def pairwise_information(p, space: Space, nu: int, ps=None, pE=None):
    """Mutual information ``I(s; E_nu)`` of the system level and one bath's energy.

    Parameters
    ----------
    p : ndarray (n_t, n) or (n,) float64
        Distributions over the joint states of ``space`` (one per row).
    space : Space
        The states ``p`` is defined on.
    nu : int
        Bath index.
    ps : ndarray (n_t, n_levels) float64, optional
        The system marginal, if already computed.
    pE : ndarray (n_t, emax+1) float64, optional
        The bath's marginal, if already computed.

    Returns
    -------
    ndarray (n_t,) float64
        ``S_sh + H(p_E) - H(p_(s, E))`` (nats).
    """
    p2 = np.atleast_2d(p)
    ps = marginal_system(p2, space) if ps is None else np.atleast_2d(ps)
    pE = marginal_bath(p2, space, nu) if pE is None else np.atleast_2d(pE)
    G = pE.shape[1]
    code = space.s * G + space.E[:, nu]
    joint = np.zeros((p2.shape[0], space.n_levels * G))
    for t in range(p2.shape[0]):
        joint[t] = np.bincount(code, weights=p2[t], minlength=space.n_levels * G)
    return shannon(ps) + shannon(pE) - shannon(joint)


def thermo_table(times, p, space: Space, levels=None, work=None) -> pd.DataFrame:
    """All docs/physics.md §4 quantities of ``p`` (n_t, n) at ``times``, as a DataFrame indexed by ``t``.

    Columns: ``S_obs, Sigma, Sigma_tilde, S_sh, I, D, E_S``, per bath ``E_<b>, Q_<b>, S_B_<b>, D_<b>``,
    and ``lnV`` (mean ln V_x).  ``D = sum_nu D[p_E_nu || pi_nu]`` (NaN without a canonical reference);
    ``Sigma - Sigma_tilde = -I - D + D(0)`` for a product start with a reference beta for every bath (Eq. 60
    when the baths start canonical, D(0) = 0).
    Driven models: ``levels`` (n_t, n_levels) are the energies in force at each time and ``work``
    the mean work so far; the table gains ``W`` and the first law ``dE_S + sum dE_<b> = W``.
    The columns are described in docs/columns.md.

    Parameters
    ----------
    times : array_like (n_t,) of float
        Sample times (the first is the reference time of every difference).
    p : ndarray (n_t, n) float64
        The distribution at each time.
    space : Space
        The states ``p`` is defined on.
    levels : ndarray (n_t, n_levels), optional
        Level energies in force at each time (driven models).
    work : array_like (n_t,) of float, optional
        Mean work done on the system up to each time; adds ``W`` and ``first_law``.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``t`` (float64), one float64 column per quantity.
    """
    cols = functionals(p, space, levels)
    if work is not None:
        cols["W"] = np.asarray(work, dtype=float)
    return assemble(times, cols, space)


def state_energies(space: Space, levels=None, n_t=1):
    """System energy of each state at each time: (n_t, n) (or the undriven (n,))."""
    if levels is None:
        return space.eps
    return np.asarray(levels, dtype=float)[:, space.s]


def functionals(p, space: Space, levels=None) -> dict:
    """The state functions of each row of ``p``: dict of (n_t,) arrays."""
    p = np.atleast_2d(p)
    eps = state_energies(space, levels)
    ps = marginal_system(p, space)
    pEs = [marginal_bath(p, space, nu) for nu in range(len(space.bath_names))]
    out = {"S_obs": observational_entropy(p, space.lnV), "S_sh": shannon(ps),
           "I": total_correlation(p, space, ps, pEs), "E_S": np.sum(p * eps, axis=-1), "lnV": p @ space.lnV}
    D = np.zeros(p.shape[0])
    for nu, (name, pE) in enumerate(zip(space.bath_names, pEs, strict=True)):
        out[f"E_{name}"] = p @ space.E[:, nu].astype(float)
        out[f"S_B_{name}"] = bath_observational_entropy(pE, space.bath_lnV[nu])
        pi = space.pi[nu]
        out[f"D_{name}"] = relative_entropy(pE, pi) if pi is not None else np.full(p.shape[0], np.nan)
        out[f"I_{name}"] = pairwise_information(p, space, nu, ps, pE)
        D = D + out[f"D_{name}"]
    out["D"] = D
    return out


def assemble(times, cols: dict, space: Space) -> pd.DataFrame:
    """Add the time differences (``Sigma``, ``Sigma_tilde``, ``Q_<b>``) and order the columns."""
    c = dict(cols)
    c["Sigma"] = c["S_obs"] - c["S_obs"][0]
    st = c["S_sh"] - c["S_sh"][0]
    for nu, name in enumerate(space.bath_names):
        dE = c[f"E_{name}"] - c[f"E_{name}"][0]
        c[f"Q_{name}"] = -dE
        st = st + space.beta[nu] * dE
    c["Sigma_tilde"] = st
    if "W" in c:  # first law: Delta E_S + sum Delta E_b - W (zero up to rounding; nonzero flags an error)
        c["first_law"] = (c["E_S"] - c["E_S"][0]) - sum(c[f"Q_{n}"] for n in space.bath_names) - c["W"]
    order = ["S_obs", "Sigma", "Sigma_tilde", "S_sh", "I", "D", "E_S"] + (["W", "first_law"] if "W" in c else [])
    for name in space.bath_names:
        order += [f"E_{name}", f"Q_{name}", f"S_B_{name}", f"D_{name}", f"I_{name}"]
    order += ["lnV"]
    extra = [k for k in c if k not in order]
    df = pd.DataFrame({k: c[k] for k in order + extra}, index=pd.Index(np.asarray(times, dtype=float), name="t"))
    return df
