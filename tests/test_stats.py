"""trajmc.stats: the G-test with pooled sparse bins, z p-values, Holm's correction.

Statistical assertions use a false-alarm rate of ``ALPHA = 1e-6`` each, with fixed seeds.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sst

from trajmc.stats import MIN_EXPECTED, g_test, holm, pool_bins, z_pvalue

ALPHA = 1e-6


def geometric(k=50, r=0.8):
    p = r ** np.arange(k)
    return p / p.sum()


@pytest.mark.parametrize("N", [200, 2000, 100_000])
def test_g_test_uniform_under_the_null(N):
    """300 p-values of multinomial samples from the tested law: KS against U(0, 1) at p > 1e-6.
    The geometric law has many sparse bins at every N, so pooling is exercised."""
    rng = np.random.default_rng(1000 + N)
    p = geometric()
    pv = np.array([g_test(rng.multinomial(N, p), p).pvalue for _ in range(300)])
    assert np.all((pv >= 0) & (pv <= 1))
    assert sst.kstest(pv, "uniform").pvalue > ALPHA
    # false alarms at a 1e-3 level are rare: P(>= 4 of 300 | rate 1e-3) = 3e-4
    assert np.count_nonzero(pv < 1e-3) < 4


def test_g_test_rejects_shifted_distribution():
    rng = np.random.default_rng(7)
    p = geometric()
    q = geometric(r=0.78)  # a slightly faster decay
    pv = [g_test(rng.multinomial(20_000, q), p).pvalue for _ in range(20)]
    assert max(pv) < ALPHA
    shifted = np.roll(p, 1)  # probability moved by one bin
    assert g_test(rng.multinomial(5000, shifted), p).pvalue < ALPHA


def test_g_test_impossible_observation():
    r = g_test([10, 5, 1], [0.6, 0.4, 0.0])
    assert r.pvalue == 0.0 and r.impossible == 1 and r.statistic == np.inf
    # zero-probability bins without observations are simply dropped
    r = g_test([60, 40, 0], [0.6, 0.4, 0.0])
    assert r.impossible == 0 and r.pvalue > 0.5 and r.bins == 2 and r.df == 1


def test_g_test_matches_scipy_without_pooling():
    obs = np.array([30, 45, 25, 50])
    p = np.array([0.2, 0.3, 0.2, 0.3])
    r = g_test(obs, p)
    ref = sst.power_divergence(obs, obs.sum() * p, lambda_="log-likelihood")
    assert r.bins == 4 and r.df == 3
    assert r.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert r.pvalue == pytest.approx(ref.pvalue, rel=1e-10)


def test_g_test_normalises_and_is_order_free():
    rng = np.random.default_rng(3)
    p = geometric(30)
    obs = rng.multinomial(500, p)
    r = g_test(obs, p)
    assert g_test(obs, 3.0 * p).pvalue == pytest.approx(r.pvalue, rel=1e-12)
    perm = rng.permutation(30)
    r2 = g_test(obs[perm], p[perm])
    assert r2.statistic == pytest.approx(r.statistic, rel=1e-12) and r2.df == r.df


def test_g_test_degenerate_inputs():
    assert g_test([0, 0, 0], [0.5, 0.5, 0.0]).pvalue == 1.0  # nothing observed
    assert g_test([7], [1.0]).pvalue == 1.0  # one bin: nothing to test
    assert g_test([2, 1], [0.5, 0.5]).pvalue == 1.0  # all pooled into one bin (expected 1.5 each)


def test_pool_bins_groups():
    rng = np.random.default_rng(5)
    for _ in range(50):
        exp = rng.exponential(size=rng.integers(1, 80)) * rng.choice([0.1, 1.0, 10.0])
        labels = pool_bins(exp)
        ng = labels.max() + 1
        assert set(labels.tolist()) == set(range(ng))  # contiguous labels
        sums = np.bincount(labels, weights=exp)
        if exp.sum() >= MIN_EXPECTED:
            assert np.all(sums >= MIN_EXPECTED - 1e-12)
        # only sparse bins are merged: a bin with expected >= MIN_EXPECTED that is alone stays alone
        for g in range(ng):
            members = exp[labels == g]
            if len(members) > 1:
                assert np.sort(members)[-2] < MIN_EXPECTED


def test_z_pvalue():
    assert z_pvalue(0.0) == pytest.approx(1.0)
    assert z_pvalue(1.959963984540054) == pytest.approx(0.05, rel=1e-12)
    np.testing.assert_allclose(z_pvalue([-3.0, 3.0]), 2 * sst.norm.sf(3.0), rtol=1e-14)
    assert z_pvalue(5.0) == pytest.approx(5.733e-7, rel=1e-3)
    assert z_pvalue(40.0) >= 0.0


def test_holm_hand_computation():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], rtol=1e-14)
    np.testing.assert_allclose(holm([0.5, 0.2, 0.9]), [1.0, 0.6, 1.0])  # clipped at 1
    np.testing.assert_allclose(holm([0.02]), [0.02])
    np.testing.assert_allclose(holm([0.01, 0.01]), [0.02, 0.02])  # ties
    assert len(holm([])) == 0


def test_holm_properties():
    rng = np.random.default_rng(11)
    for _ in range(100):
        p = rng.uniform(size=rng.integers(1, 30)) ** 3
        adj = holm(p)
        assert np.all(adj >= p) and np.all(adj <= 1.0)
        order = np.argsort(p, kind="stable")
        assert np.all(np.diff(adj[order]) >= 0)  # monotone in p
        assert adj.min() == pytest.approx(min(1.0, len(p) * p.min()))  # Bonferroni for the smallest


def test_holm_keeps_a_missing_p_value_missing():
    """A NaN p-value is no test: it stays NaN (never 1, which would read as a pass) and takes the first slot."""
    adj = holm([np.nan, 0.01, 0.2])
    assert np.isnan(adj[0])
    assert adj[1] == pytest.approx(0.02) and adj[2] == pytest.approx(0.2)


@pytest.mark.parametrize("obs, prob", [([np.nan, 10], [0.5, 0.5]), ([-1, 10], [0.5, 0.5]), ([1, 2], [0.5, 0.3, 0.2]),
                                       ([np.inf, 1], [0.5, 0.5]), ([1, 2], [np.nan, 1.0])])
def test_g_test_of_invalid_input_has_no_p_value(obs, prob):
    r = g_test(obs, prob)
    assert np.isnan(r.pvalue)
