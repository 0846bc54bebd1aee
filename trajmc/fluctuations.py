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


def _segments(net_or_segments):
    if isinstance(net_or_segments, Network):
        return [(0.0, net_or_segments)]
    return list(net_or_segments)


def counting_moments(net, weights, times, order=3, p0=None) -> np.ndarray:
    """Raw moments ``E[N(t)^j]``, j = 1..order, of ``N = sum over jumps of weights[edge]``.

    ``net`` is a Network or the protocol segments ``[(start, Network)]``; ``weights`` a per-edge
    array, or a function ``Network -> per-edge array`` (needed when segments differ).
    Returns (n_t, order).  Solves the augmented linear system exactly (``expm_multiply``),
    one segment at a time (the moments carry over a switch unchanged).
    """
    segs = _segments(net)
    n = segs[0][1].n_states
    p0 = segs[0][1].p0 if p0 is None else p0
    times = np.asarray(times, dtype=float)
    out = np.empty((len(times), order))
    cur = np.zeros((order + 1) * n)
    cur[:n] = p0
    bounds = [t0 for t0, _ in segs] + [np.inf]
    t_prev = 0.0
    for k, (t0, nk) in enumerate(segs):
        w = np.asarray(weights(nk) if callable(weights) else weights, dtype=float)
        src, tgt, rate = nk.source, nk.target, nk.rate
        mats = [nk.generator()] + [sp.coo_matrix((rate * w**i, (tgt, src)), shape=(n, n)).tocsr()
                                    for i in range(1, order + 1)]
        blocks = [[None] * (order + 1) for _ in range(order + 1)]
        for j in range(order + 1):
            for i in range(j + 1):
                blocks[j][j - i] = comb(j, i, exact=True) * mats[i]
        A = sp.bmat(blocks, format="csr")
        stops = [t for t in times if t0 <= t < bounds[k + 1]]
        for t in stops + ([bounds[k + 1]] if np.isfinite(bounds[k + 1]) else []):
            if t > t_prev:
                cur = expm_multiply(A * (t - t_prev), cur)
            t_prev = t
            if t in stops:
                out[np.flatnonzero(times == t)] = cur.reshape(order + 1, n)[1:].sum(axis=1)
    return out


def cumulants_from_moments(mu) -> np.ndarray:
    """First three cumulants from raw moments (…, 3)."""
    m1, m2, m3 = mu[..., 0], mu[..., 1], mu[..., 2]
    return np.stack([m1, m2 - m1**2, m3 - 3 * m2 * m1 + 2 * m1**3], axis=-1)


def heat_distribution(net, nu: int, times):
    """Exact ``P(Q_nu = q)`` at ``times``: (q values, (n_t, n_q) probabilities), or None if too large.

    ``Q_nu = E_nu(x_0) - E_nu(x_t)``: propagate the initial distribution split by its bath energy.
    ``net`` is a Network or the protocol segments.
    """
    from .solver import propagate_segments

    segs = _segments(net)
    net = segs[0][1]
    E = net.states[:, 1 + nu]
    e0 = np.unique(E[net.p0 > 0])
    if len(e0) * net.n_states > HEAT_EXACT_LIMIT:
        return None
    P0 = np.zeros((net.n_states, len(e0)))
    col = np.searchsorted(e0, E)
    on = net.p0 > 0
    P0[np.flatnonzero(on), col[on]] = net.p0[on]
    pt, _, _ = propagate_segments(segs, P0, times)  # (n_t, n, groups)
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


def _level_steps(segments):
    """Work on each state at the switch into segment k: list of (n,) int arrays, k = 1..."""
    s = segments[0][1].states[:, 0]
    return [(segments[k][1].energies - segments[k - 1][1].energies)[s] for k in range(1, len(segments))]


def work_distribution(segments, times):
    """Exact ``P(W = w)`` at ``times`` for a driven model: (w values, (n_t, n_w) probabilities).

    Propagates one column per accumulated work value and moves probability between columns at
    each switch (the work of a switch is fixed by the level occupied then).
    """
    from .solver import propagate_segments

    steps = _level_steps(segments)
    wmax = int(sum(np.abs(d).max() for d in steps)) if steps else 0
    net = segments[0][1]
    P0 = np.zeros((net.n_states, 2 * wmax + 1))
    P0[:, wmax] = net.p0
    rows = np.arange(net.n_states)

    def shift(k, P):
        out = np.zeros_like(P)
        d = steps[k - 1]
        for j in range(P.shape[1]):
            ok = (j + d >= 0) & (j + d < P.shape[1])  # outside: work never reached, probability 0
            np.add.at(out, (rows[ok], (j + d)[ok]), P[ok, j])
        return out

    pt, _, _ = propagate_segments(segments, P0, times, at_switch=shift)
    return np.arange(-wmax, wmax + 1), pt.sum(axis=1)


def tilted_work_average(segments, times, beta):
    """Exact ``<exp(-beta W)>`` at ``times`` by tilting the distribution with ``exp(-beta dW)`` at
    every switch (independent of :func:`work_distribution`)."""
    from .solver import propagate_segments

    steps = _level_steps(segments)
    pt, _, _ = propagate_segments(segments, segments[0][1].p0, times,
                                  at_switch=lambda k, p: p * np.exp(-beta * steps[k - 1]))
    return pt.sum(axis=1)


def gibbs_ratio(segments, beta):
    """``Z(lambda_final) / Z(lambda_0)``, ``Z = sum_x V_x exp(-beta (eps_s + sum E))`` over the grid states."""
    from scipy.special import logsumexp

    net = segments[0][1]
    Etot = net.states[:, 1:].sum(axis=1)
    lz = [logsumexp(net.lnV - beta * (nt.energies[net.states[:, 0]] + Etot)) for _, nt in (segments[0], segments[-1])]
    return float(np.exp(lz[1] - lz[0]))


def global_gibbs_beta(model, net, tol=1e-12):
    """The beta at which the initial state is the global Gibbs state ``∝ V e^{-beta(eps + E)}``, else None."""
    from scipy.special import logsumexp

    cands = {model.system_gibbs_beta} | {model.beta_ref(nu) for nu in range(model.n_baths)}
    for beta in cands:
        if beta is None or not np.isfinite(beta):
            continue
        x = net.lnV - beta * (net.energies[net.states[:, 0]] + net.states[:, 1:].sum(axis=1))
        g = np.exp(x - logsumexp(x))
        if np.max(np.abs(g - net.p0)) <= tol:
            return float(beta)
    return None
