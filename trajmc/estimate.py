"""Estimators from Monte Carlo accumulators, with honest error bars.

* ``p_x(t)``: relative frequencies, multinomial standard errors.
* Entropies: plug-in through the same functionals as the exact solver (:mod:`trajmc.thermo`),
  bias-corrected by the delete-one jackknife over trajectories (exact from the counts).  Standard
  errors: the delta method (the variance of one trajectory's influence), plus the second-order
  chi-square term, plus the disagreement between the jackknife and Miller-Madow corrections (both first
  order: where they differ the run is too sparse to trust either, and the error bar says so).
* The total correlation ``I`` (and each ``I_b``) on an enumerated network: the jackknife value minus its
  exact residual bias under the independence null (the product of the observed marginals on the reachable
  states, :func:`independence_correction`; bootstrap-corrected for the sampling of those marginals).  The
  jackknife alone leaves several standard errors there, because its rare cells are many and ``I`` itself is
  small.  Its SE: the influence variance less its null inflation, plus the chi-square term of the null,
  scaled by the ratio of the delete-one jackknife variances of ``I_jk`` and ``I_plugin`` (what the
  correction adds).
* ``Sigma`` and ``Sigma_tilde`` are differences of estimates from the same trajectories; their
  influence is ``phi_t(x_t) - phi_0(x_0)``, so the time correlation enters: for ``Sigma`` through the
  ``cross`` sums, for ``Sigma_tilde`` through the joint counts of the levels at 0 and t and the heat
  sums and products (``sys2``, ``qsum``, the ``Q Q`` channels).
* Linear quantities (energies, heat, work, ``<ln V>``): plain means.

Without the full joint (the implicit path with several baths) everything a marginal ``(s, E_nu)``
determines is estimated as usual; ``S_obs``, ``Sigma`` and ``I`` are missing (NaN), and
``S_obs_upper = S_sh + sum S_B - max I_nu``, ``Sigma_upper`` and ``I_lower = max I_nu`` are bounds.
Quantities that mix several baths (``D``, ``lnV``, the bounds) then get a conservative standard error
(a sum of the parts' errors, which cannot be smaller than the true one).  ``attrs`` list all of this.

Every column is an :class:`Estimate` record; a column without one is a programming error, not a NaN.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import NamedTuple

import numba
import numpy as np
import pandas as pd
from scipy import sparse
from scipy.special import xlogy

from . import _kernel as K
from .thermo import bath_observational_entropy, observational_entropy, relative_entropy, shannon

__all__ = ["Estimate", "Marginals", "thermo_estimates", "entropy_bias", "entropy_residual", "cell_residual",
           "independence_correction", "NullCorrection", "BIAS_CORRECTION", "SE_METHOD"]

BIAS_CORRECTION = ("delete-one jackknife (exact from counts); its disagreement with Miller-Madow enters the SE. "
                   "I on an enumerated network: the jackknife less its exact residual bias under the independence "
                   "null")
SE_METHOD = ("delta method (influence functions, time correlations included) + second-order chi-square term "
             "+ |jackknife - Miller-Madow| bias-correction uncertainty; I on an enumerated network: the plug-in's, "
             "times the variance ratio of the delete-one jackknife")


@dataclass(frozen=True)
class Estimate:
    """One column of the estimates table and what its standard error is made of (all (n_t,))."""

    value: np.ndarray
    var: np.ndarray  # variance of one trajectory's influence (delta method)
    chi2: np.ndarray | float = 0.0  # second-order variance of a plug-in entropy
    sysb: np.ndarray | float = 0.0  # |jackknife - Miller-Madow| of the bias correction
    kind: str = "estimate"  # "estimate" | "bound"
    se_fixed: np.ndarray | None = None  # a conservative SE given directly (sum of the parts' SEs)

    def se(self, N) -> np.ndarray:
        if self.se_fixed is not None:
            return np.asarray(self.se_fixed, dtype=float)
        if N <= 1:  # one trajectory has no spread to measure
            return np.full(np.shape(self.value), np.nan)
        v = np.asarray(self.var, dtype=float) / (N - 1) + np.asarray(self.chi2) + np.asarray(self.sysb) ** 2
        return np.sqrt(v)


def _missing(n_t):
    nan = np.full(n_t, np.nan)
    return Estimate(nan, nan, kind="missing")


def _log(q):
    with np.errstate(divide="ignore"):
        return np.where(q > 0, np.log(np.where(q > 0, q, 1.0)), 0.0)


def _var(p, f):
    """Variance and mean of f under p over the last axis; cells of probability 0 do not count."""
    f = np.where(p > 0, f, 0.0)
    m = np.sum(p * f, axis=-1)
    return np.maximum(np.sum(p * f * f, axis=-1) - m * m, 0.0), m


def entropy_bias(c):
    """Bias corrections of the plug-in Shannon entropy of each row of counts.

    Both are first order; where they disagree the sample is too sparse for either, and the
    disagreement enters the error bar (docs/physics.md §6).

    Parameters
    ----------
    c : array_like (rows, K) or (K,) of int
        Counts of ``K`` cells per row (``N = c.sum(axis=1)`` trajectories).

    Returns
    -------
    jackknife : ndarray (rows,) float64
        ``H_jk - H`` with ``H_jk = N H - (N - 1)/N sum_i H_(-i)`` the delete-one jackknife estimate,
        exact from the counts (Zahl 1977); 0 for ``N <= 1``.
    miller_madow : ndarray (rows,) float64
        ``(K_occupied - 1) / (2 N)``; 0 for ``N = 0``.
    """
    c = np.atleast_2d(np.asarray(c, dtype=float))
    N = c.sum(axis=1)
    # H_jk - H = (N - 1) ln(N / (N - 1)) + (1/N) sum_c c (c - 1) ln((c - 1) / c): the delete-one sum in closed
    # form, written with log1p so that a certain cell (c = N) gives 0 to rounding
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(c > 1, c * (c - 1.0) * np.log1p(-1.0 / np.where(c > 1, c, 2.0)), 0.0)
        jk = np.where(N > 1, -(N - 1.0) * np.log1p(-1.0 / np.where(N > 1, N, 2.0)) + u.sum(axis=1) / N, 0.0)
        mm = (np.count_nonzero(c > 0, axis=1) - 1) / (2.0 * N)
    return jk, np.where(N > 0, mm, 0.0)


def _occupied(c):
    return np.count_nonzero(np.reshape(c, (c.shape[0], -1)) > 0, axis=1)


def cell_bias(N, q):
    """Expected plug-in bias of one cell's entropy term: ``E[phi(c / N)] - phi(q)``, ``phi(x) = -x ln x``,
    for ``c ~ Binomial(N, q)``, elementwise.

    Summed over the cells of a distribution this is ``E[H_plugin] - H`` exactly (by linearity, each cell's
    count is binomial).  Exact sums over the binomial pmf where the count variance ``N q (1 - q)`` is below
    100, else the series ``-(1 - q) / 2 - ((1 - q)^2 / 4 - (1 - q)(1 - 2q) / 6) / mu - (1 - q) / (12 mu^2)``
    (times ``1 / N``, ``mu = N q``); for a rare cell (``mu < 1e-3``, ``N >= 1000``) the expansion
    ``mu ln mu - mu^2 (1 - 1/N) ln 2 + mu^3 (ln 2 - ln 3 / 2)`` (:func:`_cell_terms`).
    """
    # a probability 1 (to rounding: a sum of others can exceed it by an ulp) is a certain count: no bias
    q = np.clip(np.asarray(q, dtype=float), 0.0, 1.0)
    return _cell_terms(int(N), np.ascontiguousarray(q.ravel()))[0].reshape(q.shape) / N


#: cells whose count variance is at least this use the asymptotic series in :func:`_cell_terms` (its error is
#: below 1e-5 / N per cell there: at most 1e-7 in all, far below any scatter)
_TERMS_SERIES_VAR = 100.0


_TAB = 4096  # counts below this read ln k and u(k) + k from tables
_LNK = np.log(np.maximum(np.arange(_TAB, dtype=float), 1.0))
_UK = np.array([k * (k - 1.0) * np.log1p(-1.0 / k) + k if k > 1 else float(k) for k in range(_TAB)])
_LN2, _LN3 = math.log(2.0), math.log(3.0)


@numba.njit(cache=True)
def _c_minus_1(N):
    """``C - 1 = (N - 1) ln(N / (N - 1)) - 1 = -sum_j 1 / (j (j + 1) N^j)`` without the cancellation (N >= 2)."""
    acc = 0.0
    t = 1.0
    for j in range(1, 200):
        t /= N
        term = t / (j * (j + 1.0))
        acc += term
        if term < 1e-17 * acc:
            break
    return -acc


@numba.njit(cache=True, inline="always")
def _count_terms(k, mu, lmu):
    """``k ln(k / mu)`` and ``u(k) + k`` for a count ``k`` (tables below :data:`_TAB`; 0 for k = 0)."""
    if k >= _TAB:
        return k * math.log(k / mu), k * (k - 1.0) * math.log1p(-1.0 / k) + k
    if k >= 1:
        return k * (_LNK[k] - lmu), _UK[k]
    return 0.0, 0.0


@numba.njit(cache=True, nogil=True)
def _cell_terms(N, q):
    """Per cell ``N cb(q)`` (:func:`cell_bias`) and ``N rho(q)`` (:func:`cell_residual`), for c ~ Binomial(N, q).

    Below a count variance of :data:`_TERMS_SERIES_VAR` the binomial pmf is summed outward from its mode until a
    term falls below 1e-18 of the mode's; above it the asymptotic series (error ~ mu^-3); a rare cell (mean
    count below 1e-3, N >= 1000) takes the expansion in mu to third order (error ~ mu^4).  Serial: under
    ``parallel=True`` (prange) the same loop ran 30-100 times slower per cell (measured, 2-core machine).
    """
    n = len(q)
    cb = np.zeros(n)
    rho = np.zeros(n)
    lgN = math.lgamma(N + 1.0)
    cm1 = _c_minus_1(N) if N > 1 else -1.0  # C = 0 for one draw
    for i in range(n):
        x = min(q[i], 1.0)
        if x <= 0.0 or x >= 1.0:  # an empty or a certain cell: the plug-in and the jackknife are exact
            continue
        mu = N * x
        var = mu * (1.0 - x)
        if mu < 1e-3 and N >= 1000:  # a rare cell: the expansion in mu (error O(mu^4, mu^3 / N) < 1e-9 relative)
            lm = math.log(mu)
            m2 = mu * mu * (1.0 - 1.0 / N)
            cb[i] = mu * lm - m2 * _LN2 + mu * mu * mu * (_LN2 - 0.5 * _LN3)
            rho[i] = mu * lm + mu * (1.0 + cm1) - 2.0 * m2 * _LN2 + mu * mu * mu * (3.0 * _LN2 - 1.5 * _LN3)
            continue
        if var >= _TERMS_SERIES_VAR:
            y = 1.0 - x
            c = -y / 2 - (y * y / 4 - y * (1 - 2 * x) / 6) / mu - y / (12 * mu * mu)
            cb[i] = c
            rho[i] = c + 0.5 + 1 / (6 * mu) + y / (6 * mu * mu) + 1 / (12 * mu * mu) + mu * cm1
            continue
        m = min(int(math.floor((N + 1) * x)), N)
        lx, l1x = math.log(x), math.log1p(-x)
        if m == 0:
            p0 = math.exp(N * l1x)
        else:  # (its rounding, ~1e-16 of lgamma(N), is a common factor: the sums are divided by their mass)
            p0 = math.exp(lgN - math.lgamma(m + 1.0) - math.lgamma(N - m + 1.0) + m * lx + (N - m) * l1x)
        r = x / (1.0 - x)
        lmu = math.log(mu)
        sp = 0.0  # the mass summed
        sa = 0.0  # E[c ln(c / mu)] = E[c ln c] - mu ln mu (small terms: no cancellation against mu ln mu)
        su = 0.0  # E[u(c) + c], u(c) = c (c - 1) ln((c - 1) / c) ~ -c + 1/2
        p = p0
        k = m
        while True:  # upward from the mode (inclusive)
            sp += p
            a, u = _count_terms(k, mu, lmu)
            sa += p * a
            su += p * u
            if k >= N:
                break
            p *= (N - k) / (k + 1.0) * r
            k += 1
            if p < 1e-18 * p0 and k > m + 1:
                break
        p = p0
        k = m
        while k > 0:  # downward from the mode (exclusive)
            p *= k / ((N - k + 1.0) * r)
            k -= 1
            sp += p
            a, u = _count_terms(k, mu, lmu)
            sa += p * a
            su += p * u
            if p < 1e-18 * p0:
                break
        cb[i] = -sa / sp
        rho[i] = (su - sa) / sp + mu * cm1
    return cb, rho


def cell_residual(N, q):
    """Per cell, the expected residual bias of the delete-one jackknife entropy, for ``c ~ Binomial(N, q)``.

    The jackknife estimate of a Shannon entropy from ``N`` counts is a sum of cell terms,
    ``H_jk = H_plugin + C + (1/N) sum_c u(c)``, ``u(c) = c (c - 1) ln((c - 1)/c)``, ``C = (N - 1) ln(N/(N - 1))``,
    so its expected error is exact by linearity: ``E[H_jk] - H = sum_c rho(q_c)`` (:func:`entropy_residual`) with
    ``rho(q) = cell_bias(N, q) + (E[u(c)] + N q C) / N`` (``sum_c q_c = 1`` spreads the constant over the
    cells).  ``rho`` vanishes like ``1 / (12 N^2 q)`` in well-filled cells and is 0 for a certain one; the rare
    cells carry the residual.

    Parameters
    ----------
    N : int
        Number of draws (trajectories).
    q : array_like of float
        Cell probabilities (any shape; flattened).

    Returns
    -------
    ndarray (q.size,) float64
        ``rho(q)`` per cell.
    """
    q = np.ascontiguousarray(np.clip(np.asarray(q, dtype=float).ravel(), 0.0, 1.0))
    return _cell_terms(int(N), q)[1] / N


def entropy_residual(N, p):
    """The exact expected bias ``E[H_jk] - H(p)`` of the jackknife-corrected plug-in entropy (:func:`entropy_bias`)
    of ``N`` multinomial draws from ``p`` (see :func:`cell_residual`).

    Parameters
    ----------
    N : int
        Number of draws (trajectories), at least 2.
    p : array_like of float
        A probability distribution over cells.

    Returns
    -------
    float
        ``E[H_jk] - H(p)`` in nats.
    """
    return float(np.sum(cell_residual(N, p)))


def _null_terms(N, qs, onehots):
    """For each row of ``qs`` (rows, n), a distribution on the cells: ``b = E_q[I_plugin] - I(q)`` (the plug-in
    bias of the total correlation) and ``R = E_q[I_jk] - I(q)`` (the residual bias of its jackknife), exact over
    the multinomial sampling of ``N`` trajectories.  One kernel call for all rows and their marginals."""
    qs = np.atleast_2d(qs)
    rows, n = qs.shape
    margs = _row_marginals(qs, onehots)
    sizes = [n] + [m.shape[1] for m in margs]
    cb, rho = _cell_terms(int(N), np.ascontiguousarray(np.concatenate([qs.ravel()] + [m.ravel() for m in margs])))
    b = np.zeros(rows)
    R = np.zeros(rows)
    at = 0
    for j, L in enumerate(sizes):
        sign = -1.0 if j == 0 else 1.0  # the joint entropy enters I with a minus sign
        b += sign * cb[at:at + rows * L].reshape(rows, L).sum(axis=1)
        R += sign * rho[at:at + rows * L].reshape(rows, L).sum(axis=1)
        at += rows * L
    return b / N, R / N


def _onehots(labels):
    """Sparse (n, L_j) indicator matrices of the cells' labels (for :func:`_row_marginals`)."""
    return [sparse.csr_matrix((np.ones(len(lab)), (np.arange(len(lab)), lab)), shape=(len(lab), int(lab.max()) + 1))
            for lab in labels]


def _row_marginals(rows, onehots):
    """The marginals (rows, L_j) of each row of ``rows`` (rows, n) over the cells' labels."""
    return [np.asarray((oh.T @ rows.T).T) for oh in onehots]


def _product(marg, labels):
    """The product of the marginals on the cells, renormalised; ``marg`` of (L_j,) or of (rows, L_j) arrays."""
    q = np.ones(np.shape(marg[0])[:-1] + (len(labels[0]),))
    for lab, m in zip(labels, marg, strict=True):
        q = q * m[..., lab]
    tot = q.sum(axis=-1, keepdims=True)
    return np.divide(q, tot, out=q, where=tot > 0)


#: resamples of the parametric bootstrap over the marginals in :func:`independence_correction`
NULL_BOOTSTRAP = 8


def _counts_rng(c):
    """A generator seeded by the counts themselves: the estimate stays a deterministic function of the counts
    (bit-identical on any number of threads), while independent runs get independent bootstrap draws.  (A
    fixed seed would give every run of a model the same draws, so the bootstrap's noise would not average
    out over runs: a bias of ~0.1 standard errors, measured.)"""
    digest = hashlib.blake2b(np.ascontiguousarray(c, dtype=np.float64).tobytes(), digest_size=16).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))


def _labels(cells):
    cells = np.asarray(cells)
    return [np.unique(cells[:, j], return_inverse=True)[1] for j in range(cells.shape[1])]


def independence_bias(counts, cells):
    """Expected plug-in bias of the total correlation under the independence null, per time.

    ``counts`` (n_t, n) joint counts of the cells ``cells`` (n, k) (integer labels of each cell in the
    k marginals: the level and a window index per bath; the cells that can be occupied, e.g. the
    reachable states).  The null is the product of the observed marginals restricted to these cells and
    renormalised, ``q``; its bias ``b(q) = E_q[I_plugin] - I(q)`` is exact over the multinomial sampling of
    ``N`` trajectories (:func:`cell_bias`).  It sets the size of the standard error of ``I``
    (:func:`_mi_estimate`); the correction itself is :func:`independence_correction`.
    A support that forces dependence can make ``b`` negative; it is not clipped.
    """
    return independence_correction(counts, cells, resamples=0).bias


def _loo_variances(c, labels):
    """Delete-one jackknife variances of the plug-in and of the jackknife total correlation from one row of
    joint counts: each entropy is ``f(n) + (1/n) sum_cells w(c)``, so deleting a trajectory changes one joint
    cell and one cell of each marginal, and every pseudo-value is O(1) (grouped by the occupied cells)."""
    n = float(c.sum())
    occ = np.flatnonzero(c > 0)
    cw = c[occ]

    def w_plug(x):
        return -xlogy(x, x)

    def w_jk(x):  # (counts are integers; below 1 the first term is 0)
        return xlogy(np.where(x >= 1.0, x * (x - 1.0), 0.0), np.maximum(x - 1.0, 0.0)) - xlogy(x * x, x)

    def f_jk(m):  # (one trajectory left: its jackknife is 0)
        return np.log(m) - (m - 1.0) * np.log1p(-1.0 / m) if m > 1 else 0.0

    margs = [(np.bincount(lab, c), lab[occ]) for lab in labels]
    out = []
    for w, f in ((w_plug, np.log), (w_jk, f_jk)):
        loo = -(f(n - 1) + (np.sum(w(c)) - w(cw) + w(np.maximum(cw - 1.0, 0.0))) / (n - 1))
        for m, at in margs:
            mv = m[at]
            loo = loo + f(n - 1) + (np.sum(w(m)) - w(mv) + w(np.maximum(mv - 1.0, 0.0))) / (n - 1)
        mean = np.sum(cw * loo) / n
        out.append((n - 1) / n * np.sum(cw * (loo - mean) ** 2))
    return out


class NullCorrection(NamedTuple):
    """What :func:`independence_correction` returns, each (n_t,)."""

    residual: np.ndarray  # R_corr: subtracted from the jackknife value
    bias: np.ndarray  # b = E_q[I_plugin] - I(q): sizes the plug-in's error bar
    boot_var: np.ndarray  # the bootstrap's Monte Carlo variance in R_corr
    inflation: np.ndarray  # V_jk(I_jk) / V_jk(I_plugin) >= 1: the variance the correction adds


def independence_correction(counts, cells, resamples=NULL_BOOTSTRAP):
    """The residual bias of the jackknife total correlation ``I_jk``, per time, and the null's plug-in bias.

    The jackknife follows how the bias of ``I`` changes with the dependence between the variables, but it
    misses most of the bias of the rare cells (in a sparse run it leaves several standard errors).  What
    it leaves is computed exactly, by linearity over the cells (:func:`cell_residual`), for the
    independence null ``q`` (the product of the observed marginals on the cells that can be occupied,
    renormalised): ``R(q) = E_q[I_jk] - I(q)``.  ``q`` is built from sampled marginals, and ``R`` is curved
    in them, so ``E[R(q_hat)]`` differs from ``R(q)`` at second order; a bootstrap removes that:
    ``R_corr = 2 R(q_hat) - mean R(q*)``, ``q*`` the null of ``resamples`` multinomial draws of ``N`` from the
    observed joint frequencies (seeded by the counts).  Drawing the joint, not the null, keeps the covariance
    between the marginals that a dependence gives them (drawing from ``q_hat`` left +0.12 scatters at small
    ``I > 0``, measured).  The estimate is ``I_jk - R_corr``.

    Parameters
    ----------
    counts : array_like (n_t, n) or (n,)
        Joint counts of the cells, per time.
    cells : array_like (n, k) of int
        Labels of each cell in the ``k`` variables (the cells that can be occupied).
    resamples : int
        Bootstrap draws (0: no bootstrap, ``R_corr = R(q_hat)``).

    Returns
    -------
    NullCorrection
        ``residual`` (``R_corr``), ``bias`` (``b = E_q[I_plugin] - I(q)``, :func:`independence_bias`: it sizes the
        standard error of the plug-in), ``inflation`` (the jackknife correction adds variance of its own, its
        cell terms following the occupancy of rare cells: measured by the ratio of the delete-one jackknife
        variances of ``I_jk`` and of ``I_plugin``, each of which overstates its own variance in a similar way)
        and ``boot_var`` (the variance of the bootstrap mean), each (n_t,).
    """
    counts = np.atleast_2d(np.asarray(counts, dtype=float))
    labels = _labels(cells)
    onehots = _onehots(labels)
    n_t = counts.shape[0]
    R, b, var, infl = np.zeros(n_t), np.zeros(n_t), np.zeros(n_t), np.ones(n_t)
    for t, c in enumerate(counts):
        N = int(round(c.sum()))
        if N <= 1:
            continue
        marg = [np.bincount(lab, c) / N for lab in labels]
        if sum(np.count_nonzero(m) > 1 for m in marg) < 2:  # at most one variable varies: I = I_jk = 0 exactly
            continue
        q = _product(marg, labels)
        if q.sum() <= 0:
            continue
        rows = q[None, :]
        if resamples:  # the nulls of multinomial draws from the observed joint frequencies (all at once)
            occ = np.flatnonzero(c)
            draws = _row_marginals(_counts_rng(c).multinomial(N, c[occ] / N, size=resamples) / N,
                                   [oh[occ] for oh in onehots])
            rows = np.vstack([rows, _product(draws, labels)])
        bt, Rt = _null_terms(N, rows, onehots)
        b[t] = bt[0]
        if resamples:
            R[t] = 2.0 * Rt[0] - Rt[1:].mean()
            var[t] = Rt[1:].var(ddof=1) / resamples if resamples > 1 else 0.0
        else:
            R[t] = Rt[0]
        v_plug, v_jk = _loo_variances(c, labels)
        if v_plug > 0:
            infl[t] = max(v_jk / v_plug, 1.0)
    return NullCorrection(R, b, var, infl)


def _mi_estimate(value, var, null, N):
    """A total correlation from its corrected value, plug-in influence variance and :class:`NullCorrection`.

    The plug-in's variance: its influence variance is itself inflated by the sampling noise that makes the
    bias (under the null ``v ~ 2 I_plugin``), so ``2 * bias`` is taken off it, and the second-order
    (chi-square) term is ``dof / (2 N^2) = bias / N``.  Both are scaled by the jackknife's ``inflation`` (the
    variance the correction adds), and the bootstrap's noise is added.
    """
    pos = np.maximum(null.bias, 0.0)  # a support that forces dependence can make the bias negative
    k = null.inflation
    return Estimate(value, k * np.maximum(var - 2.0 * pos, 0.0), k * pos / N + null.boot_var)


@dataclass
class Marginals:
    """What every estimate needs, from either path (counts are integers; time is the first axis)."""

    N: int
    times: np.ndarray
    ps: np.ndarray  # (n_t, n_s) level counts
    sE: list  # per bath (n_t, W, n_s) counts of (E, s), E = lo + index
    lo: np.ndarray  # (N,) window bottoms
    lnV: list  # per bath (W,) ln V on the window (-inf: no microstates)
    pi: list  # per bath (W,) canonical reference on the window, or None
    q: list  # per bath (H,) heat values of the heat histogram
    heat: list  # per bath (n_t, H) counts
    sys2: np.ndarray  # (n_t, n_s, n_s)
    qsum: np.ndarray  # (n_t, N, n_s, n_s)
    qq: np.ndarray  # (n_t, N, N) float sums of Q_nu Q_mu
    eps: np.ndarray  # (n_t, n_s) level energies in force
    beta: np.ndarray  # (N,) reference inverse temperatures (NaN: none)
    names: tuple
    w: np.ndarray | None = None  # work values
    work: np.ndarray | None = None  # (n_t, HW) counts (driven)


def _occupied_range(used):
    """[first, last) of the True entries (one entry if there are none)."""
    idx = np.flatnonzero(used)
    return (int(idx[0]), int(idx[-1]) + 1) if len(idx) else (0, 1)


def marginals(plan, acc) -> Marginals:
    """The marginal counts of a run, on either path."""
    m = plan.model
    n_t, n_s, N = plan.n_t, plan.n_levels, plan.n_baths
    Nt = int(acc.sys2[0].sum())
    win = acc.windows
    sE, lo, lnV, pi = [], np.zeros(N, np.int64), [], []
    if acc.counts is not None:
        st = plan.network.states
        for nu, b in enumerate(m.baths):
            G = b.emax + 1
            code = st[:, 1 + nu] * n_s + st[:, 0]
            out = np.zeros((n_t, G * n_s), np.int64)
            for k in range(n_t):
                out[k] = np.bincount(code, weights=acc.counts[k], minlength=G * n_s).astype(np.int64)
            sE.append(out.reshape(n_t, G, n_s))
    else:  # the occupied part of each window: the estimates must not depend on how wide a window grew
        for nu in range(N):
            a = acc.marg[:, win.moff[nu]: win.moff[nu] + win.wid[nu] * n_s].reshape(n_t, int(win.wid[nu]), n_s)
            first, last = _occupied_range(a.any(axis=(0, 2)))
            sE.append(a[:, first:last])
            lo[nu] = win.lo[nu] + first
    for nu, b in enumerate(m.baths):
        W = sE[nu].shape[1]
        lnV.append(b.lnV[lo[nu]: lo[nu] + W])
        p = m.canonical_pi(nu)
        pi.append(p[lo[nu]: lo[nu] + W] if p is not None else None)
    q, heat = [], []
    for nu in range(N):
        h = acc.heat[:, win.qoff[nu]: win.qoff[nu] + win.qwid[nu]]
        first, last = _occupied_range(h.any(axis=0))
        q.append(np.arange(win.qlo[nu] + first, win.qlo[nu] + last))
        heat.append(h[:, first:last])
    qq = acc.mom[:, K.M_QQ:K.M_QQ + N * N].reshape(n_t, N, N)
    eps = plan.clock.levels[plan.clock.seg_of].astype(float)
    w = work = None
    if plan.driven:
        w = np.arange(-plan.woff, plan.woff + 1)
        work = acc.work
    return Marginals(N=Nt, times=plan.times, ps=acc.sys2.sum(axis=1), sE=sE, lo=lo, lnV=lnV, pi=pi, q=q, heat=heat,
                     sys2=acc.sys2, qsum=acc.qsum, qq=qq, eps=eps,
                     beta=np.array([m.beta_ref(nu) for nu in range(N)]), names=tuple(m.bath_names), w=w, work=work)


# --------------------------------------------------------------------------- building blocks


def _chi(K, N):
    """Second-order variance of a plug-in entropy with K occupied cells: (K - 1) / (2 N^2)."""
    return np.maximum(K - 1, 0) / (2.0 * N * N)


def _linear(p, f):
    var, mean = _var(p, f)
    return Estimate(mean, var)


def _hist_mean(values, counts, N):
    h = counts / N
    m = h @ values
    return Estimate(m, np.maximum(h @ (values * values) - m * m, 0.0))


def _bath_estimates(M, nu, support=None):
    """E, S_B, D, I(s; E) of bath nu from its (E, s) marginal.

    ``support`` (n, 2): the ``(s, E - lo)`` cells that can be occupied (known on the enumerated path); with
    it ``I`` is corrected by the independence null (:func:`independence_correction`), without it by the jackknife.
    """
    N = M.N
    c = M.sE[nu].astype(float)  # (n_t, W, n_s)
    cE = c.sum(axis=2)
    pE = cE / N
    lv = np.where(np.isfinite(M.lnV[nu]), M.lnV[nu], 0.0)
    E = M.lo[nu] + np.arange(c.shape[1], dtype=float)
    out = {"E": _linear(pE, E[None, :])}
    lnpE = _log(pE)
    jE, mE = entropy_bias(cE)
    KE = _occupied(cE)
    var, _ = _var(pE, -lnpE + lv)
    out["S_B"] = Estimate(bath_observational_entropy(pE, M.lnV[nu]) + jE, var, _chi(KE, N), jE - mE)
    if M.pi[nu] is not None:
        with np.errstate(divide="ignore"):
            lpi = np.log(M.pi[nu])
        var, _ = _var(pE, lnpE - lpi)
        # the plug-in influence variance carries the sampling noise of p_E, about twice the plug-in bias
        # (estimated by the jackknife): at D = 0 it is all noise (as for I, _mi_estimate)
        out["D"] = Estimate(relative_entropy(pE, M.pi[nu]) - jE, np.maximum(var - 2.0 * np.maximum(jE, 0.0), 0.0),
                            _chi(KE, N), -(jE - mE))
    else:
        out["D"] = _missing(len(M.times))
    # pairwise mutual information I(s; E_nu) = H(s) + H(E) - H(s, E)
    cs = M.ps.astype(float)
    js, ms = entropy_bias(cs)
    flat = c.reshape(c.shape[0], -1)
    jx, mx = entropy_bias(flat)
    pflat = flat / N
    lnp = _log(pflat)
    lps = _log(cs / N)
    infl = lnp - (lps[:, None, :] + lnpE[:, :, None]).reshape(flat.shape)
    var, _ = _var(pflat, infl)
    Ks = _occupied(cs)
    Kx = _occupied(flat)
    plugin = shannon(cs / N) + shannon(pE) - shannon(pflat)
    if support is not None:
        n_s = c.shape[2]
        null = independence_correction(flat[:, support[:, 1] * n_s + support[:, 0]], support)
        out["I"] = _mi_estimate(plugin + js + jE - jx - null.residual, var, null, N)
    else:
        out["I"] = Estimate(plugin + js + jE - jx, var, _chi(np.maximum(Kx - Ks - KE + 1, 2), N),
                            (js - ms) + (jE - mE) - (jx - mx))
    return out


def _sigma_tilde(M, S_sh):
    """Sigma_tilde = Delta S_sh - sum beta Q and its time-correlated variance from sys2, qsum and QQ."""
    N = M.N
    n_t = len(M.times)
    if not np.all(np.isfinite(M.beta)):
        return _missing(n_t)
    ps = M.ps / N
    A = -_log(ps)  # (n_t, n_s) influence of S_sh(t): -ln p_s(t)
    B = _log(ps[0])  # influence of -S_sh(0): ln p_s(0)
    P = M.sys2 / N  # (n_t, n_s0, n_st)
    AB = A[:, None, :] + B[None, :, None]
    AB = np.where(P > 0, AB, 0.0)
    Qm = np.stack([M.heat[nu] / N @ M.q[nu] for nu in range(len(M.names))], axis=1)  # (n_t, N)
    bQ = Qm @ M.beta
    e_phi = np.sum(P * AB, axis=(1, 2)) - bQ
    cross = np.einsum("tnab,tab,n->t", M.qsum / N, AB, M.beta)
    e_phi2 = np.sum(P * AB * AB, axis=(1, 2)) - 2.0 * cross + np.einsum("tnm,n,m->t", M.qq / N, M.beta, M.beta)
    var = np.maximum(e_phi2 - e_phi**2, 0.0)
    value = (S_sh.value - S_sh.value[0]) - bQ
    Ks = _occupied(M.ps)
    return Estimate(value, var, _chi(Ks, N) + _chi(Ks[0], N), np.asarray(S_sh.sysb) - np.asarray(S_sh.sysb)[0])


def _diff_var(p, f_t, cross, f0, p0hat, N):
    """Var[f_t(x_t) - f_0(x_0)] per time from counts and the cross sums ``sum_{traj at y} f_0(x_0)``."""
    var_t, m_t = _var(p, f_t)
    var_0, m_0 = _var(p0hat, f0)
    e_cross = np.sum(f_t * cross, axis=-1) / N  # E[f_t(x_t) f_0(x_0)]
    cov = e_cross - m_t * m_0
    return np.maximum(var_t + var_0 - 2.0 * cov, 0.0)


def _joint_estimates(counts, N, lnV_x, cross, g0, s_idx, E_idx, M, out, reachable=False):
    """S_obs, Sigma, I, lnV (and D) from the full joint counts of the cells ``(s_idx, E_idx)``.

    ``cross`` (n_t, n) sums of ``g0(x_0) = ln p0(x_0) - ln V(x_0)`` over trajectories in each cell;
    ``E_idx`` (n, N) window indices of each cell's bath energies.  ``reachable``: the cells are exactly
    the states that can be occupied (the enumerated network); then ``I`` is corrected by the independence
    null on them (:func:`independence_correction`), else by the jackknife.
    """
    p = counts / N
    bx, mx = entropy_bias(counts)
    Kx = _occupied(counts)
    a = -(_log(p) - lnV_x)

    S = observational_entropy(p, lnV_x) + bx
    var, _ = _var(p, a)
    out["S_obs"] = Estimate(S, var, _chi(Kx, N), bx - mx)
    sig_var = _diff_var(p, a, -cross, -g0, counts[0] / N, N)
    out["Sigma"] = Estimate(S - S[0], sig_var, _chi(Kx, N) + _chi(Kx[0], N), (bx - mx) - (bx - mx)[0])
    # total correlation I = H(s) + sum H(E_nu) - H(x)
    ps = M.ps / N
    lnps = _log(ps)[:, s_idx]
    js, ms = entropy_bias(M.ps)
    infl = _log(p) - lnps
    plugin = shannon(ps) - shannon(p)
    jk = js - bx  # the jackknife correction of the plug-in value
    sysb = (js - ms) - (bx - mx)
    KE_sum = 0
    for nu in range(len(M.names)):
        cE = M.sE[nu].sum(axis=2)
        pE = cE / N
        jE, mE = entropy_bias(cE)
        infl = infl - _log(pE)[:, E_idx[:, nu]]
        plugin = plugin + shannon(pE)
        jk = jk + jE
        sysb = sysb + (jE - mE)
        KE_sum = KE_sum + _occupied(cE)
    var, _ = _var(p, infl)
    if reachable:
        null = independence_correction(counts, np.column_stack([s_idx, E_idx]))
        out["I"] = _mi_estimate(plugin + jk - null.residual, var, null, N)
    else:
        Ks = _occupied(M.ps)
        out["I"] = Estimate(plugin + jk, var, _chi(np.maximum(Kx - Ks - KE_sum + len(M.names), 2), N), sysb)
    out["lnV"] = _linear(p, lnV_x)
    if all(pi is not None for pi in M.pi):
        f = np.zeros_like(p)
        noise = 0.0
        for nu in range(len(M.names)):
            cE = M.sE[nu].sum(axis=2)
            with np.errstate(divide="ignore"):
                f = f + (_log(cE / N) - np.log(M.pi[nu]))[:, E_idx[:, nu]]
            noise = noise + 2.0 * np.maximum(entropy_bias(cE)[0], 0.0)  # as for D_b (_bath_estimates)
        var, _ = _var(p, f)
        var = np.maximum(var - noise, 0.0)
        parts = [out[f"D_{b}"] for b in M.names]
        out["D"] = Estimate(sum(e.value for e in parts), var, sum(np.asarray(e.chi2) for e in parts),
                            sum(np.asarray(e.sysb) for e in parts))


def _conservative(value, parts, N, kind="estimate"):
    """An estimate whose SE is the sum of its parts' SEs (the influences of several baths cannot be
    combined without their joint distribution; the sum bounds the true SE from above)."""
    se = sum(e.se(N) for e in parts)
    return Estimate(value, np.full(np.shape(value), np.nan), kind=kind, se_fixed=se)


# --------------------------------------------------------------------------- the table


def thermo_estimates(plan, acc) -> pd.DataFrame:
    """The thermodynamic table of a run with a ``<col>_se`` column each (see the module docstring)."""
    M = marginals(plan, acc)
    N = M.N
    n_t = len(M.times)
    est = {}
    cs = M.ps.astype(float)
    js, ms = entropy_bias(cs)
    ps = cs / N
    var, _ = _var(ps, -_log(ps))
    est["S_sh"] = Estimate(shannon(ps) + js, var, _chi(_occupied(cs), N), js - ms)
    est["E_S"] = _linear(ps, M.eps)
    if M.work is not None:
        est["W"] = _hist_mean(M.w.astype(float), M.work, N)
    else:  # undriven: no work, exactly
        est["W"] = Estimate(np.zeros(n_t), np.zeros(n_t))
    support = [None] * len(M.names)
    if acc.counts is not None:  # the reachable (s, E_b) cells of every bath, in window coordinates
        st = plan.network.states
        n_s = plan.n_levels
        for nu in range(len(M.names)):
            code = np.unique((st[:, 1 + nu] - M.lo[nu]) * n_s + st[:, 0])
            support[nu] = np.column_stack([code % n_s, code // n_s])
    for nu, b in enumerate(M.names):
        be = _bath_estimates(M, nu, support[nu])
        est[f"E_{b}"] = be["E"]
        est[f"S_B_{b}"] = be["S_B"]
        est[f"D_{b}"] = be["D"]
        est[f"I_{b}"] = be["I"]
        est[f"Q_{b}"] = _hist_mean(M.q[nu].astype(float), M.heat[nu], N)
    est["Sigma_tilde"] = _sigma_tilde(M, est["S_sh"])
    joint = acc.counts is not None or (acc.cross1 is not None and plan.n_baths == 1)
    bounds = {}
    if acc.counts is not None:
        net = plan.network
        _joint_estimates(acc.counts.astype(float), N, net.lnV, acc.cross / plan.g_scale, plan.g0,
                         net.states[:, 0], net.states[:, 1:], M, est, reachable=True)
    elif acc.cross1 is not None:  # one bath: the (E, s) marginal is the joint
        win = acc.windows
        W = M.sE[0].shape[1]
        n_s = plan.n_levels
        first = int(M.lo[0] - win.lo[0])  # the occupied part of the window, as in marginals()
        cell_E = np.repeat(np.arange(W), n_s)
        cell_s = np.tile(np.arange(n_s), W)
        lv = M.lnV[0][cell_E]
        lnV_x = np.where(np.isfinite(lv), lv, 0.0)
        tab = plan.tables
        g0 = (tab.g_s[cell_s] + tab.g_E[M.lo[0] + cell_E]) / plan.g_scale if tab.init_rows.shape[0] == 0 else \
            _joint_g0(plan, cell_s, M.lo[0] + cell_E)
        cross = acc.cross1[:, first * n_s:(first + W) * n_s] / plan.g_scale
        _joint_estimates(M.sE[0].reshape(n_t, -1).astype(float), N, lnV_x, cross, g0, cell_s, cell_E[:, None], M, est)
    else:  # several baths, marginals only: bounds and conservative errors
        Is = [est[f"I_{b}"] for b in M.names]
        Imax = np.max(np.stack([e.value for e in Is]), axis=0)
        arg = np.argmax(np.stack([e.value for e in Is]), axis=0)
        Ise = np.choose(arg, [e.se(N) for e in Is])
        upper = est["S_sh"].value + sum(est[f"S_B_{b}"].value for b in M.names) - Imax
        parts = [est["S_sh"]] + [est[f"S_B_{b}"] for b in M.names]
        se_up = sum(e.se(N) for e in parts) + Ise
        est["S_obs_upper"] = Estimate(upper, np.full(n_t, np.nan), kind="bound", se_fixed=se_up)
        est["I_lower"] = Estimate(Imax, np.full(n_t, np.nan), kind="bound", se_fixed=Ise)
        if plan.model.bath_states is not None:  # product start: I_cor(0) = 0, so S_obs(0) = S_obs_upper(0)
            est["Sigma_upper"] = Estimate(upper - upper[0], np.full(n_t, np.nan), kind="bound",
                                          se_fixed=se_up + se_up[0])
        else:
            est["Sigma_upper"] = _missing(n_t)
        for c in ("S_obs", "Sigma", "I"):
            est[c] = _missing(n_t)
        lin = []
        for nu in range(len(M.names)):
            c = M.sE[nu].sum(axis=2)
            lv = np.where(np.isfinite(M.lnV[nu]), M.lnV[nu], 0.0)
            lin.append(_linear(c / N, lv[None, :]))
        est["lnV"] = _conservative(sum(e.value for e in lin), lin, N)
        if all(pi is not None for pi in M.pi):
            Ds = [est[f"D_{b}"] for b in M.names]
            est["D"] = _conservative(sum(e.value for e in Ds), Ds, N)
        bounds = {"S_obs_upper": "upper bound on S_obs: S_sh + sum_b S_B_b - max_b I_b",
                  "Sigma_upper": "upper bound on Sigma = S_obs(t) - S_obs(0) (product start: I(0) = 0)",
                  "I_lower": "lower bound on the total correlation I: max_b I_b"}
    if "D" not in est:
        est["D"] = _missing(n_t)
    df = _assemble(M, est, N)
    missing = [c for c, e in est.items() if e.kind == "missing"]
    df.attrs["joint"] = bool(joint)
    df.attrs["path"] = plan.path
    df.attrs["bounds"] = bounds
    df.attrs["missing"] = missing
    df.attrs["exact_columns"] = [c for c in df.columns if not c.endswith("_se") and c not in missing
                                 and c not in bounds]
    df.attrs["conservative_se"] = [c for c, e in est.items() if e.se_fixed is not None]
    df.attrs["bias_correction"] = BIAS_CORRECTION
    df.attrs["se_method"] = SE_METHOD
    return df


def _joint_g0(plan, cell_s, cell_E):
    """ln p0 - ln V of window cells for a joint initial table (one bath)."""
    tab = plan.tables
    g = np.zeros(len(cell_s))
    rows = tab.init_rows
    lookup = {(int(r[0]), int(r[1])): tab.g_rows[i] / plan.g_scale for i, r in enumerate(rows)}
    for i, (s, E) in enumerate(zip(cell_s, cell_E, strict=True)):
        g[i] = lookup.get((int(s), int(E)), 0.0)
    return g


def _assemble(M, est, N) -> pd.DataFrame:
    """Order the columns like the exact table, add the first-law residual and the ``_se`` columns."""
    names = M.names
    e0 = est["E_S"].value
    dE = e0 - e0[0]
    first = dE - sum(est[f"Q_{b}"].value for b in names) - est["W"].value
    est["first_law"] = Estimate(first, np.zeros_like(first))
    order = ["S_obs", "Sigma", "Sigma_tilde", "S_sh", "I", "D", "E_S", "W", "first_law"]
    for b in names:
        order += [f"E_{b}", f"Q_{b}", f"S_B_{b}", f"D_{b}", f"I_{b}"]
    order += ["lnV"] + [c for c in ("S_obs_upper", "Sigma_upper", "I_lower") if c in est]
    cols = {c: np.asarray(est[c].value, dtype=float) for c in order}
    cols.update({f"{c}_se": est[c].se(N) for c in order})
    df = pd.DataFrame(cols, index=pd.Index(np.asarray(M.times, dtype=float), name="t"))
    # zero by definition at t = 0
    for c in ["Sigma", "Sigma_tilde", "Sigma_upper"] + [f"Q_{b}" for b in names]:
        if c in df and np.isfinite(df[c].iloc[0]):
            df.loc[df.index[0], [c, f"{c}_se"]] = 0.0
    # where the second-order (chi-square) term dominates an entropy's error (its first-order influence is
    # nearly constant, e.g. I ~ 0 or Sigma_tilde at equilibrium), the estimate is not normal: a z-score of it
    # has heavy tails, and validate does not z-test those entries
    df.attrs["second_order"] = {c: [bool(x) for x in _second_order(est[c], N)] for c in order
                                if np.any(np.asarray(est[c].chi2) > 0)}
    return df


#: the chi-square term counts as dominant (the estimate as not normal) above this fraction of the first-order
#: variance: then its skewed chi-square part (sd ~ sqrt(ratio)) shapes the tails a z-test relies on
SECOND_ORDER_RATIO = 0.1


def _second_order(e, N):
    var1 = np.asarray(e.var, dtype=float) / max(N - 1, 1)
    with np.errstate(invalid="ignore"):
        return np.broadcast_to(np.asarray(e.chi2) > SECOND_ORDER_RATIO * var1, np.shape(e.value))
