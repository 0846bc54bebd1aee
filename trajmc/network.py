"""The joint (s, E_1..E_N) network: reachable states, out-edges with log-space rates, shells.

Only the states reachable from the initial distribution's support are built.
Rates follow docs/physics.md §2 and are computed in log space; every edge stores its
bath and the bath energy change, so heat needs no bookkeeping along a path.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from .errors import ModelError, UnsupportedError
from .model import Model

__all__ = ["Network", "build_network", "build_segments", "reachable", "log_rates", "bath_rates", "check_log_rates",
           "kernel_lnf"]

#: largest joint state space (levels x grid points) we agree to index with a bitmap
MAX_SPACE = 400_000_000
#: ln of the largest finite double: a rate above it overflows
LOG_RATE_MAX = float(np.log(np.finfo(float).max))


@dataclass(frozen=True, eq=False)
class Network:
    """Reachable joint states and their out-edges (CSR, rows = source state).

    Built by :func:`build_network`; the fields are read-only arrays.  ``n`` is the number of states,
    ``m`` the number of edges, ``N`` the number of baths.

    Parameters
    ----------
    model : Model
        The model the network belongs to.
    energies : ndarray (n_levels,) int64
        System level energies (grid units) under which the rates were computed (for a driven model: one
        protocol segment's levels).
    states : ndarray (n, 1+N) int64
        ``s, E_1..E_N`` per state, sorted lexicographically.
    lnV : ndarray (n,) float64
        ``ln V_x = sum_nu ln V^nu_{E_nu}`` (finite: only states with microstates are built).
    p0 : ndarray (n,) float64
        Initial distribution ``p_x(0)`` (sums to 1).
    indptr : ndarray (n+1,) int64
        CSR row pointer: the out-edges of state ``i`` are ``indptr[i]:indptr[i+1]``.
    target : ndarray (m,) int64
        Target state index of each edge.
    bath : ndarray (m,) int64
        Index of the bath the jump goes through.
    dE : ndarray (m,) int64
        That bath's energy change ``E'_b - E_b``; the heat into the system is ``-dE``.
    log_rate : ndarray (m,) float64
        ``ln k(x -> y)`` of each edge.
    rate : ndarray (m,) float64
        ``k(x -> y) = exp(log_rate)``.
    exit_rate : ndarray (n,) float64
        ``sum_y k(x -> y)``: the total rate of leaving each state.
    block : ndarray (n,) int64
        Connected component (a closed class of the dynamics) of each state.
    shell : ndarray (n,) int64
        Total energy ``eps_s + sum E_nu`` (conserved, docs/physics.md §5.3).
    """

    model: Model
    energies: np.ndarray
    states: np.ndarray
    lnV: np.ndarray
    p0: np.ndarray
    indptr: np.ndarray
    target: np.ndarray
    bath: np.ndarray
    dE: np.ndarray
    log_rate: np.ndarray
    rate: np.ndarray
    exit_rate: np.ndarray
    block: np.ndarray
    shell: np.ndarray

    @property
    def n_states(self) -> int:
        """Number of joint states ``n``."""
        return len(self.states)

    @property
    def n_edges(self) -> int:
        """Number of edges (possible jumps) ``m``."""
        return len(self.target)

    @property
    def n_blocks(self) -> int:
        """Number of closed classes (connected components)."""
        return int(self.block.max()) + 1 if len(self.block) else 0

    @property
    def source(self) -> np.ndarray:
        """Source state index of each edge, (m,) int64 (the CSR rows expanded)."""
        return np.repeat(np.arange(self.n_states), np.diff(self.indptr))

    def frame(self) -> pd.DataFrame:
        """The joint states as a table.

        Returns
        -------
        pandas.DataFrame
            One row per state (in the order of :attr:`states`), int64 columns ``s`` and ``E_<bath>``.
        """
        cols = {"s": self.states[:, 0]}
        for nu, name in enumerate(self.model.bath_names):
            cols[f"E_{name}"] = self.states[:, 1 + nu]
        return pd.DataFrame(cols)

    def generator(self) -> sp.csr_matrix:
        """Sparse generator of the rate equation.

        Returns
        -------
        scipy.sparse.csr_matrix (n, n) float64
            ``W`` with ``dp/dt = W p``: ``W[y, x] = k(x -> y)``, ``W[x, x] = -exit(x)``; every column
            sums to 0.
        """
        n = self.n_states
        W = sp.coo_matrix((self.rate, (self.target, self.source)), shape=(n, n)).tocsr()
        return (W - sp.diags(self.exit_rate)).tocsr()

    def index_of(self, states) -> np.ndarray:
        """Row index of joint states in :attr:`states`.

        Parameters
        ----------
        states : array_like (k, 1+N) or (1+N,) of int
            Joint states ``(s, E_1, .., E_N)``.

        Returns
        -------
        ndarray (k,) int64
            The index of each state, -1 where the network does not have it.
        """
        codes = _encode(np.atleast_2d(np.asarray(states, dtype=np.int64)), self.model)
        mine = _encode(self.states, self.model)
        i = np.searchsorted(mine, codes)
        i = np.clip(i, 0, len(mine) - 1)
        return np.where(mine[i] == codes, i, -1)


def _radix(model):
    return np.array([model.n_levels] + [b.emax + 1 for b in model.baths], dtype=np.int64)


def _encode(states, model):
    # lexicographic in (s, E_1, .., E_N): the last column varies fastest
    r = _radix(model)
    code = np.zeros(len(states), dtype=np.int64)
    for j in range(states.shape[1]):
        code = code * r[j] + states[:, j]
    return code


def _decode(code, model):
    r = _radix(model)
    out = np.empty((len(code), len(r)), dtype=np.int64)
    c = code.copy()
    for j in range(len(r) - 1, -1, -1):
        out[:, j] = c % r[j]
        c //= r[j]
    return out


def log_rates(model, nu, s, s2, E, E2):
    """Log rate of the jump ``(s, E) -> (s2, E2)`` through bath ``nu`` (vectorised; docs/physics.md §2).

    Returns ``-inf`` where the jump is absent (zero coupling, or a ``linear``
    kernel jump that does not move exactly one quantum).
    """
    b = model.baths[nu]
    k = b.kernel
    c = model.coupling_weight(nu)[s, s2]
    lnV = b.lnV
    lv, lv2 = lnV[E], lnV[E2]
    if k.model == "table":  # k = gamma c f(E, E') / V_E
        with np.errstate(divide="ignore"):
            return np.log(k.gamma) + np.log(c) + k.lnf[E, E2] - lv
    omega = (E2 - E).astype(float)
    with np.errstate(divide="ignore"):
        base = np.log(k.gamma) + np.log(c) + k.spectral.log_j(omega)
    if k.model == "sqrt":
        return base + 0.5 * (lv2 - lv)
    if k.model == "eth":
        return base + lv2 - b.dos.lnv_continuous(0.5 * (E + E2))
    if k.model == "golden":
        return base + lv2 - float(b.dos.lnv_continuous(k.E_ref))
    # linear: f(n, n-1) = n V_n with n the larger number of quanta
    one = np.abs(E2 - E) == b.quantum
    Emax = np.maximum(E, E2)
    with np.errstate(divide="ignore"):
        out = base + np.log(Emax // b.quantum) + lnV[Emax] - lv
    return np.where(one, out, -np.inf)


def kernel_lnf(model, nu) -> np.ndarray:
    """``ln f(E, E')`` of bath ``nu``'s kernel on its grid: (emax+1, emax+1), ``-inf`` where f = 0.

    The table a ``kernel = {model = "table"}`` needs to reproduce this bath's kernel: with it (and the same
    ``gamma``) the rates ``gamma c f(E, E') / V_E`` equal the closed form's to rounding.  A starting point
    for editing a kernel by hand.  Rows and columns of grid energies without microstates are ``-inf``.
    """
    b = model.baths[nu]
    k = b.kernel
    if k.model == "table":
        return k.lnf.copy()
    G = b.emax + 1
    E, E2 = np.meshgrid(np.arange(G), np.arange(G), indexing="ij")
    lv, lv2 = b.lnV[E], b.lnV[E2]
    with np.errstate(invalid="ignore", divide="ignore"):
        lnj = k.spectral.log_j((E2 - E).astype(float))
        if k.model == "sqrt":
            out = 0.5 * (lv + lv2) + lnj
        elif k.model == "eth":
            out = lv + lv2 - b.dos.lnv_continuous(0.5 * (E + E2)) + lnj
        elif k.model == "golden":
            out = lv + lv2 - float(b.dos.lnv_continuous(k.E_ref)) + lnj
        else:  # linear: f(n, n-1) = n V_n (n the larger number of quanta), one quantum apart
            Emax = np.maximum(E, E2)
            out = np.where(np.abs(E2 - E) == b.quantum, np.log(Emax // b.quantum) + b.lnV[Emax] + lnj, -np.inf)
    fin = np.isfinite(lv) & np.isfinite(lv2)
    return np.where(fin & ~np.isnan(out), out, -np.inf)


def check_log_rates(lr, nu, model, where=None):
    """The finite-rate guard: NaN or overflowing log rates are a configuration error (named key).

    Rates that underflow to exactly 0 are not an error; the caller drops those jumps (a kept edge of
    rate 0 would give a zero exit rate with out-edges, i.e. a Gillespie step that never advances).
    """
    bad = np.isnan(lr) | (lr > LOG_RATE_MAX)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        b = model.baths[nu]
        at = f" at {where(i)}" if where is not None else ""
        raise ModelError(f"baths[{nu}].kernel",
                         f"the rate of a jump through bath {b.name!r}{at} is exp({lr[i]:.6g}), beyond double "
                         f"precision (gamma = {b.kernel.gamma:g}); lower kernel.gamma, or check the dos and "
                         f"the spectral function")


def _edges(model, energies, codes):
    """All out-edges of the states ``codes``: (src position, target code, bath, dE, log rate)."""
    st = _decode(codes, model)
    s = st[:, 0]
    n_s = model.n_levels
    r = _radix(model)
    stride = np.append(np.cumprod(r[::-1])[::-1][1:], 1)  # code change per unit of each column
    out = []
    for nu, b in enumerate(model.baths):
        E = st[:, 1 + nu]
        for s2 in range(n_s):
            dE = energies[s] - energies[s2]
            E2 = E + dE
            ok = (s != s2) & (E2 >= 0) & (E2 <= b.emax)
            idx = np.flatnonzero(ok)
            if not len(idx):
                continue
            E2i = E2[idx]
            fin = np.isfinite(b.lnV[E2i])
            idx, E2i = idx[fin], E2i[fin]
            lr = log_rates(model, nu, s[idx], np.full(len(idx), s2), E[idx], E2i)
            check_log_rates(lr, nu, model, lambda i, idx=idx, E2i=E2i, s2=s2, E=E:
                            f"(s={s[idx][i]}, E={E[idx][i]}) -> (s={s2}, E={E2i[i]})")
            with np.errstate(under="ignore"):
                live = np.exp(lr) > 0  # -inf (no jump) and underflow to 0 both drop the edge
            idx, E2i, lr = idx[live], E2i[live], lr[live]
            d = E2i - E[idx]
            tgt = codes[idx] + (s2 - s[idx]) * stride[0] + d * stride[1 + nu]
            out.append((idx, tgt, np.full(len(idx), nu), d, lr))
    if not out:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z, z, np.zeros(0)
    return tuple(np.concatenate(a) for a in zip(*out, strict=True))


def _check_exit(exit_rate, where, bath=None, src=None):
    """Exit rates are sums of finite rates, but a sum can still overflow."""
    bad = ~np.isfinite(exit_rate)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        nu = int(bath[np.flatnonzero(src == i)[0]]) if bath is not None else 0
        raise ModelError(f"baths[{nu}].kernel", f"the total jump rate out of {where(i)} overflows double precision; "
                                                "lower kernel.gamma or the grid (emax)")


def bath_rates(model, nu, energies, s):
    """Rates ``k((s, E) -> (s', E + eps_s - eps_s'))`` through bath ``nu`` at every grid energy ``E``.

    Returns (n_levels, emax+1) float64: row ``s'`` holds the rates to level ``s'``; 0 where the jump is
    absent (no coupling, the target off the grid or without microstates, a source without microstates,
    or a rate that underflows).  Uses :func:`log_rates`, so the values equal the enumerated network's
    edge rates bit for bit.  A rate that overflows is a :class:`ModelError` naming the bath's kernel.
    """
    b = model.baths[nu]
    G = b.emax + 1
    E = np.arange(G)
    c = model.coupling_weight(nu)
    out = np.zeros((model.n_levels, G))
    src_ok = np.isfinite(b.lnV)
    for s2 in range(model.n_levels):
        if s2 == s or c[s, s2] == 0:
            continue
        E2 = E + int(energies[s]) - int(energies[s2])
        ok = src_ok & (E2 >= 0) & (E2 < G)
        ok[ok] = np.isfinite(b.lnV[E2[ok]])
        idx = np.flatnonzero(ok)
        if not len(idx):
            continue
        lr = log_rates(model, nu, np.full(len(idx), s), np.full(len(idx), s2), idx, E2[idx])
        check_log_rates(lr, nu, model, lambda i, idx=idx, E2=E2, s2=s2:
                        f"(s={s}, E={idx[i]}) -> (s={s2}, E={E2[idx[i]]})")
        with np.errstate(under="ignore"):
            out[s2, idx] = np.exp(lr)
    return out


def initial_support(model):
    """Joint initial states with positive probability: (states (k, 1+N), p (k,))."""
    if model.joint is not None:
        states, p = model.joint
        keep = p > 0
        return states[keep], p[keep]
    axes = [np.flatnonzero(model.p_system > 0)]
    probs = [model.p_system[axes[0]]]
    for b, st in zip(model.baths, model.bath_states, strict=True):
        e = np.flatnonzero((st.p > 0) & np.isfinite(b.lnV))
        axes.append(e)
        probs.append(st.p[e])
    grids = np.meshgrid(*axes, indexing="ij")
    states = np.stack([g.ravel() for g in grids], axis=1).astype(np.int64)
    pg = np.meshgrid(*probs, indexing="ij")
    p = np.prod(np.stack([g.ravel() for g in pg], axis=1), axis=1)
    return states, p


def segment_energies(model):
    """``[(start time, level energies)]`` of the protocol segments (one segment when undriven)."""
    out = [(0.0, np.asarray(model.energies, dtype=np.int64))]
    for st in model.protocol:
        out.append((float(st.time), np.asarray(st.energies, dtype=np.int64)))
    return out


def reachable(model, energy_sets):
    """The states reachable from the initial support under any of ``energy_sets``, and their edges.

    Returns (codes (n,) sorted int64, [edges per energy set]); each edge set is (source code, target code,
    bath, dE, log rate) of every out-edge of every reachable state, as :func:`build_network` needs them,
    so the search and the build compute the rates once.
    """
    space = int(np.prod(_radix(model).astype(float)))
    if space > MAX_SPACE:
        raise UnsupportedError(f"the joint grid has {space:.3g} points (> {MAX_SPACE:.0e}); reduce emax or the number "
                               "of baths")
    s0, _ = initial_support(model)
    seen = np.zeros(space, dtype=bool)
    frontier = np.unique(_encode(s0, model))
    seen[frontier] = True
    parts = [[] for _ in energy_sets]
    while len(frontier):
        new = []
        for k, en in enumerate(energy_sets):
            src, tgt, bath, dE, lr = _edges(model, en, frontier)
            parts[k].append((frontier[src], tgt, bath, dE, lr))
            new.append(tgt[~seen[tgt]])
        frontier = np.unique(np.concatenate(new))
        seen[frontier] = True
    edges = [tuple(np.concatenate(a) for a in zip(*p, strict=True)) for p in parts]
    return np.flatnonzero(seen).astype(np.int64), edges


def reachable_codes(model, energy_sets):
    """Codes of the states reachable from the initial support under any of ``energy_sets``."""
    return reachable(model, energy_sets)[0]


def _state_data(model, codes):
    """What every segment network of a state set shares: states (n, 1+N), ln V_x (n,), p0 (n,)."""
    states = _decode(codes, model)
    lnV = np.zeros(len(codes))
    for nu, b in enumerate(model.baths):
        lnV += b.lnV[states[:, 1 + nu]]
    s0, p = initial_support(model)
    p0 = np.zeros(len(codes))
    p0[np.searchsorted(codes, _encode(s0, model))] = p
    return states, lnV, p0


def build_network(model: Model, energies=None, codes=None, edges=None, shared=None) -> Network:
    """Build the network reachable from the initial support.

    Parameters
    ----------
    model : Model
        The model (as :func:`load_model` returns it).
    energies : array_like (n_levels,) of int, optional
        System level energies in grid units (default: the model's initial ones).
    codes : ndarray (n,) int64, optional
        The state set as sorted state codes (default: everything reachable under ``energies``); a driven
        model uses one state set, closed under every segment, for all its segment networks.
    edges : tuple, optional
        The out-edges of ``codes`` under ``energies`` as ``trajmc.network.reachable`` returns them
        (computed here when not given).
    shared : tuple, optional
        ``(states, lnV, p0)`` of ``codes`` when several segment networks share them.

    Returns
    -------
    Network
        The reachable states, their edges with log-space rates (docs/physics.md §2), closed classes and
        shells.

    Raises
    ------
    trajmc.ModelError
        A rate or exit rate would overflow double precision (the message names the bath's kernel).
    trajmc.UnsupportedError
        The joint state space is too large to enumerate.
    """
    energies = model.energies if energies is None else np.asarray(energies, dtype=np.int64)
    if codes is None:
        codes, (edges,) = reachable(model, [energies])
    states, lnV, p0 = _state_data(model, codes) if shared is None else shared
    if edges is None:
        src, tgt_code, bath, dE, lr = _edges(model, energies, codes)
    else:
        src_code, tgt_code, bath, dE, lr = edges
        src = np.searchsorted(codes, src_code)
    n = len(codes)
    target = np.searchsorted(codes, tgt_code)
    inside = codes[np.minimum(target, n - 1)] == tgt_code  # a segment's edges may leave a state set built for others
    src, target, bath, dE, lr = src[inside], target[inside], bath[inside], dE[inside], lr[inside]
    N = model.n_baths
    if float(n) * n * N < 2.0**62:  # deterministic edge order within a row: by bath, then target
        order = np.argsort((src * N + bath) * n + target, kind="stable")
    else:
        order = np.lexsort((target, bath, src))
    src, target, bath, dE, lr = src[order], target[order].astype(np.int64), bath[order], dE[order], lr[order]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    rate = np.exp(lr)
    exit_rate = np.bincount(src, weights=rate, minlength=n).astype(float)  # int64 when there are no edges
    _check_exit(exit_rate, lambda i: f"state {tuple(int(v) for v in states[i])}", bath, src)
    graph = sp.csr_matrix((np.ones(len(target)), target, indptr), shape=(n, n))
    _, block = connected_components(graph, directed=True, connection="weak")
    shell = energies[states[:, 0]] + states[:, 1:].sum(axis=1)
    return Network(model=model, energies=energies, states=states, lnV=lnV, p0=p0, indptr=indptr,
                   target=target, bath=bath.astype(np.int64), dE=dE.astype(np.int64), log_rate=lr, rate=rate,
                   exit_rate=exit_rate, block=block.astype(np.int64), shell=shell.astype(np.int64))


def build_segments(model: Model, reach=None):
    """One network per protocol segment on a common state set: ``[(start time, Network)]``.

    ``reach``: the (codes, edges) of :func:`reachable` over the segments' energies, if already known.
    """
    segs = segment_energies(model)
    codes, edges = reachable(model, [e for _, e in segs]) if reach is None else reach
    if edges is None:
        edges = [None] * len(segs)
    shared = _state_data(model, codes)
    return [(t0, build_network(model, e, codes, ed, shared)) for (t0, e), ed in zip(segs, edges, strict=True)]


def levels_at(segments, times):
    """Level energies in force at ``times`` ((n_t, n_levels)); segment k covers [t_k, t_{k+1})."""
    starts = np.array([t0 for t0, _ in segments])
    k = np.searchsorted(starts, np.asarray(times, dtype=float), side="right") - 1
    return np.stack([segments[i][1].energies for i in k]).astype(float)
