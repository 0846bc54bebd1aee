"""Exact solution of the Pauli MME rate equation, one closed class (energy shell) at a time.

Total energy ``eps_s + sum E_nu`` is conserved by every jump, so the generator ``W`` is block diagonal over the
closed classes (connected components, each inside one shell of fixed total energy).  Detailed
balance ``k(x->y) V_x = k(y->x) V_y`` makes every block similar to a symmetric matrix,
``S = V^{-1/2} W V^{1/2}``, with eigenvalues in ``[-L, 0]`` (``L`` a Gershgorin bound) and the
stationary vector ``sqrt(V)`` known exactly.  Each class is solved by one of these routes, chosen per
class by a cost model (predicted seconds) among the routes that are accurate for it:

``trivial``
    one state (or every rate underflowed to 0): nothing moves.
``eigh``
    dense symmetric eigendecomposition (batched over classes of equal size, the stationary pair put in
    exactly), shared by every sample time and every right-hand side; cost ~ m^3.  Its rounding error is
    ``~eps ||p0 / sqrt(V / V_max)||_2``, which grows without bound when the start sits on states of small
    ``V`` in a class whose ``ln V`` spans many units, so it is only used where that estimate is small.
``chebyshev``
    the Chebyshev expansion of ``exp(S t)`` on ``[-L, 0]``, ``sum_k c_k(t) T_k(I + 2 S / L) q0``: one
    three-term recurrence of sparse products serves every sample time (only the coefficients depend
    on ``t``); the number of terms grows like ``sqrt(L t)``.  Every product is accurate componentwise
    (a diagonal similarity does not change that), so ln V spreads of hundreds of units cost nothing in
    accuracy.  Classes of similar ``L`` run together as one sparse matrix, so thousands of two-bath
    shells cost a few hundred sparse products in all.
``expm``
    batched ``scipy.linalg.expm`` of the (non-symmetric) generator with each column renormalised; cost
    ~ m^3 log(L t) per distinct time step, for graded classes whose ``L t`` is too large for ``chebyshev``
    (stiff rates, very long times).

Classes that carry no probability are skipped.  ``Solution.info`` counts the classes each route solved.
The solver imports the model and network only, never the Monte Carlo code.
"""
from __future__ import annotations

import contextlib
import math
import time as _time
import weakref

import numba
import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse as sp
from scipy.special import ive
from threadpoolctl import ThreadpoolController

from .errors import UnsupportedError
from .model import load_model
from .network import (
    Network,
    _decode,
    _encode,
    _radix,
    build_segments,
    initial_support,
    levels_at,
    reachable,
    segment_energies,
)
from .progress import Progress, progress_mode
from .resources import check_memory, memory_budget
from .results import ResultMixin, positive_series, times_text
from .thermo import marginal_bath, marginal_system, space_of, thermo_table

__all__ = ["ROUTES", "Solution", "propagate", "propagate_segments", "solve"]

ROUTES = ("trivial", "eigh", "chebyshev", "expm")
EPS = float(np.finfo(float).eps)
#: ``eigh`` is accurate for a class when ``EIGH_ERR * eps * ||p0 / sqrt(V / V_max)||_2`` stays below this
SYM_TOL = 1e-14
EIGH_ERR = 4.0
#: Chebyshev series truncated where the tail of ``|c_k(L t / 2)|`` falls below this (relative to the class)
CHEB_TOL = 1e-17
#: more terms than this and ``chebyshev`` is not used: its rounding grows like eps * terms (seen: 1e-12 at 28,000)
CHEB_KMAX = 4_000
#: Chebyshev vectors accumulated per matrix product into the sample times
CHEB_CHUNK = 32
#: classes whose bounds L differ by less than this factor share one Chebyshev series
CHEB_GROUP_RATIO = 1.6
#: working set of one batch of classes (dense blocks, Chebyshev buffers), bytes
WORKSET = 48 * 2**20
#: a class whose dense working set (~6 m^2 doubles) exceeds this never takes a dense route
DENSE_MAX_BYTES = 8 * WORKSET
#: eigendecompositions kept per network for reuse (heat distributions, IFT, work statistics), bytes
EIG_CACHE_BYTES = 128 * 2**20
#: tests and benchmarks: force one route on every class of more than one state (None: cost model)
FORCE_ROUTE = None

# Cost model (seconds), measured on a 2-core x86 machine (single-threaded BLAS, eigenpairs not cached).
# Only the ratios between routes matter; a wrong ratio costs time, never accuracy.
_C_EIG = 2.0e-9       # per m^3 of a batched eigh (Householder deflation and products included)
_C_EIG0 = 1.0e-5      # per class of a dense batch
_C_BATCH = 2.5e-4     # per dense batch (one class size)
_C_MM = 2.0e-10       # per multiply-add of the dense products into the sample times
_C_SP = 3.5e-9        # per stored entry (and right-hand side) of one sparse product
_C_EXPM = 2.5e-10     # per m^3 and squaring of a batched expm
_C_EXPM0 = 2.0e-5     # per class and distinct time step of a batched expm
_C_STEP = 3.0e-5      # per Chebyshev step of a group of classes (a kernel call), shared by the group
_C_GROUP = 2.0e-3     # per group of classes on one Chebyshev series (coefficients, sub-matrix), shared


class Solution(ResultMixin):
    """Exact ``p_x(t)`` of a model (the rate equation solved class by class).

    Shares its methods and their return types with :class:`trajmc.Ensemble`: :meth:`p_system` (and
    :meth:`p_system_se`, zeros here), :meth:`thermo`, :meth:`heat_distribution`, :meth:`bath_distribution`,
    :meth:`work_distribution` and the long-format tables :meth:`p_system_table` and :meth:`heat_table`
    (their standard-error columns are 0 on an exact result).

    Parameters
    ----------
    model : Model
        The model solved (a Solution is made by :func:`trajmc.solve`, not by hand).
    network : Network
        Its enumerated network (first protocol segment).
    times : ndarray of float64, shape (n_t,)
        Sample times.
    p : ndarray of float64, shape (n_t, n_states)
        ``p_x(t)``.
    info : dict
        Route statistics (see :attr:`info`).
    segments : list of (float, Network), optional
        Protocol segments; default: one segment, ``network`` from t = 0.
    switch_states : list of ndarray, optional
        ``p`` just before each protocol switch.

    Attributes
    ----------
    model : Model
        The model solved (with the sample times used).
    times : ndarray of float64, shape (n_t,)
        Sample times (units of 1/gamma).
    p : ndarray of float64, shape (n_t, n_states)
        ``p_x(t)``, one column per row of :attr:`states`.
    network : Network
        The enumerated joint states and jumps (of the first protocol segment).
    segments : list of (float, Network)
        ``(start time, network)`` of every protocol segment (one for an undriven model).
    info : dict
        ``info[route]``: how many closed classes each route of :data:`ROUTES` solved (summed over
        protocol segments), ``info["empty"]`` classes that carry no probability; ``info["chebyshev_terms"]``
        the largest number of Chebyshev terms used, ``info["seconds"]`` the wall time of the propagation.
    switch_states : list of ndarray of float64, shape (n_states,), or None
        ``p`` just before each protocol switch (driven models).
    """

    def __init__(self, model, network, times, p, info, segments=None, switch_states=None):
        self.model = model
        self.network = network
        self.times = times
        self.p = p
        self.info = info
        self.segments = segments if segments is not None else [(0.0, network)]
        self.switch_states = list(switch_states) if switch_states is not None else None
        self._states = None
        self._work = None
        self._heat = {}

    @property
    def bath_names(self) -> list[str]:
        """The model's bath names, in order (the ``<bath>`` of the ``E_<bath>``, ``Q_<bath>`` columns)."""
        return self.model.bath_names

    def levels(self) -> np.ndarray:
        """Level energies in force at each sample time (a switch at t counts at t).

        Returns
        -------
        ndarray of float64, shape (n_t, n_levels)
        """
        return levels_at(self.segments, self.times)

    def work(self) -> np.ndarray:
        """Mean work done on the system up to each sample time (0 for an undriven model).

        Returns
        -------
        ndarray of float64, shape (n_t,)
        """
        if self._work is None:
            if self.switch_states is None:
                self._work = mean_work(self.segments, self.network.p0, self.times)
            else:
                self._work = work_from_switches(self.segments, self.switch_states, self.times)
        return self._work

    @property
    def states(self) -> pd.DataFrame:
        """One row per joint state, in the column order of :attr:`p`: ``s`` (level index) and one integer
        column ``E_<bath>`` (bath energy, grid steps) per bath (pandas DataFrame, int64 columns)."""
        if self._states is None:
            self._states = self.network.frame()
        return self._states

    def thermo(self) -> pd.DataFrame:
        """The thermodynamic quantities at every sample time.

        Returns
        -------
        pandas.DataFrame
            Indexed by ``t``; columns ``S_obs, Sigma, Sigma_tilde, S_sh, I, D, E_S, E_<bath>, Q_<bath>, W``
            and more (:func:`trajmc.thermo.thermo_table`; the column dictionary is in ``docs/``).
        """
        return thermo_table(self.times, self.p, space_of(self.network), levels=self.levels(), work=self.work())

    def p_system(self) -> np.ndarray:
        """System marginal ``p_s(t)``.

        Returns
        -------
        ndarray of float64, shape (n_t, n_levels)
        """
        return marginal_system(self.p, space_of(self.network))

    def p_system_se(self) -> np.ndarray:
        """Standard errors of :meth:`p_system`: zeros (the solution is exact; as on
        :meth:`trajmc.Ensemble.p_system_se`, so code runs on either).

        Returns
        -------
        ndarray of float64, shape (n_t, n_levels)
        """
        return np.zeros((len(self.times), self.model.n_levels))

    def bath_distribution(self, bath=0, t_index=-1) -> pd.Series:
        """``p(E)`` of one bath at ``times[t_index]``.

        Parameters
        ----------
        bath : str or int
            Bath name (one of :attr:`bath_names`) or index.
        t_index : int
            Index into :attr:`times` (default: the last time).

        Returns
        -------
        pandas.Series
            Probabilities (float64) indexed by ``E`` (int64, grid steps), energies with ``p > 0`` only;
            named ``p(E_<bath>)``.
        """

        nu = self._bath(bath)
        k = self._t_index(t_index)
        pE = marginal_bath(self.p[k:k + 1], space_of(self.network), nu)[0]
        return positive_series(np.arange(len(pE)), pE, "E", f"p(E_{self.bath_names[nu]})")

    def work_distribution(self, t_index=-1) -> pd.Series:
        """Exact distribution of the work done on the system up to ``times[t_index]``.

        Parameters
        ----------
        t_index : int
            Index into :attr:`times` (default: the last time).

        Returns
        -------
        pandas.Series
            Probabilities (float64) indexed by ``W`` (int64, grid steps), values with ``P > 0`` only; named
            ``P(W)``.  An undriven model has ``P(W = 0) = 1``.
        """
        from .fluctuations import work_distribution  # cycle: fluctuations builds on the solver

        k = self._t_index(t_index)
        if len(self.segments) == 1:
            return positive_series([0], [1.0], "W", "P(W)")
        return work_distribution(self.segments, self.times[k:k + 1]).series(0, "W")

    def _heat_matrix(self, nu):
        if nu not in self._heat:
            from .fluctuations import heat_distribution  # cycle: fluctuations builds on the solver

            d = heat_distribution(self.segments, nu, self.times, progress=False)
            if d is None:
                raise UnsupportedError(f"the exact heat distribution of bath {self.bath_names[nu]!r} is too large "
                                       "to compute for this model (simulate it instead)")
            self._heat[nu] = (d.Q, d.P, None)
        return self._heat[nu]

    def summary(self) -> dict:
        """What :func:`repr` and the notebook summary show.

        Returns
        -------
        dict
            ``kind``, ``name``, ``levels``, ``baths``, ``times``, ``states`` (joint states, closed classes).
        """
        return {"kind": "Solution", "name": self.model.name, "levels": [int(e) for e in self.model.energies],
                "baths": self.bath_names, "times": times_text(self.times),
                "states": f"{self.network.n_states} ({self.network.n_blocks} closed classes, exact)"}

    def plot(self, what="thermo", ax=None, **kwargs):
        """Draw one exact quantity (lines; stems for distributions) and return the matplotlib axes.

        Parameters
        ----------
        what : {"thermo", "p_system", "S_obs", "energy", "heat", "work", "bath", "activity"}, optional
            The quantity (see :func:`trajmc.plotting.plot`); default ``"thermo"`` (``Sigma``, ``Sigma_tilde``).
        ax : matplotlib.axes.Axes, optional
            Axes to draw into (default: a new figure).
        **kwargs
            E.g. ``bath``, ``t_index``, ``log``, ``title``; see :func:`trajmc.plotting.plot`.

        Returns
        -------
        matplotlib.axes.Axes
        """
        from . import plotting  # layering: keeps matplotlib out of the core import

        return plotting.plot(self, what=what, ax=ax, **kwargs)


def solve(model, times=None, memory_budget=None, progress=None) -> Solution:
    """Solve the rate equation exactly at the sample times.

    Parameters
    ----------
    model : Model, dict or path
    times : array_like, optional
        Overrides the model's sample times (must start at 0 and increase).
    memory_budget : int or str, optional
        Bytes (or ``"4GiB"``) the exact solution may use (default: ``TRAJMC_MEMORY_BUDGET`` or half the
        RAM).  A model whose solution would not fit is refused before any propagation.
    progress : bool or str, optional
        Report progress of long solves on stderr: None, True or ``"auto"`` (default) a bar on a terminal and a
        status line every ~10 s otherwise, only when the work lasts more than a few seconds; ``"tqdm"`` always
        a bar, ``"text"`` always status lines; False or ``""`` nothing (see :mod:`trajmc.progress`).

    Returns
    -------
    Solution
    """
    progress_mode(progress)  # a bad value is refused before any work
    model = load_model(model)
    if times is not None:
        model = model.with_times(times)
    segments = build_checked_segments(model, memory_budget)
    p, info, at_sw = propagate_segments(segments, segments[0][1].p0, model.times, progress=progress,
                                        desc=f"solve {model.name}")
    return Solution(model, segments[0][1], model.times, p, info, segments, at_sw)


def exact_memory(model, n_states, n_edges, largest_class, n_segments, columns=1) -> int:
    """Bytes the exact solution of ``model`` needs: the result, the networks, and one class's working set."""
    n_t = len(model.times)
    result = 8 * n_t * n_states * columns
    per_net = n_states * 8 * (6 + model.n_baths) + n_edges * 8 * 9
    shells = n_states * 8 * 8 + n_edges * 8 * 3
    dense = 8 * 6 * largest_class**2
    work = WORKSET + max(dense if dense <= DENSE_MAX_BYTES else 0, 8 * (CHEB_CHUNK + 6 + n_t) * largest_class * columns)
    return int(result + n_segments * (per_net + shells) + work)  # the eigenpair cache only uses what is left


def build_checked_segments(model, budget=None):
    """The protocol segments ``[(start, Network)]``, after checking that the exact solution fits the budget."""
    segs = segment_energies(model)
    codes, edges = _closed_support(model), None
    if codes is None:
        codes, edges = reachable(model, [e for _, e in segs])
    st = _decode(codes, model)
    n = len(codes)
    coupled = sum(int(np.count_nonzero(model.coupling_weight(nu) - np.diag(np.diag(model.coupling_weight(nu)))))
                  for nu in range(model.n_baths))
    n_edges = n * max(coupled // max(model.n_levels, 1), 1)
    largest = 0
    Etot = st[:, 1:].sum(axis=1) if n else np.zeros(0, np.int64)
    for _, en in segs:
        if n:
            shell = np.asarray(en)[st[:, 0]] + Etot
            largest = max(largest, int(np.bincount(shell - shell.min()).max()))
    need = exact_memory(model, n, n_edges, largest, len(segs))
    check_memory(need, memory_budget(budget),
                 f"the exact solution of {model.name!r} ({n:,} states, {len(model.times)} times, largest shell "
                 f"{largest:,} states)",
                 "the Monte Carlo (trajmc.simulate / python -m trajmc simulate) can still run this model")
    return build_segments(model, (codes, edges))


def _closed_support(model):
    """Every grid state when the initial support is the whole joint grid (then nothing else can be reached and
    the search is skipped), else None."""

    space = int(np.prod(_radix(model).astype(float)))
    if space > 50_000_000:
        return None
    s0, _ = initial_support(model)
    if len(s0) < space:
        return None
    codes = np.unique(_encode(s0, model))
    return codes if len(codes) == space else None


def propagate_segments(segments, p0, times, at_switch=None, sink=None, progress=None, desc="propagate"):
    """Propagate through the protocol segments ``[(start, Network)]``, one segment at a time.

    ``p0`` is (n,) or (n, r).  ``at_switch(k, p)`` may transform the state entering segment ``k``
    (k >= 1), e.g. to book the work done at the switch.  Without ``sink`` returns (p at ``times``
    (n_t, n[, r]), info, states at each switch); with ``sink(time_indices, states, values)`` the values
    ((len(time_indices), len(states), r)) are handed over class by class and ``p`` is None.
    """
    times = np.asarray(times, dtype=float)
    cur = np.asarray(p0, dtype=float)
    vec = cur.ndim == 1
    if vec:
        cur = cur[:, None]
    n, r = cur.shape
    out = None if sink is not None else np.zeros((len(times), n, r))
    info = dict.fromkeys(ROUTES + ("empty",), 0)
    info["chebyshev_terms"] = 0
    at_sw = []
    bounds = [t0 for t0, _ in segments] + [np.inf]

    t_start = _time.perf_counter()
    with Progress(total=n * len(segments), desc=desc, unit="states", enabled=progress) as bar:
        for k, (t0, net) in enumerate(segments):
            if k > 0:
                at_sw.append(cur[:, 0].copy() if vec else cur.copy())
                if at_switch is not None:
                    cur = np.asarray(at_switch(k, cur[:, 0] if vec else cur), dtype=float)
                    cur = cur[:, None] if vec else cur
            t1 = bounds[k + 1]
            sel = np.flatnonzero((times >= t0) & (times < t1))
            rel = list(times[sel] - t0)
            last = np.isfinite(t1)
            if last:
                rel.append(t1 - t0)
            if not rel:
                bar.update(n)
                continue
            nxt = np.zeros((n, r)) if last else None

            rows_t = slice(int(sel[0]), int(sel[-1]) + 1) if len(sel) else slice(0, 0)

            def emit(idx, vals, sel=sel, nxt=nxt, rows_t=rows_t):
                if len(sel):
                    if out is not None:
                        _scatter(out, rows_t, idx, vals[:len(sel)])
                    else:
                        sink(sel, idx, vals[:len(sel)])
                if nxt is not None:
                    nxt[idx] = vals[-1]

            ik = _propagate_net(net, cur, np.array(rel), emit, bar)
            for key, v in ik.items():
                info[key] = max(info[key], v) if key == "chebyshev_terms" else info[key] + v
            if last:
                cur = nxt
    info["seconds"] = _time.perf_counter() - t_start
    if out is not None and not np.isfinite(out).all():  # never hand over NaN as a solution
        raise UnsupportedError("the exact propagation of this model is not finite in double precision (rates "
                               f"up to {max(float(np.max(nt.exit_rate, initial=0.0)) for _, nt in segments):.3g} "
                               f"over times up to {float(times.max(initial=0.0)):.3g}); lower kernel.gamma or "
                               "times.stop")
    if out is not None and vec:
        out = out[:, :, 0]
    return out, info, at_sw


def propagate(net: Network, p0, times, sink=None, progress=False):
    """``p(t) = exp(W t) p0`` at every time, class by class.

    ``p0`` is (n,) or (n, r) (r right-hand sides at once).  Returns (p (n_t, n[, r]), info); with
    ``sink(states, values)`` values ((n_t, len(states), r)) are handed over instead and p is None.
    """
    times = np.asarray(times, dtype=float)
    p0 = np.asarray(p0, dtype=float)
    vec = p0.ndim == 1
    Q = p0[:, None] if vec else p0
    out = None if sink is not None else np.zeros((len(times), net.n_states, Q.shape[1]))

    def emit(idx, vals):
        if out is not None:
            _scatter(out, slice(None), idx, vals)
        else:
            sink(idx, vals)

    with Progress(total=net.n_states, desc="propagate", unit="states", enabled=progress) as bar:
        info = _propagate_net(net, Q, times, emit, bar)
    if out is not None and vec:
        out = out[:, :, 0]
    return out, info


def _scatter(out, rows_t, idx, vals):
    """``out[rows_t, idx] = vals`` (the sample times in one segment are consecutive)."""
    if out.shape[2] == 1:
        out[rows_t, idx, 0] = vals[:, :, 0]
    else:
        out[rows_t, idx] = vals


def mean_work(segments, p0, times):
    """``W(t) = sum over switches t_k <= t of <eps_new(s) - eps_old(s)>`` at the switch (propagates p0)."""
    if len(segments) == 1:
        return np.zeros(len(np.asarray(times)))
    _, _, at_sw = propagate_segments(segments, p0, [0.0], progress=False)
    return work_from_switches(segments, at_sw, times)


def work_from_switches(segments, switch_states, times):
    """Mean work from the states just before each switch (what :func:`propagate_segments` returns)."""
    times = np.asarray(times, dtype=float)
    W = np.zeros(len(times))
    if len(segments) == 1:
        return W
    s = segments[0][1].states[:, 0]
    for k in range(1, len(segments)):
        d = (segments[k][1].energies - segments[k - 1][1].energies)[s]
        W[times >= segments[k][0]] += float(switch_states[k - 1] @ d)
    return W


# --------------------------------------------------------------------------- shell structure


class _Shells:
    """What every route needs about a network's closed classes, in class-sorted state order (built once
    per network and cached, so the fluctuation statistics reuse what ``solve`` built)."""

    def __init__(self, net: Network):
        n = net.n_states
        nb = net.n_blocks
        self.n, self.nb = n, nb
        self.order = np.argsort(net.block, kind="stable")
        self.sizes = np.bincount(net.block, minlength=nb).astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.blk = net.block[self.order]
        pos = np.empty(n, dtype=np.int64)
        pos[self.order] = np.arange(n)
        lnv = net.lnV[self.order]
        top = np.full(nb, -np.inf)
        np.maximum.at(top, self.blk, lnv)
        low = np.full(nb, np.inf)
        np.minimum.at(low, self.blk, lnv)
        self.spread = top - low
        self.h = np.exp(0.5 * (lnv - top[self.blk]))  # sqrt(V / V_max) within each class
        self.h_norm = np.sqrt(np.bincount(self.blk, weights=self.h**2, minlength=nb))
        src, tgt = pos[net.source], pos[net.target]
        # S[y, x] = k(x->y) sqrt(V_x / V_y): symmetric by detailed balance (the two directions are computed
        # independently and agree to rounding; dense blocks are symmetrised exactly before eigh); parallel edges
        # (a degenerate jump through several baths) add up in the conversion to CSR
        s = np.exp(net.log_rate + 0.5 * (lnv[src] - lnv[tgt]))
        S = sp.csr_matrix((s, (tgt, src)), shape=(n, n))
        S.sum_duplicates()
        S.sort_indices()
        self.S = S
        self._W = (net.rate, tgt, src)
        self.exit = np.asarray(net.exit_rate, dtype=float)[self.order]
        rowabs = np.bincount(np.repeat(np.arange(n), np.diff(S.indptr)), weights=S.data, minlength=n)
        g_sym = np.zeros(nb)
        np.maximum.at(g_sym, self.blk, self.exit + rowabs)
        g_w = np.zeros(nb)
        np.maximum.at(g_w, self.blk, 2.0 * self.exit)
        self.L = np.minimum(g_sym, g_w) * (1 + 1e-12)  # spectrum of S in [-L, 0]
        self.nnz = np.add.reduceat(np.diff(S.indptr), self.starts[:-1]) if n else np.zeros(0, np.int64)
        self.nnz[self.sizes == 0] = 0
        self.eig = {}
        self.eig_bytes = 0

    @property
    def W(self):
        """The generator's off-diagonal rates ``W[y, x] = k(x->y)`` (class-sorted CSR; built when first needed)."""
        if not isinstance(self._W, sp.csr_matrix):
            rate, tgt, src = self._W
            Wm = sp.csr_matrix((rate, (tgt, src)), shape=(self.n, self.n))
            Wm.sum_duplicates()
            Wm.sort_indices()
            self._W = Wm
        return self._W


_SHELLS = weakref.WeakKeyDictionary()


def shells_of(net: Network) -> _Shells:
    """The cached :class:`_Shells` of a network."""
    sh = _SHELLS.get(net)
    if sh is None:
        sh = _SHELLS[net] = _Shells(net)
    return sh


def _ranges(starts, sizes):
    """Concatenated ``arange(s, s + m)`` for each pair: int64 positions."""
    sizes = np.asarray(sizes, dtype=np.int64)
    tot = int(sizes.sum())
    if tot == 0:
        return np.zeros(0, dtype=np.int64)
    off = np.repeat(np.cumsum(sizes) - sizes, sizes)
    return np.repeat(np.asarray(starts, dtype=np.int64), sizes) + np.arange(tot) - off


def _sub_csr(M, sh, blocks):
    """Rows and columns of the classes ``blocks`` of the class-sorted CSR ``M``: (indptr, indices, data, rows)."""
    rows = _ranges(sh.starts[blocks], sh.sizes[blocks])
    lo, hi = M.indptr[rows], M.indptr[rows + 1]
    cnt = hi - lo
    ent = _ranges(lo, cnt)
    indptr = np.concatenate([[0], np.cumsum(cnt)]).astype(np.int64)
    # columns stay inside the row's class: shift by (local start - global start) of that class
    shift = np.repeat(np.cumsum(sh.sizes[blocks]) - sh.sizes[blocks] - sh.starts[blocks], sh.sizes[blocks])
    indices = (M.indices[ent] + np.repeat(shift, cnt)).astype(np.int64)
    return indptr, indices, M.data[ent], rows


def _dense_blocks(M, sh, blocks, m):
    """Dense (nb, m, m) copies of the classes ``blocks`` (all of size m) of the class-sorted CSR ``M``."""
    indptr, indices, data, rows = _sub_csr(M, sh, blocks)
    nb = len(blocks)
    A = np.zeros((nb, m, m))
    loc_row = np.repeat(np.arange(nb * m), np.diff(indptr))
    A.reshape(nb * m, m)[loc_row, indices % m] = data
    return A, rows


# --------------------------------------------------------------------------- planning


def _cheb_terms(z, tol=CHEB_TOL):
    """Number of Chebyshev terms for ``exp(z (x - 1))`` on [-1, 1] to ``tol`` (estimate, vectorised)."""
    z = np.asarray(z, dtype=float)
    big = np.sqrt(2.0 * z * math.log(2.0 / tol)) + 12.0
    small = math.log(1.0 / tol) / np.maximum(np.log(2.0 / np.maximum(z, 1e-300)), 1.0) + 2.0
    # capped before the cast: for L t ~ 1e300 the count overflowed int64 to a negative number of terms
    return np.minimum(np.ceil(np.where(z > 1.0, big, np.minimum(small, big))), 2.0**62).astype(np.int64)


def _plan(sh, Q, times, r):
    """Route of every class: array of indices into ``ROUTES + ("empty",)``.

    Each class gets the cheapest of the routes that are accurate for it; the overheads shared by a batch
    (one dense batch per class size, one Chebyshev kernel call per step of a group of classes of similar
    ``L``) depend on which other classes take the same route, so three assignments are priced as a whole
    (per-class cheapest, dense preferred, series preferred) and the cheapest is taken."""
    route, todo, costs, cheb_ok = _route_costs(sh, Q, times, r)
    if FORCE_ROUTE is not None:  # tests: every class the route can take (a series must stay short)
        forced = todo & (cheb_ok if FORCE_ROUTE == "chebyshev" else True)
        route[forced] = ROUTES.index(FORCE_ROUTE)
        todo = todo & ~forced
    if not todo.any():
        return route
    idx = np.flatnonzero(todo)
    base, shared = costs[:, idx], _shared_costs(sh, idx, times, r)
    base[2, ~np.isfinite(base).any(axis=0)] = 0.0  # no route priced: expm (scaled and squared) is always accurate
    finite = np.isfinite(base)
    plans = [np.argmin(base + shared(np.ones(len(idx), bool)), axis=0)]
    for prefer in (0, 1):
        other = np.argmin(np.where(np.arange(3)[:, None] == prefer, np.inf, base), axis=0)
        pick = np.where(finite[prefer], prefer, other)
        plans.append(pick)
    totals = []
    for pick in plans:
        tot = base[pick, np.arange(len(idx))].sum()
        for ri in range(3):
            sel = pick == ri
            if sel.any():
                tot += shared(sel)[ri, sel].sum()
        totals.append(tot)
    route[idx] = 1 + plans[int(np.argmin(totals))]
    return route


def _shared_costs(sh, idx, times, r):
    """``shared(sel)``: each class's share (3, len(idx)) of the batch overheads when the classes ``sel`` take a
    route together (dense: per class size; chebyshev: per group of classes with similar ``L``)."""
    m = sh.sizes[idx]
    tmax = float(times.max()) if len(times) else 0.0
    K = _cheb_terms(sh.L[idx] * tmax / 2.0)
    with np.errstate(divide="ignore"):
        lbin = np.floor(np.log(np.maximum(sh.L[idx], 1e-300)) / math.log(CHEB_GROUP_RATIO)).astype(np.int64)
    cap = WORKSET / (8.0 * (CHEB_CHUNK + 6 + len(times)) * r)

    def shared(sel):
        out = np.zeros((3, len(idx)))
        _, inv, cnt = np.unique(m[sel], return_inverse=True, return_counts=True)
        per = _C_BATCH / cnt[inv]
        out[0, sel] = per
        out[2, sel] = per
        _, binv = np.unique(lbin[sel], return_inverse=True)
        states = np.bincount(binv, weights=m[sel])
        out[1, sel] = (_C_STEP * K[sel] + _C_GROUP) * m[sel] / np.minimum(states[binv], cap)
        return out

    return shared


def _route_costs(sh, Q, times, r):
    """(routes fixed so far, classes still to route, predicted seconds (3, n_classes) of eigh / chebyshev /
    expm without shared overheads, inf where a route is not accurate or too large; where chebyshev is feasible)."""
    nt = len(times)
    tmax = float(times.max()) if nt else 0.0
    nb = sh.nb
    occ = np.zeros(nb, dtype=bool)
    nzrow = np.any(Q != 0, axis=1)
    if nzrow.any():
        occ[np.unique(sh.blk[nzrow])] = True
    route = np.full(nb, 4, dtype=np.int64)  # empty
    m = sh.sizes.astype(float)
    still = (sh.sizes == 1) | (sh.L == 0)  # one state, or every rate underflowed: nothing moves
    route[occ & still] = 0
    todo = occ & ~still
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = np.where(Q != 0, Q / sh.h[:, None], 0.0)
        qn = np.sqrt(np.max(np.add.reduceat(q * q, sh.starts[:-1], axis=0), axis=1)) if sh.n else np.zeros(0)
    qn[sh.sizes == 0] = 0.0
    K = _cheb_terms(sh.L * tmax / 2.0)
    cheb_ok = np.isfinite(qn) & (K <= CHEB_KMAX)
    dense_ok = 8 * 6 * m * m <= DENSE_MAX_BYTES
    eigh_ok = np.isfinite(qn) & (EIGH_ERR * EPS * qn <= SYM_TOL) & dense_ok
    cached = np.zeros(nb, dtype=bool)
    if sh.eig:
        cached[np.fromiter(sh.eig.keys(), dtype=np.int64)] = True
    # eigenpairs kept from an earlier call (solve, then the fluctuation statistics) cost only the products
    c_eigh = np.where(cached, 0.0, _C_EIG * m**3) + _C_EIG0 + _C_MM * (nt + 2) * m * m * r
    c_cheb = K * (_C_SP * (sh.nnz + 2 * m) * r + _C_MM * nt * m * r)
    dts = np.diff(np.concatenate([[0.0], times]))
    n_dt = max(len(np.unique(np.round(dts[dts > 0], 14))), 1)
    # squarings, in log space (L dt of 1e304 x 1e300 is not a double; _stochastic_expm scales it)
    sq = np.maximum(np.ceil(np.log2(np.maximum(2 * sh.L / 5.4, 1e-300)) + math.log2(max(dts.max(initial=0.0),
                                                                                         1e-300))), 0)
    c_expm = n_dt * (_C_EXPM * m**3 * (sq + 7) + _C_EXPM0) + _C_MM * nt * m * m * r
    c_expm = np.where(dense_ok | ~cheb_ok, c_expm, np.inf)
    costs = np.stack([np.where(eigh_ok, c_eigh, np.inf), np.where(cheb_ok, c_cheb, np.inf), c_expm])
    return route, todo, costs, cheb_ok


def _propagate_net(net, Q, times, emit, bar):
    """Propagate the (n, r) right-hand sides ``Q`` of one network; ``emit(states, values)`` per batch."""
    with _one_blas_thread():
        return _propagate_net_routes(net, Q, times, emit, bar)


def _one_blas_thread():
    """BLAS on one thread while the routes run: the dense work is many small batched problems, and a
    threaded BLAS competing with a busy second core was seen 100x slower."""
    global _BLAS
    if _BLAS is None:
        ctl = ThreadpoolController()  # scanning the loaded libraries takes ~10 ms: once
        blas = ctl.select(user_api="blas")
        _BLAS = blas if any(lib["num_threads"] > 1 for lib in blas.info()) else False
    if _BLAS is False:
        return contextlib.nullcontext()
    return _BLAS.limit(limits=1)


_BLAS = None


def _propagate_net_routes(net, Q, times, emit_out, bar):
    sh = shells_of(net)
    Qs = Q[sh.order]
    r = Q.shape[1]
    nt = len(times)
    zero = np.flatnonzero(times == 0)

    def emit(idx, vals):
        if len(zero):  # exp(0) = identity exactly, not to rounding
            if not vals.flags.writeable:
                vals = np.array(vals)
            vals[zero] = Q[idx][None]
        emit_out(idx, vals)

    with np.errstate(over="ignore", divide="ignore"):  # rates near 1e300 times long times: infinite costs
        route = _plan(sh, Qs, times, r)
    info = {name: int(np.sum(route == i)) for i, name in enumerate(ROUTES + ("empty",))}
    info["chebyshev_terms"] = 0
    bar.update(int(sh.sizes[route == 4].sum()))
    # trivial: one state, nothing moves
    tb = np.flatnonzero(route == 0)
    if len(tb):
        rows = _ranges(sh.starts[tb], sh.sizes[tb])
        emit(sh.order[rows], np.broadcast_to(Qs[rows][None], (nt, len(rows), r)))
        bar.update(len(rows))
    for ri, fn in ((1, _run_eigh), (3, _run_expm)):
        sel = np.flatnonzero(route == ri)
        for m in np.unique(sh.sizes[sel]):
            bl = sel[sh.sizes[sel] == m]
            per = max(1, int(WORKSET // (8 * 6 * m * m + 8 * nt * m * r)))
            for i in range(0, len(bl), per):
                chunk = bl[i:i + per]
                rows, vals = fn(sh, chunk, int(m), Qs, times)
                emit(sh.order[rows], vals)
                bar.update(int(len(chunk) * m))
    cb = np.flatnonzero(route == 2)
    if len(cb):
        for group in _cheb_groups(sh, cb, r, nt):
            info["chebyshev_terms"] = max(info["chebyshev_terms"], _run_cheb(sh, group, Qs, times, emit, bar))
    return info


# --------------------------------------------------------------------------- eigh


def _eigh_decompose(sh, blocks, m):
    """Eigenpairs (U (nb, m, m), lam (nb, m)) of the symmetric classes, with the stationary pair exact."""
    A, rows = _dense_blocks(sh.S, sh, blocks, m)
    A = 0.5 * (A + A.transpose(0, 2, 1))
    d = np.arange(m)
    A[:, d, d] = -sh.exit[rows].reshape(len(blocks), m)
    # the stationary pair is known exactly (eigenvalue 0, eigenvector u0 ∝ sqrt(V)): deflate it.
    # A Householder reflection H with H e_0 = ±u0 gives an orthonormal complement Q = H[:, 1:]
    # of u0; eigh of Q^T A Q yields the other modes, orthogonal to u0 to rounding.
    u0 = sh.h[rows].reshape(len(blocks), m)
    u0 = u0 / np.linalg.norm(u0, axis=1, keepdims=True)
    w = u0.copy()
    w[:, 0] += np.where(u0[:, 0] >= 0, 1.0, -1.0)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    H = np.eye(m)[None] - 2.0 * w[:, :, None] * w[:, None, :]
    Qc = H[:, :, 1:]
    lam1, U1 = np.linalg.eigh(np.matmul(Qc.transpose(0, 2, 1), np.matmul(A, Qc)))
    U = np.concatenate([u0[:, :, None], np.matmul(Qc, U1)], axis=2)
    lam = np.concatenate([np.zeros((len(blocks), 1)), np.minimum(lam1, 0.0)], axis=1)
    return U, lam


def _eigh_pairs(sh, blocks, m):
    """Eigenpairs of the classes, from the cache where an earlier call computed them (kept while they fit)."""
    bl = blocks.tolist()
    miss = [b for b in bl if b not in sh.eig]
    if len(miss) == len(bl):
        U, lam = _eigh_decompose(sh, blocks, m)
        if sh.eig_bytes + U.nbytes + lam.nbytes <= EIG_CACHE_BYTES:
            for i, b in enumerate(bl):
                sh.eig[b] = (U[i], lam[i])
            sh.eig_bytes += U.nbytes + lam.nbytes
        return U, lam
    if miss:
        U, lam = _eigh_decompose(sh, np.array(miss, dtype=np.int64), m)
        fresh = {b: (U[i], lam[i]) for i, b in enumerate(miss)}
        if sh.eig_bytes + U.nbytes + lam.nbytes <= EIG_CACHE_BYTES:
            sh.eig.update(fresh)
            sh.eig_bytes += U.nbytes + lam.nbytes
    else:
        fresh = {}
    pairs = [fresh[b] if b in fresh else sh.eig[b] for b in bl]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _run_eigh(sh, blocks, m, Qs, times):
    U, lam = _eigh_pairs(sh, blocks, m)
    nb = len(blocks)
    rows = _ranges(sh.starts[blocks], np.full(nb, m))
    half = sh.h[rows].reshape(nb, m)
    # a state whose sqrt(V / V_max) underflowed to 0 holds no probability here (eigh is not taken otherwise):
    # 0, not 0 / 0
    q0 = np.divide(Qs[rows].reshape(nb, m, -1), half[:, :, None], out=np.zeros((nb, m, Qs.shape[1])),
                   where=half[:, :, None] > 0)
    c = np.matmul(U.transpose(0, 2, 1), q0)  # (nb, m, r)
    with np.errstate(over="ignore"):  # lam t of -1e304 x 1e300: -inf, exp 0
        expo = np.exp(lam[None, :, :] * times[:, None, None])  # (n_t, nb, m)
    q = np.matmul(U[None], expo[..., None] * c[None])  # batched BLAS
    vals = np.maximum(q * half[None, :, :, None], 0.0)
    return rows, vals.reshape(len(times), nb * m, -1)


# --------------------------------------------------------------------------- expm


#: scipy.linalg.expm returns NaN once the norm of its argument passes ~1e40 (measured, scipy 1.17): larger ones
#: are scaled below this here and squared back
EXPM_SAFE_NORM = 2.0**60


def _stochastic_expm(W, dt):
    """``expm(W dt)`` of generators, each column renormalised to sum 1: scaling and squaring of a stiff
    generator leaks probability (up to 1e-3 seen); the exact propagator conserves it.  A norm beyond
    EXPM_SAFE_NORM (rates near 1e300, or long times) is scaled by 2^-j first (in log space: W dt may not
    even be finite), then squared j times, renormalised after each squaring."""
    norm = float(np.abs(W).sum(axis=-2).max()) if W.size else 0.0
    j = 0
    if norm > 0 and math.log2(norm) + math.log2(dt) > math.log2(EXPM_SAFE_NORM):
        j = int(math.ceil(math.log2(norm) + math.log2(dt) - math.log2(EXPM_SAFE_NORM)))
    if j:  # W 2^-a (norm <= 2^30) times dt 2^(a-j): both factors stay within the double range
        a = max(0, int(math.ceil(math.log2(norm))) - 30)
        arg = np.ldexp(W, -a) * math.ldexp(dt, a - j)
    else:
        arg = W * dt
    P = scipy.linalg.expm(arg)
    P = P / P.sum(axis=-2, keepdims=True)
    for _ in range(j):
        P = np.matmul(P, P)
        P /= P.sum(axis=-2, keepdims=True)
    return P


def _run_expm(sh, blocks, m, Qs, times):
    W, rows = _dense_blocks(sh.W, sh, blocks, m)
    nb = len(blocks)
    d = np.arange(m)
    W[:, d, d] = -sh.exit[rows].reshape(nb, m)
    cur = Qs[rows].reshape(nb, m, -1)
    out = np.empty((len(times), nb, m, cur.shape[-1]))
    cache = {}
    t_prev = 0.0
    for k, t in enumerate(times):
        dt = t - t_prev
        if dt > 0:
            key = round(float(dt), 14)  # (numpy float64 rounding overflows to inf beyond ~1e294)
            if key not in cache:
                cache[key] = _stochastic_expm(W, dt)
            cur = np.matmul(cache[key], cur)
        out[k] = cur
        t_prev = t
    return rows, np.maximum(out, 0.0).reshape(len(times), nb * m, -1)


# --------------------------------------------------------------------------- chebyshev


def _cheb_groups(sh, blocks, r, nt):
    """Classes solved together: similar ``L`` (one set of coefficients), bounded working set."""
    blocks = blocks[np.argsort(-sh.L[blocks], kind="stable")]
    cap = max(1, int(WORKSET // (8 * (CHEB_CHUNK + 6 + nt) * r)))
    groups, cur, size, top = [], [], 0, None
    for b in blocks.tolist():
        m = int(sh.sizes[b])
        if cur and (size + m > cap or sh.L[b] < top / CHEB_GROUP_RATIO):
            groups.append(np.array(cur, dtype=np.int64))
            cur, size = [], 0
        if not cur:
            top = sh.L[b]
        cur.append(b)
        size += m
    if cur:
        groups.append(np.array(cur, dtype=np.int64))
    return groups


def _cheb_coefficients(z, tol):
    """``c_k(z_j)`` (K+1, n_t): ``exp(z (x - 1)) = sum_k c_k T_k(x)``, truncated where the tail at max z < tol."""
    z = np.asarray(z, dtype=float)
    zmax = float(z.max())
    K = int(_cheb_terms(zmax, tol)) + 8
    while True:
        c = 2.0 * ive(np.arange(K + 1)[:, None], z[None, :])
        c[0] *= 0.5
        tail = np.cumsum(np.abs(c[::-1]).max(axis=1))[::-1]  # tail[k] = sum_{j >= k} max_t |c_j|
        if tail[-1] < tol or K > CHEB_KMAX:
            break
        K = int(K * 1.25) + 8
    keep = int(np.searchsorted(-tail, -tol))  # first k with tail < tol
    return c[:max(keep, 2)]


@numba.njit(cache=True)
def _cheb_step(indptr, indices, data, diag, w, wprev, out, alpha, beta):  # pragma: no cover - compiled
    """``out = alpha (diag * w + A w) - beta wprev`` row by row (A in CSR, w (m, r)).  Serial on purpose:
    the products are memory bound, and on a shared machine a busy second core made threads 10x slower."""
    m, r = w.shape
    for i in range(m):
        for c in range(r):
            out[i, c] = diag[i] * w[i, c]
        for jj in range(indptr[i], indptr[i + 1]):
            j = indices[jj]
            a = data[jj]
            for c in range(r):
                out[i, c] += a * w[j, c]
        for c in range(r):
            out[i, c] = alpha * out[i, c] - beta * wprev[i, c]


@numba.njit(cache=True)
def _cheb_step1(indptr, indices, data, diag, w, wprev, out, alpha, beta):  # pragma: no cover - compiled
    """:func:`_cheb_step` for one right-hand side (w (m,))."""
    m = w.shape[0]
    for i in range(m):
        acc = diag[i] * w[i]
        for jj in range(indptr[i], indptr[i + 1]):
            acc += data[jj] * w[indices[jj]]
        out[i] = alpha * acc - beta * wprev[i]


@numba.njit(cache=True)
def _moment_step(xp, xi, xd, diag, ep, ei, ed, b, bprev, out, alpha, beta):  # pragma: no cover - compiled
    """One Chebyshev step for the Taylor coefficients (columns 0..order) of ``b(chi)``:
    ``out[:, j] = alpha (X b[:, j] + sum_i E_i b[:, j - i]) - beta bprev[:, j]``, X = diag + (xp, xi, xd),
    E_i = (ep, ei, ed[i - 1]) (one sparsity pattern for every order)."""
    m, o1 = b.shape
    for r in range(m):
        for j in range(o1):
            out[r, j] = diag[r] * b[r, j]
        for jj in range(xp[r], xp[r + 1]):
            c = xi[jj]
            a = xd[jj]
            for j in range(o1):
                out[r, j] += a * b[c, j]
        for jj in range(ep[r], ep[r + 1]):
            c = ei[jj]
            for i in range(1, o1):
                a = ed[i - 1, jj]
                for j in range(i, o1):
                    out[r, j] += a * b[c, j - i]
        for j in range(o1):
            out[r, j] = alpha * out[r, j] - beta * bprev[r, j]


def _run_cheb(sh, blocks, Qs, times, emit, bar):
    indptr, indices, data, rows = _sub_csr(sh.S, sh, blocks)
    mg = len(rows)
    L = float(sh.L[blocks].max())
    scale = 2.0 / L
    data = data * scale
    diag = 1.0 - scale * sh.exit[rows]
    h = sh.h[rows]
    r = Qs.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        q0 = np.where(Qs[rows] != 0, Qs[rows] / h[:, None], 0.0)
    # the stationary component (u0 ∝ sqrt(V) in each class) is carried exactly, the rest expanded
    sizes = sh.sizes[blocks]
    first = np.cumsum(sizes) - sizes  # each class is a run of consecutive rows
    loc = np.repeat(np.arange(len(blocks)), sizes)
    u0 = h / sh.h_norm[blocks][loc]
    a = np.add.reduceat(u0[:, None] * q0, first, axis=0)
    stat = u0[:, None] * a[loc]
    q0 -= stat
    mass = np.add.reduceat(np.abs(Qs[rows]), first, axis=0)
    qn = np.sqrt(np.maximum(np.add.reduceat(q0 * q0, first, axis=0), 1e-300))
    tol = CHEB_TOL * float(min(1.0, np.min(np.where(mass > 0, mass / qn, np.inf))))
    C = _cheb_coefficients(L * times / 2.0, tol)  # (K+1, n_t)
    K1, nt = C.shape
    # all Chebyshev vectors kept when they fit the working set (one product into the sample times),
    # else CHEB_CHUNK at a time
    kc = K1 if 8 * K1 * mg * r <= WORKSET else CHEB_CHUNK
    buf = np.empty((kc + 2, mg, r))
    acc = np.zeros((nt, mg * r)) if kc < K1 else None
    step = _cheb_step1 if r == 1 else _cheb_step

    def view(i):
        return buf[i, :, 0] if r == 1 else buf[i]

    buf[0] = q0
    step(indptr, indices, data, diag, view(0), view(0), view(1), 1.0, 0.0)
    filled, base = 2, 0  # rows of buf in use; Chebyshev index of buf[0]
    done = 0
    for k in range(2, K1):
        if filled == kc + 2:
            acc += C[base:base + kc].T @ buf[:kc].reshape(kc, mg * r)
            buf[0], buf[1] = buf[kc], buf[kc + 1]
            base += kc
            filled = 2
            inc = int(mg * k / K1) - done
            bar.update(inc)
            done += inc
        step(indptr, indices, data, diag, view(filled - 1), view(filled - 2), view(filled), 2.0, 1.0)
        filled += 1
    last = C[base:base + filled].T @ buf[:filled].reshape(filled, mg * r)
    if base:
        acc += last
    else:
        acc = last
    q = acc.reshape(nt, mg, r)
    q += stat[None]
    q *= h[None, :, None]
    np.maximum(q, 0.0, out=q)
    emit(sh.order[rows], q)
    bar.update(mg - done)
    return K1
