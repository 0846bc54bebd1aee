"""Coverage of the error bars, with stated power (docs/physics.md §6 "Coverage is the test of honesty";
issue 13 item 2).

A coverage test runs S independent seeded runs of one model, counts for each column the runs whose
``est ± 1.96 SE`` interval contains the exact value (k hits ~ Binomial(S, c), c the true coverage) and
accepts the column when ``kmin <= k <= kmax``.  The numbers S, kmin and kmax come from :func:`design`
(binomial arithmetic, scipy.stats), never from the measured coverages:

* **Null hypothesis: a small band, not the point 0.95.**  Delta-method error bars with a first-order bias
  correction are asymptotic; measured coverages of correct estimators lie between 0.935 and 0.96 (below).
  The null is "the error bar is within ±5% of the true scatter", i.e. coverages
  ``[2 Phi(1.96 * 0.95) - 1, 2 Phi(1.96 * 1.05) - 1] = [0.9374, 0.9604]`` for a normal estimate.  A point
  null at 0.95 would be rejected far too often by such estimators: its own design (N = 1081 seeds for 7
  columns, band 986..1060) fails one column at true coverage 0.94 with probability 1.1e-4, at 0.935 with
  1.5e-3 and at 0.966 with 1.6e-3, i.e. 100-1600 times its stated 1e-6 per column; the band designs below
  fail a column at 0.94 with probability < 5e-9, at 0.935 with < 2.5e-7 and at 0.966 with < 6e-6
  (``test_a_point_null_would_fail``).
* **False alarm**: the band is rejected at a true coverage anywhere in the null band with probability at
  most ``alpha / tests`` per column (the binomial tails are monotone in c), so the family-wise false alarm over
  all ``tests`` columns of a tier is at most ``ALPHA = 1e-6`` (Bonferroni: valid for correlated columns).
* **Power**: a column whose true coverage is 0.89 or 0.99, or that of error bars 20% too small or 30% too
  large (``2 Phi(1.96 * 0.8) - 1 = 0.8831``, ``2 Phi(1.96 * 1.3) - 1 = 0.9892``), fails with probability
  >= 0.99.  ``test_design_*`` recompute all of these numbers and check them by sampling.

Tiers.  The powered design needs S = 2044 seeds for the 28 columns of the slow tier (4 configurations x
7 columns; band 1852..2007, i.e. 0.906..0.982): 100-200 s per configuration on a shared 2-core machine
(11 min for the slow tier), so it is marked slow.  The fast tier uses 1000 seeds of one configuration (34 s
on one thread) and has the lower power its design states (``FAST``; numbers in the docstring of
``test_error_bars_cover_at_95_percent``).  The two tiers are separate families (1e-6 each).

Measured coverages (slow tier, 2044 seeds each; the fast tier's 1000 seeds in brackets):
  coverage3   S_obs 0.948 (0.952)  Sigma 0.956 (0.946)  Sigma_tilde 0.951 (0.942)  S_sh 0.947 (0.934)
              I 0.947 (0.944)  D 0.947 (0.942)  E_S 0.944 (0.937)
  small_runs  S_obs 0.941  Sigma 0.967  Sigma_tilde 0.959  S_sh 0.951  I 0.962  D 0.952  E_S 0.950
  small_bath  S_obs 0.946  Sigma 0.948  Sigma_tilde 0.947  S_sh 0.945  I 0.946  D 0.944  E_S 0.947
  two_baths   S_obs 0.940  Sigma 0.952  Sigma_tilde 0.939  S_sh 0.949  I 0.957  D 0.956  E_S 0.954

The mutual information ``I`` used to over-cover (0.989-0.998 in these configurations, 0.966 in small_bath)
where it is in its second-order regime (I ~ 0): its jackknife correction left a bias and its error bar carried the
jackknife/Miller-Madow disagreement.  Corrected by the exact residual of the jackknife under the independence null
(trajmc.estimate.independence_correction), it is tested like every other column, in both tiers.
"""
from __future__ import annotations

import copy
import dataclasses
from functools import cache

import numpy as np
import pytest
from conftest import THREADS, get_model_dict
from scipy import stats as sst

import trajmc
from trajmc import engine
from trajmc.ensemble import Ensemble

Z95 = 1.96
ALPHA = 1e-6  # family-wise false-alarm rate of a tier
POWER = 0.99
COLS = ["S_obs", "Sigma", "Sigma_tilde", "S_sh", "I", "D", "E_S"]


def normal_coverage(se_ratio, z=Z95):
    """Coverage of ``est ± z SE`` for a normal unbiased estimate whose SE is ``se_ratio`` x its true scatter."""
    return 2.0 * sst.norm.cdf(z * se_ratio) - 1.0


#: the null band: error bars within ±5% of the true scatter
NULL = (float(normal_coverage(0.95)), float(normal_coverage(1.05)))
#: coverages the test must reject with probability >= POWER: issue 13's two, and bars x0.8 and x1.3
ALTERNATIVES = (0.89, 0.99, float(normal_coverage(0.8)), float(normal_coverage(1.3)))


# --------------------------------------------------------------------------- design (binomial arithmetic)


def coverage_band(n, lo, hi, alpha, tests):
    """Hits out of ``n`` consistent with a coverage in ``[lo, hi]``: reject k when P(X <= k | lo) or
    P(X >= k | hi) is at most ``alpha / (2 tests)``.  Returns ``(kmin, kmax)``."""
    a = alpha / (2 * tests)
    k = np.arange(n + 1)
    ok = (sst.binom.cdf(k, n, lo) > a) & (sst.binom.sf(k - 1, n, hi) > a)
    return int(k[ok].min()), int(k[ok].max())


@dataclasses.dataclass(frozen=True)
class CoverageDesign:
    seeds: int
    kmin: int
    kmax: int
    tests: int
    null: tuple
    alpha: float

    def p_fail(self, c):
        """Probability that one column with true coverage ``c`` falls outside the band."""
        return float(sst.binom.cdf(self.kmin - 1, self.seeds, c) + sst.binom.sf(self.kmax, self.seeds, c))

    def false_alarm(self):
        """Family-wise bound over ``tests`` columns, each with a true coverage anywhere in the null band."""
        lo, hi = self.null
        n = self.seeds
        return self.tests * float(sst.binom.cdf(self.kmin - 1, n, lo) + sst.binom.sf(self.kmax, n, hi))

    def accepts(self, hits):
        return self.kmin <= hits <= self.kmax

    def __str__(self):
        lo, hi = self.null
        return (f"{self.seeds} seeds, accept {self.kmin}..{self.kmax} hits ({self.kmin / self.seeds:.4f}.."
                f"{self.kmax / self.seeds:.4f}); null [{lo:.4f}, {hi:.4f}], family-wise false alarm "
                f"{self.false_alarm():.2e} over {self.tests} columns")


def design(tests, seeds=None, null=NULL, alpha=ALPHA, alternatives=ALTERNATIVES, power=POWER, n_max=50_000):
    """The band for ``seeds`` seeds, or (``seeds=None``) the smallest number of seeds whose band rejects every
    coverage in ``alternatives`` with probability >= ``power`` per column."""
    n_range = [seeds] if seeds is not None else range(20, n_max)
    for n in n_range:
        kmin, kmax = coverage_band(n, *null, alpha, tests)
        d = CoverageDesign(n, kmin, kmax, tests, tuple(null), alpha)
        if seeds is not None or all(d.p_fail(c) >= power for c in alternatives):
            return d
    raise ValueError(f"no design with at most {n_max} seeds")


# --------------------------------------------------------------------------- configurations


OFF3 = [[0, 1, 1], [1, 0, 1], [1, 1, 0]]
COVERAGE_MODEL = {
    # 3 levels, ~76 occupied joint states at t = 3 with 4000 trajectories (docs/physics.md §6 regime)
    "name": "coverage3",
    "system": {"energies": [0, 1, 3], "coupling": OFF3},
    "baths": [{"name": "B", "dos": {"model": "oscillators", "n": 4, "quantum": 1}, "emax": 70,
               "kernel": {"model": "sqrt", "gamma": 1.0, "spectral": {"shape": "gaussian", "width": 2.0}}}],
    "initial": {"system": [0.1, 0.3, 0.6], "baths": [{"state": "canonical", "beta": 0.5}]},
    "times": {"values": [0.0, 0.5, 3.0]},
}


def _small_bath():
    """Two oscillators: strong system-bath correlation, I = 0.021 at t = 3 (first order; ~58 occupied states)."""
    md = copy.deepcopy(COVERAGE_MODEL)
    md["name"] = "coverage3-small-bath"
    md["baths"][0]["dos"]["n"] = 2
    md["baths"][0]["emax"] = 50
    return md


def _two_baths():
    """conftest's two_baths (675 joint states, ~175 occupied): I is the total correlation, D a sum over baths,
    Sigma_tilde has two heats."""
    md = get_model_dict("two_baths")
    md["times"] = {"values": [0.0, 0.5, 3.0]}
    return md


#: name -> (model, trajectories per run, first seed); every configuration is evaluated at its last time
CONFIGS = {
    "coverage3": (lambda: COVERAGE_MODEL, 4000, 2_000_000),
    "small_runs": (lambda: COVERAGE_MODEL, 500, 3_000_000),
    "small_bath": (_small_bath, 4000, 4_000_000),
    "two_baths": (_two_baths, 4000, 5_000_000),
}
FAST_CONFIG, FAST_SEED0 = "coverage3", 1_000_000
FAST = design(tests=len(COLS), seeds=1000)
POWERED = design(tests=len(COLS) * len(CONFIGS))



@dataclasses.dataclass
class Runs:
    label: str
    diff: np.ndarray  # (seeds, cols) estimate - exact
    se: np.ndarray  # (seeds, cols)
    occupied: float  # mean number of occupied joint states at the time tested

    def hits(self, scale=1.0):
        """Per column the number of runs whose ``est ± 1.96 scale SE`` contains the exact value."""
        return dict(zip(COLS, (np.abs(self.diff) <= Z95 * scale * self.se).sum(axis=0).tolist(), strict=True))


@cache
def runs(config, seeds, seed0):
    """``seeds`` independent runs of a configuration (entropies seed0, seed0 + 1, ...), at its last time."""
    make, n_traj, _ = CONFIGS[config]
    md = make()
    plan0 = engine.make_plan(md, trajectories=n_traj, seed=0, records=False, threads=THREADS)
    exact = trajmc.solve(md).thermo().iloc[-1][COLS].to_numpy(dtype=float)
    diff, se, occ = np.zeros((seeds, len(COLS))), np.zeros((seeds, len(COLS))), 0
    for i in range(seeds):
        plan = dataclasses.replace(plan0, entropy=seed0 + i)
        acc = engine.new_accumulators(plan)
        engine.run_plan(plan, acc, THREADS)
        th = Ensemble(plan, acc, {}).thermo().iloc[-1]
        diff[i] = th[COLS].to_numpy(dtype=float) - exact
        se[i] = th[[f"{c}_se" for c in COLS]].to_numpy(dtype=float)
        occ += np.count_nonzero(acc.counts[-1])
    assert np.all(np.isfinite(diff)) and np.all(se > 0), config
    r = Runs(f"{config} ({n_traj} trajectories)", diff, se, occ / seeds)
    h = r.hits()
    print(f"\ncoverage {r.label}, {seeds} seeds from {seed0}, ~{r.occupied:.0f} occupied states: "
          + ", ".join(f"{c} {k / seeds:.4f}" for c, k in h.items()))
    return r


# --------------------------------------------------------------------------- the design itself (fast)


def test_design_false_alarm_and_power():
    """The powered design: family-wise false alarm <= 1e-6 anywhere in the null band, power >= 0.99 at 0.89,
    0.99 and at the coverages of bars x0.8 / x1.3; the stated numbers are these."""
    d = POWERED
    assert (d.seeds, d.kmin, d.kmax, d.tests) == (2044, 1852, 2007, 28)
    assert NULL == pytest.approx((0.93740, 0.96041), abs=5e-5)
    assert ALTERNATIVES[2:] == pytest.approx((0.88312, 0.98917), abs=5e-5)
    assert d.false_alarm() <= ALPHA
    assert d.false_alarm() == pytest.approx(7.52e-7, rel=1e-2)
    for c in np.linspace(*NULL, 21):  # anywhere in the null band, not only at its edges
        assert d.tests * d.p_fail(c) <= ALPHA
    assert d.tests * d.p_fail(0.95) < 1e-12
    for c in ALTERNATIVES:
        assert d.p_fail(c) >= POWER, c
    assert d.p_fail(0.89) == pytest.approx(0.9900, abs=5e-5) and d.p_fail(0.99) == pytest.approx(0.9994, abs=5e-5)
    # the smallest such design: one seed fewer loses the power at one of the alternatives
    fewer = design(d.tests, seeds=d.seeds - 1)
    assert min(fewer.p_fail(c) for c in ALTERNATIVES) < POWER


def test_fast_design_states_its_power():
    """The fast tier (1000 seeds, 7 columns): false alarm <= 1e-6, and the power written in the docstring of
    test_error_bars_cover_at_95_percent (a number checked here, not asserted in a comment)."""
    d = FAST
    assert (d.seeds, d.kmin, d.kmax, d.tests) == (1000, 893, 988, 7)
    assert d.false_alarm() <= ALPHA
    stated = {0.89: 0.59, 0.99: 0.70, ALTERNATIVES[2]: 0.82, ALTERNATIVES[3]: 0.60, 0.85: 1.00, 1.0: 1.00}
    for c, p in stated.items():
        assert d.p_fail(c) == pytest.approx(p, abs=0.005), c


def test_design_by_sampling():
    """The binomial arithmetic against sampling: the fraction of simulated hit counts outside the band
    equals p_fail within 5 binomial standard errors."""
    rng = np.random.default_rng(13)
    for d in (FAST, POWERED):
        for c in (0.89, 0.93, 0.95, 0.975, 0.99):
            k = rng.binomial(d.seeds, c, size=200_000)
            frac = np.mean((k < d.kmin) | (k > d.kmax))
            p = d.p_fail(c)
            assert abs(frac - p) <= 5 * np.sqrt(p * (1 - p) / len(k)) + 1e-12, (d.seeds, c, frac, p)


def test_a_point_null_would_fail():
    """Why the null is a band: a point null at 0.95 with the same false alarm and power (1081 seeds for 7
    columns) rejects estimators with a true coverage of 0.935-0.966, like those measured, 100-1600 times more
    often than 1e-6 per column."""
    d = design(len(COLS), null=(0.95, 0.95))
    assert (d.seeds, d.kmin, d.kmax) == (1081, 986, 1060)
    assert d.false_alarm() <= ALPHA
    assert d.p_fail(0.94) == pytest.approx(1.1e-4, rel=0.05)
    assert d.p_fail(0.935) == pytest.approx(1.45e-3, rel=0.05)
    assert d.p_fail(0.966) == pytest.approx(1.63e-3, rel=0.05)
    # the band designs accept the same coverages: per column they fail at 0.94 (inside the null band) with
    # probability < 5e-9, at 0.935 and 0.966 (just outside it) with 2.5e-7 and 3.3e-6 (FAST), 2.2e-7 and 5.5e-6
    # (POWERED)
    assert FAST.p_fail(0.94) < 5e-9 and POWERED.p_fail(0.94) < 5e-9
    assert FAST.p_fail(0.935) < 2.5e-7 and POWERED.p_fail(0.935) < 2.5e-7
    assert FAST.p_fail(0.966) == pytest.approx(3.3e-6, rel=0.05)
    assert POWERED.p_fail(0.966) == pytest.approx(5.5e-6, rel=0.05)


# --------------------------------------------------------------------------- fast tier


def _fast_runs():
    return runs(FAST_CONFIG, FAST.seeds, FAST_SEED0)


@pytest.mark.parametrize("col", COLS)
def test_error_bars_cover_at_95_percent(col):
    """1000 seeds x 4000 trajectories of coverage3 (~76 occupied states) at t = 3.  Design (FAST): accept
    893..988 hits; family-wise false alarm <= 1e-6 over the 7 columns.  Stated power per column (computed in
    test_fast_design_states_its_power): 0.59 at coverage 0.89, 0.70 at 0.99, 0.82 against bars x0.8 (coverage
    0.883) and 0.60 against bars x1.3 (0.989); 1.00 at 0.85 and at 1.0.  The powered version (>= 0.99) is
    test_error_bars_cover_powered (slow)."""
    r = _fast_runs()
    k = r.hits()[col]
    band = f"{k}/{FAST.seeds} intervals cover the exact value (band {FAST.kmin}..{FAST.kmax})"
    assert FAST.accepts(k), band
    assert 60 < r.occupied < 95


def test_coverage_test_catches_scaled_bars():
    """Power of the fast test against error bars 20% too small or 30% too large (the same runs, SEs scaled).
    If the bars are honest, scaled bars cover 0.883 (x0.8) and 0.989 (x1.3); one column is then rejected with
    probability 0.82 and 0.60 (FAST), and the test, which rejects when any column does, with at least that
    probability; measured by resampling independent runs (test_fast_scaled_bars_power_by_resampling, slow):
    1.000 and 0.976.  If the true coverage is at an edge of the null band, the worst case, the scaled bars
    cover 0.900 and 0.985 and one column is rejected with probability 0.21 and 0.15."""
    r = _fast_runs()
    for scale in (0.8, 1.3):
        h = r.hits(scale)
        rejected = [c for c in COLS if not FAST.accepts(h[c])]
        assert rejected, f"bars x{scale} accepted for every column: {h}"
    assert FAST.p_fail(normal_coverage(0.8 * 1.05)) == pytest.approx(0.21, abs=0.01)
    assert FAST.p_fail(normal_coverage(1.3 * 0.95)) == pytest.approx(0.15, abs=0.01)


# --------------------------------------------------------------------------- slow tier: the powered test


def _powered_params():
    return [pytest.param(config, col, marks=[pytest.mark.slow], id=f"{config}-{col}")
            for config in CONFIGS for col in COLS]


@pytest.mark.parametrize("config, col", _powered_params())
def test_error_bars_cover_powered(config, col):
    """2044 seeds per configuration (POWERED: band 1852..2007, family-wise false alarm 7.5e-7 over the 28
    columns of the 4 configurations; per column power 0.990 at coverage 0.89, 0.9994 at 0.99, 0.9995 and
    0.998 against bars x0.8 and x1.3).  Configurations: coverage3 (4000 trajectories, ~76 occupied states),
    small_runs (500, ~58), small_bath (2 oscillators, I first order), two_baths (675 states, ~175 occupied)."""
    r = runs(config, POWERED.seeds, CONFIGS[config][2])
    k = r.hits()[col]
    assert POWERED.accepts(k), f"{r.label}: {col}: {k}/{POWERED.seeds} cover (band {POWERED.kmin}..{POWERED.kmax})"


@pytest.mark.slow
@pytest.mark.parametrize("config", list(CONFIGS))
def test_powered_test_catches_scaled_bars(config):
    """The powered test rejects error bars scaled by 0.8 or 1.3 (the same runs, SEs scaled): it fails when any
    column does, and one honest column alone is rejected with probability 0.9995 (x0.8, coverage 0.883) and
    0.998 (x1.3, coverage 0.989); in the worst case of the null band (coverage 0.900 / 0.985) with 0.80 / 0.81."""
    r = runs(config, POWERED.seeds, CONFIGS[config][2])
    for scale in (0.8, 1.3):
        h = r.hits(scale)
        rejected = [c for c in COLS if not POWERED.accepts(h[c])]
        print(f"\n{r.label}: bars x{scale}: " + ", ".join(f"{c} {h[c] / POWERED.seeds:.4f}" for c in COLS)
              + f"; rejected {rejected}")
        assert rejected, f"{r.label}: bars x{scale} accepted for every column: {h}"
    assert POWERED.p_fail(normal_coverage(0.8 * 1.05)) == pytest.approx(0.80, abs=0.01)
    assert POWERED.p_fail(normal_coverage(1.3 * 0.95)) == pytest.approx(0.81, abs=0.01)


@pytest.mark.slow
def test_fast_scaled_bars_power_by_resampling():
    """The power of the fast scaled-bars test, measured rather than bounded: the 2044 powered coverage3 runs
    (seeds independent of the fast tier's) are resampled 2000 times in sets of FAST.seeds; the fraction of
    sets in which some honest column falls outside the FAST band estimates the probability that
    test_coverage_test_catches_scaled_bars rejects (the columns are not fully correlated, so it exceeds the
    one-column bound 0.82 / 0.60).  Measured 1.000 (x0.8) and 0.976 (x1.3) (0.998 and 0.999 from 3000 other
    seeds); asserted >= 0.95, and honest bars (x1) rejected in < 1% of the sets (measured 0)."""
    r = runs(FAST_CONFIG, POWERED.seeds, CONFIGS[FAST_CONFIG][2])
    rng = np.random.default_rng(2)
    idx = rng.integers(0, POWERED.seeds, size=(2000, FAST.seeds))
    power = {}
    for scale in (0.8, 1.0, 1.3):
        cover = np.abs(r.diff) <= Z95 * scale * r.se
        h = cover[idx].sum(axis=1)  # (sets, columns)
        power[scale] = float(np.mean(((h < FAST.kmin) | (h > FAST.kmax)).any(axis=1)))
    print(f"\nfast scaled-bars test, resampled: P(reject) = {power}")
    assert power[0.8] >= 0.95 and power[1.3] >= 0.95 and power[1.0] < 0.01, power
