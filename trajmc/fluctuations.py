"""Exact fluctuation statistics from the rate equation (no Monte Carlo here).

* :func:`counting_moments`: moments of any jump-counting observable ``N = sum over jumps of w_e``
  (heat from a bath, number of jumps) by the moment hierarchy of the tilted (counting-field)
  generator, ``dp^(j)/dt = sum_i C(j, i) W_i p^(j-i)`` with ``W_i`` the rates times ``w_e^i``.
* :func:`heat_distribution`: the exact distribution of the heat from one bath, grouping the
  initial states by their bath energy (heat is fixed by the initial and final bath energies).
* :func:`ift_prediction`: ``<exp(-Delta s_obs)>`` — 1 when the start fills whole shells, less
  under absolute irreversibility.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import expm_multiply
from scipy.special import comb

from .network import Network
from .solver import propagate

__all__ = ["counting_moments", "cumulants_from_moments", "heat_weights", "heat_distribution", "ift_prediction",
           "block_scaled_v"]

#: largest (groups x states) for which the exact heat distribution is computed
HEAT_EXACT_LIMIT = 20_000_000


def heat_weights(net: Network, nu: int) -> np.ndarray:
    """Per-edge heat into the system from bath ``nu``: ``-(E'_nu - E_nu)`` on its edges, 0 elsewhere."""
    return np.where(net.bath == nu, -net.dE, 0).astype(float)


def counting_moments(net: Network, weights, times, order=3, p0=None) -> np.ndarray:
    """Raw moments ``E[N(t)^j]``, j = 1..order, of ``N = sum over jumps of weights[edge]``.

    Returns (n_t, order).  Solves the augmented linear system exactly (``expm_multiply``).
    """
    n = net.n_states
    p0 = net.p0 if p0 is None else p0
    src, tgt, k = net.source, net.target, net.rate
    w = np.asarray(weights, dtype=float)
    mats = [net.generator()]
    for i in range(1, order + 1):
        mats.append(sp.coo_matrix((k * w**i, (tgt, src)), shape=(n, n)).tocsr())
    blocks = [[None] * (order + 1) for _ in range(order + 1)]
    for j in range(order + 1):
        for i in range(j + 1):
            blocks[j][j - i] = comb(j, i, exact=True) * mats[i]
    A = sp.bmat(blocks, format="csr")
    v = np.zeros((order + 1) * n)
    v[:n] = p0
    times = np.asarray(times, dtype=float)
    out = np.empty((len(times), order))
    cur, t_prev = v, 0.0
    for m, t in enumerate(times):
        if t > t_prev:
            cur = expm_multiply(A * (t - t_prev), cur)
        t_prev = t
        out[m] = cur.reshape(order + 1, n)[1:].sum(axis=1)
    return out


def cumulants_from_moments(mu) -> np.ndarray:
    """First three cumulants from raw moments (…, 3)."""
    m1, m2, m3 = mu[..., 0], mu[..., 1], mu[..., 2]
    return np.stack([m1, m2 - m1**2, m3 - 3 * m2 * m1 + 2 * m1**3], axis=-1)


def heat_distribution(net: Network, nu: int, times):
    """Exact ``P(Q_nu = q)`` at ``times``: dict ``q -> (n_t,)`` probabilities, or None if too large.

    ``Q_nu = E_nu(x_0) - E_nu(x_t)``: propagate the initial distribution split by its bath energy.
    """
    E = net.states[:, 1 + nu]
    e0 = np.unique(E[net.p0 > 0])
    if len(e0) * net.n_states > HEAT_EXACT_LIMIT:
        return None
    P0 = np.zeros((net.n_states, len(e0)))
    col = np.searchsorted(e0, E)
    on = net.p0 > 0
    P0[np.flatnonzero(on), col[on]] = net.p0[on]
    pt, _ = propagate(net, P0, times)  # (n_t, n, groups)
    emax = net.model.baths[nu].emax
    out = np.zeros((len(times), 2 * emax + 1))
    for g, e in enumerate(e0):
        q = e - E  # heat into the system for each final state
        for m in range(len(times)):
            out[m] += np.bincount(q + emax, weights=pt[m, :, g], minlength=2 * emax + 1)
    return np.arange(-emax, emax + 1), out


def block_scaled_v(net: Network) -> np.ndarray:
    """``V_x / max V`` within each shell (never overflows; only ratios inside a shell matter)."""
    top = np.full(net.n_blocks, -np.inf)
    np.maximum.at(top, net.block, net.lnV)
    return np.exp(net.lnV - top[net.block])


def ift_prediction(net: Network, times, p_t=None) -> np.ndarray:
    """Exact ``<exp(-Delta s_obs)>`` at ``times``.

    Equals ``sum_x p_t(x) [e^{Wt} (V 1_supp)]_x / V_x`` by detailed balance: 1 when the start
    fills every state of its shells, < 1 under absolute irreversibility.
    """
    v = block_scaled_v(net)
    supp = (net.p0 > 0).astype(float)
    if p_t is None:
        p_t, _ = propagate(net, net.p0, times)
    back, _ = propagate(net, v * supp, times)
    return np.sum(p_t * back / v, axis=1)


def absolute_irreversibility(net: Network) -> bool:
    """True if the initial distribution leaves some state of an occupied shell empty."""
    occupied = np.zeros(net.n_blocks, bool)
    occupied[net.block[net.p0 > 0]] = True
    return bool(np.any(occupied[net.block] & (net.p0 <= 0)))
