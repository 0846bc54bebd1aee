"""``trajmc.validate``: every named check accepts a correct run of either Monte Carlo path, rejects a
deliberately wrong one, and never passes on degenerate numbers.

* Correct runs (enumerated and implicit path of five models) pass every counted check; which checks are
  "not applicable" or "not checkable" on each run is fixed here, each with the reason.
* Issue 13 item 1: every check routes its numbers through the shared combinators (``z_verdict``,
  ``g_verdict``, ``combine``); each check is fed NaN, an infinite z, a zero standard error with a non-zero
  difference and an empty sample (through the combinators it calls, and through the run's own numbers), and
  ends FAIL or "not checkable", never pass.
* Power: a wrong exact reference or tampered accumulators make each check fail, the statistical ones
  with a Holm-adjusted p below ``ALPHA / 100``.
* ``PauliMarginalVsExact`` (sqrt kernel, exponential baths) and ``TrajectoryEntropyVsExact`` in detail.
* Run directories: ``validate_run`` and the command line; a run whose stored data do not belong to its
  model ends as an error (exit 2) or a disagreement (exit 1), never 0.

False alarms.  A correct run is judged by ``run_checks`` at its default ``alpha = 1e-3``, the statistical
checks Holm-corrected as one family: a correct run fails with probability at most 1e-3 (the stated rate of
every "passes" test; runs are seeded, so outcomes are reproducible).  Wrong comparisons are built to be many
standard errors off (|z| >~ 8, G-test p far below 1e-6), so their failure does not hinge on the seed.
Exact checks must hold outright.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import shutil
import subprocess
import sys
import tomllib

import numpy as np
import pytest
import tomli_w
from conftest import OFF3, THREADS, get_model_dict

import trajmc
from trajmc import _kernel as K
from trajmc import engine, references, rundir
from trajmc import validate as V
from trajmc.cli import main
from trajmc.ensemble import Ensemble
from trajmc.solver import Solution
from trajmc.validate import CHECKS, NA, NC, run_checks, validate_run

ALPHA = 1e-3  # run_checks' default family-wise false-alarm rate
N_TRAJ = 20_000
PATHS = ("enumerated", "implicit")


# --------------------------------------------------------------------------- models and runs


def one_bath():
    """qubit + 6 oscillators, run long enough to relax: SteadyStateInShells applies."""
    md = get_model_dict("qubit_osc_sqrt")
    md["times"] = {"stop": 10.0, "num": 21}
    return md


def two_baths():
    return get_model_dict("two_baths")


def driven():
    """qubit + 6 oscillators from the global Gibbs state, gap raised 1 -> 2 -> 3 (Jarzynski applies)."""
    return {"name": "driven_small", "system": {"energies": [0, 1], "coupling": [[0, 1], [1, 0]]},
            "baths": [{"name": "B", "dos": {"model": "oscillators", "n": 6, "quantum": 1}, "emax": 60,
                       "kernel": {"model": "sqrt", "gamma": 1.0}}],
            "initial": {"system": {"gibbs": True, "beta": 0.8}, "baths": [{"state": "canonical", "beta": 0.8}]},
            "times": {"stop": 3.0, "num": 13},
            "protocol": [{"time": 1.0, "energies": [0, 2]}, {"time": 2.0, "energies": [0, 3]}]}


def exp_bath(name, beta, emax, gamma=1.0):
    """An ideal (exponential) bath with the sqrt kernel: docs/physics.md §5.5, the Pauli limit."""
    return {"name": name, "dos": {"model": "exponential", "beta": beta}, "emax": emax,
            "kernel": {"model": "sqrt", "gamma": gamma, "spectral": {"shape": "gaussian", "width": 2.0}}}


def pauli(n_baths=1, emax=200, energy=None):
    """3 levels, ``n_baths`` exponential baths (sqrt kernel), each microcanonical in the middle of its grid."""
    betas, gammas = (0.5, 0.8, 1.5), (1.0, 0.6, 0.4)
    energy = emax // 2 if energy is None else energy
    return {"name": f"pauli{n_baths}", "system": {"energies": [0, 1, 3], "coupling": OFF3},
            "baths": [exp_bath(f"X{i}", betas[i], emax, gammas[i]) for i in range(n_baths)],
            "initial": {"system": [0.1, 0.2, 0.7], "baths": [{"state": "microcanonical", "energy": energy}] * n_baths},
            "times": {"stop": 3.0, "num": 7}}


def irreversible():
    """3 levels + 30 spins starting in the top level with a microcanonical bath: each occupied shell is
    entered at one state only, so <exp(-Delta s_obs)> < 1 (absolute irreversibility, docs/physics.md §5.6)."""
    md = get_model_dict("three_spins_eth")
    md["name"] = "three_spins_micro"
    md["initial"] = {"system": [0.0, 0.0, 1.0], "baths": [{"state": "microcanonical", "energy": 15}]}
    return md


MAKERS = {"one": one_bath, "two": two_baths, "driven": driven, "pauli": pauli, "ai": irreversible}
SEEDS = {"one": 7, "two": 7, "driven": 7, "pauli": 3, "ai": 5}

# The checks that are not counted on each correct run: {name: (kind, why: a phrase of its detail)}.
UNDRIVEN = {"JarzynskiVsExact": (NA, "undriven"), "WorkDistributionVsExact": (NA, "undriven")}
NO_PAULI = {"PauliMarginalVsExact": (NA, "not an exponential bath")}
IMPLICIT = {"GillespieVsExact": (NC, "marginals only"), "SteadyStateInShells": (NC, "marginals only"),
            "TrajectoryEntropyVsExact": (NC, "did not stream")}  # Delta s_obs needs the exact p_x(t) of each state
NOT_CANONICAL = {"Eq60Decomposition": (NA, "a reference beta for every bath")}
NOT_RELAXED = {"SteadyStateInShells": (NA, "not relaxed")}
NOT_COUNTED = {
    ("one", "enumerated"): UNDRIVEN | NO_PAULI,
    ("one", "implicit"): UNDRIVEN | NO_PAULI | IMPLICIT,
    ("two", "enumerated"): UNDRIVEN | NO_PAULI | NOT_RELAXED,
    # two baths without the joint: S_obs, Sigma and the Monte Carlo side of Eq. 60 need it
    ("two", "implicit"): UNDRIVEN | NO_PAULI | IMPLICIT | {"ObservationalEntropyVsExact": (NC, "joint"),
                                                           "Eq60Decomposition": (NC, "joint")},
    ("driven", "enumerated"): NOT_RELAXED | {"PauliMarginalVsExact": (NA, "driven")},
    ("driven", "implicit"): IMPLICIT | {"PauliMarginalVsExact": (NA, "driven")},
    ("pauli", "enumerated"): UNDRIVEN | NOT_CANONICAL | NOT_RELAXED,
    ("pauli", "implicit"): UNDRIVEN | NOT_CANONICAL | IMPLICIT,
    ("ai", "enumerated"): UNDRIVEN | NO_PAULI | NOT_CANONICAL | NOT_RELAXED,
    ("ai", "implicit"): UNDRIVEN | NO_PAULI | NOT_CANONICAL | IMPLICIT,
}
RUNS = sorted(NOT_COUNTED)


@functools.cache
def solution(key):
    return trajmc.solve(MAKERS[key]())


@functools.cache
def built(key, path="enumerated"):
    """(Ensemble, Solution) of a correct run; built once per module."""
    ens = trajmc.simulate(MAKERS[key](), trajectories=N_TRAJ, seed=SEEDS[key], engine=path, threads=THREADS)
    assert ens.plan.path == path
    return ens, solution(key)


@functools.cache
def correct_results(key, path):
    ens, sol = built(key, path)
    return {r.name: r for r in run_checks(ens, sol)}


def clone(ens, plan=None):
    """An independent copy of an Ensemble (tamper with it freely)."""
    return Ensemble(plan or ens.plan, copy.deepcopy(ens.acc), dict(ens.stats))


def judged(r):
    """One check's result judged as run_checks judges its family (here a family of one)."""
    return V.family([r], ALPHA)[0]


def perturbed_solution(key, edit):
    md = MAKERS[key]()
    edit(md)
    sol = trajmc.solve(md)
    # same joint states in the same order: the comparison is of numbers, not of bookkeeping
    np.testing.assert_array_equal(sol.network.states, solution(key).network.states)
    return sol


def with_p(sol, p):
    """The solution ``sol`` with another ``p_x(t)`` (a fake exact reference)."""
    return Solution(sol.model, sol.network, sol.times, p, sol.info, sol.segments)


def empty_ensemble(ens):
    """The ensemble of a run in which no trajectory was completed (zero accumulators, no chunk done)."""
    return Ensemble(ens.plan, engine.new_accumulators(ens.plan), dict(ens.stats))


# --------------------------------------------------------------------------- correct runs pass


@pytest.mark.parametrize("key, path", RUNS, ids=[f"{k}-{p}" for k, p in RUNS])
def test_every_check_passes_on_a_correct_run(key, path):
    res = correct_results(key, path)
    assert list(res) == list(CHECKS), "run_checks must run the whole registry, in order"
    off = {n: r for n, r in res.items() if not r.counted}
    want = NOT_COUNTED[(key, path)]
    assert set(off) == set(want), {n: res[n].detail for n in set(off) ^ set(want)}
    for name, (kind, why) in want.items():
        assert off[name].kind == kind and why in off[name].detail, (name, off[name])
        assert not off[name].passed and off[name].mark == ("n/a" if kind == NA else "n/c")
    for name, r in res.items():
        if not r.counted:
            continue
        assert r.passed and r.mark == "pass", (name, r)
        if r.kind == "statistical":
            assert np.isfinite(r.pvalue) and r.adjusted_pvalue > ALPHA, (name, r)
            assert r.adjusted_pvalue >= r.pvalue
        else:
            assert not (r.max_error > 1e-9), (name, r)
    assert V.verdict(list(res.values()))


def test_exact_parts_of_statistical_checks_are_reported():
    res = correct_results("two", "enumerated")
    # identities checked on the exact solution along the way: machine precision
    assert res["Eq60Decomposition"].kind == "statistical" and res["Eq60Decomposition"].max_error < 1e-12
    assert res["ObservationalEntropyNonDecreasing"].max_error == 0.0
    assert res["EnergyConservation"].statistic == 0 and res["EnergyConservation"].max_error < 1e-12
    assert "0 of 140000" in res["EnergyConservation"].detail  # 20000 trajectories x 7 times, all checked


def test_holm_adjustment_is_applied_across_the_family():
    res = correct_results("one", "enumerated")
    stat = [r for r in res.values() if r.kind == "statistical"]
    m = len(stat)
    assert m >= 8
    p_min = min(r.pvalue for r in stat)
    assert min(r.adjusted_pvalue for r in stat) == pytest.approx(min(1.0, m * p_min))


def test_run_checks_subset_by_name():
    ens, sol = built("one")
    res = run_checks(ens, sol, names=["GillespieVsExact", "ReproduceChunks"])
    assert [r.name for r in res] == ["GillespieVsExact", "ReproduceChunks"]
    assert all(r.passed for r in res)


def test_verdict_needs_a_counted_check_and_all_of_them_passing():
    ok = V.CheckResult("a", "exact", passed=True)
    assert V.verdict([ok]) and not V.verdict([])
    assert not V.verdict([V.CheckResult("b", NA), V.CheckResult("c", NC)])  # nothing was checked
    assert not V.verdict([ok, V.CheckResult("d", "statistical", pvalue=0.5, passed=False)])
    assert V.verdict([ok, V.CheckResult("e", NC)])


def test_validate_without_an_exact_solution():
    """Only the checks that need no exact solution count: EnergyConservation, the Monte Carlo side of the
    H-theorem, ReproduceChunks (and PauliMarginalVsExact where it applies)."""
    ens, _ = built("two", "implicit")
    res = {r.name: r for r in run_checks(ens, None)}
    counted = {n for n, r in res.items() if r.counted}
    assert counted == {"EnergyConservation", "ObservationalEntropyNonDecreasing", "ReproduceChunks"}
    assert all(res[n].passed for n in counted)
    assert all("no exact solution" in r.detail for n, r in res.items()
               if r.kind == NC and n not in ("TrajectoryEntropyVsExact",))


# --------------------------------------------------------------------------- the combinators


TINY = 5e-324  # the smallest positive double: any difference over it is an infinite z


@pytest.mark.parametrize("case, est, se, exact", [
    ("NaN estimate", [1.0, np.nan], [0.1, 0.1], [1.0, 1.0]),
    ("NaN SE", [1.0, 1.0], [0.1, np.nan], [1.0, 1.0]),
    ("infinite estimate", [1.0, np.inf], [0.1, 0.1], [1.0, 1.0]),
    ("negative SE", [1.0, 1.0], [0.1, -0.1], [1.0, 1.0]),
    ("infinite exact value", [1.0, 1.0], [0.1, 0.1], [1.0, np.inf]),
    ("zero SE, non-zero difference", [1.0, 1.001], [0.1, 0.0], [1.0, 1.0]),
    ("tiny SE: infinite z", [1.0, 1.001], [0.1, TINY], [1.0, 1.0]),
])
def test_z_verdict_fails_on_degenerate_numbers(case, est, se, exact):
    r = V.z_verdict("X", est, se, exact, "x")
    assert r.kind == "exact" and not r.passed and r.mark == "FAIL", (case, r)
    assert not judged(r).passed


def test_z_verdict_empty_or_undefined_is_not_checkable():
    for est, se, exact in (([], [], []), ([1.0, 2.0], [0.1, 0.1], [np.nan, np.nan])):
        r = V.z_verdict("X", est, se, exact, "x")
        assert r.kind == NC and not r.passed and not r.counted and r.mark == "n/c"


def test_z_verdict_statistics():
    # z-scores, Holm-combined
    r = V.z_verdict("X", [1.3, 5.0, 0.8], [0.1, 1.0, 0.1], [1.0, 5.5, 1.0], "x")
    assert r.kind == "statistical" and r.statistic == pytest.approx(3.0)
    p = 2 * V.norm.sf([3.0, 0.5, 2.0])
    assert r.pvalue == pytest.approx(min(1.0, 3 * p.min()))
    # an exact value that is NaN at some entries only is a broken reference, not an undefined quantity
    r = V.z_verdict("X", [1.3, 5.0, 0.8], [0.1, 1.0, 0.1], [1.0, np.nan, 1.0], "x")
    assert r.kind == "exact" and not r.passed and "NaN at 1 of 3" in r.detail
    # zero spread and agreement: an exact pass, with the largest error
    r = V.z_verdict("X", [1.0, 2.0 + 1e-12], 0, [1.0, 2.0], "x")
    assert r.kind == "exact" and r.passed and r.max_error == pytest.approx(1e-12, rel=1e-3)
    # a spread at the level of rounding (stationary Gibbs start: Delta s_obs = 0 +- 1e-16) is no spread
    r = V.z_verdict("X", [1e-16], [4e-18], [0.0], "x")
    assert r.kind == "exact" and r.passed


def test_z_verdict_one_sided():
    """``alternative='less'`` (a lower bound): only estimates significantly below it count."""
    r = V.z_verdict("X", [5.0, 0.5], [0.0, 0.25], 0.0, "x", alternative="less")  # 5.0: exact, above the bound
    assert r.kind == "statistical" and r.statistic == pytest.approx(2.0)
    assert r.pvalue == pytest.approx(V.norm.cdf(2.0))
    r = V.z_verdict("X", [-1.0], [0.25], 0.0, "x", alternative="less")
    assert r.statistic == pytest.approx(-4.0) and r.pvalue == pytest.approx(V.norm.cdf(-4.0))
    assert V.z_verdict("X", [3.0], [0.0], 0.0, "x", alternative="less").passed  # above the bound, no spread
    assert not V.z_verdict("X", [-1e-3], [0.0], 0.0, "x", alternative="less").passed
    assert not V.z_verdict("X", [-1e-3], [TINY], 0.0, "x", alternative="less").passed


def test_g_verdict_degenerate_counts_and_references():
    ex = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    obs = np.array([[50.0, 50.0, 0.0], [20.0, 30.0, 50.0]])
    assert V.g_verdict("G", [0, 1], obs, ex).kind == "statistical"
    for case, o, e in [("NaN count", np.where(obs == 20, np.nan, obs), ex),
                       ("negative count", np.where(obs == 20, -1.0, obs), ex),
                       ("infinite count", np.where(obs == 20, np.inf, obs), ex),
                       ("NaN exact", obs, np.where(ex == 0.2, np.nan, ex)),
                       ("negative exact", obs, np.where(ex == 0.2, -0.1, ex)),
                       ("shapes differ", obs, ex[:1])]:
        r = V.g_verdict("G", [0, 1], o, e)
        assert r.kind == "exact" and not r.passed, (case, r)
    # an observation of probability 0 (infinite G), and a point mass with observations elsewhere
    # (zero variance, non-zero difference): p = 0, a failure in any family
    for o, e in [(obs + [[0, 0, 1], [0, 0, 0]], ex), (obs, [[1.0, 0.0, 0.0], ex[1]])]:
        r = V.g_verdict("G", [0, 1], o, e)
        assert r.kind == "statistical" and r.pvalue == 0.0 and not judged(r).passed
    for o in (np.zeros_like(obs), np.zeros((0, 3)), np.zeros(0)):
        r = V.g_verdict("G", [], o, ex)
        assert r.kind == NC and not r.counted


def test_combine_rules():
    stat = [V.CheckResult("a", "statistical", statistic=2.0, pvalue=0.04, passed=True),
            V.CheckResult("b", "statistical", statistic=-3.0, pvalue=0.002, passed=True)]
    exact_ok = V.CheckResult("c", "exact", max_error=1e-14, passed=True)
    bad = V.CheckResult("d", "exact", max_error=0.1, passed=False, detail="broken")
    r = V.combine("X", stat + [exact_ok, V.CheckResult("e", NC)])
    assert r.kind == "statistical" and r.name == "X" and r.statistic == -3.0
    assert r.pvalue == pytest.approx(0.004) and r.max_error == 1e-14
    r = V.combine("X", stat + [bad])
    assert r.kind == "exact" and not r.passed and r.detail == "broken" and r.name == "X"
    r = V.combine("X", stat + [V.CheckResult("f", "statistical", pvalue=np.nan, passed=True)])
    assert not r.passed and r.mark == "FAIL"
    assert V.combine("X", [exact_ok]).passed and V.combine("X", [exact_ok]).kind == "exact"
    for parts in ([], [V.CheckResult("g", NC)], [V.CheckResult("h", NA)]):
        assert V.combine("X", parts).kind == NC


def test_a_statistical_result_without_p_value_fails_in_run_checks(monkeypatch):
    """Regression: Holm reads a NaN p-value as 1 (``min(1, NaN)`` is 1 in Python), so a statistical check
    whose p-value was NaN used to pass."""
    monkeypatch.setitem(CHECKS, "Fake", lambda ctx: V.CheckResult("Fake", "statistical", pvalue=np.nan, passed=True))
    ens, sol = built("one")
    r = run_checks(ens, sol, names=["Fake", "GillespieVsExact"])
    assert r[0].mark == "FAIL" and r[1].passed


def test_nan_counts_used_to_pass_the_g_test():
    """Regression: g_verdict passed counts with a NaN in them (G = NaN, p = NaN, Holm-adjusted to 1)."""
    r = V.g_verdict("G", [0], [[np.nan, 10.0]], [[0.5, 0.5]])
    assert not r.passed and not judged(r).passed


# --------------------------------------------------------------------------- every check, degenerate numbers

# where each check applies (is counted on the correct run)
HOME = {n: ("two", "enumerated") for n in CHECKS}
HOME.update(SteadyStateInShells=("one", "enumerated"), PauliMarginalVsExact=("pauli", "implicit"),
            JarzynskiVsExact=("driven", "enumerated"), WorkDistributionVsExact=("driven", "enumerated"))


def _corrupt_z(case, est, se, exact, alternative):
    est, se, exact = (np.array(np.broadcast_arrays(*(np.atleast_1d(np.asarray(a, float)) for a in (est, se, exact)))[i])
                      for i in range(3))
    if case == "empty":
        return np.zeros(0), np.zeros(0), np.zeros(0)
    i = int(np.flatnonzero(~np.isnan(exact))[0])
    step = -1e-3 if alternative == "less" else 1e-3
    if case == "nan":
        est[i] = np.nan
    elif case == "infinite z":
        est[i], se[i] = exact[i] + step * max(1.0, abs(exact[i])), TINY
    elif case == "zero SE":
        est[i], se[i] = exact[i] + step * max(1.0, abs(exact[i])), 0.0
    return est, se, exact


def _corrupt_g(case, observed, exact):
    o, e = np.array(observed, float), np.array(exact, float)
    if case == "empty":
        return np.zeros_like(o), e
    k = int(np.argmax(o.sum(axis=1)))
    j = int(np.argmax(o[k]))
    if case == "nan":
        o[k, j] = np.nan
    elif case == "infinite z":  # an observation where the exact probability is 0
        e[k] = 0.0
        e[k, (j + 1) % e.shape[1]] = 1.0
    elif case == "zero SE":  # a point mass (no spread) but observations off it
        o[k, (j + 1) % o.shape[1]] += 1
        e[k] = 0.0
        e[k, j] = 1.0
    return o, e


def _spy(monkeypatch, case, which):
    """Route every combinator call of a check through corruption ``case`` (of the first or the last call,
    or of every call for the empty sample); returns the list of calls."""
    calls = []
    real_z, real_g = V.z_verdict, V.g_verdict

    def hit():
        calls.append(len(calls))
        return case == "empty" or which == "first" and len(calls) == 1 or which == "all"

    def z(name, est, se, exact, what, alternative="two-sided", tol=V.ZERO_SE_TOL):
        if hit():
            est, se, exact = _corrupt_z(case, est, se, exact, alternative)
        return real_z(name, est, se, exact, what, alternative, tol)

    def g(name, labels, observed, exact, what="states"):
        if hit():
            observed, exact = _corrupt_g(case, observed, exact)
        return real_g(name, labels, observed, exact, what)

    monkeypatch.setattr(V, "z_verdict", z)
    monkeypatch.setattr(V, "g_verdict", g)
    return calls


DEGENERATE = ["nan", "infinite z", "zero SE", "empty"]


@pytest.mark.parametrize("case", DEGENERATE)
@pytest.mark.parametrize("name", list(CHECKS))
def test_every_check_is_built_from_the_combinators_and_never_passes_degenerate_numbers(name, case, monkeypatch):
    """Issue 13 item 1.  Each of the first, the last and all combinator calls of a check is corrupted in turn
    (NaN, an infinite z, a zero SE with a non-zero difference; an empty sample empties every call): the
    verdict is FAIL or not checkable, and the check did call the shared combinators."""
    key, path = HOME[name]
    ens, sol = built(key, path)
    assert correct_results(key, path)[name].counted
    ctx = V.context(ens, sol)
    for which in (["all"] if case == "empty" else ["first", "all"]):
        calls = _spy(monkeypatch, case, which)
        r = judged(CHECKS[name](ctx))
        monkeypatch.undo()
        assert calls, f"{name} did not use z_verdict / g_verdict"
        assert r.mark in ("FAIL", "n/c"), (name, case, which, r)
        if case != "empty":
            assert r.mark == "FAIL", (name, case, which, r)


@pytest.mark.parametrize("case", DEGENERATE[:3])
@pytest.mark.parametrize("name", list(CHECKS))
def test_a_degenerate_last_part_fails_the_check(name, case, monkeypatch):
    """The last combinator call of a check corrupted alone: a check must not drop a failing part."""
    key, path = HOME[name]
    ens, sol = built(key, path)
    ctx = V.context(ens, sol)
    calls = _spy(monkeypatch, "none", "none")  # count the calls of a clean run
    CHECKS[name](ctx)
    monkeypatch.undo()
    n = len(calls)
    real_z, real_g = V.z_verdict, V.g_verdict
    seen = []

    def z(name_, est, se, exact, what, alternative="two-sided", tol=V.ZERO_SE_TOL):
        seen.append(1)
        if len(seen) == n:
            est, se, exact = _corrupt_z(case, est, se, exact, alternative)
        return real_z(name_, est, se, exact, what, alternative, tol)

    def g(name_, labels, observed, exact, what="states"):
        seen.append(1)
        if len(seen) == n:
            observed, exact = _corrupt_g(case, observed, exact)
        return real_g(name_, labels, observed, exact, what)
    monkeypatch.setattr(V, "z_verdict", z)
    monkeypatch.setattr(V, "g_verdict", g)
    r = judged(CHECKS[name](ctx))
    assert r.mark == "FAIL", (name, case, n, r)


@pytest.mark.parametrize("name", list(CHECKS))
def test_every_check_on_a_run_without_trajectories(name):
    """The real empty sample: a run in which no trajectory was completed (zero accumulators)."""
    key, path = HOME[name]
    ens, sol = built(key, path)
    with np.errstate(all="ignore"):
        r = judged(CHECKS[name](V.context(empty_ensemble(ens), sol)))
    assert r.mark in ("FAIL", "n/c"), (name, r)


def _th_edit(col, rows, value=None, se=None, shift=None):
    def edit(th):
        for k in rows:
            if shift is not None:
                th.loc[th.index[k], col] += shift
            if value is not None:
                th.loc[th.index[k], col] = value
            if se is not None:
                th.loc[th.index[k], f"{col}_se"] = se
    return edit


# The run's own numbers made degenerate, check by check: (check, run, column of ens.thermo(), time index)
TH_CASES = [("HeatMeanVsExact", "two", "Q_A", 3), ("ObservationalEntropyVsExact", "two", "S_obs", 3),
            ("MarginalEntropiesVsExact", "two", "S_B_C", 3), ("MarginalEntropiesVsExact", "two", "Sigma_tilde", 3),
            ("Eq60Decomposition", "two", "Sigma_tilde", 3), ("PauliMarginalVsExact", "pauli", "Q_X0", 3)]


TH_RUNS = [(*c, path) for c in TH_CASES for path in PATHS if c[0] not in NOT_COUNTED[(c[1], path)]]


@pytest.mark.parametrize("name, key, col, k, path", TH_RUNS, ids=[f"{c[0]}-{c[2]}-{c[4]}" for c in TH_RUNS])
def test_degenerate_estimates_fail(name, key, col, k, path):
    ens, sol = built(key, path)
    assert correct_results(key, path)[name].counted
    base = V.context(ens, sol)
    th0 = base["th"]
    off = 50 * float(th0[f"{col}_se"].iloc[k]) + 1e-3
    cases = {"nan": _th_edit(col, [k], value=np.nan), "inf": _th_edit(col, [k], value=np.inf),
             "infinite z": _th_edit(col, [k], shift=off, se=TINY),
             "zero SE": _th_edit(col, [k], shift=off, se=0.0)}
    for case, edit in cases.items():
        ctx = dict(base, th=th0.copy())
        edit(ctx["th"])
        if name == "Eq60Decomposition" and case in ("infinite z", "zero SE"):
            _th_edit("Sigma", [k], se=ctx["th"]["Sigma_tilde_se"].iloc[k])(ctx["th"])
        r = judged(CHECKS[name](ctx))
        assert r.mark == "FAIL", (case, r)


def test_degenerate_exact_references_fail():
    """NaN in the exact solution: every check that reads it fails (an exact NaN of S_obs used to be read as
    'no decrease' by the H-theorem check)."""
    ens, sol = built("two")
    p = sol.p.copy()
    p[3, np.argmax(p[3])] = np.nan
    bad = with_p(sol, p)
    with np.errstate(invalid="ignore"):
        ctx = V.context(ens, bad)
    for name in ("GillespieVsExact", "SystemMarginalVsExact", "ObservationalEntropyVsExact",
                 "ObservationalEntropyNonDecreasing", "Eq60Decomposition"):
        with np.errstate(invalid="ignore"):
            r = judged(CHECKS[name](ctx))
        assert r.mark == "FAIL", (name, r)
    ex = V.context(ens, sol)["ex"]
    ex.loc[ex.index[2], "S_obs"] = np.nan
    r = CHECKS["ObservationalEntropyNonDecreasing"](dict(V.context(ens, sol), ex=ex))
    assert r.mark == "FAIL", r


def test_energy_conservation_degenerate_means():
    ens, sol = built("two")
    base = V.context(ens, sol)
    for edit in (_th_edit("Q_A", [2], value=np.nan), _th_edit("Q_A", [2], value=np.inf),
                 _th_edit("Q_A", [2], shift=1e-6), _th_edit("E_C", [2], shift=1e-6), _th_edit("W", [2], shift=1e-6)):
        ctx = dict(base, th=base["th"].copy())
        edit(ctx["th"])
        r = CHECKS["EnergyConservation"](ctx)
        assert r.kind == "exact" and not r.passed, r
    ctx = dict(base, th=base["th"].copy())
    _th_edit("Q_A", [2], shift=1e-6)(ctx["th"])
    assert CHECKS["EnergyConservation"](ctx).max_error == pytest.approx(1e-6, rel=1e-3)


def test_h_theorem_check_degenerate_monte_carlo():
    ens, sol = built("one")
    base = V.context(ens, sol)
    for edit in (_th_edit("Sigma", [3], value=np.nan), _th_edit("Sigma", [3], value=-np.inf),
                 _th_edit("Sigma", [3], value=-1e-3, se=0.0), _th_edit("Sigma", [3], value=-1e-3, se=TINY)):
        ctx = dict(base, th=base["th"].copy())
        edit(ctx["th"])
        assert judged(CHECKS["ObservationalEntropyNonDecreasing"](ctx)).mark == "FAIL"
    # above the bound with no spread is fine: Sigma = +1e-3 exactly
    ctx = dict(base, th=base["th"].copy())
    _th_edit("Sigma", [3], value=1e-3, se=0.0)(ctx["th"])
    assert judged(CHECKS["ObservationalEntropyNonDecreasing"](ctx)).passed


# --------------------------------------------------------------------------- power: wrong exact solution


def _mul_gamma(f):
    def edit(md):
        for b in md["baths"]:
            b["kernel"]["gamma"] *= f
    return edit


def _beta(i, value):
    def edit(md):
        md["initial"]["baths"][i]["beta"] = value
    return edit


def _coupling(c):
    def edit(md):
        md["system"]["coupling"] = c
    return edit


def _switch_time(t):
    def edit(md):
        md["protocol"][0]["time"] = t
    return edit


FOUR = {"GillespieVsExact", "SystemMarginalVsExact", "HeatMeanVsExact", "ObservationalEntropyVsExact"}
POWER_CASES = [
    # (run, perturbation of the model whose exact solution is compared, checks that must fail where counted)
    ("one", "gamma x 1.3", _mul_gamma(1.3), FOUR - {"ObservationalEntropyVsExact"} | {"MarginalEntropiesVsExact"}),
    ("one", "bath beta 0.8 -> 1.04", _beta(0, 1.04), FOUR | {"SteadyStateInShells", "MarginalEntropiesVsExact"}),
    ("one", "coupling 1 -> 0.8", _coupling([[0, 0.8], [0.8, 0]]), FOUR | {"TrajectoryEntropyVsExact"}),
    ("two", "coupling S_02 1 -> 0.5", _coupling([[0, 1, 0.5], [1, 0, 1], [0.5, 1, 0]]),
     FOUR | {"MarginalEntropiesVsExact"}),
    ("two", "bath C beta 0.4 -> 0.52", _beta(1, 0.52),
     {"GillespieVsExact", "HeatMeanVsExact", "ObservationalEntropyVsExact", "MarginalEntropiesVsExact"}),
    ("driven", "bath beta 0.8 -> 1.04", _beta(0, 1.04),
     FOUR | {"JarzynskiVsExact", "WorkDistributionVsExact"}),
    ("driven", "first switch at 0.5", _switch_time(0.5), FOUR | {"WorkDistributionVsExact"}),
    ("ai", "gamma x 1.3", _mul_gamma(1.3), FOUR | {"TrajectoryEntropyVsExact"}),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("key, what, edit, must_fail", POWER_CASES, ids=[f"{c[0]}: {c[1]}" for c in POWER_CASES])
def test_wrong_exact_solution_is_rejected(key, what, edit, must_fail, path):
    ens, _ = built(key, path)
    res = {r.name: r for r in run_checks(ens, perturbed_solution(key, edit))}
    counted = {n for n, r in correct_results(key, path).items() if r.counted}
    assert must_fail & counted, "the case must test something on this path"
    for name in must_fail & counted:
        r = res[name]
        assert r.kind == "statistical" and not r.passed, (name, r)
        assert r.adjusted_pvalue < ALPHA / 100, (name, r)  # far beyond the threshold, not a coin flip
    assert not V.verdict(list(res.values()))


def test_jarzynski_is_blind_to_the_dynamics_but_not_to_the_start():
    """From a global Gibbs start <exp(-beta W)> = Z_final/Z_0 whatever the rates: JarzynskiVsExact
    must keep passing against a solution with other rates (it tests the start and the protocol)."""
    ens, _ = built("driven")
    res = {r.name: r for r in run_checks(ens, perturbed_solution("driven", _mul_gamma(1.3)))}
    assert res["JarzynskiVsExact"].passed
    assert "Z_final/Z_0" in res["JarzynskiVsExact"].detail


def test_exact_jarzynski_off_the_partition_function_ratio_fails(monkeypatch):
    """The exact tilted average must equal Z_final/Z_0 from a Gibbs start (the identity, to 1e-10)."""
    ens, sol = built("driven")
    real = V.fl.gibbs_ratio
    monkeypatch.setattr(V.fl, "gibbs_ratio", lambda segs, beta: real(segs, beta) * (1 + 1e-8))
    r = CHECKS["JarzynskiVsExact"](V.context(ens, sol))
    assert r.kind == "exact" and not r.passed and "Z_final/Z_0" in r.detail


# --------------------------------------------------------------------------- power: tampered accumulators


def _move(row, frac, src=None, dst=None, among=None):
    """Move ``frac`` of the mass of a count row from its largest to its smallest occupied bin (sum kept)."""
    occ = np.flatnonzero(row > 0) if among is None else among[row[among] > 0]
    src = occ[np.argmax(row[occ])] if src is None else src
    dst = occ[np.argmin(row[occ])] if dst is None else dst
    assert dst != src
    m = int(frac * row.sum())
    row[src] -= m
    row[dst] += m


def _assert_fails(ens, sol, name, statistical=True):
    res = {r.name: r for r in run_checks(ens, sol)}
    r = res[name]
    assert not r.passed, r
    if statistical:
        assert r.kind == "statistical" and r.adjusted_pvalue < ALPHA / 100, r
    return res


def test_tampered_counts_fail_gillespie():
    ens, sol = built("two")
    bad = clone(ens)
    _move(bad.acc.counts[len(ens.times) // 2], 0.01)
    np.testing.assert_array_equal(bad.counts.sum(axis=1), ens.counts.sum(axis=1))
    _assert_fails(bad, sol, "GillespieVsExact")


def test_tampered_last_counts_fail_steady_state():
    ens, sol = built("one")
    bad = clone(ens)
    net = ens.network
    row = bad.acc.counts[-1]
    src = int(np.argmax(row))
    _move(row, 0.02, among=np.flatnonzero(net.block == net.block[src]))
    res = _assert_fails(bad, sol, "SteadyStateInShells")
    assert not res["GillespieVsExact"].passed


def test_steady_state_after_the_last_switch():
    """A driven run that relaxes after its last switch: the steady state is p ∝ V in the shells of the last
    levels (total energy eps_s + E changes at a switch), each with the weight it has then.  The check used the
    first segment's shells and initial weights, so it always said 'not relaxed' for a driven run."""
    md = driven()
    md["times"] = {"values": [0.0, 1.5, 2.5, 12.0]}
    sol = trajmc.solve(md)
    ens = trajmc.simulate(md, trajectories=N_TRAJ, seed=3, threads=THREADS)
    r = run_checks(ens, sol, names=["SteadyStateInShells"])[0]
    assert r.kind == "statistical" and r.passed, r
    bad = clone(ens)
    net = sol.segments[-1][1]
    row = bad.acc.counts[-1]
    src = int(np.argmax(row))
    _move(row, 0.02, among=np.flatnonzero(net.block == net.block[src]))
    r = run_checks(bad, sol, names=["SteadyStateInShells"])[0]
    assert r.kind == "statistical" and not r.passed and r.adjusted_pvalue < ALPHA / 100, r


@pytest.mark.parametrize("path", PATHS)
def test_tampered_level_counts_fail_system_marginal(path):
    ens, sol = built("two", path)
    bad = clone(ens)
    k = 3
    s0 = int(np.argmax(bad.acc.sys2[k].sum(axis=1)))
    _move(bad.acc.sys2[k, s0], 0.05)
    _assert_fails(bad, sol, "SystemMarginalVsExact")


@pytest.mark.parametrize("path", PATHS)
def test_tampered_heat_histogram_fails_heat_mean_and_energy_conservation(path):
    ens, sol = built("two", path)
    bad = clone(ens)
    w = bad.acc.windows
    h = bad.acc.heat[3, w.qoff[0]: w.qoff[0] + w.qwid[0]]
    j = int(np.argmax(h))
    _move(h, 0.05, src=j, dst=j + 3)  # mean heat from A up by 0.15: ~20 SE
    res = _assert_fails(bad, sol, "HeatMeanVsExact")
    # the bath marginal still says otherwise: the first law of the means is broken
    assert res["EnergyConservation"].kind == "exact" and not res["EnergyConservation"].passed


@pytest.mark.parametrize("path", PATHS)
def test_counted_first_law_violation_fails_energy_conservation(path):
    ens, sol = built("one", path)
    bad = clone(ens)
    bad.acc.viol[0] += 1
    r = CHECKS["EnergyConservation"](V.context(bad, sol))
    assert r.kind == "exact" and not r.passed and r.statistic == 1, r


def test_tampered_bath_marginal_fails_marginal_entropies():
    """Implicit path: the (E, s) marginal of bath C is its own accumulator (S_B, D, I(s; E_C), E_C)."""
    ens, sol = built("two", "implicit")
    bad = clone(ens)
    w, n_s = bad.acc.windows, ens.model.n_levels
    seg = bad.acc.marg[3, w.moff[1]: w.moff[1] + w.wid[1] * n_s]
    _move(seg, 0.05)
    _assert_fails(bad, sol, "MarginalEntropiesVsExact")


def test_fake_non_monotone_exact_solution_fails_h_theorem_and_eq60():
    ens, sol = built("two")
    ctx = V.context(ens, sol)
    ex = ctx["ex"].copy()
    k = len(ex) // 2
    # S_obs dips 1e-3 below its previous value: not a solution of the MME
    dip = ex["S_obs"].iloc[k] - ex["S_obs"].iloc[k - 1] + 1e-3
    assert dip > 0
    ex.iloc[k, ex.columns.get_loc("S_obs")] -= dip
    ex.iloc[k, ex.columns.get_loc("Sigma")] -= dip
    ctx["ex"] = ex
    r = CHECKS["ObservationalEntropyNonDecreasing"](ctx)
    assert r.kind == "exact" and not r.passed and r.max_error == pytest.approx(1e-3, rel=1e-6), r
    r = CHECKS["Eq60Decomposition"](ctx)
    assert r.kind == "exact" and not r.passed and r.max_error == pytest.approx(dip, rel=1e-6), r


@pytest.mark.parametrize("path", PATHS)
def test_fake_mutual_information_fails_eq60(path):
    ens, sol = built("one", path)
    ctx = V.context(ens, sol)
    ctx["ex"]["I"] = ctx["ex"]["I"] * 1.01
    r = CHECKS["Eq60Decomposition"](ctx)
    assert r.kind == "exact" and not r.passed and r.max_error > 1e-6


def test_negative_monte_carlo_entropy_production_fails():
    """The Monte Carlo side of the H-theorem check: Sigma significantly below 0 is rejected."""
    ens, sol = built("one")
    ctx = V.context(ens, sol)
    th = ctx["th"]
    th.iloc[3, th.columns.get_loc("Sigma")] = -8 * th["Sigma_se"].iloc[3]
    r = judged(CHECKS["ObservationalEntropyNonDecreasing"](ctx))
    assert r.kind == "statistical" and r.statistic == pytest.approx(-8)
    assert r.pvalue * len(CHECKS) < ALPHA  # fails under Holm whatever the other p-values


def test_negative_upper_bound_of_entropy_production_fails():
    """Implicit, two baths: Sigma_upper >= Sigma >= 0, so a significantly negative bound is a failure."""
    ens, sol = built("two", "implicit")
    ctx = V.context(ens, sol)
    th = ctx["th"]
    assert not th.attrs["joint"]
    th.iloc[3, th.columns.get_loc("Sigma_upper")] = -8 * th["Sigma_upper_se"].iloc[3]
    r = judged(CHECKS["ObservationalEntropyNonDecreasing"](ctx))
    assert r.kind == "statistical" and r.statistic == pytest.approx(-8) and r.pvalue * len(CHECKS) < ALPHA


def test_monte_carlo_gap_off_eq60_fails():
    ens, sol = built("two")
    ctx = V.context(ens, sol)
    th = ctx["th"]
    se = np.sqrt(th["Sigma_se"] ** 2 + th["Sigma_tilde_se"] ** 2)
    th["Sigma_tilde"] = th["Sigma_tilde"] + 8 * se
    r = CHECKS["Eq60Decomposition"](ctx)
    assert r.kind == "statistical" and abs(r.statistic) > 7  # 8 SE shift plus the run's own scatter
    assert r.max_error < 1e-12  # the exact identity itself still holds
    assert r.pvalue * len(CHECKS) < ALPHA


@pytest.mark.parametrize("path", PATHS)
def test_tampered_work_histogram_fails_work_distribution_and_jarzynski(path):
    ens, sol = built("driven", path)
    bad = clone(ens)
    _move(bad.acc.work[-1], 0.03)
    res = _assert_fails(bad, sol, "WorkDistributionVsExact")
    assert res["JarzynskiVsExact"].kind == "statistical" and not res["JarzynskiVsExact"].passed
    # a work value the protocol cannot produce: an impossible observation
    bad = clone(ens)
    woff = ens.plan.woff
    w, P = V.fl.work_distribution(sol.segments, ens.times)
    never = [j for j in range(2 * woff + 1) if j - woff not in w or P[-1, list(w).index(j - woff)] == 0]
    assert never
    bad.acc.work[-1, never[0]] += 1
    bad.acc.work[-1, int(np.argmax(bad.acc.work[-1]))] -= 1
    r = {r.name: r for r in run_checks(bad, sol)}["WorkDistributionVsExact"]
    assert not r.passed and r.pvalue == 0.0 and "probability 0" in r.detail


def test_other_seed_fails_reproduce_chunks():
    ens, _ = built("one")
    liar = Ensemble(dataclasses.replace(ens.plan, entropy=ens.plan.entropy + 1), ens.acc, ens.stats)
    r = CHECKS["ReproduceChunks"]({"ens": liar})
    assert r.kind == "exact" and not r.passed and r.statistic >= 1, r


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("field", ["jumps", "fingerprint"])
def test_altered_chunk_bookkeeping_fails_reproduce_chunks(field, path):
    ens, _ = built("two", path)
    bad = clone(ens)
    getattr(bad.acc, field)[-1] += 1
    r = CHECKS["ReproduceChunks"]({"ens": bad})
    assert not r.passed and r.statistic == 1 and f"chunk {ens.plan.n_chunks - 1}" in r.detail


# --------------------------------------------------------------------------- PauliMarginalVsExact


def test_pauli_reference_is_the_exact_solution_away_from_the_edges():
    """docs/physics.md §5.5: with the sqrt kernel and exponential baths p_s(t) obeys the ordinary Pauli equation
    (rates added over the baths) and the mean heat per bath follows from it; where no grid edge can be
    reached in practice the exact solution agrees to rounding (one bath: one shell of 3 states; two baths:
    a grid edge is 100 jumps away)."""
    for md in (pauli(1), pauli(2)):
        sol = trajmc.solve(md)
        ps, Q = references.pauli_marginal(sol.model, sol.times)
        np.testing.assert_allclose(ps, sol.p_system(), rtol=0, atol=1e-10)
        ex = sol.thermo()
        for nu, b in enumerate(sol.model.bath_names):
            np.testing.assert_allclose(Q[:, nu], ex[f"Q_{b}"], rtol=0, atol=1e-10)
        assert np.abs(Q[-1]).min() > 0.01 and np.abs(ps[-1] - ps[0]).max() > 0.05  # not a trivial comparison


@pytest.mark.parametrize("path", PATHS)
def test_pauli_marginal_against_a_wrong_reference_fails(path, monkeypatch):
    ens, sol = built("pauli", path)
    md = pauli()
    md["baths"][0]["kernel"]["gamma"] = 1.3
    wrong = trajmc.load_model(md)
    real = references.pauli_marginal
    monkeypatch.setattr(V, "pauli_marginal", lambda model, times: real(wrong, times))
    r = {r.name: r for r in run_checks(ens, sol)}["PauliMarginalVsExact"]
    assert r.kind == "statistical" and not r.passed and r.adjusted_pvalue < ALPHA / 100, r


def test_pauli_marginal_tampered_level_counts_fail():
    ens, sol = built("pauli", "implicit")
    bad = clone(ens)
    _move(bad.acc.sys2[3, int(np.argmax(bad.acc.sys2[3].sum(axis=1)))], 0.05)
    res = {r.name: r for r in run_checks(bad, None)}
    r = res["PauliMarginalVsExact"]
    assert r.kind == "statistical" and not r.passed and r.adjusted_pvalue < ALPHA / 100, r


@pytest.mark.parametrize("n_baths, path, why", [
    (1, "implicit", "trajectories visited"),  # microcanonical at E = 2, a jump of 3 is cut at E = 0
    (2, "enumerated", "occupied shells reach"),  # E_1 + E_2 fixed: the shell runs from edge to edge
])
def test_pauli_marginal_not_checkable_when_an_edge_is_reached(n_baths, path, why):
    md = pauli(n_baths, energy=2 if n_baths == 1 else None)
    ens = trajmc.simulate(md, trajectories=2000, seed=1, engine=path, threads=THREADS)
    r = {r.name: r for r in run_checks(ens, trajmc.solve(md))}["PauliMarginalVsExact"]
    assert r.kind == NC and why in r.detail and "grid edge" in r.detail, r


def test_pauli_marginal_not_applicable_otherwise():
    for edit, why in [(lambda md: md["baths"][0]["kernel"].update(model="golden"), "not an exponential bath"),
                      (lambda md: md["baths"][0].update(dos={"model": "oscillators", "n": 40}), "not an exponential"),
                      (lambda md: md.update(protocol=[{"time": 1.0, "energies": [0, 2, 3]}]), "driven")]:
        md = pauli()
        edit(md)
        ref = references.pauli_marginal(trajmc.load_model(md), np.array([0.0, 1.0]))
        assert isinstance(ref, str) and why in ref
    r = correct_results("one", "implicit")["PauliMarginalVsExact"]
    assert r.kind == NA


def test_pauli_marginal_three_large_baths_without_exact_solution():
    """Three exponential baths of 10^4 + 1 grid points: nothing can be enumerated (implicit path, no exact
    solution), yet p_s(t) and every Q_b(t) are checked against the Pauli equation."""
    md = pauli(3, emax=10_000)
    ens = trajmc.simulate(md, trajectories=N_TRAJ, seed=11, threads=THREADS)
    assert ens.plan.path == "implicit" and references.exact_reference(ens.model, ens.plan) is None
    res = {r.name: r for r in run_checks(ens, None)}
    assert {n for n, r in res.items() if r.counted} == {"EnergyConservation", "ObservationalEntropyNonDecreasing",
                                                        "PauliMarginalVsExact", "ReproduceChunks"}
    assert V.verdict(list(res.values())), [(r.name, r.detail) for r in res.values() if r.counted and not r.passed]
    r = res["PauliMarginalVsExact"]
    assert r.kind == "statistical" and all(f"Q_X{i}" in r.detail for i in range(3))


@pytest.mark.slow
def test_pauli_marginal_issue9_three_baths_of_a_million():
    """Issue 9's validation at scale: 3 levels, three baths of 10^6 grid points each, 2e5 trajectories."""
    md = pauli(3, emax=10**6)
    ens = trajmc.simulate(md, trajectories=200_000, seed=12, threads=THREADS)
    assert ens.plan.path == "implicit"
    res = {r.name: r for r in run_checks(ens, None)}
    assert res["PauliMarginalVsExact"].kind == "statistical" and res["PauliMarginalVsExact"].passed
    assert V.verdict(list(res.values()))


# --------------------------------------------------------------------------- TrajectoryEntropyVsExact


@pytest.mark.parametrize("key", ["one", "two", "driven", "pauli", "ai"])
def test_streamed_trajectory_entropy_agrees_with_exact(key):
    ens, sol = built(key)
    r = correct_results(key, "enumerated")["TrajectoryEntropyVsExact"]
    assert r.kind == "statistical" and r.passed
    te = ens.trajectory_entropy()
    ift = V.fl.ift_prediction(sol.segments, ens.times, sol.p)
    if key in ("ai", "pauli"):  # a microcanonical start enters each shell at one state only: absolute
        # irreversibility, the IFT average is below 1, and the Monte Carlo sees it
        assert V.fl.absolute_irreversibility(sol.segments)
        assert np.all(ift[2:] < 1 - 1e-3)
        assert (te["exp_mds"].iloc[-1] - 1) / te["exp_mds_se"].iloc[-1] < -5
    else:
        np.testing.assert_allclose(ift, 1.0, rtol=0, atol=1e-10)
    assert te["mean_ds"].iloc[-1] > 5 * te["mean_ds_se"].iloc[-1]  # entropy is produced: not a trivial check


def test_trajectory_entropy_streamed_against_a_wrong_reference_fails():
    """The kernel streams Delta s_obs against the p_x(t) the plan was given: a run given the exact solution
    of another model (rates x 3) disagrees with the true exact values: <Delta s_obs> is off by
    KL(p_t || q_t) ~ 0.03, ~8 SE at 60000 trajectories."""
    wrong = perturbed_solution("two", _mul_gamma(3.0))
    plan = engine.make_plan(two_baths(), trajectories=3 * N_TRAJ, seed=9, engine="enumerated", threads=THREADS,
                            trajectory_entropy=True, exact=lambda segs, times: wrong.p)
    acc = engine.new_accumulators(plan)
    engine.run_plan(plan, acc, THREADS)
    r = run_checks(Ensemble(plan, acc, {}), solution("two"), names=["TrajectoryEntropyVsExact"])[0]
    assert r.kind == "statistical" and not r.passed and r.adjusted_pvalue < ALPHA / 100, r


def test_tampered_trajectory_entropy_sums_fail():
    ens, sol = built("ai")
    te = ens.trajectory_entropy()
    for ch, col in ((K.M_DS, "mean_ds"), (K.M_DS + 2, "exp_mds")):
        bad = clone(ens)
        bad.acc.mom[4, ch] += 8 * te[f"{col}_se"].iloc[4] * ens.trajectories
        _assert_fails(bad, sol, "TrajectoryEntropyVsExact")


def test_trajectory_entropy_not_streamed_is_not_checkable():
    ens = trajmc.simulate(one_bath(), trajectories=500, seed=1, engine="enumerated", trajectory_entropy=False,
                          threads=THREADS)
    assert ens.trajectory_entropy() is None
    r = run_checks(ens, solution("one"), names=["TrajectoryEntropyVsExact"])[0]
    assert r.kind == NC and "did not stream" in r.detail


# --------------------------------------------------------------------------- run directories and the CLI


def cli(argv):
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code


RUN_N, RUN_SEED, RUN_CHUNK = 8000, 5, 2000


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    out = {}
    for path in PATHS:
        d = tmp_path_factory.mktemp("validate") / path
        trajmc.simulate(get_model_dict("qubit_osc_sqrt"), trajectories=RUN_N, seed=RUN_SEED, chunk_size=RUN_CHUNK,
                        engine=path, threads=THREADS, out=d)
        out[path] = d
    return out


@pytest.fixture
def run_copy(run_dirs, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(run_dirs["enumerated"], d)
    for f in ("validation.json", "validation.md"):
        (d / f).unlink(missing_ok=True)
    return d


def _verdict(d):
    v = json.loads((d / "validation.json").read_text())
    return v, {c["name"]: c for c in v["checks"]}


def _edit_toml(d, edit):
    p = d / "model.toml"
    m = tomllib.loads(p.read_text())
    edit(m)
    p.write_text(tomli_w.dumps(m))


def _edit_json(path, edit):
    p = json.loads(path.read_text())
    edit(p)
    path.write_text(json.dumps(p, indent=2))


def _one_line_error(capsys):
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trajmc: error:"), err
    return lines[0]


@pytest.mark.parametrize("path", PATHS)
def test_validate_run_writes_the_report(run_dirs, path, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(run_dirs[path], d)
    ok, results, ens, sol = validate_run(d)
    assert ok and ens.plan.path == path and sol is not None and [r.name for r in results] == list(CHECKS)
    v, checks = _verdict(d)
    assert v["passed"] is True and v["alpha"] == ALPHA and v["correction"] == "Holm" and v["path"] == path
    assert list(checks) == list(CHECKS)
    for r in results:
        assert checks[r.name]["verdict"] == r.mark and checks[r.name]["kind"] == r.kind
    md = (d / "validation.md").read_text()
    assert "**Verdict: PASS**" in md and f"({path} path)" in md
    for r in results:
        assert f"| {r.name} | {r.kind} |" in md and f"| {r.mark} |" in md

    def refuse(token):  # validation.json is standard JSON (RFC 8259): no NaN / Infinity tokens
        raise ValueError(f"non-standard JSON token {token}")
    json.loads((d / "validation.json").read_text(), parse_constant=refuse)


def test_validation_figures_for_both_paths_and_without_exact_solution(run_dirs, tmp_path):
    from trajmc.plotting import validation_figures

    for path, exact in (("enumerated", True), ("implicit", False)):
        ens = trajmc.load_run(run_dirs[path])
        sol = references.exact_reference(ens.model, ens.plan) if exact else None
        out = validation_figures(ens, sol, tmp_path / path)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_validate_run_directory_in_process(run_copy, capsys):
    assert cli(["validate", run_copy]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("PASS")
    for name in CHECKS:
        assert name in out
    v, checks = _verdict(run_copy)
    assert v["passed"] is True and list(checks) == list(CHECKS)


def test_validate_run_directory_subprocess(run_copy):
    """The literal command line: ``python -m trajmc validate RUN_DIR``."""
    p = subprocess.run([sys.executable, "-m", "trajmc", "validate", str(run_copy), "--alpha", "0.001"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PASS" in p.stdout
    for f in ("validation.json", "validation.md"):
        assert (run_copy / f).is_file(), f


def test_validate_model_file_simulates_then_validates(tmp_path, capsys):
    f = tmp_path / "m.toml"
    f.write_text(tomli_w.dumps(get_model_dict("three_spins_eth")))
    d = tmp_path / "fresh"
    assert cli(["validate", f, "--trajectories", 3000, "--seed", 12, "--out", d, "--quiet",
                "--threads", THREADS]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    v, checks = _verdict(d)
    assert v["passed"] and list(checks) == list(CHECKS)
    prov = json.loads((d / "provenance.json").read_text())
    assert prov["seed"]["entropy"] == "12" and prov["chunking"]["trajectories"] == 3000
    run = trajmc.load_run(d)
    assert run.trajectories == 3000 and run.plan.entropy == 12


def test_validate_non_run_directory_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli(["validate", tmp_path / "empty"]) == 2
    assert "not a trajmc run directory" in _one_line_error(capsys)
    assert cli(["validate", tmp_path / "missing.toml"]) == 2
    _one_line_error(capsys)


def test_edited_model_toml_is_an_error(run_copy, capsys):
    _edit_toml(run_copy, lambda m: m["baths"][0]["kernel"].__setitem__("gamma", 1.3))
    assert cli(["validate", run_copy]) == 2
    assert "model.toml" in _one_line_error(capsys)
    assert not (run_copy / "validation.json").exists()


def _reseal(d):
    """What a careful forger does last: every file checksum in provenance.json made to match the files."""
    def edit(prov):
        files = prov.get("checksums", {}).get("files_sha256") or {}
        for f in files:
            files[f] = hashlib.sha256((d / f).read_bytes()).hexdigest()
    _edit_json(d / "provenance.json", edit)


def _counts_tamper(d, move, forge):
    """Alter the stored counts; a careful forger (``forge``) also makes every stored checksum match."""
    p = d / "accumulators.npz"
    with np.load(p) as z:
        arr = {k: z[k] for k in z.files}
    if forge:
        acc = trajmc.load_run(d).acc  # the untouched run's accumulators, then with the altered counts
    move(arr["counts"])
    if forge:
        acc.counts = arr["counts"]
        forged = rundir.accumulator_checksum(acc)
        arr["checksum"] = np.array(forged)
        _edit_json(d / "provenance.json", lambda pr: pr["checksums"].__setitem__("accumulators_sha256", forged))
    np.savez(p, **arr)
    if forge:
        _reseal(d)


def test_altered_counts_are_an_error(run_copy, capsys):
    def move_one(c):
        i, j = np.argsort(c[3])[-2:]
        c[3, i] -= 1
        c[3, j] += 1
    _counts_tamper(run_copy, move_one, forge=False)
    assert cli(["validate", run_copy]) == 2
    assert "checksum" in _one_line_error(capsys)


def test_altered_counts_with_forged_checksum_disagree(run_copy, capsys):
    _counts_tamper(run_copy, lambda c: _move(c[4], 0.03), forge=True)
    trajmc.load_run(run_copy)  # the forgery gets past the checksum ...
    assert cli(["validate", run_copy, "--quiet"]) == 1  # ... but not past the statistics
    v, checks = _verdict(run_copy)
    assert not v["passed"] and checks["GillespieVsExact"]["verdict"] == "FAIL"


def _claim_seed(d, seed):
    _edit_toml(d, lambda m: m["simulation"].__setitem__("seed", seed))
    _edit_json(d / "provenance.json", lambda p: p["seed"].__setitem__("entropy", str(seed)))
    _reseal(d)


def test_other_seed_claimed_in_run_directory_disagrees(run_copy, capsys):
    _claim_seed(run_copy, RUN_SEED + 1)
    assert trajmc.load_run(run_copy).plan.entropy == RUN_SEED + 1  # consistent files load ...
    assert cli(["validate", run_copy]) == 1  # ... and ReproduceChunks catches the lie
    v, checks = _verdict(run_copy)
    assert not v["passed"] and checks["ReproduceChunks"]["verdict"] == "FAIL"
    assert "re-simulated" in checks["ReproduceChunks"]["detail"]
    assert "FAIL" in capsys.readouterr().out


def _seed_pair_with_equal_jumps(md, n):
    """Two seeds whose single-chunk runs of n trajectories make the same total number of jumps."""
    seen = {}
    for s in range(500):
        j = int(trajmc.simulate(md, trajectories=n, seed=s, threads=1).acc.jumps.sum())
        if j in seen:
            return seen[j], s
        seen[j] = s
    pytest.fail("no collision found")  # pragma: no cover


def test_other_seed_with_equal_jump_count_is_not_a_pass(tmp_path):
    """Regression: ReproduceChunks used to compare only the jump total of the first and last chunk; two
    seeds often make the same total, so a run claiming the other seed passed and `validate` exited 0."""
    md = get_model_dict("qubit_osc_sqrt")
    s_true, s_claimed = _seed_pair_with_equal_jumps(md, 30)
    d = tmp_path / "small"
    trajmc.simulate(md, trajectories=30, seed=s_true, out=d, threads=1)
    _claim_seed(d, s_claimed)
    rc = cli(["validate", d, "--quiet"])
    v, checks = _verdict(d) if (d / "validation.json").exists() else (None, {})
    assert checks.get("ReproduceChunks", {"verdict": "FAIL"})["verdict"] == "FAIL"
    assert rc != 0


def test_second_order_entries_are_not_z_tested():
    """MarginalEntropiesVsExact leaves out, and says so, the entries whose error is second order (not normal)."""
    md = trajmc.get_example("qubit-oscillators")
    ens = trajmc.simulate(md, trajectories=20_000, seed=31)
    (r,) = run_checks(ens, trajmc.solve(md), names=["MarginalEntropiesVsExact"])
    assert r.passed and "second-order error not z-tested" in r.detail
