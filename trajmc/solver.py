"""Exact solution of the Pauli MME rate equation, one closed class (energy shell) at a time.

Total energy is conserved (PHYSICS.md §5.3), so the generator is block diagonal
over connected components; a one-bath shell has at most ``n_s`` states.  Blocks
of equal size are solved together as one batch:

* well-conditioned blocks: symmetrise with ``V`` (detailed balance
  ``k(x->y) V_x = k(y->x) V_y``) and eigendecompose; the stationary pair
  (eigenvalue 0, eigenvector ``sqrt(V)``) is put in exactly, so long times are exact;
* blocks whose ``ln V`` spread would amplify rounding in the ``V^{±1/2}``
  similarity transform: batched ``scipy.linalg.expm`` of the generator;
* blocks larger than ``DENSE_MAX`` states (several baths): ``scipy.sparse.linalg.expm_multiply``.

The solver imports the model and network only, never the Monte Carlo code.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.linalg
from scipy.sparse.linalg import expm_multiply

from .model import load_model
from .network import Network, build_segments, levels_at
from .thermo import marginal_system, space_of, thermo_table

__all__ = ["solve", "Solution", "propagate"]

DENSE_MAX = 400
#: ln V spread inside a block above which the symmetric route could lose ~1e-13
SPREAD_MAX = 8.0


class Solution:
    """Exact ``p_x(t)`` of a model.

    Attributes
    ----------
    times : ndarray (n_t,)
    states : DataFrame, one row per joint state: ``s``, ``E_<bath>``
    p : ndarray (n_t, n_states)
    network : Network
    info : dict (how many blocks each method solved)
    """

    def __init__(self, model, network, times, p, info, segments=None):
        self.model = model
        self.network = network
        self.times = times
        self.p = p
        self.info = info
        self.segments = segments if segments is not None else [(0.0, network)]
        self._states = None

    def levels(self) -> np.ndarray:
        """Level energies in force at each sample time: (n_t, n_levels) (a switch at t counts at t)."""
        return levels_at(self.segments, self.times)

    def work(self) -> np.ndarray:
        """Mean work done on the system up to each sample time (0 for an undriven model)."""
        return mean_work(self.segments, self.network.p0, self.times)

    @property
    def states(self) -> pd.DataFrame:
        if self._states is None:
            self._states = self.network.frame()
        return self._states

    def thermo(self) -> pd.DataFrame:
        """PHYSICS.md §4 quantities at every sample time (see :func:`trajmc.thermo.thermo_table`)."""
        return thermo_table(self.times, self.p, space_of(self.network), levels=self.levels(), work=self.work())

    def p_system(self) -> np.ndarray:
        """System marginal ``p_s(t)``: (n_t, n_levels)."""
        return marginal_system(self.p, space_of(self.network))

    def __repr__(self):
        return (f"<Solution {self.model.name!r}: {self.network.n_states} states, "
                f"{self.network.n_blocks} shells, {len(self.times)} times>")


def solve(model, times=None) -> Solution:
    """Solve the rate equation exactly at the sample times.

    Parameters
    ----------
    model : Model, dict or path
    times : array_like, optional
        Overrides the model's sample times (must start at 0 and increase).

    Returns
    -------
    Solution
    """
    model = load_model(model)
    if times is not None:
        model = model.with_times(times)
    segments = build_segments(model)
    p, info, _ = propagate_segments(segments, segments[0][1].p0, model.times)
    return Solution(model, segments[0][1], model.times, p, info, segments)


def propagate_segments(segments, p0, times, at_switch=None):
    """Propagate through the protocol segments ``[(start, Network)]``, one segment at a time.

    ``at_switch(k, p)`` may transform the (n[, r]) state entering segment ``k`` (k >= 1), e.g. to
    book the work done at the switch.  Returns (p at ``times``, info, states at each switch).
    """
    times = np.asarray(times, dtype=float)
    cur = np.asarray(p0, dtype=float)
    out = np.empty((len(times),) + cur.shape)
    info = {}
    at_sw = []
    bounds = [t0 for t0, _ in segments] + [np.inf]
    for k, (t0, net) in enumerate(segments):
        if k > 0:
            at_sw.append(cur)
            if at_switch is not None:
                cur = at_switch(k, cur)
        t1 = bounds[k + 1]
        sel = np.flatnonzero((times >= t0) & (times < t1))
        rel = list(times[sel] - t0)
        if np.isfinite(t1):
            rel.append(t1 - t0)
        if not rel:
            continue
        pk, ik = propagate(net, cur, np.array(rel))
        for key, v in ik.items():
            info[key] = info.get(key, 0) + v
        out[sel] = pk[:len(sel)]
        cur = pk[-1]
    return out, info, at_sw


def mean_work(segments, p0, times):
    """``W(t) = sum over switches t_k <= t of <eps_new(s) - eps_old(s)>`` at the switch."""
    times = np.asarray(times, dtype=float)
    if len(segments) == 1:
        return np.zeros(len(times))
    _, _, at_sw = propagate_segments(segments, p0, [times[0]])
    s = segments[0][1].states[:, 0]
    W = np.zeros(len(times))
    for k in range(1, len(segments)):
        d = (segments[k][1].energies - segments[k - 1][1].energies)[s]
        W[times >= segments[k][0]] += float(at_sw[k - 1] @ d)
    return W


def propagate(net: Network, p0, times):
    """``p(t) = exp(W t) p0`` at every time, block by block.

    ``p0`` is (n,) or (n, r) (r right-hand sides at once).  Returns (p (n_t, n[, r]), info).
    """
    times = np.asarray(times, dtype=float)
    p0 = np.asarray(p0, dtype=float)
    vec = p0.ndim == 1
    if vec:
        p0 = p0[:, None]
    r = p0.shape[1]
    n = net.n_states
    out = np.empty((len(times), n, r))
    sizes = np.bincount(net.block)
    order = np.argsort(net.block, kind="stable")
    local = np.empty(n, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    local[order] = np.arange(n) - np.repeat(starts, sizes)
    info = {"eigh": 0, "expm": 0, "sparse": 0, "trivial": 0}
    src = net.source
    big = []
    for m in np.unique(sizes):
        bl = np.flatnonzero(sizes == m)
        if m == 1:
            idx = order[starts[bl]]
            out[:, idx] = p0[idx]
            info["trivial"] += len(bl)
            continue
        if m > DENSE_MAX:
            big.extend(bl.tolist())
            continue
        members = order[starts[bl][:, None] + np.arange(m)[None, :]]  # (nb, m) state indices
        gpos = np.full(net.n_blocks, -1)
        gpos[bl] = np.arange(len(bl))
        e = np.flatnonzero(gpos[net.block[src]] >= 0)
        b = gpos[net.block[src[e]]]
        lv = net.lnV[members]
        spread = lv.max(axis=1) - lv.min(axis=1)
        good = spread <= SPREAD_MAX
        q0 = p0[members]
        res = np.empty((len(times), len(bl), m, r))
        if good.any():
            res[:, good] = _eigh_route(net, members[good], e, b, local, src, q0[good], times, good)
            info["eigh"] += int(good.sum())
        if (~good).any():
            res[:, ~good] = _expm_route(net, members[~good], e, b, local, src, q0[~good], times, ~good)
            info["expm"] += int((~good).sum())
        out[:, members] = res
    if big:
        idx = np.flatnonzero(np.isin(net.block, big))
        out[:, idx] = _sparse_route(net, idx, p0[idx], times)
        info["sparse"] += len(big)
    return (out[:, :, 0] if vec else out), info


def _subset_edges(e, b, mask):
    keep = mask[b]
    pos = np.cumsum(mask) - 1
    return e[keep], pos[b[keep]]


def _eigh_route(net, members, e, b, local, src, q0p, times, mask):
    e, b = _subset_edges(e, b, mask)
    nb, m = members.shape
    x, y = src[e], net.target[e]
    lv = net.lnV[members]
    lv0 = lv.max(axis=1, keepdims=True)
    # S[y, x] = k(x->y) sqrt(V_x / V_y): symmetric by detailed balance
    A = np.zeros((nb, m, m))
    # parallel edges (a degenerate jump through several baths) add up
    np.add.at(A, (b, local[y], local[x]), np.exp(net.log_rate[e] + 0.5 * (net.lnV[x] - net.lnV[y])))
    A = 0.5 * (A + A.transpose(0, 2, 1))
    A[:, np.arange(m), np.arange(m)] = -net.exit_rate[members]
    # the stationary pair is known exactly (eigenvalue 0, eigenvector u0 ∝ sqrt(V)): deflate it.
    # A Householder reflection H with H e_0 = ±u0 gives an orthonormal complement Q = H[:, 1:]
    # of u0; eigh of Q^T A Q yields the other modes, orthogonal to u0 to rounding.
    u0 = np.exp(0.5 * (lv - lv0))
    u0 /= np.linalg.norm(u0, axis=1, keepdims=True)
    w = u0.copy()
    w[:, 0] += np.where(u0[:, 0] >= 0, 1.0, -1.0)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    H = np.eye(m)[None] - 2.0 * w[:, :, None] * w[:, None, :]
    Q = H[:, :, 1:]
    lam1, U1 = np.linalg.eigh(np.matmul(Q.transpose(0, 2, 1), np.matmul(A, Q)))
    U = np.concatenate([u0[:, :, None], np.matmul(Q, U1)], axis=2)
    lam = np.concatenate([np.zeros((nb, 1)), np.minimum(lam1, 0.0)], axis=1)
    half = np.exp(0.5 * (lv - lv0))  # sqrt(V / V_max) per block
    q0 = q0p / half[:, :, None]
    c = np.matmul(U.transpose(0, 2, 1), q0)  # (nb, m, r)
    expo = np.exp(lam[None, :, :] * times[:, None, None])  # (n_t, nb, m)
    q = np.matmul(U[None], expo[..., None] * c[None])  # batched BLAS
    return np.maximum(q * half[None, :, :, None], 0.0)


def _stochastic_expm(Wt):
    """``expm`` of generators, each column renormalised to sum 1: scaling and squaring of a stiff
    generator leaks probability (up to 1e-3 seen); the exact propagator conserves it."""
    P = scipy.linalg.expm(Wt)
    return P / P.sum(axis=-2, keepdims=True)


def _expm_route(net, members, e, b, local, src, q0, times, mask):
    e, b = _subset_edges(e, b, mask)
    nb, m = members.shape
    x, y = src[e], net.target[e]
    W = np.zeros((nb, m, m))
    np.add.at(W, (b, local[y], local[x]), net.rate[e])  # parallel edges add up
    W[:, np.arange(m), np.arange(m)] = -net.exit_rate[members]
    out = np.empty((len(times), nb, m, q0.shape[-1]))
    cur = q0.copy()
    out[0] = cur if times[0] == 0 else np.matmul(_stochastic_expm(W * times[0]), cur)
    cur = out[0]
    cache = {}
    for k in range(1, len(times)):
        dt = times[k] - times[k - 1]
        key = round(dt, 14)
        if key not in cache:
            cache[key] = _stochastic_expm(W * dt)
        cur = np.matmul(cache[key], cur)
        out[k] = cur
    return np.maximum(out, 0.0)


def _sparse_route(net, idx, q0, times):
    pos = np.full(net.n_states, -1)
    pos[idx] = np.arange(len(idx))
    W = net.generator()[idx][:, idx].tocsc()
    out = np.empty((len(times), len(idx), q0.shape[-1]))
    cur = q0.copy()
    t_prev = 0.0
    for k, t in enumerate(times):
        if t > t_prev:
            cur = expm_multiply(W * (t - t_prev), cur)
        out[k] = cur
        t_prev = t
    return np.maximum(out, 0.0)
