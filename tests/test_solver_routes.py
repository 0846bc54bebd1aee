"""The solver's routes (trivial, eigh, chebyshev, expm) and its cost model, on the cases that distinguish them:
shells of one state, shells whose ln V spans hundreds of units, degenerate levels with two baths, driven and
stiff models; the propagator interface the fluctuation statistics reuse (several right-hand sides, sinks,
cached shells); the memory refusal, progress reports and the ``solve`` command.

References are independent: 40-digit mpmath exponentials of one closed class (test_solver.mp_block_expm),
dense ``scipy.linalg.expm`` of the whole generator, and the routes against each other.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import scipy.linalg
from conftest import get_model_dict
from test_driving import BETA, dense_propagation, driven
from test_solver import mp_block_expm, stiffest_blocks

import trajmc
import trajmc.solver as solver_mod
from trajmc import fluctuations as fl
from trajmc.network import build_segments
from trajmc.progress import Progress

OFF3 = [[0, 1, 1], [1, 0, 1], [1, 1, 0]]
ROUTED = ("eigh", "chebyshev", "expm")


def mp_max_error(sol, blocks, dps=40):
    """Largest |p - p_mpmath| over the closed classes ``blocks``."""
    net = sol.network
    err = 0.0
    for b in blocks:
        idx = np.flatnonzero(net.block == b)
        err = max(err, float(np.max(np.abs(mp_block_expm(net, idx, sol.times, dps=dps) - sol.p[:, idx]))))
    return err


def force(monkeypatch, route):
    monkeypatch.setattr(solver_mod, "FORCE_ROUTE", route)


def spin_baths(n, system=(0, 0, 1), bath0=None, times=(0.0, 0.1, 1.0)):
    """3 levels (0, 1, 3) between two spin baths of n spins (ln V spread per shell ~ 2 ln C(n, n/2))."""
    def b(name):
        return {"name": name, "dos": {"model": "spins", "n": n, "quantum": 1}, "emax": n,
                "kernel": {"model": "sqrt", "gamma": 1.0}}

    return {"name": f"spins-{n}", "system": {"energies": [0, 1, 3], "coupling": OFF3}, "baths": [b("hot"), b("cold")],
            "initial": {"system": list(system), "baths": [bath0 or {"state": "canonical", "beta": 0.2},
                                                          {"state": "canonical", "beta": 1.0}]},
            "times": {"values": list(times)}}


def spread(net):
    lo = np.full(net.n_blocks, np.inf)
    hi = np.full(net.n_blocks, -np.inf)
    np.minimum.at(lo, net.block, net.lnV)
    np.maximum.at(hi, net.block, net.lnV)
    return hi - lo


# --------------------------------------------------------------------------- shells of one state


def test_shells_of_one_state_do_not_move():
    d = get_model_dict("qubit_spins_linear")
    d["system"]["energies"] = [0, 1]  # the linear kernel moves one quantum (2): no jump anywhere
    sol = trajmc.solve(d)
    assert sol.info["trivial"] == sol.network.n_blocks == sol.network.n_states
    for row in sol.p:
        np.testing.assert_array_equal(row, sol.network.p0)


@pytest.mark.parametrize("route", [None, *ROUTED])
def test_one_state_shells_next_to_moving_ones(route, monkeypatch):
    d = get_model_dict("two_baths")
    force(monkeypatch, route)
    sol = trajmc.solve(d)
    single = np.flatnonzero(np.bincount(sol.network.block)[sol.network.block] == 1)
    assert len(single) and sol.info["trivial"] == len(single)
    np.testing.assert_array_equal(sol.p[:, single],
                                  np.broadcast_to(sol.network.p0[single], (len(sol.times), len(single))))


# --------------------------------------------------------------------------- ln V spanning hundreds of units


def table_state(emax, decay):
    """A bath state on the whole grid 0..emax, p_E ∝ exp(-decay E) (no canonical tail to cut)."""
    p = np.exp(-decay * np.arange(emax + 1))
    return {"state": "table", "p": (p / p.sum()).tolist()}


def ideal_and_spins(beta=25.0, emax=12):
    """An ideal bath at beta 25 (ln V = 25 E) beside 12 spins: each shell's ln V spans ~300 units."""
    return {"name": "graded", "system": {"energies": [0, 1, 3], "coupling": OFF3},
            "baths": [{"name": "X", "dos": {"model": "exponential", "beta": beta}, "emax": emax,
                       "kernel": {"model": "sqrt", "gamma": 1.0}},
                      {"name": "P", "dos": {"model": "spins", "n": 12, "quantum": 1}, "emax": 12,
                       "kernel": {"model": "eth", "gamma": 0.5}}],
            "initial": {"system": [0.2, 0.3, 0.5],
                        "baths": [table_state(emax, 0.8), {"state": "canonical", "beta": 0.3}]},
            "times": {"values": [0.0, 0.05, 0.5, 2.0]}}


@pytest.mark.parametrize("route", [None, "chebyshev"])
def test_ln_v_spanning_hundreds_of_units_vs_dense(route, monkeypatch):
    """150-spin baths: ln V spans ~200 units inside the larger shells; the two most graded ones against a dense
    expm of their generator (rates there span ~6 decades, so float64 expm is an adequate reference)."""
    force(monkeypatch, route)
    sol = trajmc.solve(spin_baths(150, times=(0.0, 0.05, 0.5)))
    net = sol.network
    sp_ = spread(net)
    assert sp_.max() > 180
    for b in np.argsort(-sp_)[:2]:
        idx = np.flatnonzero(net.block == b)
        G = net.generator()[idx][:, idx].toarray()
        ref = np.array([scipy.linalg.expm(G * t) @ net.p0[idx] for t in sol.times])
        np.testing.assert_allclose(sol.p[:, idx], ref, rtol=0, atol=1e-13)


@pytest.mark.parametrize("route", [None, "chebyshev", "expm"])
def test_large_ln_v_spread_with_stiff_jumps_vs_mpmath(route, monkeypatch):
    """An ideal bath at beta 4 beside 12 spins: ln V spans ~50 units in shells of ~40 states."""
    force(monkeypatch, route)
    sol = trajmc.solve(ideal_and_spins(beta=4.0))
    net = sol.network
    sizes = np.bincount(net.block)
    big = [b for b in np.argsort(-spread(net)) if 10 <= sizes[b] <= 45][:1]
    assert spread(net)[big].min() > 40
    assert mp_max_error(sol, big) <= 1e-12


def test_cost_model_keeps_eigh_away_from_graded_starts(monkeypatch):
    """100-spin baths, the hot one at E = 1 (a sharp start on states with V ~ e^-100 of their shell's): eigh's
    rounding is amplified there (the accuracy model sees ||p0 / sqrt(V / V_max)|| ~ 1e6); the series is not."""
    d = spin_baths(100, bath0={"state": "microcanonical", "energy": 1})
    sol = trajmc.solve(d)
    assert spread(sol.network).max() > 100
    force(monkeypatch, "chebyshev")
    ref = trajmc.solve(d)
    assert ref.info["chebyshev"] > 0
    assert np.max(np.abs(sol.p - ref.p)) <= 1e-13
    force(monkeypatch, "eigh")
    bad = trajmc.solve(d)
    assert np.max(np.abs(bad.p - ref.p)) > 1e-12  # what the accuracy model protects against


# --------------------------------------------------------------------------- driven and stiff


@pytest.mark.parametrize("route", [None, *ROUTED])
@pytest.mark.parametrize("name", ["two_baths", "three_spins"])
def test_driven_routes_vs_dense_segment_by_segment(name, route, monkeypatch):
    force(monkeypatch, route)
    md = driven(name)
    sol = trajmc.solve(md)
    P, _, work = dense_propagation(sol, md, BETA[name])
    np.testing.assert_allclose(sol.p, P, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sol.work(), work, rtol=0, atol=1e-12)
    assert len(sol.switch_states) == len(sol.segments) - 1


def test_thermo_of_a_driven_solution_does_not_propagate_again(monkeypatch):
    sol = trajmc.solve(driven("two_baths"))
    calls = []
    real = solver_mod.propagate_segments
    monkeypatch.setattr(solver_mod, "propagate_segments", lambda *a, **k: calls.append(1) or real(*a, **k))
    a, b = sol.thermo(), sol.thermo()
    assert not calls
    assert np.abs(a["first_law"]).max() <= 1e-12
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())


def stiff_two_baths():
    """Two baths, rates over more than 8 decades: golden kernel on a steep ideal bath, and slow spins.  (Rates
    spread over many more decades inside one class are beyond float64 for every route: the slow eigenvalues are
    only known to eps times the largest rate.)"""
    return {"name": "stiff2", "system": {"energies": [0, 2, 5], "coupling": OFF3},
            "baths": [{"name": "G", "dos": {"model": "exponential", "beta": 1.5}, "emax": 8,
                       "kernel": {"model": "golden", "gamma": 1.0, "E_ref": 2}},
                      {"name": "P", "dos": {"model": "spins", "n": 10, "quantum": 1}, "emax": 10,
                       "kernel": {"model": "sqrt", "gamma": 1e-5}}],
            "initial": {"system": [0.0, 0.3, 0.7], "baths": [table_state(8, 0.5), {"state": "canonical", "beta": 0.5}]},
            "times": {"values": [0.0, 1e-4, 1e-2, 1.0, 100.0]}}


@pytest.mark.parametrize("route", [None, "eigh", "expm"])
def test_stiff_two_bath_model_vs_mpmath(route, monkeypatch):
    force(monkeypatch, route)
    sol = trajmc.solve(stiff_two_baths())
    r = sol.network.rate
    assert r.max() / r.min() > 1e8
    assert mp_max_error(sol, stiffest_blocks(sol.network, 1)) <= 1e-12


def test_stiff_model_has_no_series_of_hopeless_length():
    sol = trajmc.solve(stiff_two_baths())
    assert sol.info["chebyshev_terms"] <= solver_mod.CHEB_KMAX


# --------------------------------------------------------------------------- the propagator interface


def test_several_right_hand_sides_and_sinks_agree():
    m = trajmc.load_model(get_model_dict("two_baths"))
    net = build_segments(m)[0][1]
    rng = np.random.default_rng(3)
    P0 = rng.random((net.n_states, 3)) * (rng.random((net.n_states, 1)) < 0.5)
    many, _ = solver_mod.propagate(net, P0, m.times)
    for c in range(3):
        one, _ = solver_mod.propagate(net, P0[:, c], m.times)
        np.testing.assert_allclose(many[:, :, c], one, rtol=0, atol=1e-13)  # the route may differ with r
    np.testing.assert_array_equal(many[0], P0)
    got = np.full_like(many, np.nan)

    def sink(idx, vals):
        got[:, idx] = vals

    assert solver_mod.propagate(net, P0, m.times, sink=sink)[0] is None
    occupied = np.isin(net.block, np.unique(net.block[np.any(P0 > 0, axis=1)]))
    np.testing.assert_array_equal(got[:, occupied], many[:, occupied])
    assert np.all(np.isnan(got[:, ~occupied])) and np.all(many[:, ~occupied] == 0)  # empty classes are skipped


def test_shells_are_built_once_per_network():
    sol = trajmc.solve(get_model_dict("two_baths"))
    sh = solver_mod.shells_of(sol.network)
    fl.heat_distribution(sol.segments, 0, sol.times)
    assert solver_mod.shells_of(sol.network) is sh


def test_exact_heat_distribution_vs_dense():
    """Heat from each bath by brute force: one dense propagation per initial state, binned by E_nu(0) - E_nu(t)."""
    m = trajmc.load_model(get_model_dict("two_baths"))
    segs = build_segments(m)
    net = segs[0][1]
    G = net.generator().toarray()
    t = m.times[[1, 3, -1]]
    Ps = [scipy.linalg.expm(G * x) for x in t]
    for nu in range(2):
        E = net.states[:, 1 + nu]
        q, P = fl.heat_distribution(segs, nu, t)
        emax = m.baths[nu].emax
        ref = np.zeros_like(P)
        for j, Pt in enumerate(Ps):
            joint = Pt * net.p0[None, :]  # joint[y, x] = P(x -> y) p0(x)
            np.add.at(ref[j], (E[None, :] - E[:, None] + emax).ravel(), joint.ravel())
        np.testing.assert_allclose(P, ref, rtol=0, atol=1e-13)
        np.testing.assert_allclose(fl.cumulants_from_distribution(q, P),
                                   fl.cumulants_from_moments(fl.counting_moments(
                                       segs, lambda nk, nu=nu: fl.heat_weights(nk, nu), t)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("weights", ["heat", "jumps"])
def test_counting_moments_series_vs_dense(weights, monkeypatch):
    """The Chebyshev series differentiated in the counting field against the dense augmented exponential."""
    m = trajmc.load_model(get_model_dict("two_baths"))
    segs = build_segments(m)
    wf = (lambda nk: fl.heat_weights(nk, 1)) if weights == "heat" else (lambda nk: np.ones(nk.n_edges))
    monkeypatch.setattr(fl, "COUNTING_DENSE_MAX", 10**6)
    dense = fl.counting_moments(segs, wf, m.times)
    monkeypatch.setattr(fl, "COUNTING_DENSE_MAX", 1)
    series = fl.counting_moments(segs, wf, m.times)
    np.testing.assert_allclose(series, dense, rtol=1e-12, atol=1e-12)


def test_counting_moments_series_across_switches(monkeypatch):
    segs = build_segments(trajmc.load_model(driven("two_baths")))
    times = [0.0, 0.3, 0.6, 1.0, 1.5]
    monkeypatch.setattr(fl, "COUNTING_DENSE_MAX", 10**6)
    dense = fl.counting_moments(segs, lambda nk: np.ones(nk.n_edges), times)
    monkeypatch.setattr(fl, "COUNTING_DENSE_MAX", 1)
    series = fl.counting_moments(segs, lambda nk: np.ones(nk.n_edges), times)
    np.testing.assert_allclose(series, dense, rtol=1e-12, atol=1e-12)


def test_ift_reference_with_partly_filled_shells():
    d = get_model_dict("two_baths")
    d["initial"]["system"] = [0.0, 1.0, 0.0]  # states of every shell left empty: absolute irreversibility
    sol = trajmc.solve(d)
    net = sol.network
    got = fl.ift_prediction(sol.segments, sol.times, sol.p)
    v = fl.block_scaled_v(net)
    G = net.generator().toarray()
    back = np.array([scipy.linalg.expm(G * t) @ (v * (net.p0 > 0)) for t in sol.times])
    np.testing.assert_allclose(got, np.sum(sol.p * back / v, axis=1), rtol=0, atol=1e-12)
    assert got[-1] < 1 - 1e-3


# --------------------------------------------------------------------------- memory, progress, command line


def test_memory_refusal_before_any_work(monkeypatch):
    import trajmc.network as network_mod

    monkeypatch.setattr(solver_mod, "build_segments", lambda *a, **k: pytest.fail("built a network"))
    with pytest.raises(trajmc.ModelError) as err:
        trajmc.solve(trajmc.get_example("two-baths"), memory_budget="2MiB")
    msg = str(err.value)
    assert "\n" not in msg and "36,783 states" in msg and "Monte Carlo" in msg and "MiB" in msg
    assert network_mod.build_network is not None


def test_memory_budget_from_the_environment(monkeypatch):
    monkeypatch.setenv("TRAJMC_MEMORY_BUDGET", "1MiB")
    with pytest.raises(trajmc.ModelError, match="memory_budget"):
        trajmc.solve(get_model_dict("two_baths"))
    monkeypatch.setenv("TRAJMC_MEMORY_BUDGET", "4GiB")
    assert trajmc.solve(get_model_dict("two_baths")).p.shape[1] == 675


def test_progress_status_lines_when_not_a_terminal():
    out = io.StringIO()
    with Progress(total=10, desc="work", unit="states", stream=out, interval=0.0) as bar:
        bar.update(4)
        bar.set_description("more work")
        bar.update(6)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("work: 4/10 states (40%)")
    assert lines[-1].startswith("more work: 10/10 states (100%)")


def test_progress_is_silent_when_disabled_or_short():
    out = io.StringIO()
    with Progress(total=10, stream=out, enabled=False, interval=0.0) as bar:
        bar.update(10)
    with Progress(total=10, stream=out, interval=3600.0) as bar:  # finished before the first status line
        bar.update(10)
    assert out.getvalue() == ""


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal():
    out = _Tty()
    with Progress(total=5, desc="solve", stream=out, delay=0.0) as bar:
        bar.update(5)
    assert "solve" in out.getvalue()


def test_solve_reports_progress_through_the_reporter(monkeypatch):
    seen = []

    class Spy(Progress):
        def update(self, n=1):
            if self.enabled:
                seen.append(n)
            super().update(n)

    monkeypatch.setattr(solver_mod, "Progress", Spy)
    sol = trajmc.solve(get_model_dict("two_baths"), progress=False)
    assert sum(seen) == 0  # disabled: nothing counted
    sol = trajmc.solve(get_model_dict("two_baths"), progress=True)
    assert sum(seen) == sol.network.n_states


def test_cli_solve_quiet(capsys):
    from trajmc.cli import main

    assert main(["solve", "--example", "two-baths", "--quiet"]) == 0
    cap = capsys.readouterr()
    assert "S_obs" in cap.out and cap.err == ""
    assert main(["solve", "--example", "two-baths", "--memory-budget", "1MiB"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Monte Carlo" in err
