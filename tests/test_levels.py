"""Levels that are not integers: ``delta`` with float energies, or ``system.hamiltonian`` in any basis;
and the reference ``D`` of a microcanonical start with a reference beta (issue: microscopic models)."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
from conftest import THREADS, get_model_dict

import trajmc
from trajmc.errors import ModelError
from trajmc.network import build_network
from trajmc.validate import run_checks, verdict


def qubit(**system):
    d = get_model_dict("qubit_osc_sqrt")
    d["system"] = system
    return d


def no_warnings(fn, *a):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*a)


def test_float_energies_on_a_grid_of_step_delta():
    d = qubit(energies=[0.0, 1.5], coupling=[[0, 1], [1, 0]])
    d["delta"] = 0.5
    m = no_warnings(trajmc.load_model, d)
    np.testing.assert_array_equal(m.energies, [0, 3])
    assert m.given == {"delta": 0.5, "energies": [0.0, 1.5], "max_error": 0.0}
    # the same physics as writing the grid integers
    ref = trajmc.load_model(qubit(energies=[0, 3], coupling=[[0, 1], [1, 0]]))
    assert np.array_equal(build_network(m).rate, build_network(ref).rate)


def test_rounding_is_reported_and_recorded():
    d = qubit(energies=[0.0, 1.04], coupling=[[0, 1], [1, 0]])
    d["delta"] = 0.25
    with pytest.warns(UserWarning, match=r"largest rounding error is 0.04 \(0.16 delta"):
        m = trajmc.load_model(d)
    np.testing.assert_array_equal(m.energies, [0, 4])
    assert abs(m.given["max_error"] - 0.04) < 1e-12


def test_levels_the_grid_would_merge_are_refused():
    d = qubit(energies=[0.0, 0.9, 1.1], coupling=[[0, 1, 1], [1, 0, 1], [1, 1, 0]])
    d["delta"] = 1.0
    d["initial"]["system"] = [0.2, 0.3, 0.5]
    with pytest.raises(ModelError, match="fall on the same grid point 1") as exc:
        trajmc.load_model(d)
    assert exc.value.key == "system.energies" and "a delta below 0.2" in str(exc.value)


def test_hamiltonian_in_another_basis_is_diagonalised_and_the_coupling_rotated():
    # H = R diag(0, 2) R^T with R a rotation by theta; coupling given in the same (rotated) basis
    th = 0.3
    R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    H = R @ np.diag([0.0, 2.0]) @ R.T
    S_eig = np.array([[0.4, 1.0], [1.0, -0.4]])
    S = R @ S_eig @ R.T
    d = qubit(hamiltonian=H.tolist(), coupling=S.tolist())
    d["delta"] = 0.5
    m = no_warnings(trajmc.load_model, d)
    np.testing.assert_array_equal(m.energies, [0, 4])
    np.testing.assert_allclose(np.abs(m.coupling[0]), np.abs(S_eig), atol=1e-14)
    assert m.given["delta"] == 0.5 and "hamiltonian" in m.given and "coupling" in m.given
    ref = trajmc.load_model(qubit(energies=[0, 4], coupling=S_eig.tolist()))
    np.testing.assert_allclose(build_network(m).rate, build_network(ref).rate, rtol=1e-13)


def test_hamiltonian_rotates_the_baths_own_coupling_and_drops_rotation_noise():
    d = get_model_dict("two_baths")
    H = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 2.0]])  # diagonal, but not sorted
    P = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    Hp = P @ np.diag([0.0, 1.0, 2.0]) @ P.T
    assert np.array_equal(H, Hp)
    th = 0.7  # now a genuinely non-diagonal basis: rotate levels 0 and 1
    R = np.eye(3)
    R[:2, :2] = [[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]
    ladder = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=float)
    d["system"] = {"hamiltonian": (R @ np.diag([0.0, 1.0, 2.0]) @ R.T).tolist(),
                   "coupling": (R @ np.array(d["system"]["coupling"], dtype=float) @ R.T).tolist()}
    d["baths"][1]["coupling"] = (R @ ladder @ R.T).tolist()
    m = no_warnings(trajmc.load_model, d)
    np.testing.assert_array_equal(m.energies, [0, 1, 2])
    c = np.abs(m.baths[1].coupling[0])
    np.testing.assert_allclose(c, ladder, atol=1e-14)
    assert np.all(c[ladder == 0] == 0)  # rounding of the rotation is not a coupling


def test_diagonal_hamiltonian_keeps_the_given_order():
    d = qubit(hamiltonian=[[1.0, 0.0], [0.0, 0.0]], coupling=[[0, 1], [1, 0]])
    m = no_warnings(trajmc.load_model, d)
    np.testing.assert_array_equal(m.energies, [1, 0])
    assert m.given["delta"] == 1.0


def test_degenerate_hamiltonian_is_warned_about():
    d = qubit(hamiltonian=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]],
              coupling=[[0, 1, 1], [1, 0, 1], [1, 1, 0]])
    d["initial"]["system"] = [0.2, 0.3, 0.5]
    with pytest.warns(UserWarning, match="secular approximation"):
        trajmc.load_model(d)


@pytest.mark.parametrize("system, key, text", [
    ({"hamiltonian": [[0, 1], [2, 0]], "coupling": [[0, 1], [1, 0]]}, "system.hamiltonian", "Hermitian"),
    ({"hamiltonian": [[0, 1], [1, 0]], "energies": [0, 1], "coupling": [[0, 1], [1, 0]]}, "system.hamiltonian",
     "excludes 'energies'"),
    ({"hamiltonian": [[0.0]], "coupling": [[0, 1], [1, 0]]}, "system.hamiltonian", "at least 2 levels"),
    ({"hamiltonian": [[0, 0], [0, 1]], "coupling": [[1, 0], [0, 2]]}, "system.coupling", "no off-diagonal"),
    ({"coupling": [[0, 1], [1, 0]]}, "system.energies", "required"),
    ({"energies": [0.0, 0.5], "coupling": [[0, 1], [1, 0]]}, "system.energies[1]", "must be an integer"),
])
def test_bad_levels(system, key, text):
    with pytest.raises(ModelError, match=text) as exc:
        trajmc.load_model(qubit(**system))
    assert exc.value.key == key


def test_delta_must_be_positive_and_huge_counts_are_refused():
    d = qubit(energies=[0.0, 1.0], coupling=[[0, 1], [1, 0]])
    d["delta"] = -1.0
    with pytest.raises(ModelError, match="must be > 0") as exc:
        trajmc.load_model(d)
    assert exc.value.key == "delta"
    d["delta"] = 1e-300
    with pytest.raises(ModelError, match="grid steps") as exc:
        trajmc.load_model(d)
    assert exc.value.key == "system.energies[1]"


@pytest.mark.parametrize("which", ["energies", "hamiltonian"])
def test_resolved_model_keeps_given_and_placed_and_reloads_identically(tmp_path, which):
    if which == "energies":
        d = qubit(energies=[0.0, 1.0], coupling=[[0, 1], [1, 0]])
        d["delta"] = 0.5
    else:
        d = qubit(hamiltonian=[[0.5, 0.5], [0.5, 0.5]], coupling=[[1, 0], [0, -1]])
        d["delta"] = 0.25
    d["protocol"] = [{"time": 1.0, "energies": [0.0, 1.5]}]
    m = no_warnings(trajmc.load_model, d)
    assert m.protocol[0].energies == ((0, 3) if which == "energies" else (0, 6))
    r = m.to_dict()
    assert r["system"]["energies"] == m.energies.tolist() and "given" in r["system"] and "delta" not in r
    assert r["protocol"][0]["given_energies"] == [0.0, 1.5]
    path = tmp_path / "m.toml"
    path.write_text(m.to_toml())
    m2 = no_warnings(trajmc.load_model, path)
    assert m2.digest == m.digest and m2.to_dict() == r
    assert np.array_equal(build_network(m2).rate, build_network(m).rate)
    # an edit to one side of the record is caught
    bad = copy.deepcopy(r)
    bad["system"]["energies"] = [0, 3]
    with pytest.raises(ModelError, match="edited apart") as exc:
        trajmc.load_model(bad)
    assert exc.value.key == "system.given"
    bad = copy.deepcopy(r)
    bad["protocol"][0]["energies"] = [0, 5]
    with pytest.raises(ModelError, match="edited apart") as exc:
        trajmc.load_model(bad)
    assert exc.value.key == "protocol[0].given_energies"


def test_driven_model_with_float_protocol_solves_like_its_integer_twin():
    d = get_model_dict("qubit_osc_sqrt")
    d["delta"] = 0.5
    d["system"]["energies"] = [0.0, 0.5]
    d["protocol"] = [{"time": 1.0, "energies": [0.0, 1.0]}]
    twin = get_model_dict("qubit_osc_sqrt")
    twin["protocol"] = [{"time": 1.0, "energies": [0, 2]}]
    a, b = trajmc.solve(d), trajmc.solve(twin)
    assert np.max(np.abs(a.p - b.p)) == 0.0


# --------------------------------------------------------------------------- D with a reference beta

def micro_with_beta(name="qubit_osc_sqrt", E0=12, beta=0.6):
    d = get_model_dict(name)
    d["initial"]["baths"] = [{"state": "microcanonical", "energy": E0, "beta": beta}]
    return d


@pytest.mark.parametrize("name", ["qubit_osc_sqrt", "three_spins_eth", "three_spins_table"])
def test_D_of_a_microcanonical_start_and_the_generalised_eq60(name):
    """D = D[p_E || pi_E] with pi the Gibbs state at the reference beta; Sigma - Sigma~ = -I - D + D(0)."""
    sol = trajmc.solve(micro_with_beta(name))
    th = sol.thermo()
    m = sol.model
    pi = m.canonical_pi(0)
    assert abs(pi.sum() - 1.0) < 1e-14
    E0 = 12
    assert abs(th["D"].iloc[0] + np.log(pi[E0])) < 1e-12  # D(0) = -ln pi(E0)
    resid = th["Sigma"] - th["Sigma_tilde"] + th["I"] + th["D"] - th["D"].iloc[0]
    assert np.max(np.abs(resid)) < 1e-10
    assert np.all(np.isfinite(th["D"]))


def test_microcanonical_without_beta_has_no_D():
    d = get_model_dict("qubit_osc_sqrt")
    d["initial"]["baths"] = [{"state": "microcanonical", "energy": 12}]
    th = trajmc.solve(d).thermo()
    assert th["D"].isna().all()


@pytest.mark.parametrize("engine", ["enumerated", "implicit"])
def test_monte_carlo_D_of_a_microcanonical_start_agrees(engine):
    d = micro_with_beta()
    sol = trajmc.solve(d)
    ens = trajmc.simulate(d, trajectories=30_000, seed=41, threads=THREADS, engine=engine)
    th, ex = ens.thermo(), sol.thermo()
    z = (th["D"] - ex["D"]) / th["D_se"]
    ok = th["D_se"] > 0
    assert ok.sum() > 10 and np.abs(z[ok]).max() < 5.0  # P(|N(0,1)| > 5) = 5.7e-7 per value
    res = run_checks(ens, sol, alpha=1e-6)
    eq60 = next(r for r in res if r.name == "Eq60Decomposition")
    assert eq60.counted and eq60.passed, eq60.detail
    assert verdict(res), [(r.name, r.detail) for r in res if r.counted and not r.passed]
