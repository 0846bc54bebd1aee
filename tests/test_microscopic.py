"""trajmc.microscopic: the random-matrix bath, the MME built from a Hamiltonian, and the exact dynamics.

Exact (machine precision): the MME's rates equal ``gamma |S_ss'|^2 f(E, E') / V_E`` computed by hand from
``f = tr{Pi_E B Pi_E' B}``; the exact dynamics equals ``expm(-i H t)`` applied by brute force, by both of its
routes; trace 1, ``<H>`` conserved, ``p(0)`` is the initial state; ``Delta S_obs >= 0`` for starts uniform
inside windows (the seed's Sec. II).  Statistical (seeded, stated thresholds): the entries of ``B`` have the
stated variance.  Physics: the MME approaches the exact dynamics as the coupling is lowered.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
from scipy.stats import chi2, norm

import trajmc
from trajmc import microscopic as mic
from trajmc.network import build_network

QUBIT = [[0.0, 0.0], [0.0, 1.0]]
SX = [[0.0, 1.0], [1.0, 0.0]]
ALPHA = 1e-6  # false-alarm rate of each statistical check (the draws are seeded: a failure is reproducible)


def small(counts=(10, 14, 18, 24), seed=3, **kw):
    E, B = mic.random_matrix_bath(list(counts), 1.0, 2.5, seed, **kw)
    return mic.Microscopic(QUBIT, SX, E, B, 1.0)


def brute_force(m, coupling, initial, times):
    """``p_{sE}(t)`` from ``expm(-i H t) rho(0) expm(i H t)``, nothing shared with evolve but H and rho(0)."""
    H = m.hamiltonian(coupling)
    ini = m._initial(initial)
    N, D = m.n_bath, m.dimension
    rho = np.zeros((D, D), dtype=complex)
    if ini.kind == "pure":
        for s in range(m.n_levels):
            psi = np.zeros(D, dtype=complex)
            psi[s * N:(s + 1) * N] = ini.phi
            rho += ini.p_s[s] * np.outer(psi, psi.conj())
    else:
        w = np.outer(ini.p_s, ini.p_E[m.window] / m.counts[m.window]).ravel()
        rho[np.diag_indices(D)] = w
    out = []
    for t in times:
        U = scipy.linalg.expm(-1j * H * t)
        d = np.real(np.diag(U @ rho @ U.conj().T))
        out.append([d[s * N:(s + 1) * N][m.window == E].sum() for s in range(m.n_levels)
                    for E in np.flatnonzero(m.counts)])
    return np.array(out)


STARTS = {"canonical": {"system": [0.3, 0.7], "bath": {"state": "canonical", "beta": 0.4}},
          "microcanonical": {"system": [0.0, 1.0], "bath": {"state": "microcanonical", "energy": 1}},
          "pure": {"system": [0.2, 0.8], "bath": {"state": "pure", "energy": 2, "seed": 11}}}


# --------------------------------------------------------------------------- random_matrix_bath

def test_bath_shapes_windows_and_symmetry():
    counts = [5, 0, 7, 9, 3]
    for placement in ("random", "even"):
        E, B = mic.random_matrix_bath(counts, 0.5, 1.0, 1, placement=placement)
        assert E.shape == (24,) and B.shape == (24, 24)
        assert np.all(np.diff(E) >= 0)
        np.testing.assert_array_equal(np.bincount(np.floor(E / 0.5).astype(int), minlength=5), counts)
        np.testing.assert_array_equal(B, B.T)
        assert B.dtype == np.float64
    E, _ = mic.random_matrix_bath([2, 4], 1.0, 1.0, 1, placement="even")
    np.testing.assert_array_equal(E, [0.25, 0.75, 1.125, 1.375, 1.625, 1.875])


def test_bath_is_reproducible_from_its_seed():
    a = mic.random_matrix_bath([6, 8, 9], 1.0, 2.0, 42)
    b = mic.random_matrix_bath([6, 8, 9], 1.0, 2.0, 42)
    c = mic.random_matrix_bath([6, 8, 9], 1.0, 2.0, 43)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    d = mic.random_matrix_bath([6, 8, 9], 1.0, 2.0, np.random.SeedSequence(42))
    np.testing.assert_array_equal(a[1], d[1])


def test_bath_entries_have_the_stated_variance():
    """Off-diagonal B_ij / sd_ij are N(0, 1) and the diagonal has the GOE variance 2 / counts[mid].

    z-test of the mean and chi-square tests of the sums of squares, each at false-alarm rate ``ALPHA``.
    """
    counts = [40, 60, 90, 120, 150]
    width = 1.7
    E, B = mic.random_matrix_bath(counts, 1.0, width, 5)
    n_mid = counts[len(counts) // 2]
    iu = np.triu_indices(len(E), 1)
    sd = np.sqrt(np.exp(-((E[:, None] - E[None, :]) ** 2) / (2 * width**2)) / n_mid)
    x = (B / sd)[iu]
    n = len(x)
    assert abs(x.mean()) * math.sqrt(n) < norm.isf(ALPHA / 2)
    q = np.sum(x**2)
    assert chi2.ppf(ALPHA / 2, n) < q < chi2.isf(ALPHA / 2, n)
    d = np.diag(B) / math.sqrt(2.0 / n_mid)
    q = np.sum(d**2)
    assert chi2.ppf(ALPHA / 2, len(d)) < q < chi2.isf(ALPHA / 2, len(d))
    # and the variance falls with the energy difference as the Gaussian says (an independent check: the
    # entries two band widths apart, measured in units of the nearby-entry variance, have variance e^-2)
    de = np.abs(E[:, None] - E[None, :])[iu]
    near, far = B[iu][de < 0.2], B[iu][np.abs(de - 2 * width) < 0.2]
    ratio = np.mean(far**2) / np.mean(near**2)
    expect = np.mean(np.exp(-(de[np.abs(de - 2 * width) < 0.2] ** 2) / (2 * width**2))) / np.mean(
        np.exp(-(de[de < 0.2] ** 2) / (2 * width**2)))
    # ratio of two chi-square means: relative SE sqrt(2/n_far + 2/n_near)
    se = math.sqrt(2 / len(far) + 2 / len(near))
    assert abs(ratio / expect - 1) < norm.isf(ALPHA / 2) * se


@pytest.mark.parametrize("args, match", [
    (([5, -1, 3], 1.0, 1.0, 1), "counts"),
    (([5, 0, 3], 1.0, 1.0, 1), r"counts\[1\]"),
    (([5.5, 2], 1.0, 1.0, 1), "counts"),
    (([5, 3], 0.0, 1.0, 1), "delta"),
    (([5, 3], 1.0, -2.0, 1), "width"),
    (([5, 3], 1.0, 1.0, None), "seed"),
])
def test_bath_errors_name_the_argument(args, match):
    with pytest.raises(ValueError, match=match):
        mic.random_matrix_bath(*args)
    with pytest.raises(ValueError, match="placement"):
        mic.random_matrix_bath([3, 3], 1.0, 1.0, 1, placement="grid")


# --------------------------------------------------------------------------- Microscopic: placement and f

def test_hamiltonian_in_another_basis_is_diagonalised_and_placed():
    E, B = mic.random_matrix_bath([4, 5, 6, 7], 0.5, 1.0, 2)
    th = 0.3
    R = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    H_S = R @ np.diag([0.0, 1.0]) @ R.T  # gap 1 = 2 delta
    S = R @ np.array([[0.0, 1.0], [1.0, 0.0]]) @ R.T
    m = mic.Microscopic(H_S, S, E, B, 0.5)
    np.testing.assert_array_equal(m.levels, [0, 2])
    assert np.abs(m.rounding).max() < 1e-12
    np.testing.assert_allclose(np.abs(m.S), [[0, 1], [1, 0]], atol=1e-12)


def test_f_is_the_window_sum_of_B_squared():
    m = small(counts=(3, 0, 4, 5))
    K = len(m.counts)
    for E in range(K):
        for E2 in range(K):
            want = sum(m.B[i, j] ** 2 for i in range(m.n_bath) for j in range(m.n_bath)
                       if m.window[i] == E and m.window[j] == E2)
            assert m.f[E, E2] == pytest.approx(want, rel=1e-13, abs=0)
    np.testing.assert_array_equal(m.f, m.f.T)
    assert np.all(np.isneginf(m.lnV[1])) and np.all(np.isneginf(m.lnf[1]))


def test_refusals_and_warnings():
    E, B = mic.random_matrix_bath([4, 5, 6], 1.0, 1.0, 2)
    with pytest.raises(ValueError, match="H_S: must be Hermitian"):
        mic.Microscopic([[0, 1], [0, 1]], SX, E, B, 1.0)
    with pytest.raises(ValueError, match=r"S: must be 2 x 2"):
        mic.Microscopic(QUBIT, np.eye(3), E, B, 1.0)
    with pytest.raises(ValueError, match="B: must be 15 x 15"):
        mic.Microscopic(QUBIT, SX, E, B[:-1, :-1], 1.0)
    with pytest.raises(ValueError, match="bath_energies"):
        mic.Microscopic(QUBIT, SX, E - 1.0, B, 1.0)
    with pytest.raises(ValueError, match="merge"):
        mic.Microscopic([[0, 0], [0, 0.03]], SX, E, B, 1.0)
    with pytest.raises(ValueError, match="max_rounding"):
        mic.Microscopic([[0, 0], [0, 1.2]], SX, E, B, 1.0)
    mic.Microscopic([[0, 0], [0, 1.2]], SX, E, B, 1.0, max_rounding=0.25)  # allowed when asked for
    with pytest.raises(ValueError, match="S: has no off-diagonal"):
        mic.Microscopic(QUBIT, np.diag([1.0, -1.0]), E, B, 1.0)
    with pytest.warns(mic.SecularWarning, match="degenerate"):
        mic.Microscopic(np.diag([0.0, 1.0, 1.0]), np.ones((3, 3)), E, B, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mic.Microscopic(QUBIT, SX, E, B, 1.0)


# --------------------------------------------------------------------------- the MME model

def test_mme_rates_equal_the_golden_rule_from_f():
    """A 3-level system in a rotated basis, a bath with an empty window and delta = 0.5: every edge rate of
    the trajmc network is gamma |S_ss'|^2 f(E, E') / V_E with gamma = 2 pi lambda^2 / delta, by hand."""
    E, B = mic.random_matrix_bath([6, 8, 0, 11, 13, 9], 0.5, 1.2, 4)
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    H_S = Q @ np.diag([0.0, 0.5, 1.5]) @ Q.T
    S = Q @ np.array([[0.0, 1.0, 0.4], [1.0, 0.2, 0.7], [0.4, 0.7, 0.0]]) @ Q.T
    m = mic.Microscopic(H_S, S, E, B, 0.5)
    lam = 0.07
    ini = {"system": [0.2, 0.3, 0.5], "bath": {"state": "canonical", "beta": 0.8}}
    model = trajmc.load_model(m.mme(lam, ini, [0.0, 1.0]))
    assert model.baths[0].kernel.model == "table"
    assert model.baths[0].kernel.gamma == pytest.approx(2 * math.pi * lam**2 / 0.5, rel=1e-15)
    np.testing.assert_array_equal(model.energies, [0, 1, 3])
    net = build_network(model)
    src, tgt = net.states[net.source], net.states[net.target]
    c = np.abs(m.S) ** 2
    G = 2 * math.pi * lam**2 / 0.5
    f = {}  # f(E, E') by explicit sums over bath levels
    for i in range(m.n_bath):
        for j in range(m.n_bath):
            key = (int(m.window[i]), int(m.window[j]))
            f[key] = f.get(key, 0.0) + m.B[i, j] ** 2
    V = np.bincount(m.window)
    by_hand = {}
    for (s, Ea), (s2, Eb) in ((a, b) for a in np.ndindex(3, len(V)) for b in np.ndindex(3, len(V))):
        if s != s2 and V[Ea] and V[Eb] and Eb == Ea + model.energies[s] - model.energies[s2]:
            by_hand[(s, Ea, s2, Eb)] = G * c[s, s2] * f[(Ea, Eb)] / V[Ea]
    got = {(a[0], a[1], b[0], b[1]): r for a, b, r in zip(src.tolist(), tgt.tolist(), net.rate, strict=True)}
    reached = {k: v for k, v in by_hand.items() if (k[0], k[1]) in {(a[0], a[1]) for a in net.states.tolist()}}
    assert set(got) == set(reached)
    for k, r in got.items():
        assert r == pytest.approx(reached[k], rel=1e-12)
    rates = m.rates(lam)
    for k, r in got.items():
        assert r == pytest.approx(rates[k], rel=1e-12)
    # the canonical start is the same distribution on both sides: beta per energy unit -> beta * delta
    np.testing.assert_allclose(model.bath_states[0].p, m._initial(ini).p_E, rtol=1e-14)
    assert model.bath_states[0].beta == pytest.approx(0.8 * 0.5)


def test_mme_initial_states_and_kernel_override():
    m = small()
    t = [0.0, 1.0, 2.0]
    mc = m.mme(0.1, {"system": [0, 1], "bath": {"state": "microcanonical", "energy": 2, "beta": 0.3}}, t)
    assert mc["initial"]["baths"] == [{"state": "microcanonical", "energy": 2, "beta": 0.3}]
    pure = m.mme(0.1, STARTS["pure"], t)
    assert pure["initial"]["baths"] == [{"state": "microcanonical", "energy": 2}]
    gib = m.mme(0.1, {"system": {"gibbs": True, "beta": 0.5}, "bath": {"state": "canonical", "beta": 0.5}}, t)
    assert gib["initial"]["system"] == {"gibbs": True, "beta": 0.5}
    gold = m.mme(0.1, STARTS["canonical"], t, kernel={"model": "golden", "E_ref": 2,
                                                       "spectral": {"shape": "gaussian", "width": 2.5}})
    assert gold["baths"][0]["kernel"]["gamma"] == m.gamma(0.1)
    for d in (mc, pure, gib, gold):
        trajmc.solve(d)


@pytest.mark.parametrize("initial, match", [
    ({"system": [0.5, 0.5]}, "initial.bath"),
    ({"system": [0.5, 0.6], "bath": {"state": "canonical", "beta": 1}}, "initial.system"),
    ({"system": [1.0], "bath": {"state": "canonical", "beta": 1}}, "initial.system"),
    ({"system": [0, 1], "bath": {"state": "canonical"}}, "initial.bath.beta"),
    ({"system": [0, 1], "bath": {"state": "microcanonical", "energy": 1.5}}, "initial.bath.energy"),
    ({"system": [0, 1], "bath": {"state": "microcanonical", "energy": 9}}, "initial.bath.energy"),
    ({"system": [0, 1], "bath": {"state": "pure", "energy": 1}}, "initial.bath.seed"),
    ({"system": [0, 1], "bath": {"state": "canonical", "beta": 1, "energy": 2}}, "initial.bath.energy"),
    ({"system": [0, 1], "bath": {"state": "gibbs", "beta": 1}}, "initial.bath.state"),
])
def test_initial_state_errors_name_the_key(initial, match):
    with pytest.raises(ValueError, match=match):
        small().mme(0.1, initial, [0.0, 1.0])


def test_coupling_and_times_errors():
    m = small()
    with pytest.raises(ValueError, match="coupling"):
        m.mme(0.0, STARTS["canonical"], [0.0, 1.0])
    with pytest.raises(ValueError, match="times"):
        m.evolve(0.1, STARTS["canonical"], [0.5, 1.0])
    with pytest.raises(ValueError, match="max_dimension"):
        m.evolve(0.1, STARTS["canonical"], [0.0, 1.0], max_dimension=100)
    with pytest.raises(ValueError, match="route"):
        m.evolve(0.1, STARTS["canonical"], [0.0, 1.0], route="krylov")


# --------------------------------------------------------------------------- exact dynamics

@pytest.mark.parametrize("start", list(STARTS))
def test_evolve_equals_brute_force_expm(start):
    m = small()
    t = np.array([0.0, 0.7, 3.1, 12.0])
    want = brute_force(m, 0.15, STARTS[start], t)
    for route in ("columns", "trace"):
        q = m.evolve(0.15, STARTS[start], t, route=route)
        assert np.abs(q.p - want).max() < 1e-12, route


def test_evolve_complex_hamiltonian_equals_brute_force():
    E, B = mic.random_matrix_bath([8, 10, 13], 1.0, 2.0, 9)
    m = mic.Microscopic([[0.5, 0.5j], [-0.5j, 0.5]], [[0.3, 1.0], [1.0, -0.2]], E, B, 1.0)
    assert np.iscomplexobj(m.S)
    t = np.array([0.0, 1.3, 6.0])
    for start in STARTS.values():
        start = {"system": start["system"], "bath": dict(start["bath"], energy=1) if "energy" in start["bath"]
                 else start["bath"]}
        want = brute_force(m, 0.2, start, t)
        for route in ("columns", "trace"):
            assert np.abs(m.evolve(0.2, start, t, route=route).p - want).max() < 1e-12


@pytest.mark.parametrize("start", list(STARTS))
def test_evolve_is_unitary_and_starts_where_it_should(start):
    m = small(counts=(30, 40, 55, 70))
    t = np.linspace(0.0, 40.0, 9)
    q = m.evolve(0.1, STARTS[start], t)
    assert q.info["norm_error"] < 1e-12
    assert np.abs(q.p.sum(axis=1) - 1).max() < 1e-12
    assert q.info["energy_drift"] < 1e-10
    assert q.info["eigh_residual"] < 1e-10
    assert q.info["p_min"] > -1e-14
    ini = m._initial(STARTS[start])
    want = np.outer(ini.p_s, ini.p_E[np.flatnonzero(m.counts)]).ravel()
    np.testing.assert_allclose(q.p[0], want, rtol=0, atol=1e-14)
    assert q.states.columns.tolist() == ["s", "E_B"] and len(q.states) == 2 * 4
    ps = q.p_system()
    assert ps.shape == (len(t), 2)
    np.testing.assert_allclose(ps[0], ini.p_s, atol=1e-14)
    th = q.thermo()
    for col in ("S_obs", "Sigma", "Sigma_tilde", "S_sh", "I", "D", "E_S", "E_B", "Q_B"):
        assert col in th.columns


def test_one_diagonalisation_serves_several_starts():
    m = small()
    t = [0.0, 2.0, 5.0]
    many = m.evolve(0.12, list(STARTS.values()), t)
    for q, start in zip(many, STARTS.values(), strict=True):
        np.testing.assert_allclose(q.p, m.evolve(0.12, start, t).p, rtol=0, atol=1e-13)


def test_thermo_has_the_mme_definitions():
    """Fed the MME's own p, the quantum side's Space gives the MME's thermo table (same columns, same values)."""
    m = small()
    t = np.linspace(0, 10, 6)
    ini = STARTS["canonical"]
    sol = trajmc.solve(m.mme(0.1, ini, t))
    q = m.evolve(0.1, ini, t)
    full = np.zeros_like(q.p)
    idx = {tuple(r): k for k, r in enumerate(q._states.tolist())}
    for k, row in enumerate(sol.states[["s", "E_B"]].to_numpy().tolist()):
        full[:, idx[tuple(row)]] = sol.p[:, k]
    q.p = full
    a, b = q.thermo(), sol.thermo()
    cols = ["S_obs", "Sigma", "Sigma_tilde", "S_sh", "I", "D", "E_S", "E_B", "Q_B", "S_B_B", "D_B"]
    np.testing.assert_allclose(a[cols].to_numpy(), b[cols].to_numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("start", ["canonical", "microcanonical"])
def test_observational_entropy_never_falls_below_its_start(start):
    """The seed's Sec. II: for rho(0) = sum_x p_x Pi_x / V_x, S_obs(t) >= S_vN(rho(t)) = S_vN(rho(0)) = S_obs(0)."""
    m = small(counts=(30, 40, 55, 70))
    t = np.linspace(0.0, 60.0, 121)
    q = m.evolve(0.2, STARTS[start], t)
    assert q.thermo()["Sigma"].min() >= -1e-12


def test_typicality_pure_start_is_close_to_microcanonical():
    """A Haar-random pure state in a window of V levels gives p_sE within O(1/sqrt(V)) of the mixed start."""
    m = small(counts=(30, 40, 55, 70))
    t = np.linspace(0.0, 30.0, 7)
    pure = m.evolve(0.15, {"system": [0, 1], "bath": {"state": "pure", "energy": 1, "seed": 5}}, t)
    mixed = m.evolve(0.15, {"system": [0, 1], "bath": {"state": "microcanonical", "energy": 1}}, t)
    assert np.abs(pure.p - mixed.p).max() < 5 / math.sqrt(40)
    assert np.abs(pure.p - mixed.p).max() > 0  # not the same state


# --------------------------------------------------------------------------- MME vs exact

def _mme_error(m, lam, ini, t):
    q = m.evolve(lam, ini, t)
    return mic.deviation(q, trajmc.solve(m.mme(lam, ini, t)))["p_s"]


def test_mme_approaches_the_exact_dynamics_as_the_coupling_falls():
    """Fast version of the physics test: halving lambda (Gamma / 4) reduces the p_s error."""
    m = small(counts=(60, 75, 95, 120), seed=1, placement="even")
    ini = {"system": [0.0, 1.0], "bath": {"state": "microcanonical", "energy": 1}}
    errs = []
    for lam in (0.3, 0.15):
        G = m.gamma(lam)
        errs.append(_mme_error(m, lam, ini, np.linspace(0, 4 / G, 21)))
    assert errs[1] < errs[0] / 2


@pytest.mark.slow
def test_mme_error_falls_like_gamma_with_the_bath_s_own_kernel():
    """The MME error max_{t,s} |p_s^MME - p_s^exact| at the weakest coupling is >= 2.5x smaller than at a
    coupling twice as strong, with the bath's own (table) kernel.

    Why 2.5: the MME is the leading order in the relaxation rate Gamma ∝ lambda^2 of the exact dynamics; its
    corrections (initial slip over the bath correlation time, level shifts, energy-time broadening across
    window edges) are first order in Gamma, and the measured error falls as Gamma^a with a ≈ 1 to 1.2 (issue
    11; runs/analysis/mme_vs_quantum).  Twice the coupling is four times Gamma, so the expected ratio is
    4^a ≈ 4 to 5.3; 2.5 = 4^0.66 is what an exponent of only 2/3 would give.  A kernel that does not describe
    the bath leaves an error floor (ratio -> 1) and fails.  The bath (about 300 levels per window, evenly
    placed) keeps the finite-bath error ~1/(Gamma rho) well below the Gamma error at both couplings: Gamma rho
    >= 30 final states inside the line width.
    """
    m = small(counts=(220, 270, 330, 400), seed=2, placement="even")
    ini = {"system": [0.0, 1.0], "bath": {"state": "microcanonical", "energy": 1}}
    errs = {}
    for lam in (0.2, 0.1):
        G = m.gamma(lam)
        errs[lam] = _mme_error(m, lam, ini, np.linspace(0, 4 / G, 41))
    assert errs[0.1] * 2.5 <= errs[0.2], errs
