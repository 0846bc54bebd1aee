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

from math import factorial
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import expm_multiply
from scipy.special import comb, ive, logsumexp

from . import solver as so
from .model import load_model
from .network import Network, build_segments
from .results import positive_series, positive_table
from .solver import _one_blas_thread, propagate_segments

__all__ = [
    "HeatDistribution",
    "WorkDistribution",
    "block_scaled_v",
    "counting_moments",
    "cumulants_from_distribution",
    "cumulants_from_moments",
    "exchange_distribution",
    "heat_distribution",
    "heat_weights",
    "ift_prediction",
]

#: classes up to this many states get a dense augmented expm (stiff-proof); larger ones expm_multiply
COUNTING_DENSE_MAX = 32
#: largest (groups x states) for which the exact heat distribution is computed
HEAT_EXACT_LIMIT = 20_000_000


class HeatDistribution(NamedTuple):
    """Exact heat distribution of one bath at several times (unpacks as ``Q, P = ...``).

    Attributes
    ----------
    Q : ndarray of int64, shape (n_q,)
        Heat values (grid steps, into the system: ``Q = E_bath(0) - E_bath(t)``).
    P : ndarray of float64, shape (n_t, n_q)
        ``P(Q, t)``, one row per time asked for.
    """

    Q: np.ndarray
    P: np.ndarray

    def series(self, t_index=-1, bath=None) -> pd.Series:
        """``P(Q)`` at one time as :meth:`trajmc.Solution.heat_distribution` returns it.

        Parameters
        ----------
        t_index : int
            Row of :attr:`P`.
        bath : str, optional
            Bath name for the Series name ``P(Q_<bath>)``.

        Returns
        -------
        pandas.Series
            Probabilities indexed by ``Q`` (int64), values with ``P > 0`` only.
        """
        return positive_series(self.Q, self.P[t_index], "Q", f"P(Q_{bath})" if bath is not None else "P(Q)")

    def table(self, times) -> pd.DataFrame:
        """Long format as :meth:`trajmc.Solution.heat_table`: columns ``t, Q, P, P_se`` (``P_se`` = 0).

        Parameters
        ----------
        times : array_like, shape (n_t,)
            The times of the rows of :attr:`P`.

        Returns
        -------
        pandas.DataFrame
        """
        return positive_table(self.Q, self.P, times, "Q")


class WorkDistribution(NamedTuple):
    """Exact work distribution at several times (unpacks as ``W, P = ...``).

    Attributes
    ----------
    W : ndarray of int64, shape (n_w,)
        Work values done on the system (grid steps).
    P : ndarray of float64, shape (n_t, n_w)
        ``P(W, t)``, one row per time asked for.
    """

    W: np.ndarray
    P: np.ndarray

    def series(self, t_index=-1, name="W") -> pd.Series:
        """``P(W)`` at one time as :meth:`trajmc.Solution.work_distribution` returns it.

        Parameters
        ----------
        t_index : int
            Row of :attr:`P`.
        name : str
            Name of the index.

        Returns
        -------
        pandas.Series
            Probabilities indexed by ``W`` (int64), values with ``P > 0`` only; named ``P(W)``.
        """
        return positive_series(self.W, self.P[t_index], name, "P(W)")

    def table(self, times) -> pd.DataFrame:
        """Long format: columns ``t, W, P, P_se`` (``P_se`` = 0).

        Parameters
        ----------
        times : array_like, shape (n_t,)
            The times of the rows of :attr:`P`.

        Returns
        -------
        pandas.DataFrame
        """
        return positive_table(self.W, self.P, times, "W")


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
    Returns (n_t, order).  The augmented moment system is block diagonal over closed classes, like
    the rate equation: small classes (one-bath shells) are solved with a batched dense ``expm`` (cost
    ~ log of the rate scale, so stiff models stay cheap); larger ones with the solver's Chebyshev series
    differentiated in the counting field (:func:`_cheb_moments`: one series per protocol segment serves
    every sample time), and those whose series would be too long together with ``expm_multiply``.
    The moments carry over a switch unchanged.
    """

    with _one_blas_thread():
        return _counting_moments(_segments(net), weights, times, order, p0)


def _counting_moments(segs, weights, times, order, p0):
    n = segs[0][1].n_states
    o1 = order + 1
    p0 = segs[0][1].p0 if p0 is None else p0
    times = np.asarray(times, dtype=float)
    out = np.empty((len(times), order))
    cur = np.zeros((o1, n))  # cur[j] = E[N^j ; state]
    cur[0] = p0
    bounds = [t0 for t0, _ in segs] + [np.inf]
    t_prev = 0.0
    for k, (t0, nk) in enumerate(segs):
        w = np.asarray(weights(nk) if callable(weights) else weights, dtype=float)
        stops = [t for t in times if t0 <= t < bounds[k + 1]]
        marks = stops + ([bounds[k + 1]] if np.isfinite(bounds[k + 1]) else [])
        steps = []
        for t in marks:
            steps.append(t - t_prev)
            t_prev = t
        solvers, series = _class_solvers(nk, w, order, COUNTING_DENSE_MAX, np.array(marks) - t0 if marks else None)
        along = series(cur) if series is not None else None  # (n_marks, o1) sums over its classes
        stepped = np.ones(n, dtype=bool) if series is None else ~series.states
        for i, (t, dt) in enumerate(zip(marks, steps, strict=True)):
            if dt > 0:
                for solve in solvers:
                    solve(cur, dt)
            if t in stops:
                tot = cur[1:, stepped].sum(axis=1)
                if along is not None:
                    tot = tot + along[i, 1:]
                out[np.flatnonzero(times == t)] = tot
    return out


def _cheb_moments(net, w, order, blocks, rel):
    """The counting-field moments of the classes ``blocks`` by the solver's Chebyshev series, differentiated
    in the counting field chi (Taylor mode): ``exp(t S_chi) = sum_k c_k(t) T_k(X_chi)`` with
    ``X_chi = I + (2 / L) (S + sum_i chi^i / i! S_i)``, ``S_i`` the symmetrised rates times ``w^i``; the
    recurrence ``b_{k+1} = 2 X_chi b_k - b_{k-1}`` is carried for the Taylor coefficients of order 0..order.
    The derivative of the truncated series converges like the series with weights ``k^(2 order)``, which
    sets the number of terms.  Returns ``run(cur)``: sums over the classes' states at the relative times
    ``rel`` ((len(rel), order+1)), updating ``cur`` to the last of them."""


    sh = so.shells_of(net)
    pos = np.empty(net.n_states, dtype=np.int64)
    pos[sh.order] = np.arange(net.n_states)
    src, tgt = pos[net.source], pos[net.target]
    lnv = net.lnV[sh.order]
    s_e = np.exp(net.log_rate + 0.5 * (lnv[src] - lnv[tgt]))
    groups = so._cheb_groups(sh, blocks, order + 1, len(rel))
    o1 = order + 1
    states = np.zeros(net.n_states, dtype=bool)
    states[np.isin(net.block, blocks)] = True
    wmax = max(1.0, float(np.max(np.abs(w)))) if len(w) else 1.0
    M = sp.csr_matrix((np.ones(len(src)), (tgt, src)), shape=(net.n_states, net.n_states))  # the pattern
    M.sum_duplicates()
    M.sort_indices()
    # data of S_i = s_e w_e^i on that pattern (parallel edges add up), one row per order
    key = tgt.astype(np.int64) * net.n_states + src
    slot = np.searchsorted(np.repeat(np.arange(net.n_states), np.diff(M.indptr)) * net.n_states + M.indices, key)
    Ed = np.zeros((order, M.nnz))
    for i in range(1, o1):
        np.add.at(Ed[i - 1], slot, s_e * w**i)

    def run(cur):
        sums = np.zeros((len(rel), o1))
        fact = np.array([factorial(j) for j in range(o1)], dtype=float)
        for g in groups:
            indptr, indices, data, rows = so._sub_csr(sh.S, sh, g)
            L = float(sh.L[g].max())
            scale = 2.0 / L
            diag = 1.0 - scale * sh.exit[rows]
            M.data = np.arange(M.nnz, dtype=float)  # carry entry numbers through the sub-matrix extraction
            ep, ei, ent, _ = so._sub_csr(M, sh, g)
            ent = ent.astype(np.int64)
            ed = np.ascontiguousarray(Ed[:, ent] * (scale / fact[1:, None]))
            h = sh.h[rows]
            net_rows = sh.order[rows]
            with np.errstate(divide="ignore", invalid="ignore"):
                b_prev = np.where(cur[:, net_rows] != 0, cur[:, net_rows] / h[None, :], 0.0).T / fact[None, :]
            b_prev = np.ascontiguousarray(b_prev)  # Taylor coefficients (m, o1)
            C = _moment_coefficients(L * rel / 2.0, order, wmax)
            K1 = C.shape[0]
            xd = data * scale
            b = np.empty_like(b_prev)
            so._moment_step(indptr, indices, xd, diag, ep, ei, ed, b_prev, b_prev, b, 1.0, 0.0)
            hs = np.outer(C[0], h @ b_prev) + np.outer(C[1], h @ b)
            end = C[0, -1] * b_prev + C[1, -1] * b
            nxt = np.empty_like(b)
            for k in range(2, K1):
                so._moment_step(indptr, indices, xd, diag, ep, ei, ed, b, b_prev, nxt, 2.0, 1.0)
                b_prev, b, nxt = b, nxt, b_prev
                hs += np.outer(C[k], h @ b)
                end += C[k, -1] * b
            sums += hs * fact[None, :]
            cur[:, net_rows] = (end * h[:, None] * fact[None, :]).T
        return sums

    run.states = states
    return run


def _moment_coefficients(z, order, wmax, tol=1e-16):
    """Chebyshev coefficients (K+1, n_t) for the moments: the tail weighted by ``(k^2 2 wmax)^order`` < tol."""

    zmax = float(np.max(z))
    K = int(np.sqrt(2 * zmax * 40) + 20)
    while True:
        c = 2.0 * ive(np.arange(K + 1)[:, None], np.asarray(z, dtype=float)[None, :])
        c[0] *= 0.5
        k = np.arange(K + 1, dtype=float)
        wt = np.abs(c).max(axis=1) * (np.maximum(k, 1.0) ** 2 * 2 * wmax) ** order
        tail = np.cumsum(wt[::-1])[::-1]
        if tail[-1] < tol:
            break
        K = int(K * 1.3) + 10
    keep = int(np.searchsorted(-tail, -tol))
    return c[:max(keep, 2)]


def _class_solvers(net, w, order, dense_max, rel=None):
    """Functions ``solve(cur, dt)`` advancing the augmented moments of each group of classes in place, and the
    Chebyshev series of the larger classes over the relative times ``rel`` (or None)."""


    o1 = order + 1
    src, tgt, rate = net.source, net.target, net.rate
    sizes = np.bincount(net.block)
    order_idx = np.argsort(net.block, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    local = np.empty(net.n_states, dtype=np.int64)
    local[order_idx] = np.arange(net.n_states) - np.repeat(starts, sizes)
    solvers = []
    big = []
    series_blocks = []
    if rel is not None and len(rel):
        sh = so.shells_of(net)
        K = so._cheb_terms(sh.L * float(np.max(rel)) / 2.0) * 1.5
        series_blocks = np.flatnonzero((sizes > dense_max) & (K <= so.CHEB_KMAX))
    in_series = np.zeros(len(sizes), dtype=bool)
    in_series[series_blocks] = True
    for m in np.unique(sizes):
        bl = np.flatnonzero(sizes == m)
        if m > dense_max:
            big.extend(bl[~in_series[bl]].tolist())
            continue
        members = order_idx[starts[bl][:, None] + np.arange(m)[None, :]]  # (nb, m)
        gpos = np.full(net.n_blocks, -1)
        gpos[bl] = np.arange(len(bl))
        e = np.flatnonzero(gpos[net.block[src]] >= 0)
        b = gpos[net.block[src[e]]]
        A = np.zeros((len(bl), o1 * m, o1 * m))
        x, y = local[src[e]], local[tgt[e]]
        for j in range(o1):
            for i in range(j + 1):  # block (j, j-i) = C(j, i) W_i
                c = comb(j, i, exact=True)
                np.add.at(A, (b, (j * m) + y, ((j - i) * m) + x), c * rate[e] * w[e] ** i)
            A[:, j * m + np.arange(m), j * m + np.arange(m)] -= net.exit_rate[members]
        cache = {}

        def solve(cur, dt, A=A, members=members, cache=cache, m=m):
            key = round(dt, 14)
            if key not in cache:
                cache[key] = scipy.linalg.expm(A * dt)
            v = cur[:, members].transpose(1, 0, 2).reshape(len(members), o1 * m)  # (nb, o1*m)
            v = np.matmul(cache[key], v[:, :, None])[:, :, 0]
            cur[:, members] = v.reshape(len(members), o1, m).transpose(1, 0, 2)
        solvers.append(solve)
    if big:
        idx = np.flatnonzero(np.isin(net.block, big))
        pos = np.full(net.n_states, -1)
        pos[idx] = np.arange(len(idx))
        keep = pos[src] >= 0
        s2, t2, r2, w2 = pos[src[keep]], pos[tgt[keep]], rate[keep], w[keep]
        nn = len(idx)
        mats = [sp.coo_matrix((r2, (t2, s2)), shape=(nn, nn)).tocsr() - sp.diags(net.exit_rate[idx])]
        mats += [sp.coo_matrix((r2 * w2**i, (t2, s2)), shape=(nn, nn)).tocsr() for i in range(1, o1)]
        blocks = [[None] * o1 for _ in range(o1)]
        for j in range(o1):
            for i in range(j + 1):
                blocks[j][j - i] = comb(j, i, exact=True) * mats[i]
        Abig = sp.bmat(blocks, format="csr")

        def solve_big(cur, dt):
            cur[:, idx] = expm_multiply(Abig * dt, cur[:, idx].ravel()).reshape(o1, nn)
        solvers.append(solve_big)
    series = _cheb_moments(net, w, order, series_blocks, np.asarray(rel, dtype=float)) if len(series_blocks) else None
    return solvers, series


def cumulants_from_moments(mu) -> np.ndarray:
    """First three cumulants from raw moments (…, 3)."""
    m1, m2, m3 = mu[..., 0], mu[..., 1], mu[..., 2]
    return np.stack([m1, m2 - m1**2, m3 - 3 * m2 * m1 + 2 * m1**3], axis=-1)


def cumulants_from_distribution(values, P) -> np.ndarray:
    """First three cumulants (n_t, 3) of distributions ``P`` (n_t, n_v) over ``values`` (n_v,)."""
    v = np.asarray(values, dtype=float)
    mu = np.stack([P @ v**j for j in (1, 2, 3)], axis=-1)
    return cumulants_from_moments(mu)


def heat_distribution(net, nu: int, times, progress=None):
    """Exact ``P(Q_nu = q)`` at ``times``: a :class:`HeatDistribution` ``(Q, P)``, or None if too large.

    This is what :meth:`trajmc.Solution.heat_distribution` and :meth:`trajmc.Solution.heat_table` read
    (``.series(k)`` and ``.table(times)`` give their types).

    ``Q_nu = E_nu(x_0) - E_nu(x_t)``: the initial distribution split by its bath energy is propagated with
    the solver's routes (one right-hand side per initial bath energy present in a closed class, so a
    two-bath shell of m states carries about m / n_levels of them), and each class's final states are
    binned as soon as it is done.  ``net`` is a Network or the protocol segments.
    """
    segs = _segments(net)
    net = segs[0][1]
    E = net.states[:, 1 + nu]
    emax = net.model.baths[nu].emax
    out = _split_propagate(segs, E, lambda lab0, idx: lab0 - E[idx][:, None] + emax, 2 * emax + 1, times, progress,
                           f"heat distribution ({net.model.bath_names[nu]})")
    return None if out is None else HeatDistribution(np.arange(-emax, emax + 1, dtype=np.int64), out)


def exchange_distribution(net, times, p_levels, betas, progress=None):
    """Exact distribution of the exchange entropy production of an undriven two-bath run.

    ``sigma = ln p(s_0) - ln p(s_t) - beta_0 Q_0 - beta_1 Q_1`` with ``p = p_levels`` (the initial level
    distribution), ``Q_0 = E_0(x_0) - E_0(x_t)`` and ``Q_1 = eps(s_t) - eps(s_0) - Q_0`` (energy conservation).
    The initial distribution is split by (level, energy of bath 0) and propagated as in
    :func:`heat_distribution`.  Returns ``(sigma values (n_v,), P (n_t, n_v))``, sigma rounded to 1e-9, or
    None if too large.
    """
    segs = _segments(net)
    net = segs[0][1]
    if len(segs) > 1 or net.model.n_baths != 2:
        raise ValueError("exchange_distribution needs an undriven model with two baths")
    s, E = net.states[:, 0], net.states[:, 1]
    G = net.model.baths[0].emax + 1
    eps = net.model.energies.astype(float)
    with np.errstate(divide="ignore"):
        lps = np.log(np.asarray(p_levels, dtype=float))
    # every (s_0, s_t, Q_0) cell, Q_0 = E_0(x_0) - E_0(x_t) in -emax..emax
    n_s = len(eps)
    s0g, stg, qg = np.meshgrid(np.arange(n_s), np.arange(n_s), np.arange(-(G - 1), G), indexing="ij")
    sig = lps[s0g] - lps[stg] - betas[0] * qg - betas[1] * (eps[stg] - eps[s0g] - qg)
    ok = np.isfinite(sig)
    vals, inv = np.unique(np.round(sig[ok], 9), return_inverse=True)
    cell_to_v = np.full(sig.shape, len(vals), dtype=np.int64)  # len(vals): a cell of zero initial weight
    cell_to_v[ok] = inv
    cell_to_v = cell_to_v.ravel()

    def bins(lab0, idx):
        s0, e0 = lab0 // G, lab0 % G
        q = e0 - E[idx][:, None]
        return cell_to_v[(s0 * n_s + s[idx][:, None]) * (2 * G - 1) + q + (G - 1)]

    out = _split_propagate(segs, s * G + E, bins, len(vals) + 1, times, progress, "exchange distribution")
    return None if out is None else (vals, out[:, :-1])


def _split_propagate(segs, label, bins, n_bins, times, progress, desc):
    """Propagate the initial distribution split by ``label`` (one right-hand side per label present in a
    closed class) and bin each final state by ``bins(label_0 (k, r), idx (k,)) -> (k, r)`` bin indices.
    Returns (n_t, n_bins) probabilities, or None when the split is too large (:data:`HEAT_EXACT_LIMIT`)."""
    net = segs[0][1]
    on = net.p0 > 0
    comp = _union_components(segs) if len(segs) > 1 else net.block
    # column of each initial state: the rank of its label among those present in its class
    key = np.unique(np.stack([comp[on], label[on]], axis=1), axis=0)  # (groups, 2), sorted by class then label
    first = np.searchsorted(key[:, 0], np.arange(int(comp.max()) + 1 if len(comp) else 0))
    counts = np.bincount(key[:, 0], minlength=len(first))
    r = int(counts.max()) if len(counts) else 0
    if r * net.n_states > HEAT_EXACT_LIMIT or r == 0:
        return None
    lab0_of = np.full((len(first), r), -1, dtype=np.int64)  # initial label of column c in class b
    lab0_of[key[:, 0], np.arange(len(key)) - first[key[:, 0]]] = key[:, 1]
    col = np.zeros(net.n_states, dtype=np.int64)
    L = int(label.max()) + 1
    g = np.searchsorted(key[:, 0] * L + key[:, 1], comp[on] * L + label[on])
    col[on] = g - first[comp[on]]
    P0 = np.zeros((net.n_states, r))
    P0[np.flatnonzero(on), col[on]] = net.p0[on]
    out = np.zeros((len(times), n_bins))

    def sink(tidx, idx, vals):
        lab0 = lab0_of[comp[idx]]  # (k, r)
        live = (lab0 >= 0).ravel()
        b = bins(np.where(lab0 >= 0, lab0, 0), idx).ravel()
        for j, ti in enumerate(tidx):
            out[ti] += np.bincount(b[live], weights=vals[j].ravel()[live], minlength=n_bins)

    propagate_segments(segs, P0, times, sink=sink, progress=progress, desc=desc)
    return out


def _union_components(segs):
    """Connected components of the union of all segments' jump graphs (closed classes of the whole run)."""

    n = segs[0][1].n_states
    src = np.concatenate([nt.source for _, nt in segs])
    tgt = np.concatenate([nt.target for _, nt in segs])
    g = sp.coo_matrix((np.ones(len(src)), (src, tgt)), shape=(n, n))
    return connected_components(g, directed=True, connection="weak")[1]


def block_scaled_v(net, comp=None) -> np.ndarray:
    """``V_x / max V`` within each component (never overflows; only ratios inside one matter)."""
    segs = _segments(net)
    net = segs[0][1]
    comp = net.block if comp is None else comp
    top = np.full(int(comp.max()) + 1, -np.inf)
    np.maximum.at(top, comp, net.lnV)
    return np.exp(net.lnV - top[comp])


def ift_prediction(net, times, p_t=None) -> np.ndarray:
    """Exact ``<exp(-Delta s_obs)>`` at ``times`` (``net``: a Network or the protocol segments).

    Equals ``sum_x p_t(x) [P(t) (V 1_supp)]_x / V_x`` by detailed balance (every segment keeps
    ``V`` invariant): 1 when the start fills every state of its classes, < 1 under absolute
    irreversibility.  ``V`` is scaled per component of the union of all segments' graphs; on a component
    the start fills, ``P(t) V = V`` exactly, so only the partly filled ones are propagated.
    """

    segs = _segments(net)
    comp = _union_components(segs)
    v = block_scaled_v(segs, comp)
    p0 = segs[0][1].p0
    supp = (p0 > 0).astype(float)
    filled = np.bincount(comp, weights=supp) == np.bincount(comp)
    if p_t is None:
        p_t, _, _ = propagate_segments(segs, p0, times, progress=False)
    full = filled[comp]
    back = np.broadcast_to(np.where(full, v, 0.0), (len(times), len(v))).copy()
    if not full.all():
        part, _, _ = propagate_segments(segs, np.where(full, 0.0, v * supp), times, progress=False)
        back += part
    return np.sum(p_t * back / v, axis=1)


def absolute_irreversibility(net) -> bool:
    """True if the initial distribution leaves some state of an occupied class empty."""
    segs = _segments(net)
    p0 = segs[0][1].p0
    comp = _union_components(segs)
    occupied = np.zeros(int(comp.max()) + 1, bool)
    occupied[comp[p0 > 0]] = True
    return bool(np.any(occupied[comp] & (p0 <= 0)))


def _level_steps(segments):
    """Work on each state at the switch into segment k: list of (n,) int arrays, k = 1..."""
    s = segments[0][1].states[:, 0]
    return [(segments[k][1].energies - segments[k - 1][1].energies)[s] for k in range(1, len(segments))]


def work_distribution(segments, times):
    """Exact ``P(W = w)`` at ``times`` for a driven model: a :class:`WorkDistribution` ``(W, P)``.

    Propagates one column per accumulated work value and moves probability between columns at
    each switch (the work of a switch is fixed by the level occupied then).
    """

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
    return WorkDistribution(np.arange(-wmax, wmax + 1, dtype=np.int64), pt.sum(axis=1))


def tilted_work_average(segments, times, beta):
    """Exact ``<exp(-beta W)>`` at ``times`` by tilting the distribution with ``exp(-beta dW)`` at
    every switch (independent of :func:`work_distribution`)."""

    steps = _level_steps(segments)
    pt, _, _ = propagate_segments(segments, segments[0][1].p0, times,
                                  at_switch=lambda k, p: p * np.exp(-beta * steps[k - 1]))
    return pt.sum(axis=1)


def gibbs_ratio(segments, beta):
    """``Z(lambda_final) / Z(lambda_0)``, ``Z = sum_x V_x exp(-beta (eps_s + sum E))`` over the grid states."""

    net = segments[0][1]
    Etot = net.states[:, 1:].sum(axis=1)
    lz = [logsumexp(net.lnV - beta * (nt.energies[net.states[:, 0]] + Etot)) for _, nt in (segments[0], segments[-1])]
    return float(np.exp(lz[1] - lz[0]))


def global_gibbs_beta(model, net, tol=1e-12):
    """The beta at which the initial state is the global Gibbs state ``∝ V e^{-beta(eps + E)}``, else None."""

    cands = {model.system_gibbs_beta} | {model.beta_ref(nu) for nu in range(model.n_baths)}
    for beta in cands:
        if beta is None or not np.isfinite(beta):
            continue
        x = net.lnV - beta * (net.energies[net.states[:, 0]] + net.states[:, 1:].sum(axis=1))
        g = np.exp(x - logsumexp(x))
        if np.max(np.abs(g - net.p0)) <= tol:
            return float(beta)
    return None


def reversed_model(model, beta):
    """The time-reversed protocol over ``[0, T]`` (T = last sample time), started in the global Gibbs state of
    the final levels at ``beta``; None if that is not expressible (a switch at T, or a joint initial table).

    Forward levels eps_0 on [0, t_1), ..., eps_K on [t_K, T]; reversed: eps_K on [0, T - t_K), ...,
    eps_0 on [T - t_1, T].
    """

    T = float(model.times[-1])
    steps = list(model.protocol)
    if not steps or steps[-1].time >= T or model.bath_states is None:
        return None
    levels = [list(map(int, model.energies))] + [list(s.energies) for s in steps]
    d = model.to_dict()
    d["system"]["energies"] = levels[-1]
    d["system"].pop("given", None)  # the reversed levels are grid integers; the record was of the forward model
    d["protocol"] = [{"time": T - steps[k - 1].time, "energies": levels[k - 1]} for k in range(len(steps), 0, -1)]
    d["initial"] = {"system": {"gibbs": True, "beta": beta},
                    "baths": [{"state": "canonical", "beta": beta} for _ in model.baths]}
    d["times"] = {"values": [0.0, T]}
    d["name"] = f"{model.name}-reversed"
    return load_model(d)


def crooks_exact(model, beta):
    """Exact forward and reversed work distributions for the Crooks relation
    ``P_F(W) / P_R(-W) = exp(beta (W - Delta F))``: (w, P_F(w) at T, P_R(-w) at T, Delta F) or None."""

    rev = reversed_model(model, beta)
    if rev is None:
        return None
    fwd = build_segments(model)
    w, PF = work_distribution(fwd, [0.0, float(model.times[-1])])
    wr, PR = work_distribution(build_segments(rev), [0.0, float(model.times[-1])])
    PR_neg = np.interp(-w, wr, PR[-1], left=0.0, right=0.0)
    dF = -np.log(gibbs_ratio(fwd, beta)) / beta
    return w, PF[-1], PR_neg, dF
