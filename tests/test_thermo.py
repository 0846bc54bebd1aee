"""Thermodynamic functionals (docs/physics.md §4) and their exact identities.

Each identity is checked at 1e-10 (or tighter) at every sample time, on one-
and two-bath models with every kernel and density of states.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import ALL_MODELS, ONE_BATH, TWO_BATHS, get_model_dict
from scipy.special import xlogy

import trajmc
from trajmc import thermo as T

TOL = 1e-10


def _solve(d, times=None):
    return trajmc.solve(d, times=times)


def _non_product_variants(name):
    """Initial states other than the canonical product of the shared model: (label, dict)."""
    d0 = get_model_dict(name)
    n_s = len(d0["system"]["energies"])
    out = []
    # microcanonical baths (mid-grid, on the quantum lattice)
    d = get_model_dict(name)
    d["initial"]["baths"] = [{"state": "microcanonical", "energy": 6 * b["dos"].get("quantum", 1)}
                             for b in d["baths"]]
    d["initial"]["system"] = [1.0 / n_s] * n_s
    out.append(("microcanonical", d))
    # a correlated (non-product) joint table from the canonical solution at an intermediate time
    sol = trajmc.solve(get_model_dict(name), times=[0.0, 0.7])
    keep = sol.p[1] > 1e-6
    p = sol.p[1][keep]
    d = get_model_dict(name)
    d["initial"] = {"joint": {"states": sol.network.states[keep].tolist(), "p": (p / p.sum()).tolist()}}
    out.append(("joint", d))
    return out


def _decomposition_residual(th, bath_names):
    S_B = sum(th[f"S_B_{b}"] for b in bath_names)
    return (th["S_obs"] - (th["S_sh"] + S_B - th["I"])).to_numpy()


def test_thermo_columns(solved):
    sol = solved("two_baths")
    th = sol.thermo()
    assert isinstance(th, pd.DataFrame)
    for c in ["S_obs", "Sigma", "Sigma_tilde", "S_sh", "I", "D", "E_S",
              "E_A", "Q_A", "S_B_A", "D_A", "E_C", "Q_C", "S_B_C", "D_C"]:
        assert c in th.columns, c
    np.testing.assert_array_equal(th.index.to_numpy(), sol.times)
    assert np.all(np.isfinite(th.to_numpy()))
    # at t = 0 every difference vanishes
    for c in ["Sigma", "Sigma_tilde", "Q_A", "Q_C"]:
        assert th[c].iloc[0] == 0.0


@pytest.mark.parametrize("name", ALL_MODELS)
def test_functionals_match_direct_computation(name, solved):
    """Every column recomputed from sol.p and sol.states with pandas, independently of trajmc.thermo."""
    sol = solved(name)
    d = get_model_dict(name)
    th = sol.thermo()
    st = sol.states
    eps = np.asarray(d["system"]["energies"], dtype=float)
    baths = [b["name"] for b in d["baths"]]
    lnV = sol.network.lnV
    for k, _ in enumerate(sol.times):
        p = sol.p[k]
        df = st.assign(p=p)
        S_obs = -np.sum(xlogy(p, p)) + np.sum(p * lnV)
        ps = df.groupby("s")["p"].sum()
        S_sh = -np.sum(xlogy(ps.to_numpy(), ps.to_numpy()))
        row = th.iloc[k]
        assert abs(row["S_obs"] - S_obs) <= TOL
        assert abs(row["S_sh"] - S_sh) <= TOL
        assert abs(row["E_S"] - float(np.dot(ps.to_numpy(), eps[ps.index.to_numpy()]))) <= TOL
        ln_prod = np.log(ps.reindex(st["s"]).to_numpy())
        D = 0.0
        for nu, b in enumerate(baths):
            pE = df.groupby(f"E_{b}")["p"].sum()
            E = pE.index.to_numpy()
            lnv_b = np.array([sol.model.baths[nu].lnV[e] for e in E])
            assert abs(row[f"E_{b}"] - float(np.dot(pE.to_numpy(), E))) <= TOL * max(1.0, abs(row[f"E_{b}"]))
            S_B = -np.sum(xlogy(pE.to_numpy(), pE.to_numpy())) + np.sum(pE.to_numpy() * lnv_b)
            assert abs(row[f"S_B_{b}"] - S_B) <= TOL
            beta = d["initial"]["baths"][nu]["beta"]
            grid = np.arange(d["baths"][nu]["emax"] + 1)
            x = sol.model.baths[nu].lnV - beta * grid
            ln_pi = x - np.logaddexp.reduce(x[np.isfinite(x)])
            q = pE.to_numpy()
            D_b = float(np.sum(np.where(q > 0, xlogy(q, q) - q * ln_pi[E], 0.0)))
            assert abs(row[f"D_{b}"] - D_b) <= TOL
            D += D_b
            ln_prod = ln_prod + np.log(pE.reindex(st[f"E_{b}"]).to_numpy())
        assert abs(row["D"] - D) <= TOL
        I = float(np.sum(np.where(p > 0, xlogy(p, p) - p * np.where(p > 0, ln_prod, 0.0), 0.0)))
        assert abs(row["I"] - I) <= TOL


@pytest.mark.parametrize("name", ALL_MODELS)
def test_observational_entropy_decomposition(name, solved):
    """S_obs = S_Sh[p_s] + sum_nu S_obs^B_nu - I  (Eq. 10 / 37), at every time."""
    sol = solved(name)
    th = sol.thermo()
    r = _decomposition_residual(th, sol.model.bath_names)
    assert np.max(np.abs(r)) <= TOL


@pytest.mark.parametrize("name", ["qubit_osc_sqrt", "three_exp_golden", "qubit_table_sqrt", "two_baths"])
def test_observational_entropy_decomposition_non_product(name):
    for label, d in _non_product_variants(name):
        sol = _solve(d)
        th = sol.thermo()
        r = _decomposition_residual(th, sol.model.bath_names)
        assert np.max(np.abs(r)) <= TOL, label
        if label == "joint":
            assert th["I"].iloc[0] > 1e-6  # really correlated
        # without a canonical reference D is NaN
        assert th["D"].isna().all(), label


@pytest.mark.parametrize("name", ALL_MODELS)
def test_eq60_sigma_minus_sigma_tilde(name, solved):
    """Product start with canonical baths: Sigma - Sigma_tilde = -I - D  (Eq. 60)."""
    sol = solved(name)
    th = sol.thermo()
    r = (th["Sigma"] - th["Sigma_tilde"] + th["I"] + th["D"]).to_numpy()
    assert np.max(np.abs(r)) <= TOL
    # hence Sigma_tilde >= Sigma >= 0
    assert np.all(th["Sigma_tilde"] - th["Sigma"] >= -TOL)
    assert np.all(th["Sigma"] >= -TOL)
    assert np.all(th["I"] >= -TOL) and np.all(th["D"] >= -TOL)
    assert abs(th["I"].iloc[0]) <= 1e-13 and abs(th["D"].iloc[0]) <= 1e-13


@pytest.mark.parametrize("name", ["qubit_osc_sqrt", "two_baths_mixed"])
def test_eq60_gibbs_system(name):
    d = get_model_dict(name)
    d["initial"]["system"] = {"gibbs": True, "beta": 0.7}
    th = _solve(d).thermo()
    r = (th["Sigma"] - th["Sigma_tilde"] + th["I"] + th["D"]).to_numpy()
    assert np.max(np.abs(r)) <= TOL


@pytest.mark.parametrize("name", ALL_MODELS)
def test_first_law_undriven(name, solved):
    """Delta E_S + sum_nu Delta E_nu = 0, and Q_nu = -Delta E_nu."""
    sol = solved(name)
    th = sol.thermo()
    tot = th["E_S"] + sum(th[f"E_{b}"] for b in sol.model.bath_names)
    scale = max(1.0, float(np.abs(tot).max()))
    assert np.max(np.abs(tot - tot.iloc[0])) <= TOL * scale
    heat = sum(th[f"Q_{b}"] for b in sol.model.bath_names)
    assert np.max(np.abs((th["E_S"] - th["E_S"].iloc[0]) - heat)) <= TOL * scale
    for b in sol.model.bath_names:
        np.testing.assert_allclose(th[f"Q_{b}"], -(th[f"E_{b}"] - th[f"E_{b}"].iloc[0]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ONE_BATH + TWO_BATHS)
def test_sigma_tilde_definition(name, solved):
    """Sigma_tilde = Delta S_Sh + sum_nu beta_nu Delta E_nu (Eq. 5 / 55)."""
    sol = solved(name)
    d = get_model_dict(name)
    th = sol.thermo()
    want = th["S_sh"] - th["S_sh"].iloc[0]
    for nu, b in enumerate(d["baths"]):
        want = want + d["initial"]["baths"][nu]["beta"] * (th[f"E_{b['name']}"] - th[f"E_{b['name']}"].iloc[0])
    np.testing.assert_allclose(th["Sigma_tilde"], want, rtol=0, atol=TOL)
    np.testing.assert_allclose(th["Sigma"], th["S_obs"] - th["S_obs"].iloc[0], rtol=0, atol=1e-12)


def test_functionals_on_a_single_distribution():
    sol = trajmc.solve(get_model_dict("two_baths"))
    space = T.space_of(sol.network)
    p = sol.p[3]
    assert np.ndim(T.marginal_system(p, space)) == 1
    assert np.ndim(T.total_correlation(p, space)) == 0
    np.testing.assert_allclose(T.marginal_system(p, space), sol.p_system()[3], rtol=0, atol=1e-15)
    np.testing.assert_allclose(T.observational_entropy(p, space.lnV), sol.thermo()["S_obs"].iloc[3], atol=1e-12)
    # a product distribution has no correlation
    ps = np.array([0.2, 0.5, 0.3])
    pa = T.marginal_bath(p, space, 0)
    pc = T.marginal_bath(p, space, 1)
    prod = ps[space.s] * pa[space.E[:, 0]] * pc[space.E[:, 1]]
    prod = prod / prod.sum()
    assert abs(T.total_correlation(prod, space)) <= 1e-13
    # D[q || q] = 0, and 0 ln 0 = 0
    q = np.array([0.5, 0.5, 0.0])
    assert T.relative_entropy(q, q) == 0.0
    assert abs(T.relative_entropy(q, np.array([0.25, 0.25, 0.5])) - np.log(2)) <= 1e-15
    assert T.shannon(np.array([1.0, 0.0])) == 0.0
