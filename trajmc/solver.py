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
import scipy.sparse as sp
from scipy.sparse.linalg import expm_multiply

from .errors import UnsupportedError
from .model import Model, load_model
from .network import Network, build_network
from .thermo import space_of, thermo_table

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

    def __init__(self, model, network, times, p, info):
        self.model = model
        self.network = network
        self.times = times
        self.p = p
        self.info = info
        self._states = None

    @property
    def states(self) -> pd.DataFrame:
        if self._states is None:
            self._states = self.network.frame()
        return self._states

    def thermo(self) -> pd.DataFrame:
        """PHYSICS.md §4 quantities at every sample time (see :func:`trajmc.thermo.thermo_table`)."""
        return thermo_table(self.times, self.p, space_of(self.network))

    def p_system(self) -> np.ndarray:
        """System marginal ``p_s(t)``: (n_t, n_levels)."""
        return np.stack([np.bincount(self.network.states[:, 0], weights=row, minlength=self.model.n_levels)
                         for row in self.p])

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
    if model.protocol:
        raise UnsupportedError("protocol: driven models are not supported yet (the driving issue adds them); "
                               "remove [[protocol]] to solve the undriven model")
    net = build_network(model)
    p, info = propagate(net, net.p0, model.times)
    return Solution(model, net, model.times, p, info)


def propagate(net: Network, p0, times):
    """``p(t) = exp(W t) p0`` at every time, block by block.  Returns (p (n_t, n), info)."""
    times = np.asarray(times, dtype=float)
    n = net.n_states
    out = np.empty((len(times), n))
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
        res = np.empty((len(times), len(bl), m))
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
    return out, info


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
    A[b, local[y], local[x]] = np.exp(net.log_rate[e] + 0.5 * (net.lnV[x] - net.lnV[y]))
    A = 0.5 * (A + A.transpose(0, 2, 1))
    A[:, np.arange(m), np.arange(m)] = -net.exit_rate[members]
    lam, U = np.linalg.eigh(A)
    # the stationary pair is known exactly: eigenvalue 0, eigenvector ∝ sqrt(V)
    u0 = np.exp(0.5 * (lv - lv0))
    u0 /= np.linalg.norm(u0, axis=1, keepdims=True)
    k0 = np.argmax(np.abs(np.einsum("bi,bik->bk", u0, U)), axis=1)
    U[np.arange(nb), :, k0] = u0
    lam[np.arange(nb), k0] = 0.0
    lam = np.minimum(lam, 0.0)
    half = np.exp(0.5 * (lv - lv0))  # sqrt(V / V_max) per block
    q0 = q0p / half
    c = np.einsum("bik,bi->bk", U, q0)
    expo = np.exp(lam[None, :, :] * times[:, None, None])  # (n_t, nb, m)
    q = np.einsum("bik,tbk->tbi", U, expo * c[None])
    return np.maximum(q * half[None], 0.0)


def _expm_route(net, members, e, b, local, src, q0, times, mask):
    e, b = _subset_edges(e, b, mask)
    nb, m = members.shape
    x, y = src[e], net.target[e]
    W = np.zeros((nb, m, m))
    W[b, local[y], local[x]] = net.rate[e]
    W[:, np.arange(m), np.arange(m)] = -net.exit_rate[members]
    out = np.empty((len(times), nb, m))
    cur = q0.copy()
    out[0] = cur if times[0] == 0 else np.einsum("bij,bj->bi", scipy.linalg.expm(W * times[0]), cur)
    cur = out[0]
    cache = {}
    for k in range(1, len(times)):
        dt = times[k] - times[k - 1]
        key = round(dt, 14)
        if key not in cache:
            cache[key] = scipy.linalg.expm(W * dt)
        cur = np.einsum("bij,bj->bi", cache[key], cur)
        out[k] = cur
    return np.maximum(out, 0.0)


def _sparse_route(net, idx, q0, times):
    pos = np.full(net.n_states, -1)
    pos[idx] = np.arange(len(idx))
    W = net.generator()[idx][:, idx].tocsc()
    out = np.empty((len(times), len(idx)))
    cur = q0.copy()
    t_prev = 0.0
    for k, t in enumerate(times):
        if t > t_prev:
            cur = expm_multiply(W * (t - t_prev), cur)
        out[k] = cur
        t_prev = t
    return np.maximum(out, 0.0)
