"""Driving: piecewise-constant protocols ``eps_s(lambda_k)`` (docs/physics.md §4 first law, §5.7 Jarzynski).

* Exact solver: Jarzynski ``<exp(-beta W)> = Z(lambda(t)) / Z(lambda_0)`` from a global Gibbs start at
  1e-10, with ``Z`` computed in this file from the network states and an independent ``ln V``; the exact
  work distribution (normalisation, mean = ``sol.work()``) and the tilted average agree with it.
* An independent dense propagation (``scipy.linalg.expm`` of each segment's generator, tilting by
  ``exp(-beta dW)`` at each switch) reproduces ``sol.p``, the tilted average at every sample time, and
  the first law ``Delta E_S + sum Delta E_bath = W``; ``S_obs`` never decreases (V does not depend on
  the levels, so the H-theorem survives driving).
* A switch at a sample time: state before the switch, energies and work after it.
* Monte Carlo on both paths (enumerated network, implicit rate tables): seeded statistical agreement
  (G-tests, z-scores) of the streamed work histogram, Jarzynski and the thermodynamic table with the exact
  values, the first law on every trajectory exactly (streamed violation count and records), the
  pure-Python reference bit for bit, independence of threads and chunk schedule.
* ``validate`` checks pass on a driven run of either path and fail against a wrong exact solution or
  tampered accumulators; bad protocols are refused with the entry named; the ``driven-qubit`` example.

* Regression: the exact solver dropped parallel edges (degenerate levels with two or more baths) by
  assigning instead of adding them into its dense blocks; fixed with np.add.at.

False alarms: every statistical assertion has a stated false-alarm rate (ALPHA = 1e-6 per G-test;
|z| < 5 is 5.7e-7 two-sided per z-score; ``run_checks`` uses its Holm family at alpha = 1e-3).
The seeds are fixed, so a green run stays green.
"""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
from conftest import THREADS
from scipy.special import gammaln, logsumexp

import trajmc
from trajmc import _rng, engine
from trajmc import fluctuations as fl
from trajmc.ensemble import Ensemble
from trajmc.network import levels_at
from trajmc.reference import reference_chunk
from trajmc.stats import g_test
from trajmc.validate import run_checks, validate_run

# Per-assertion false-alarm rate of the G-tests in this file.
ALPHA = 1e-6
# |z| bound of z-score assertions: two-sided false-alarm rate 5.7e-7 each.
ZMAX = 5.0

OFF3 = [[0, 1, 1], [1, 0, 1], [1, 1, 0]]
PATHS = ("enumerated", "implicit")


def _osc(name, n, emax, kernel, w=1):
    return {"name": name, "dos": {"model": "oscillators", "n": n, "quantum": w}, "emax": emax, "kernel": kernel}


def _spins(name, n, emax, kernel, w=1):
    return {"name": name, "dos": {"model": "spins", "n": n, "quantum": w}, "emax": emax, "kernel": kernel}


def gibbs_initial(beta, n_baths):
    return {"system": {"gibbs": True, "beta": beta}, "baths": [{"state": "canonical", "beta": beta}] * n_baths}


# Driven models, all from the global Gibbs state at BETA[name].  Each protocol has several switches that
# raise and lower levels (and reorder them); the first switch of "qubit_osc" falls on a sample time.
BETA = {"qubit_osc": 0.8, "three_spins": 0.4, "two_baths": 0.9, "qubit_linear": 0.7}

DRIVEN = {
    # qubit + 6 oscillators, sqrt kernel: gap 1 -> 3 (raise) -> 2 (lower) -> levels swapped
    "qubit_osc": {
        "name": "qubit_osc",
        "system": {"energies": [0, 1], "coupling": [[0, 1], [1, 0]]},
        "baths": [_osc("B", 6, 60, {"model": "sqrt", "gamma": 1.0, "spectral": {"shape": "flat"}})],
        "initial": gibbs_initial(BETA["qubit_osc"], 1),
        "times": {"values": [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0]},
        "protocol": [{"time": 0.5, "energies": [0, 3]}, {"time": 1.1, "energies": [0, 2]},
                     {"time": 1.3, "energies": [2, 0]}],
    },
    # 3 levels + 30 spins, eth kernel, gaussian J: levels reordered, raised, lowered (also below 0)
    "three_spins": {
        "name": "three_spins",
        "system": {"energies": [0, 1, 3], "coupling": OFF3},
        "baths": [_spins("spin", 30, 30, {"model": "eth", "gamma": 0.7,
                                           "spectral": {"shape": "gaussian", "width": 2.0}})],
        "initial": gibbs_initial(BETA["three_spins"], 1),
        "times": {"values": [0.0, 0.2, 0.45, 0.7, 1.0, 1.4, 2.0]},
        "protocol": [{"time": 0.3, "energies": [0, 2, 1]}, {"time": 0.8, "energies": [0, 1, 4]},
                     {"time": 1.2, "energies": [1, -1, 2]}],
    },
    # 3 levels between two baths at the same beta (oscillators/sqrt and spins/eth)
    "two_baths": {
        "name": "two_baths",
        "system": {"energies": [0, 1, 2], "coupling": OFF3},
        "baths": [_osc("A", 3, 30, {"model": "sqrt", "gamma": 1.0}),
                  _spins("C", 8, 8, {"model": "eth", "gamma": 0.5,
                                     "spectral": {"shape": "exponential", "cutoff": 2.0}})],
        "initial": gibbs_initial(BETA["two_baths"], 2),
        "times": {"values": [0.0, 0.3, 0.6, 1.0, 1.5]},
        "protocol": [{"time": 0.2, "energies": [0, 2, 3]}, {"time": 0.7, "energies": [1, 0, 2]},
                     {"time": 1.2, "energies": [0, 1, 3]}],
    },
    # qubit + 5 oscillators, linear kernel (jumps move one quantum): the gap-2 segment is frozen
    # (no state has an out-edge), so the kernel must also handle a == b rows across a switch;
    # levels swapped (relaxation), then frozen at gap 2, then both raised by 1
    "qubit_linear": {
        "name": "qubit_linear",
        "system": {"energies": [0, 1], "coupling": [[0, 1], [1, 0]]},
        "baths": [_osc("L", 5, 48, {"model": "linear", "gamma": 0.8})],
        "initial": gibbs_initial(BETA["qubit_linear"], 1),
        "times": {"values": [0.0, 0.4, 0.8, 1.2, 1.6, 2.0]},
        "protocol": [{"time": 0.3, "energies": [1, 0]}, {"time": 0.9, "energies": [0, 2]},
                     {"time": 1.4, "energies": [1, 2]}],
    },
}


def driven(name) -> dict:
    return copy.deepcopy(DRIVEN[name])


_SOL = {}


def solved(name):
    """Cached exact solution of a driven model (read-only)."""
    if name not in _SOL:
        _SOL[name] = trajmc.solve(driven(name))
    return _SOL[name]


# --------------------------------------------------------------------------- independent helpers


def lnv_independent(bath: dict, E):
    """ln V of a bath dict, written out here from docs/physics.md §1 (not trajmc.dos)."""
    d = bath["dos"]
    w, n = d.get("quantum", 1), d["n"]
    E = np.asarray(E)
    k = E // w
    on = E % w == 0
    with np.errstate(invalid="ignore"):
        if d["model"] == "oscillators":
            v = gammaln(k + n) - gammaln(k + 1) - gammaln(n)
        else:
            on = on & (k <= n)
            kk = np.minimum(k, n)
            v = gammaln(n + 1) - gammaln(kk + 1) - gammaln(n - kk + 1)
    return np.where(on, v, -np.inf)


def protocol_levels(md):
    """[(start time, energies)] straight from the model dict."""
    return [(0.0, np.array(md["system"]["energies"]))] + [(float(s["time"]), np.array(s["energies"]))
                                                            for s in md["protocol"]]


def levels_in_force(md, t):
    """Level energies in force at time t (a switch at t counts at t)."""
    cur = None
    for t0, e in protocol_levels(md):
        if t0 <= t:
            cur = e
    return cur


def log_z(states, lnV, eps, beta):
    """ln Z(lambda) = logsumexp over the joint states of lnV_x - beta (eps_s + sum_nu E_nu)."""
    return logsumexp(lnV - beta * (eps[states[:, 0]] + states[:, 1:].sum(axis=1)))


def log_z_grid(md, eps, beta):
    """ln Z(lambda) over the whole product grid: ln sum_s e^{-beta eps_s} + sum_nu ln sum_E V_E e^{-beta E}."""
    out = logsumexp(-beta * np.asarray(eps, dtype=float))
    for b in md["baths"]:
        E = np.arange(b["emax"] + 1)
        out += logsumexp(lnv_independent(b, E) - beta * E)
    return out


def dense_propagation(sol, md, beta):
    """p(t) and <exp(-beta W)>(t) at the sample times by dense expm, segment by segment.

    The per-state work at a switch comes from the model dict; the tilted vector q carries
    exp(-beta W) (q = p before the first switch).
    """
    segs = sol.segments
    s = sol.network.states[:, 0]
    prot = protocol_levels(md)
    assert len(prot) == len(segs)
    gens = [net.generator().toarray() for _, net in segs]
    p = sol.network.p0.copy()
    q = p.copy()
    t_cur, k_cur = 0.0, 0
    P, tilt, work = [], [], []
    W_mean = 0.0
    for t in sol.times:
        # every switch with t_k <= t happens first (propagate up to it, then tilt)
        while k_cur + 1 < len(prot) and prot[k_cur + 1][0] <= t:
            t_sw = prot[k_cur + 1][0]
            U = scipy.linalg.expm(gens[k_cur] * (t_sw - t_cur))
            p, q = U @ p, U @ q
            dW = (prot[k_cur + 1][1] - prot[k_cur][1])[s].astype(float)
            W_mean += p @ dW
            q = q * np.exp(-beta * dW)
            t_cur, k_cur = t_sw, k_cur + 1
        if t > t_cur:
            U = scipy.linalg.expm(gens[k_cur] * (t - t_cur))
            p, q = U @ p, U @ q
            t_cur = t
        P.append(p.copy())
        tilt.append(q.sum())
        work.append(W_mean)
    return np.array(P), np.array(tilt), np.array(work)


# --------------------------------------------------------------------------- 1. Jarzynski, exact solver


@pytest.mark.parametrize("name", list(DRIVEN))
def test_jarzynski_exact_equals_partition_function_ratio(name):
    md = driven(name)
    beta = BETA[name]
    sol = solved(name)
    net = sol.network
    states = net.states
    # ln V of the network states from an independent formula
    lnV = sum(lnv_independent(b, states[:, 1 + nu]) for nu, b in enumerate(md["baths"]))
    np.testing.assert_allclose(net.lnV, lnV, rtol=0, atol=1e-10)
    # the Gibbs start is the global Gibbs state of the grid, and the model knows it
    lz0 = log_z(states, lnV, np.array(md["system"]["energies"]), beta)
    gibbs = np.exp(lnV - beta * (np.array(md["system"]["energies"])[states[:, 0]] + states[:, 1:].sum(1)) - lz0)
    np.testing.assert_allclose(net.p0, gibbs, rtol=0, atol=1e-13)
    assert fl.global_gibbs_beta(sol.model, net) == pytest.approx(beta, abs=0)
    # Z(lambda(t)) / Z(lambda_0) at every sample time (after the last switch: Z_final / Z_0)
    expected = np.array([np.exp(log_z(states, lnV, levels_in_force(md, t), beta) - lz0) for t in sol.times])
    # the network states are the whole grid: Z agrees with the product-grid partition function
    for _, e in protocol_levels(md):
        assert log_z(states, lnV, e, beta) == pytest.approx(log_z_grid(md, e, beta), abs=1e-10)
    assert len(np.unique(np.round(expected, 6))) >= 3  # the protocol really changes Z
    tilted = fl.tilted_work_average(sol.segments, sol.times, beta)
    np.testing.assert_allclose(tilted, expected, rtol=0, atol=1e-10)
    final = np.exp(log_z(states, lnV, protocol_levels(md)[-1][1], beta) - lz0)
    assert fl.gibbs_ratio(sol.segments, beta) == pytest.approx(final, abs=1e-10)
    assert tilted[-1] == pytest.approx(final, abs=1e-10)
    # the exact work distribution: normalised, mean = sol.work(), exp(-beta W) average = Z ratio
    w, P = fl.work_distribution(sol.segments, sol.times)
    assert np.all(P >= -1e-15)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(P @ w, sol.work(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(P @ np.exp(-beta * w), expected, rtol=0, atol=1e-10)
    # before the first switch no work is done
    before = sol.times < protocol_levels(md)[1][0]
    assert np.all(P[before][:, w == 0] == pytest.approx(1.0, abs=1e-15))
    # and W really fluctuates afterwards (a non-trivial test)
    assert np.count_nonzero(P[-1] > 1e-6) >= 3


def test_jarzynski_fails_off_gibbs():
    """The identity needs the global Gibbs start: a system prepared in its excited state violates it
    (guards against a tilted average that is the Z ratio for any start)."""
    md = driven("qubit_osc")
    md["initial"]["system"] = [0.0, 1.0]
    sol = trajmc.solve(md)
    beta = BETA["qubit_osc"]
    assert fl.global_gibbs_beta(sol.model, sol.network) is None
    tilted = fl.tilted_work_average(sol.segments, sol.times[-1:], beta)[0]
    assert abs(tilted - fl.gibbs_ratio(sol.segments, beta)) > 1e-2


# --------------------------------------------------------------------------- 2. independent dense calculation


@pytest.mark.parametrize("name", list(DRIVEN))
def test_dense_propagation_matches_solver(name):
    md = driven(name)
    beta = BETA[name]
    sol = solved(name)
    P, tilt, work = dense_propagation(sol, md, beta)
    np.testing.assert_allclose(sol.p, P, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fl.tilted_work_average(sol.segments, sol.times, beta), tilt, rtol=0, atol=1e-10)
    np.testing.assert_allclose(sol.work(), work, rtol=0, atol=1e-12)
    # Jarzynski from the dense calculation as well
    lz0 = log_z(sol.network.states, sol.network.lnV, np.array(md["system"]["energies"]), beta)
    final = np.exp(log_z(sol.network.states, sol.network.lnV, protocol_levels(md)[-1][1], beta) - lz0)
    assert tilt[-1] == pytest.approx(final, abs=1e-10)
    # levels in force
    np.testing.assert_array_equal(sol.levels(), np.array([levels_in_force(md, t) for t in sol.times]))
    # first law in the exact thermodynamic table: Delta E_S + sum Delta E_bath = W
    th = sol.thermo()
    assert "W" in th
    dE = th["E_S"] - th["E_S"].iloc[0]
    for b in sol.model.bath_names:
        dE = dE + th[f"E_{b}"] - th[f"E_{b}"].iloc[0]
        np.testing.assert_allclose(th[f"Q_{b}"], -(th[f"E_{b}"] - th[f"E_{b}"].iloc[0]), rtol=0, atol=1e-12)
    np.testing.assert_allclose(dE.values, th["W"].values, rtol=0, atol=1e-10)
    np.testing.assert_allclose(th["W"].values, work, rtol=0, atol=1e-12)
    # E_S with the levels in force, from the dense p
    eps_t = np.array([levels_in_force(md, t) for t in sol.times])[:, sol.network.states[:, 0]]
    np.testing.assert_allclose(th["E_S"].values, np.sum(P * eps_t, axis=1), rtol=0, atol=1e-10)
    # H-theorem under driving: S_obs never decreases (V does not depend on the levels) ...
    assert np.all(np.diff(th["S_obs"].values) >= -1e-10)
    assert th["Sigma"].iloc[-1] > 1e-3
    # ... and every segment's generator keeps the same V invariant: W V = 0
    v = np.exp(sol.network.lnV - sol.network.lnV.max())
    for _, net in sol.segments:
        np.testing.assert_array_equal(net.lnV, sol.network.lnV)
        G = net.generator()
        np.testing.assert_allclose(G @ v, 0.0, rtol=0, atol=1e-13 * max(1.0, net.exit_rate.max()))


def test_dense_tilt_at_a_finer_time_grid():
    """<exp(-beta W)>(t) is piecewise constant = Z(lambda(t))/Z_0 on a fine grid spanning all switches."""
    md = driven("three_spins")
    md["times"] = {"stop": 2.0, "num": 21}
    sol = trajmc.solve(md)
    beta = BETA["three_spins"]
    _, tilt, _ = dense_propagation(sol, md, beta)
    st, lnV = sol.network.states, sol.network.lnV
    lz0 = log_z(st, lnV, np.array(md["system"]["energies"]), beta)
    expected = np.array([np.exp(log_z(st, lnV, levels_in_force(md, t), beta) - lz0) for t in sol.times])
    np.testing.assert_allclose(tilt, expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(fl.tilted_work_average(sol.segments, sol.times, beta), expected, rtol=0, atol=1e-10)


# Two baths and degenerate levels: the jump s -> s' with eps_s = eps_s' moves no energy, so it goes through
# every bath to the SAME target state; the network keeps one edge per bath (parallel edges).
DEGENERATE_BUG = ("fixed bug: trajmc/solver.py _eigh_route (line ~220) and _expm_route (line ~256) build the dense "
                  "block generator with fancy-index assignment A[b, local[y], local[x]] = ..., so parallel edges (same "
                  "source and target through different baths, i.e. degenerate levels with >= 2 baths) overwrite "
                  "each other instead of adding; fix: np.add.at(A, (b, local[y], local[x]), values) (same for W)")


def degenerate_two_baths(n_spins):
    return {"name": "degenerate", "system": {"energies": [0, 1, 1], "coupling": OFF3},
            "baths": [_osc("A", 1, 10, {"model": "sqrt", "gamma": 1.0}),
                      _spins("C", n_spins, n_spins, {"model": "sqrt", "gamma": 0.5})],
            "initial": {"system": [0.0, 1.0, 0.0],
                        "baths": [{"state": "microcanonical", "energy": 5}, {"state": "canonical", "beta": 0.9}]},
            "times": {"values": [0.0, 0.3, 1.0]}}


@pytest.mark.regression
@pytest.mark.parametrize("route, n_spins", [("eigh", 8), ("expm", 20), ("chebyshev", 20), (None, 20)])
def test_solver_two_baths_degenerate_levels_vs_dense(route, n_spins, monkeypatch):
    """Undriven: the solver (each route forced, and the cost model) against dense expm of net.generator()
    (which sums duplicate entries)."""
    import trajmc.solver as solver_mod

    monkeypatch.setattr(solver_mod, "FORCE_ROUTE", route)
    sol = trajmc.solve(degenerate_two_baths(n_spins))
    net = sol.network
    pairs = np.stack([net.source, net.target], axis=1)
    assert len(np.unique(pairs, axis=0)) < net.n_edges  # parallel edges exist
    if route is not None:
        assert sol.info[route] > 0
    G = net.generator().toarray()
    P = np.array([scipy.linalg.expm(G * t) @ net.p0 for t in sol.times])
    np.testing.assert_allclose(sol.p, P, rtol=0, atol=1e-12)


def degenerate_driven():
    md = driven("two_baths")
    md["protocol"][-1]["energies"] = [0, 1, 1]  # the last segment has degenerate levels
    return md


@pytest.mark.regression
def test_driven_into_degenerate_levels_two_baths_vs_dense():
    md = degenerate_driven()
    sol = trajmc.solve(md)
    P, tilt, work = dense_propagation(sol, md, BETA["two_baths"])
    # Jarzynski survives (the tilted state is stationary), the distribution does not
    np.testing.assert_allclose(fl.tilted_work_average(sol.segments, sol.times, BETA["two_baths"]), tilt,
                               rtol=0, atol=1e-10)
    np.testing.assert_allclose(sol.p, P, rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_monte_carlo_agrees_with_dense_for_degenerate_levels(path):
    """The kernels handle parallel edges (one jump through either bath) correctly: p_x(t) (enumerated) or the
    system and bath marginals (implicit) match the dense propagation (G-test, ALPHA per time and
    distribution), so the discrepancy above was the solver's."""
    md = degenerate_driven()
    sol = trajmc.solve(md)
    P, _, _ = dense_propagation(sol, md, BETA["two_baths"])
    P = np.maximum(P, 0.0)
    ens = trajmc.simulate(md, trajectories=MC_N, seed=99, threads=THREADS, chunk_size=4096, engine=path)
    st = sol.network.states
    N = ens.trajectories
    for k in range(len(ens.times)):
        if path == "enumerated":
            r = g_test(ens.counts[k], P[k])
            assert r.impossible == 0 and r.pvalue > ALPHA, (ens.times[k], r)
        r = g_test(ens.acc.sys2[k].sum(axis=0), np.bincount(st[:, 0], weights=P[k], minlength=3))
        assert r.impossible == 0 and r.pvalue > ALPHA, (ens.times[k], r)
        for nu in range(2):
            pE = ens.bath_distribution(nu, k)
            exact = np.bincount(st[:, 1 + nu], weights=P[k])
            assert set(pE.index) <= set(np.flatnonzero(exact > 0))
            obs = np.zeros(len(exact))
            obs[pE.index.values] = np.rint(pE.values * N)
            r = g_test(obs, exact)
            assert r.impossible == 0 and r.pvalue > ALPHA, (ens.times[k], nu, r)


def test_switch_after_the_last_sample_time():
    """A protocol entry beyond the sample times does no work yet; the run is still driven."""
    md = driven("qubit_osc")
    md["protocol"] = [{"time": 5.0, "energies": [0, 4]}]
    sol = trajmc.solve(md)
    assert len(sol.segments) == 2
    np.testing.assert_array_equal(sol.work(), 0.0)
    np.testing.assert_array_equal(sol.levels(), np.tile(md["system"]["energies"], (len(sol.times), 1)))
    np.testing.assert_allclose(fl.tilted_work_average(sol.segments, sol.times, BETA["qubit_osc"]), 1.0,
                               rtol=0, atol=1e-13)
    for path in PATHS:
        plan = engine.make_plan(md, trajectories=500, seed=1, chunk_size=250, records=True, engine=path)
        assert plan.driven
        acc = engine.new_accumulators(plan)
        engine.run_plan(plan, acc, 1)
        assert np.all(acc.rec_w == 0)
        assert np.all(acc.work[:, plan.woff] == 500) and acc.work.sum() == 500 * len(plan.times)


# --------------------------------------------------------------------------- 3. switch at a sample time


def test_switch_at_sample_time_state_before_energies_after():
    md = driven("qubit_osc")
    t_sw = md["protocol"][0]["time"]
    # sample just before, at, and just after the first switch
    times = [0.0, 0.25, t_sw - 1e-9, t_sw, t_sw + 1e-9, 1.0]
    sol = trajmc.solve(md, times=times)
    k = times.index(t_sw)
    e0, e1 = np.array(md["system"]["energies"]), np.array(md["protocol"][0]["energies"])
    lev = sol.levels()
    np.testing.assert_array_equal(lev[k - 1], e0)
    np.testing.assert_array_equal(lev[k], e1)  # the switch counts at t_sw
    np.testing.assert_array_equal(lev[k + 1], e1)
    # the state at t_sw is the pre-switch state: the Gibbs start is stationary before the switch
    np.testing.assert_allclose(sol.p[k], sol.network.p0, rtol=0, atol=1e-13)
    np.testing.assert_allclose(sol.p[k - 1], sol.network.p0, rtol=0, atol=1e-13)
    # the work at t_sw already includes the switch: <eps_new - eps_old> in the pre-switch state
    s = sol.network.states[:, 0]
    W_sw = float(sol.network.p0 @ (e1 - e0)[s])
    assert W_sw > 0.1
    W = sol.work()
    assert W[k - 1] == 0.0
    assert W[k] == pytest.approx(W_sw, abs=1e-14)
    assert W[k + 1] == pytest.approx(W_sw, abs=1e-14)
    th = sol.thermo()
    assert th["E_S"].iloc[k] == pytest.approx(float(sol.p[k] @ e1[s]), abs=1e-14)
    assert th["E_S"].iloc[k] - th["E_S"].iloc[0] == pytest.approx(W_sw, abs=1e-12)
    beta = BETA["qubit_osc"]
    tilt = fl.tilted_work_average(sol.segments, sol.times, beta)
    assert tilt[k - 1] == pytest.approx(1.0, abs=1e-14)
    assert tilt[k] == pytest.approx(float(sol.network.p0 @ np.exp(-beta * (e1 - e0)[s])), abs=1e-12)
    w, P = fl.work_distribution(sol.segments, sol.times)
    assert P[k, w == 0][0] == pytest.approx(float(sol.network.p0[s == 0].sum()), abs=1e-12)
    assert P[k, w == 2][0] == pytest.approx(float(sol.network.p0[s == 1].sum()), abs=1e-12)

    # the Monte Carlo agrees (both paths): the recorded state at t_sw equals the one just before, the work not
    for path in PATHS:
        plan = engine.make_plan(md, trajectories=2000, seed=3, times=times, chunk_size=500, records=True, engine=path)
        acc = engine.new_accumulators(plan)
        engine.run_plan(plan, acc, 1)
        rx, rw = acc.rec_x, acc.rec_w
        # a trajectory that did not jump in (t_sw - 1e-9, t_sw] (essentially all) keeps its state at t_sw
        assert np.mean(rx[:, k] == rx[:, k - 1]) > 0.999
        assert np.all(rw[:, k - 1] == 0)
        level = plan.network.states[rx[:, k], 0] if path == "enumerated" else rx[:, k]
        np.testing.assert_array_equal(rw[:, k], (e1 - e0)[level])
        np.testing.assert_array_equal(rw[:, k + 1], rw[:, k])
        np.testing.assert_array_equal(plan.clock.levels[plan.clock.seg_of[k]], e1)
    np.testing.assert_array_equal(levels_at(sol.segments, times)[k], e1)


def test_switch_at_the_last_sample_time():
    md = driven("qubit_osc")
    md["protocol"] = [{"time": 0.5, "energies": [0, 3]}, {"time": 2.0, "energies": [1, 0]}]
    sol = trajmc.solve(md)
    assert sol.times[-1] == 2.0
    s = sol.network.states[:, 0]
    d = np.array([1, -3])[s]  # [0, 3] -> [1, 0]
    W = sol.work()
    assert W[-1] - W[-2] == pytest.approx(float(sol.p[-1] @ d), abs=1e-13)
    np.testing.assert_array_equal(sol.levels()[-1], [1, 0])
    for path in PATHS:
        plan = engine.make_plan(md, trajectories=1000, seed=8, chunk_size=500, records=True, engine=path)
        acc = engine.new_accumulators(plan)
        engine.run_plan(plan, acc, THREADS)
        lev = plan.network.states[acc.rec_x, 0] if path == "enumerated" else acc.rec_x
        np.testing.assert_array_equal(acc.rec_w[:, -1] - acc.rec_w[:, -2], np.array([1, -3])[lev[:, -1]])
        np.testing.assert_array_equal(acc.rec_w[:, -2], np.array([0, 2])[lev[:, 2]])


# --------------------------------------------------------------------------- 4. Monte Carlo vs exact


MC_N = 40_000


_MC = {}


def mc_run(name, path):
    """(Ensemble, Solution) of a seeded driven run with records (cached; read-only)."""
    if (name, path) not in _MC:
        seed = {"qubit_osc": 20240601, "two_baths": 77}[name]
        ens = trajmc.simulate(driven(name), trajectories=MC_N, seed=seed, threads=THREADS, chunk_size=4096,
                              records=True, engine=path)
        assert ens.plan.path == path
        _MC[(name, path)] = (ens, solved(name))
    return _MC[(name, path)]


def _mc_vs_exact(ens, sol, beta):
    assert ens.plan.driven
    # work distribution at every sample time: G-test (ALPHA per time)
    w, P = fl.work_distribution(sol.segments, sol.times)
    grid = np.arange(-ens.plan.woff, ens.plan.woff + 1)
    for k in range(len(ens.times)):
        obs = np.zeros(len(w))
        h = ens.acc.work[k]
        assert h.sum() == ens.trajectories
        inside = np.isin(grid, w)
        assert h[~inside].sum() == 0
        obs[np.searchsorted(w, grid[inside])] = h[inside]
        r = g_test(obs, P[k])
        assert r.impossible == 0
        assert r.pvalue > ALPHA, f"t = {ens.times[k]}: G = {r.statistic}, df = {r.df}"
    # the histogram of ens.work_distribution() is the accumulator's
    wd = ens.work_distribution(-1)
    assert wd.sum() == pytest.approx(1.0, abs=1e-12) and len(wd) >= 3
    # <exp(-beta W)> at every sample time: z-score against the exact value (= Z ratio)
    N = ens.trajectories
    hw = ens.acc.work / N
    e = np.exp(-beta * grid)
    mean = hw @ e
    se = np.sqrt(np.maximum(hw @ e**2 - mean**2, 0) / (N - 1))
    exact = fl.tilted_work_average(sol.segments, ens.times, beta)
    moving = se > 0
    assert moving.sum() >= 2
    z = (mean[moving] - exact[moving]) / se[moving]
    assert np.all(np.abs(z) < ZMAX), z
    np.testing.assert_allclose(mean[~moving], exact[~moving], rtol=0, atol=1e-12)
    # thermodynamic table: W, E_S and the heats against the exact values
    th, ex = ens.thermo(), sol.thermo()
    cols = ["W", "E_S"] + [f"Q_{b}" for b in ens.model.bath_names] + [f"E_{b}" for b in ens.model.bath_names]
    for c in cols:
        est, s_e, x = th[c].values, th[f"{c}_se"].values, ex[c].values
        pos = s_e > 0
        z = (est[pos] - x[pos]) / s_e[pos]
        assert np.all(np.abs(z) < ZMAX), (c, z)
        np.testing.assert_allclose(est[~pos], x[~pos], rtol=0, atol=1e-12)
    assert np.all(th["W_se"].values[ens.times >= sol.segments[1][0]] > 0)
    # the streamed W and W_se against the per-trajectory work records: the plain mean and standard error
    rw = ens.records["work"]
    np.testing.assert_allclose(th["W"].values, rw.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(th["W_se"].values, rw.std(axis=0, ddof=0) / np.sqrt(N - 1), rtol=1e-9, atol=1e-15)
    # the Monte Carlo first law of the means holds exactly (same trajectories)
    dE = th["E_S"] - th["E_S"].iloc[0]
    for b in ens.model.bath_names:
        dE = dE - th[f"Q_{b}"]
    np.testing.assert_allclose(dE.values, th["W"].values, rtol=0, atol=1e-10)


def _first_law_per_trajectory(ens):
    """From the records: eps_s(t) + sum_b E_b(t) - W(t) is constant along every trajectory."""
    rec = ens.records
    w = rec["work"]
    if "x" in rec:
        st = ens.network.states
        s, E = st[rec["x"], 0], st[rec["x"], 1:]
    else:
        s, E = rec["s"], rec["E"]
    lev = levels_at(ens.plan.segments, ens.times) if ens.plan.segments is not None else \
        ens.plan.clock.levels[ens.plan.clock.seg_of]  # (n_t, n_s)
    es = lev[np.arange(len(ens.times))[None, :], s]
    assert np.all(es == np.rint(es))
    total = es.astype(np.int64) + E.sum(axis=-1) - w.astype(np.int64)
    assert np.count_nonzero(total != total[:, :1]) == 0
    # the kernel's own count agrees: no violation among all (trajectory, time) samples
    bad, n = ens.first_law
    assert bad == 0 and n == ens.trajectories * len(ens.times)
    # the work record changes only across a switch
    t = ens.times
    switches = ens.plan.clock.seg_t[:-1]
    for k in range(1, len(t)):
        if not np.any((switches > t[k - 1]) & (switches <= t[k])):
            np.testing.assert_array_equal(w[:, k], w[:, k - 1])
    # the test is not vacuous: trajectories jump and do work of several sizes
    assert np.any(rec["jumps"][:, -1] > 0)
    assert len(np.unique(w[:, -1])) >= 3


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ["qubit_osc", "two_baths"])
def test_monte_carlo_vs_exact(name, path):
    ens, sol = mc_run(name, path)
    _mc_vs_exact(ens, sol, BETA[name])


@pytest.mark.parametrize("path", PATHS)
def test_monte_carlo_distributions_vs_exact(path):
    """p_x(t) (enumerated) and the system marginal at every sample time (G-test, ALPHA per time): the
    switches do not bias the trajectories."""
    ens, sol = mc_run("qubit_osc", path)
    ps = sol.p_system()
    for k in range(len(ens.times)):
        if path == "enumerated":
            r = g_test(ens.counts[k], sol.p[k])
            assert r.impossible == 0 and r.pvalue > ALPHA, (ens.times[k], r)
        r = g_test(ens.acc.sys2[k].sum(axis=0), ps[k])
        assert r.impossible == 0 and r.pvalue > ALPHA, (ens.times[k], r)


@pytest.mark.parametrize("path", PATHS)
def test_first_law_on_every_trajectory(path):
    for name in ("qubit_osc", "two_baths"):
        _first_law_per_trajectory(mc_run(name, path)[0])


# --------------------------------------------------------------------------- 5. reference bit for bit


def _level(plan, x):
    return plan.network.states[x, 0] if plan.path == "enumerated" else x


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ["qubit_osc", "qubit_linear", "two_baths"])
def test_reference_reproduces_driven_kernel_bit_for_bit(name, path, monkeypatch):
    N, cs, K = 150, 64, 10  # chunks 0, 1 full, chunk 2 partial
    plan = engine.make_plan(driven(name), trajectories=N, seed=424242, chunk_size=cs, records=True, paths=K,
                            engine=path)
    assert plan.driven and plan.n_chunks == 3 and plan.path == path
    acc = engine.new_accumulators(plan)
    engine.run_plan(plan, acc, THREADS)
    n_switch_crossed = 0
    for c in range(3):
        size = int(plan.chunk_sizes(c, c + 1)[0])
        ref = reference_chunk(plan, _rng.chunk_state(plan.entropy, c), size)
        lo = c * cs
        np.testing.assert_array_equal(acc.rec_x[lo:lo + size], np.array([r["x"] for r in ref]))
        np.testing.assert_array_equal(acc.rec_n[lo:lo + size], np.array([r["jumps"] for r in ref]))
        np.testing.assert_array_equal(acc.rec_w[lo:lo + size], np.array([r["work"] for r in ref]))
        if path == "implicit":
            np.testing.assert_array_equal(acc.rec_E[lo:lo + size], np.array([r["E"] for r in ref]))
        assert acc.jumps[c] == sum(r["total_jumps"] for r in ref)
        n_switch_crossed += sum(np.any(r["work"] != 0) for r in ref)
        if c == 0:
            for i in range(K):
                L = acc.path_len[i]
                assert L == len(ref[i]["path_t"])
                assert np.array_equal(acc.path_t[i, :L], ref[i]["path_t"])
                assert np.array_equal(acc.path_x[i, :L], ref[i]["path_x"])
                if path == "implicit":
                    assert np.array_equal(acc.path_E[i, :L], ref[i]["path_E"])
    assert n_switch_crossed > 10  # switches change the work of many trajectories
    # the streamed work histogram is the per-trajectory work
    for k in range(len(plan.times)):
        np.testing.assert_array_equal(acc.work[k], np.bincount(acc.rec_w[:, k] + plan.woff,
                                                               minlength=2 * plan.woff + 1))
    # full paths on chunk 1's stream: feed chunk slot 0 the generator state of chunk 1
    real = _rng.chunk_state
    monkeypatch.setattr(engine._rng, "chunk_state", lambda e, i: real(e, 1 if i == 0 else i))
    plan1 = engine.make_plan(driven(name), trajectories=cs, seed=424242, chunk_size=cs, records=True, paths=K,
                             engine=path)
    acc1 = engine.new_accumulators(plan1)
    engine.run_plan(plan1, acc1, 1)
    monkeypatch.undo()
    ref = reference_chunk(plan1, real(plan1.entropy, 1), cs)
    np.testing.assert_array_equal(acc1.rec_x, acc.rec_x[cs:2 * cs])
    np.testing.assert_array_equal(acc1.rec_w, acc.rec_w[cs:2 * cs])
    for i in range(K):
        L = acc1.path_len[i]
        assert L == len(ref[i]["path_t"])
        assert np.array_equal(acc1.path_t[i, :L], ref[i]["path_t"])
        assert np.array_equal(acc1.path_x[i, :L], ref[i]["path_x"])
    assert acc.path_len.sum() + acc1.path_len.sum() > 4 * K


@pytest.mark.parametrize("path", PATHS)
def test_frozen_segment_in_kernel_and_reference(path):
    """The gap-2 segment of the linear-kernel model has no jump at all: no trajectory jumps in it, jumps
    resume after the next switch, and kernel and reference agree on every path."""
    md = driven("qubit_linear")
    md["times"] = {"values": [0.0, 0.5, 0.95, 1.1, 1.3, 1.6, 2.0]}
    t_b, t_c = md["protocol"][1]["time"], md["protocol"][2]["time"]
    plan = engine.make_plan(md, trajectories=200, seed=5, chunk_size=200, records=True, paths=200, engine=path)
    if path == "enumerated":
        assert np.all(np.diff(plan.segments[2][1].indptr) == 0)  # frozen segment
        assert plan.segments[1][1].n_edges > 0 and plan.segments[3][1].n_edges > 0
    acc = engine.new_accumulators(plan)
    engine.run_plan(plan, acc, 1)
    ref = reference_chunk(plan, _rng.chunk_state(plan.entropy, 0), 200)
    resumed = 0
    for i, r in enumerate(ref):
        assert not np.any((r["path_t"] > t_b) & (r["path_t"] < t_c))
        resumed += np.any(r["path_t"] > t_c)
        L = acc.path_len[i]
        assert L == len(r["path_t"])
        assert np.array_equal(acc.path_t[i, :L], r["path_t"])
        assert np.array_equal(acc.path_x[i, :L], r["path_x"])
        np.testing.assert_array_equal(acc.rec_w[i], r["work"])
    assert resumed > 50
    # jump counts and states constant over the frozen segment (samples at 0.95, 1.1, 1.3)
    for k in (3, 4):
        np.testing.assert_array_equal(acc.rec_n[:, k], acc.rec_n[:, 2])
        np.testing.assert_array_equal(acc.rec_x[:, k], acc.rec_x[:, 2])
    assert np.any(acc.rec_n[:, 5] > acc.rec_n[:, 4])


# --------------------------------------------------------------------------- 6. threads and chunk schedules


@pytest.mark.parametrize("path", PATHS)
def test_threads_and_schedule_bit_identical_driven(path):
    """One thread in one go against THREADS threads stopped after 7 of 20 chunks and continued: every
    accumulator and the thermodynamic table are bit-identical."""
    md = driven("three_spins")
    out = []
    for threads, stops in ((1, [None]), (THREADS, [7, None])):
        plan = engine.make_plan(md, trajectories=6000, seed=11, chunk_size=300, records=True, paths=5, engine=path)
        acc = engine.new_accumulators(plan)
        for stop in stops:
            engine.run_plan(plan, acc, threads, stop_after=stop)
        out.append((plan, acc))
    (p1, a1), (p2, a2) = out
    assert p1.driven and p1.n_chunks == 20 and a2.chunks_done == 20
    arrays = a1.arrays()
    assert set(arrays) == set(a2.arrays()) and {"work", "rec_w", "mom"} <= set(arrays)
    for f, x in arrays.items():
        y = getattr(a2, f)
        assert x.dtype == y.dtype and np.array_equal(x, y), f
    assert np.any(a1.work[-1, a1.work.shape[1] // 2 + 1:] > 0) and np.any(a1.work[-1, :a1.work.shape[1] // 2] > 0)
    pd.testing.assert_frame_equal(Ensemble(p1, a1, {}).thermo(), Ensemble(p2, a2, {}).thermo(), check_exact=True)


# --------------------------------------------------------------------------- 7. validate


DRIVEN_CHECKS = ["EnergyConservation", "JarzynskiVsExact", "WorkDistributionVsExact"]


@pytest.mark.parametrize("path", PATHS)
def test_validate_driven_run_passes(path):
    ens, sol = mc_run("qubit_osc", path)
    res = {r.name: r for r in run_checks(ens, sol)}
    for n in DRIVEN_CHECKS:
        assert res[n].counted and res[n].passed, res[n]
    assert res["EnergyConservation"].statistic == 0
    assert "Z_final/Z_0" in res["JarzynskiVsExact"].detail
    # every other counted check on a correct driven run passes too (Holm family, alpha 1e-3)
    failed = [(r.name, r.detail) for r in res.values() if r.counted and not r.passed]
    assert not failed, failed


@pytest.mark.parametrize("path", PATHS)
def test_validate_fails_against_wrong_protocol(path):
    """Power: the driven checks reject an exact solution of another protocol."""
    ens, _ = mc_run("qubit_osc", path)

    def checks_against(edit):
        md = driven("qubit_osc")
        edit(md["protocol"])
        return {r.name: r for r in run_checks(ens, trajmc.solve(md), names=DRIVEN_CHECKS)}

    # the final switch goes to [3, 0] instead of [2, 0]: Z_final changes, both checks see it
    res = checks_against(lambda pr: pr[2].update(energies=[3, 0]))
    assert not res["WorkDistributionVsExact"].passed
    assert not res["JarzynskiVsExact"].passed
    assert res["EnergyConservation"].passed  # a property of the run alone
    # an intermediate switch to [0, 1] instead of [0, 2]: <exp(-beta W)> at the final time is
    # Z_final / Z_0 for any intermediate protocol (Jarzynski), so only the work distribution sees it
    res = checks_against(lambda pr: pr[1].update(energies=[0, 1]))
    assert not res["WorkDistributionVsExact"].passed
    assert res["JarzynskiVsExact"].passed
    # the same energies, the second switch at 0.9 instead of 1.1 (before the sample at t = 1)
    res = checks_against(lambda pr: pr[1].update(time=0.9))
    assert not res["WorkDistributionVsExact"].passed


@pytest.mark.parametrize("path", PATHS)
def test_validate_first_law_detects_broken_work_accumulators(path):
    """A work histogram that no longer belongs to the trajectories breaks the first law of the means; a
    counted violation breaks the per-trajectory law."""
    ens, sol = mc_run("qubit_osc", path)
    bad = copy.copy(ens.acc)
    bad.work = ens.acc.work.copy()
    row = bad.work[-1]
    j = int(np.argmax(row[:-1]))
    row[j] -= 1
    row[j + 1] += 1  # one trajectory's work one quantum higher at the last time
    r = run_checks(Ensemble(ens.plan, bad, ens.stats), sol, names=["EnergyConservation"])[0]
    assert not r.passed and r.statistic == 0 and r.max_error == pytest.approx(1 / ens.trajectories, rel=1e-6), r
    bad = copy.copy(ens.acc)
    bad.viol = ens.acc.viol.copy()
    bad.viol[0] += 1
    r = run_checks(Ensemble(ens.plan, bad, ens.stats), sol, names=["EnergyConservation"])[0]
    assert not r.passed and r.statistic == 1


@pytest.mark.parametrize("path", PATHS)
def test_driven_run_directory_round_trip(tmp_path, path):
    """A driven run written to disk reloads with its protocol, work histogram and work records, and
    validates."""
    run = tmp_path / "run"
    ens = trajmc.simulate(driven("qubit_osc"), trajectories=3000, seed=4, threads=THREADS, chunk_size=500,
                          records=True, engine=path, out=run)
    back = trajmc.load_run(run)
    assert back.plan.driven and back.plan.path == path and back.model.protocol == ens.model.protocol
    np.testing.assert_array_equal(back.acc.work, ens.acc.work)
    np.testing.assert_array_equal(back.records["work"], ens.records["work"])
    pd.testing.assert_frame_equal(back.thermo(), ens.thermo(), check_exact=True)
    ok, res, _, _ = validate_run(run)
    assert ok, [(r.name, r.detail) for r in res if r.counted and not r.passed]


# --------------------------------------------------------------------------- 8. bad protocols


@pytest.mark.parametrize("protocol, key", [
    ([{"time": 0.5, "energies": [0, 1.5]}], "protocol[0].energies[1]"),
    ([{"time": 0.5, "energies": [0, 2]}, {"time": 1.0, "energies": [0.25, 2]}], "protocol[1].energies[0]"),
    ([{"time": 0.5, "energies": [0, 2]}, {"time": 0.5, "energies": [0, 3]}], "protocol[1].time"),
    ([{"time": 0.5, "energies": [0, 2]}, {"time": 0.4, "energies": [0, 3]}], "protocol[1].time"),
    ([{"time": 0.0, "energies": [0, 2]}], "protocol[0].time"),
    ([{"time": -1.0, "energies": [0, 2]}], "protocol[0].time"),
    ([{"time": 0.5, "energies": [0, 2, 3]}], "protocol[0].energies"),
    ([{"time": 0.5}], "protocol[0].energies"),
    ([{"time": 0.5, "energies": [0, 2], "work": 1}], "protocol[0].work"),
])
def test_bad_protocol_refused_naming_the_entry(protocol, key):
    md = driven("qubit_osc")
    md["protocol"] = protocol
    with pytest.raises(trajmc.ModelError) as ei:
        trajmc.load_model(md)
    assert ei.value.key == key
    assert str(ei.value).startswith(key + ":")


def test_protocol_round_trips_and_changes_digest():
    m = trajmc.load_model(driven("qubit_osc"))
    assert len(m.protocol) == 3
    again = trajmc.load_model(m.to_dict())
    assert again.digest == m.digest
    md = driven("qubit_osc")
    md["protocol"][2]["energies"] = [3, 0]
    assert trajmc.load_model(md).digest != m.digest
    md = driven("qubit_osc")
    del md["protocol"]
    assert trajmc.load_model(md).digest != m.digest


# --------------------------------------------------------------------------- 9. built-in example


def test_driven_qubit_example():
    md = trajmc.get_example("driven-qubit")
    assert "driven-qubit" in trajmc.list_examples()
    model = trajmc.load_model(md)
    assert len(model.protocol) >= 2
    sol = trajmc.solve(model)
    assert len(sol.segments) == len(model.protocol) + 1
    beta = md["initial"]["system"]["beta"]
    assert fl.global_gibbs_beta(model, sol.network) == pytest.approx(beta, abs=0)
    states, lnV = sol.network.states, sol.network.lnV
    lnV_ind = lnv_independent(md["baths"][0], states[:, 1])
    np.testing.assert_allclose(lnV, lnV_ind, rtol=0, atol=1e-9)
    lz0 = log_z(states, lnV_ind, np.array(md["system"]["energies"]), beta)
    expected = np.array([np.exp(log_z(states, lnV_ind, levels_in_force(md, t), beta) - lz0) for t in sol.times])
    assert log_z(states, lnV_ind, np.array(md["protocol"][-1]["energies"]), beta) == pytest.approx(
        log_z_grid(md, md["protocol"][-1]["energies"], beta), abs=1e-9)
    tilt = fl.tilted_work_average(sol.segments, sol.times, beta)
    np.testing.assert_allclose(tilt, expected, rtol=0, atol=1e-10)
    assert fl.gibbs_ratio(sol.segments, beta) == pytest.approx(expected[-1], abs=1e-10)
    w, P = fl.work_distribution(sol.segments, sol.times)
    np.testing.assert_allclose(P @ np.exp(-beta * w), expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(P @ w, sol.work(), rtol=0, atol=1e-12)
    assert sol.work()[-1] > 0  # raising the gap costs work
    th = sol.thermo()
    first = (th["E_S"] - th["E_S"].iloc[0]) + (th["E_B"] - th["E_B"].iloc[0])
    np.testing.assert_allclose(first.values, th["W"].values, rtol=0, atol=1e-10)
    assert np.all(np.diff(th["S_obs"].values) >= -1e-10)
