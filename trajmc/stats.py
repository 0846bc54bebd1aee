"""Statistical comparisons of Monte Carlo with exact values: G-tests, z-scores, Holm correction."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sst
from scipy.special import xlogy

__all__ = ["g_test", "GTest", "z_pvalue", "holm", "pool_bins"]

MIN_EXPECTED = 5.0


@dataclass(frozen=True)
class GTest:
    """The result of :func:`g_test`.

    Parameters
    ----------
    statistic : float
        ``G = 2 sum O ln(O / E)`` over the pooled bins (``inf`` for an impossible observation, NaN when the
        input was not a valid test).
    df : int
        Degrees of freedom, ``bins - 1``.
    pvalue : float
        ``P(chi2_df >= G)``; 0 for an impossible observation, NaN for invalid input (callers treat it as a
        failure).
    bins : int
        Number of bins after pooling.
    impossible : int
        Observations in bins of exact probability 0.
    """

    statistic: float
    df: int
    pvalue: float
    bins: int  # after pooling
    impossible: int  # observations in bins of exact probability 0


def pool_bins(expected, min_expected=MIN_EXPECTED):
    """Group labels that merge sparse bins.

    Bins are taken in ascending order of expected count and cumulated into a group until the group's
    expected count reaches ``min_expected``; a sparse remainder joins the last full group.

    Parameters
    ----------
    expected : array_like (k,) of float
        Expected counts per bin.
    min_expected : float
        Smallest expected count of a group (default 5).

    Returns
    -------
    ndarray (k,) int64
        The group of each bin, ``0 .. n_groups - 1``.
    """
    order = np.argsort(expected, kind="stable")
    labels = np.empty(len(expected), dtype=np.int64)
    g, acc = 0, 0.0
    for i in order:
        labels[i] = g
        acc += expected[i]
        if acc >= min_expected:
            g += 1
            acc = 0.0
    if acc > 0 and g > 0:  # a sparse remainder joins the last full group
        labels[labels == g] = g - 1
    return labels


def g_test(observed, prob, min_expected=MIN_EXPECTED) -> GTest:
    """G-test of counts ``observed`` against exact probabilities ``prob``, sparse bins pooled.

    An observation in a bin of exact probability 0 is impossible: the p-value is 0.

    Parameters
    ----------
    observed : array_like (k,) of int or float
        Observed counts (non-negative).
    prob : array_like (k,) of float
        Exact probabilities of the bins (non-negative; renormalised over the bins with ``prob > 0``).
    min_expected : float
        Sparse bins are pooled until each group expects at least this many counts (default 5).

    Returns
    -------
    GTest
        Statistic, degrees of freedom, p-value, pooled bins and impossible observations.
    """
    obs = np.asarray(observed, dtype=float)
    prob = np.asarray(prob, dtype=float)
    if obs.shape != prob.shape or not (np.all(np.isfinite(obs)) and np.all(np.isfinite(prob))) \
            or np.any(obs < 0) or np.any(prob < 0):
        return GTest(np.nan, 0, np.nan, 0, 0)  # not a test: callers must treat a NaN p-value as a failure
    N = obs.sum()
    zero = prob <= 0
    impossible = int(obs[zero].sum())
    if impossible:
        return GTest(np.inf, 0, 0.0, 0, impossible)
    obs, prob = obs[~zero], prob[~zero] / prob[~zero].sum()
    exp = N * prob
    labels = pool_bins(exp, min_expected)
    ng = int(labels.max()) + 1 if len(labels) else 0
    if ng < 2:
        return GTest(0.0, 0, 1.0, ng, 0)
    O = np.bincount(labels, weights=obs, minlength=ng)
    E = np.bincount(labels, weights=exp, minlength=ng)
    G = 2.0 * float(np.sum(xlogy(O, O) - xlogy(O, E)))
    df = ng - 1
    return GTest(G, df, float(sst.chi2.sf(G, df)), ng, 0)


def z_pvalue(z):
    """Two-sided normal p-value of z-scores.

    Parameters
    ----------
    z : array_like of float
        z-scores.

    Returns
    -------
    ndarray of float64
        ``2 P(Z > |z|)``, the shape of ``z``.
    """
    return 2.0 * sst.norm.sf(np.abs(np.asarray(z, dtype=float)))


def holm(pvalues):
    """Holm step-down adjusted p-values (family-wise error control).

    A NaN p-value (no valid test) stays NaN and counts as the most significant member of the family, so it
    can only make the other adjusted p-values larger, never pass.

    Parameters
    ----------
    pvalues : array_like (m,) of float
        The family's raw p-values.

    Returns
    -------
    ndarray (m,) float64
        Adjusted p-values, ``max_(j <= rank) min(1, (m - j) p_(j))`` in the original order.
    """
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    key = np.where(np.isnan(p), -1.0, p)
    order = np.argsort(key, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        if np.isnan(p[i]):
            adj[i] = np.nan
            continue
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj
