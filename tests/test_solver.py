"""The exact solver: against dense / high-precision matrix exponentials and the exact
properties of the dynamics (docs/physics.md §5.2-5.5).

References:
* ``scipy.linalg.expm`` of the whole dense generator for small, non-stiff models;
* ``mpmath.expm`` at 40 digits of one closed block, with the generator built in
  high precision from the network's log rates (diagonal = minus the exact column
  sums), i.e. the exact dynamics of exactly those rates.  A float64 generator
  would not do as an oracle for stiff blocks: its columns sum to zero only up to
  ``eps * max rate``, which leaks probability at the 1e-8 level over long times.
"""
from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import scipy.linalg
from conftest import ALL_MODELS, ONE_BATH, TWO_BATHS, get_model_dict
from scipy.special import logsumexp, xlogy

import trajmc
import trajmc.solver as solver_mod

# --------------------------------------------------------------------------- helpers


def mp_block_expm(net, idx, times, dps=40):
    """exp(W t) p0 on the closed block ``idx`` at ``dps`` digits: (n_t, len(idx)) float array."""
    idx = np.asarray(idx)
    pos = {int(i): k for k, i in enumerate(idx)}
    src = net.source
    with mpmath.workdps(dps):
        m = len(idx)
        W = mpmath.zeros(m, m)
        for e in np.flatnonzero(np.isin(src, idx)):
            assert int(net.target[e]) in pos, "block is not closed"
            x, y = pos[int(src[e])], pos[int(net.target[e])]
            r = mpmath.exp(mpmath.mpf(float(net.log_rate[e])))
            W[y, x] += r
            W[x, x] -= r
        p0 = mpmath.matrix([mpmath.mpf(float(v)) for v in net.p0[idx]])
        out = []
        for t in times:
            pt = mpmath.expm(W * mpmath.mpf(float(t))) * p0
            out.append([float(v) for v in pt])
    return np.array(out)


def mp_max_error(sol, blocks):
    net = sol.network
    err = 0.0
    for b in blocks:
        idx = np.flatnonzero(net.block == b)
        ref = mp_block_expm(net, idx, sol.times)
        err = max(err, float(np.max(np.abs(ref - sol.p[:, idx]))))
    return err


def stiffest_blocks(net, k):
    """The ``k`` multi-state blocks with the largest spread of rates (ties: of ln V)."""
    src = net.source
    blocks = [b for b in range(net.n_blocks) if np.sum(net.block == b) > 1]

    def spread(b):
        e = net.block[src] == b
        lv = net.lnV[net.block == b]
        return (np.ptp(net.log_rate[e]), np.ptp(lv))
    return sorted(blocks, key=spread, reverse=True)[:k]


def dense_reference(sol):
    W = sol.network.generator().toarray()
    return np.array([scipy.linalg.expm(W * t) @ sol.network.p0 for t in sol.times])


def s_obs_series(sol):
    return sol.thermo()["S_obs"].to_numpy()


OFF3 = [[0, 1, 1], [1, 0, 1], [1, 1, 0]]


def one_bath(energies, dos, emax, kernel, system, bath_state, times, coupling=None):
    n = len(energies)
    return {"name": "m",
            "system": {"energies": energies, "coupling": coupling or (OFF3 if n == 3 else [[0, 1], [1, 0]])},
            "baths": [{"name": "B", "dos": dos, "emax": emax, "kernel": kernel}],
            "initial": {"system": system, "baths": [bath_state]}, "times": {"values": times}}


STIFF = {
    # lnV spread ~24 inside shells: half the blocks take the expm route, half eigh
    "spins_big_gaps_cutoff": one_bath([0, 7, 15], {"model": "spins", "n": 40}, 40,
                                      {"model": "sqrt", "gamma": 1.0,
                                       "spectral": {"shape": "exponential", "cutoff": 1.0}},
                                      [0, 0, 1], {"state": "canonical", "beta": 1.0}, [0, 0.1, 1.0, 10.0, 1e3, 1e6]),
    # gamma tiny / huge: rates 1e-9 .. 1e-8 and 1e7 .. 3e8
    "gamma_tiny": one_bath([0, 1, 3], {"model": "oscillators", "n": 4}, 30, {"model": "sqrt", "gamma": 1e-8},
                           [0, 0, 1], {"state": "canonical", "beta": 1.0}, [0, 1.0, 1e6, 1e8, 1e9]),
    "gamma_huge": one_bath([0, 1, 3], {"model": "oscillators", "n": 4}, 30, {"model": "eth", "gamma": 1e8},
                           [0, 0, 1], {"state": "canonical", "beta": 1.0}, [0, 1e-10, 1e-9, 1e-8, 1.0]),
}


# --------------------------------------------------------------------------- basic contract


@pytest.mark.parametrize("name", ALL_MODELS)
def test_solution_shapes_and_normalisation(name, solved):
    sol = solved(name)
    d = get_model_dict(name)
    t = d["times"]
    np.testing.assert_allclose(sol.times, np.linspace(0, t["stop"], t["num"]), rtol=0, atol=0)
    n = sol.network.n_states
    assert sol.p.shape == (len(sol.times), n)
    assert list(sol.states.columns) == ["s"] + [f"E_{b['name']}" for b in d["baths"]]
    assert len(sol.states) == n
    np.testing.assert_array_equal(sol.states.to_numpy(), sol.network.states)
    np.testing.assert_allclose(sol.p[0], sol.network.p0, rtol=0, atol=1e-15)
    assert np.all(sol.p >= 0)
    np.testing.assert_allclose(sol.p.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    ps = sol.p_system()
    assert ps.shape == (len(sol.times), len(d["system"]["energies"]))
    np.testing.assert_allclose(ps[0], d["initial"]["system"], rtol=0, atol=1e-13)
    assert sum(sol.info[k] for k in solver_mod.ROUTES + ("empty",)) == sol.network.n_blocks


def test_times_override():
    d = get_model_dict("qubit_osc_sqrt")
    sol = trajmc.solve(d, times=[0.0, 0.1, 2.5])
    np.testing.assert_array_equal(sol.times, [0.0, 0.1, 2.5])
    assert sol.p.shape == (3, sol.network.n_states)
    full = trajmc.solve(d, times=np.linspace(0, 2.5, 26))
    np.testing.assert_allclose(sol.p[1], full.p[1], rtol=0, atol=1e-14)
    np.testing.assert_allclose(sol.p[2], full.p[-1], rtol=0, atol=1e-14)
    assert trajmc.solve(d).p.shape[0] == 13  # the model's own times are untouched
    th = sol.thermo()
    np.testing.assert_array_equal(th.index.to_numpy(), [0.0, 0.1, 2.5])


@pytest.mark.parametrize("times,key", [([0.5, 1.0], "times"), ([0.0, 1.0, 1.0], "times"), ([0.0, -1.0], "times"),
                                       ([0.0, float("nan")], "times")])
def test_times_override_is_validated(times, key):
    with pytest.raises(trajmc.ModelError, match=key):
        trajmc.solve(get_model_dict("qubit_osc_sqrt"), times=times)


def test_solve_accepts_model_path_and_dict(tmp_path):
    d = get_model_dict("qubit_spins_linear")
    m = trajmc.load_model(d)
    f = tmp_path / "m.toml"
    f.write_text(m.to_toml())
    a, b, c = trajmc.solve(d), trajmc.solve(m), trajmc.solve(str(f))
    np.testing.assert_array_equal(a.p, b.p)
    np.testing.assert_array_equal(a.p, c.p)


def test_solve_a_driven_model_segment_by_segment():
    d = get_model_dict("qubit_osc_sqrt")
    d["protocol"] = [{"time": 1.0, "energies": [0, 2]}]
    sol = trajmc.solve(d)
    # before the switch the driven solution is the undriven one
    d0 = get_model_dict("qubit_osc_sqrt")
    ref = trajmc.solve(d0)
    before = sol.times < 1.0
    assert np.max(np.abs(sol.p[before] - ref.p[before])) <= 1e-13
    assert "W" in sol.thermo().columns
    assert issubclass(trajmc.UnsupportedError, trajmc.TrajmcError)


# --------------------------------------------------------------------------- against matrix exponentials


@pytest.mark.parametrize("name", ["qubit_osc_sqrt", "three_spins_eth", "qubit_spins_linear", "qubit_table_sqrt",
                                  "two_baths"])
def test_matches_dense_expm_of_full_generator(name, solved):
    sol = solved(name)
    ref = dense_reference(sol)
    assert np.max(np.abs(ref - sol.p)) <= 1e-12


def test_matches_mpmath_on_stiff_golden_model(solved):
    """three_exp_golden has rates from ~0.1 to ~3e7; dense float expm is itself off by 1e-10 there."""
    sol = solved("three_exp_golden")
    rates = sol.network.rate
    assert rates.max() / rates.min() > 1e8
    blocks = stiffest_blocks(sol.network, 12)
    assert mp_max_error(sol, blocks) <= 1e-12


@pytest.mark.parametrize("case", sorted(STIFF))
def test_stiff_matches_mpmath(case):
    sol = trajmc.solve(STIFF[case])
    assert sol.info["eigh"] + sol.info["expm"] > 0  # the cost model keeps stiff classes on the dense routes
    if case == "spins_big_gaps_cutoff":
        rates = sol.network.rate
        assert rates.max() / rates.min() > 1e12
    blocks = stiffest_blocks(sol.network, 4)
    assert mp_max_error(sol, blocks) <= 1e-12


def force(monkeypatch, route):
    monkeypatch.setattr(solver_mod, "FORCE_ROUTE", route)


@pytest.mark.parametrize("route", ["eigh", "expm", "chebyshev"])
@pytest.mark.parametrize("case", ["spins_big_gaps_cutoff", "gamma_tiny"])
def test_each_route_matches_mpmath_on_stiff_models(case, route, monkeypatch):
    if route == "chebyshev" and case == "spins_big_gaps_cutoff":
        STIFF_CASE = dict(STIFF[case], times={"values": [0, 0.1, 1.0, 10.0]})  # L t = 1e6 is beyond a series
    else:
        STIFF_CASE = STIFF[case]
    force(monkeypatch, route)
    sol = trajmc.solve(STIFF_CASE)
    assert sol.info[route] > 0
    assert sum(sol.info[k] for k in solver_mod.ROUTES if k not in (route, "trivial")) == 0
    assert mp_max_error(sol, stiffest_blocks(sol.network, 4)) <= 1e-12


@pytest.mark.parametrize("name", ["qubit_osc_sqrt", "three_spins_eth", "three_exp_golden", "two_baths_mixed",
                                  "two_baths"])
def test_every_route_agrees_with_the_cost_model(name, monkeypatch):
    d = get_model_dict(name)
    ref = trajmc.solve(d)
    for route in ("eigh", "expm", "chebyshev"):
        force(monkeypatch, route)
        a = trajmc.solve(d)
        movable = ref.network.n_blocks - ref.info["trivial"] - ref.info["empty"]
        # chebyshev takes the classes whose series stays short (the stiff ones keep the cost model's route)
        assert a.info[route] == movable if route != "chebyshev" else 0 < a.info[route] <= movable
        assert np.max(np.abs(a.p - ref.p)) <= 1e-12, route


@pytest.mark.parametrize("name", TWO_BATHS)
def test_chebyshev_route_matches_dense_routes(name, monkeypatch, solved):
    ref = solved(name)
    force(monkeypatch, "chebyshev")
    sol = trajmc.solve(get_model_dict(name))
    assert sol.info["chebyshev"] > 0 and sol.info["chebyshev_terms"] > 2
    assert sum(sol.info[k] for k in solver_mod.ROUTES + ("empty",)) == sol.network.n_blocks
    assert np.max(np.abs(sol.p - ref.p)) <= 1e-12


# --- regression tests named after bugs found in review (all fixed)

# Regression: solver._expm_route lost probability for stiff generators (scipy expm columns summed to
# 1 - O(eps 2^s), error up to 1e-3 at t = 1e3); fixed by renormalising each propagator column.
REGRESSION_EXPM = pytest.mark.regression


@REGRESSION_EXPM
def test_expm_route_keeps_probability_on_very_stiff_block(monkeypatch):
    d = one_bath([0, 5, 12], {"model": "exponential", "beta": 2.0}, 40, {"model": "golden", "gamma": 1.0},
                 [0, 0, 1], {"state": "table", "p": [0] * 20 + [0.5, 0.5] + [0] * 19},
                 [0, 1e-9, 1e-6, 1e-3, 0.1, 1.0, 10.0, 1e3])
    sol = trajmc.solve(d)
    assert mp_max_error(sol, range(sol.network.n_blocks)) <= 1e-12
    force(monkeypatch, "expm")
    sol = trajmc.solve(d)
    assert sol.info["expm"] == 2
    assert mp_max_error(sol, range(sol.network.n_blocks)) <= 1e-12


@REGRESSION_EXPM
def test_expm_route_on_huge_rates(monkeypatch):
    force(monkeypatch, "expm")
    sol = trajmc.solve(STIFF["gamma_huge"])
    assert sol.info["expm"] > 0
    assert mp_max_error(sol, stiffest_blocks(sol.network, 4)) <= 1e-12


@REGRESSION_EXPM
@pytest.mark.parametrize("route", [None, "expm", "eigh"])
def test_expm_route_on_a_cold_ideal_bath(route, monkeypatch):
    """exponential(beta = 30) bath: lnV spread 30 per shell and the start on the small-V states: eigh would lose
    ~1e-10 there (its error grows like eps ||p0 / sqrt(V)||), so the cost model must not pick it."""
    d = get_model_dict("qubit_osc_sqrt")
    d["baths"][0]["dos"] = {"model": "exponential", "beta": 30.0}
    d["initial"]["baths"][0]["beta"] = 31.0
    force(monkeypatch, route)
    sol = trajmc.solve(d)
    if route is not None:
        assert sol.info[route] > 0
    assert np.max(np.abs(sol.p.sum(axis=1) - 1)) <= 1e-12
    assert mp_max_error(sol, stiffest_blocks(sol.network, 6)) <= 1e-12


# Regression: _eigh_route overwrote the stationary eigenvector, breaking orthogonality when another
# eigenvalue was near 0; fixed by deflating the exact stationary mode.
REGRESSION_EIGH = pytest.mark.regression


@REGRESSION_EIGH
def test_eigh_route_with_a_slow_mode(monkeypatch):
    d = one_bath([0, 1, 6], {"model": "exponential", "beta": 0.2}, 40,
                 {"model": "sqrt", "gamma": 1.0, "spectral": {"shape": "exponential", "cutoff": 0.2}},
                 [0, 0, 1], {"state": "microcanonical", "energy": 20}, [0, 0.01, 1.0, 100.0, 1e4])
    force(monkeypatch, "eigh")
    sol = trajmc.solve(d)
    assert sol.info["eigh"] == 1
    assert mp_max_error(sol, [0]) <= 1e-12


# --------------------------------------------------------------------------- exact properties (§5.2 - §5.5)


def _initial_variants(name):
    """Several initial states of a shared model: (label, dict)."""
    out = [("canonical", get_model_dict(name))]
    d0 = get_model_dict(name)
    n_s = len(d0["system"]["energies"])
    d = get_model_dict(name)
    d["initial"]["baths"] = [{"state": "microcanonical", "energy": 6 * b["dos"].get("quantum", 1)} for b in d["baths"]]
    d["initial"]["system"] = [1.0] + [0.0] * (n_s - 1)
    out.append(("microcanonical", d))
    d = get_model_dict(name)
    d["initial"]["system"] = {"gibbs": True, "beta": 0.5}
    out.append(("gibbs", d))
    d = get_model_dict(name)
    tab = []
    for b in d["baths"]:
        w = b["dos"].get("quantum", 1)
        p = np.zeros(b["emax"] + 1)
        p[[2 * w, 3 * w, 7 * w]] = [0.5, 0.3, 0.2]
        tab.append({"state": "table", "p": p.tolist()})
    d["initial"]["baths"] = tab
    out.append(("bath-table", d))
    sol = trajmc.solve(get_model_dict(name), times=[0.0, 0.4])
    keep = sol.p[1] > 1e-7
    rng = np.random.default_rng(1)
    p = sol.p[1][keep] * rng.uniform(0.2, 1.0, keep.sum())  # correlated and off the trajectory of the model
    d = get_model_dict(name)
    d["initial"] = {"joint": {"states": sol.network.states[keep].tolist(), "p": (p / p.sum()).tolist()}}
    out.append(("joint", d))
    return out


@pytest.mark.parametrize("name", ["qubit_osc_sqrt", "three_spins_eth", "three_exp_golden", "qubit_table_sqrt",
                                  "two_baths"])
def test_observational_entropy_never_decreases(name):
    """§5.2 H-theorem: S_obs(t) = -D(p || V) is non-decreasing for any initial state."""
    for label, d in _initial_variants(name):
        d["times"] = {"stop": 6.0, "num": 31}
        sol = trajmc.solve(d)
        S = s_obs_series(sol)
        assert np.all(np.diff(S) >= -1e-12 * max(1.0, np.abs(S).max())), label
        if label != "canonical":
            continue
        # -D(p || V) directly: with V scaled per closed block it is the same functional
        lnV = sol.network.lnV
        direct = -np.sum(xlogy(sol.p, sol.p), axis=1) + sol.p @ lnV
        np.testing.assert_allclose(S, direct, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_total_energy_distribution_is_conserved(name):
    """§5.3: the distribution of eps_s + sum E_nu never changes (and so neither does each block's weight)."""
    for label, d in _initial_variants(name)[::2]:
        sol = trajmc.solve(d)
        net = sol.network
        sh = net.shell - net.shell.min()
        w0 = np.bincount(sh, weights=sol.p[0])
        for row in sol.p[1:]:
            assert np.max(np.abs(np.bincount(sh, weights=row, minlength=len(w0)) - w0)) <= 1e-12, label
            assert np.max(np.abs(np.bincount(net.block, weights=row)
                                 - np.bincount(net.block, weights=sol.p[0]))) <= 1e-12


def _steady_state(net):
    """Stationary distribution: ∝ V inside each closed block, each block keeping its initial weight."""
    w = np.bincount(net.block, weights=net.p0, minlength=net.n_blocks)
    lse = np.full(net.n_blocks, -np.inf)
    for b in range(net.n_blocks):
        lse[b] = logsumexp(net.lnV[net.block == b])
    p = w[net.block] * np.exp(net.lnV - lse[net.block])
    S_inf = -np.sum(xlogy(w, w)) + np.sum(w * lse)
    return p, S_inf


@pytest.mark.parametrize("name", ALL_MODELS)
def test_steady_state_proportional_to_V(name):
    """§5.4: p(inf) ∝ V inside each block, weights kept; S_obs(inf) = H(w) + sum w ln(sum_block V)."""
    sol = trajmc.solve(get_model_dict(name), times=[0.0, 500.0, 1000.0])
    p_inf, S_inf = _steady_state(sol.network)
    for k in (1, 2):
        assert np.max(np.abs(sol.p[k] - p_inf)) <= 1e-12
    S = s_obs_series(sol)
    assert abs(S[-1] - S_inf) <= 1e-10
    assert S[-1] >= S[0]


@pytest.mark.parametrize("name", ONE_BATH)
def test_microcanonical_steady_state_eq54(name):
    """Microcanonical start: p(s, E0 + eps_s0 - eps_s) ∝ V_{E0 + eps_s0 - eps_s} (Eq. 54)."""
    d = get_model_dict(name)
    w = d["baths"][0]["dos"].get("quantum", 1)
    E0 = 10 * w
    n_s = len(d["system"]["energies"])
    s0 = n_s - 1
    d["initial"] = {"system": [0.0] * s0 + [1.0], "baths": [{"state": "microcanonical", "energy": E0}]}
    sol = trajmc.solve(d, times=[0.0, 1000.0])
    net = sol.network
    eps = np.array(d["system"]["energies"])
    E = E0 + eps[s0] - eps[net.states[:, 0]]
    np.testing.assert_array_equal(net.states[:, 1], E)
    lnV = sol.model.baths[0].lnV[E]
    want = np.exp(lnV - logsumexp(lnV))
    assert np.max(np.abs(sol.p[-1] - want)) <= 1e-12
    assert abs(s_obs_series(sol)[-1] - logsumexp(lnV)) <= 1e-10


def test_qubit_linear_exact_example():
    """§5.4: qubit + 5 oscillators, linear kernel, bath at E = 6: rates 6 up, 10 down."""
    d = trajmc.get_example("qubit-linear-exact")
    sol = trajmc.solve(d)
    net = sol.network
    np.testing.assert_array_equal(net.states, [[0, 6], [1, 5]])
    up = net.rate[(net.source == 0) & (net.target == 1)]
    down = net.rate[(net.source == 1) & (net.target == 0)]
    np.testing.assert_allclose(up, [6.0], rtol=1e-13)
    np.testing.assert_allclose(down, [10.0], rtol=1e-13)
    t = sol.times
    assert len(t) > 10
    p1 = 0.375 * (1 - np.exp(-16 * t))
    assert np.max(np.abs(sol.p_system()[:, 1] - p1)) <= 1e-12
    assert np.max(np.abs(sol.p[:, 1] - p1)) <= 1e-12
    long = trajmc.solve(d, times=[0.0, 5.0, 50.0])
    th = long.thermo()
    assert abs(th["Sigma"].iloc[-1] - math.log(1.6)) <= 1e-12
    assert abs(th["Sigma"].iloc[1] - math.log(1.6)) <= 1e-12
    np.testing.assert_allclose(long.p[-1], [0.625, 0.375], rtol=0, atol=1e-14)


def _pauli_generator(eps, c, gamma, beta, log_j):
    n = len(eps)
    K = np.zeros((n, n))
    for s in range(n):
        for s2 in range(n):
            if s != s2 and c[s, s2] > 0:
                om = eps[s] - eps[s2]
                K[s2, s] = gamma * c[s, s2] * math.exp(log_j(om) + beta * om / 2)
    K -= np.diag(K.sum(axis=0))
    return K


@pytest.mark.parametrize("spectral,log_j", [
    ({"shape": "flat"}, lambda om: 0.0),
    ({"shape": "gaussian", "width": 1.7}, lambda om: -om**2 / (2 * 1.7**2)),
    ({"shape": "exponential", "cutoff": 2.5}, lambda om: -abs(om) / 2.5),
], ids=["flat", "gaussian", "exponential"])
@pytest.mark.parametrize("bath_state", [
    {"state": "microcanonical", "energy": 200},
    {"state": "table", "p": [0.0] * 190 + [0.09] * 5 + [0.2, 0.15, 0.1, 0.05, 0.0, 0.05] + [0.0] * 200},
], ids=["microcanonical", "table"])
def test_sqrt_kernel_exponential_bath_obeys_pauli_equation(spectral, log_j, bath_state):
    """§5.5: sqrt kernel + exponential(beta) bath: p_s(t) obeys the ordinary Pauli master equation."""
    beta, gamma = 0.45, 0.8
    eps = [0, 1, 3, 4]
    coupling = [[0, 1, 0.5, 0], [1, 0, 1, 0.3], [0.5, 1, 0, "0.2j"], [0, 0.3, "-0.2j", 0]]
    ps0 = np.array([0.1, 0.2, 0.3, 0.4])
    d = {"name": "pauli", "system": {"energies": eps, "coupling": coupling},
         "baths": [{"name": "B", "dos": {"model": "exponential", "beta": beta}, "emax": 400,
                    "kernel": {"model": "sqrt", "gamma": gamma, "spectral": spectral}}],
         "initial": {"system": ps0.tolist(), "baths": [bath_state]},
         "times": {"stop": 3.0, "num": 13}}
    sol = trajmc.solve(d)
    # the grid edge (E = 0 or 400) is never reached
    assert sol.network.states[:, 1].min() > 150 and sol.network.states[:, 1].max() < 250
    c = np.abs(np.array([[complex(z) for z in row] for row in coupling])) ** 2  # complex() parses "0.2j" too
    K = _pauli_generator(eps, c, gamma, beta, log_j)
    ref = np.array([scipy.linalg.expm(K * t) @ ps0 for t in sol.times])
    assert np.max(np.abs(sol.p_system() - ref)) <= 1e-10


@REGRESSION_EIGH
@pytest.mark.parametrize("route", [None, "eigh", "expm", "chebyshev"])
def test_eigh_route_with_rates_that_underflow(route, monkeypatch):
    """A narrow gaussian J (width 1e-3) makes every rate exp(-5e5) = 0: nothing may move, and p must stay p0.
    With the column replacement, U = [u0, e_k] is not orthogonal and 7% of each block's probability is lost."""
    d = get_model_dict("qubit_osc_sqrt")
    d["baths"][0]["kernel"]["spectral"] = {"shape": "gaussian", "width": 1e-3}
    force(monkeypatch, route)
    sol = trajmc.solve(d)
    # the finite-rate guard drops jumps whose rate underflows to 0: every shell is a single state
    assert sol.network.n_edges == 0
    assert sol.info["trivial"] == sol.network.n_blocks  # nothing moves in any class
    for row in sol.p:
        assert np.max(np.abs(row - sol.network.p0)) <= 1e-12
