"""The table kernel: ``kernel = {model = "table", gamma, lnf}`` with rates ``gamma c f(E, E') / V_E``.

Exact: fed the ``f`` of a closed-form kernel, a table reproduces its rates and its solution; the identities
that follow from ``f(E, E') = f(E', E)`` (detailed balance, ``W V = 0``) are covered for the table models
by the shared-model tests (tests/conftest.py: ``three_spins_table``, ``two_baths_table``).
Statistical: Monte Carlo on table models agrees with the exact solver (tests/test_estimate.py and below).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
from conftest import MODELS, THREADS, get_model_dict

import trajmc
from trajmc.errors import ModelError
from trajmc.model import MAX_TABLE_GRID
from trajmc.network import build_network, kernel_lnf
from trajmc.validate import run_checks, verdict

CLOSED = [name for name, d in MODELS.items() if all(b["kernel"]["model"] != "table" for b in d["baths"])]
ALPHA = 1e-6  # family-wise false-alarm rate of the statistical checks


def as_table(d: dict) -> dict:
    """The same model with every kernel replaced by the table of its own ``f``."""
    m = trajmc.load_model(d)
    out = copy.deepcopy(d)
    for nu, b in enumerate(out["baths"]):
        b["kernel"] = {"model": "table", "gamma": m.baths[nu].kernel.gamma, "lnf": kernel_lnf(m, nu).tolist()}
    return out


@pytest.mark.parametrize("name", CLOSED)
def test_table_of_a_closed_form_reproduces_its_rates_and_solution(name):
    d = get_model_dict(name)
    n1 = build_network(trajmc.load_model(d))
    n2 = build_network(trajmc.load_model(as_table(d)))
    np.testing.assert_array_equal(n1.states, n2.states)
    np.testing.assert_array_equal(n1.indptr, n2.indptr)
    np.testing.assert_array_equal(n1.target, n2.target)
    assert np.max(np.abs(n2.rate / n1.rate - 1.0)) <= 1e-12
    s1, s2 = trajmc.solve(d), trajmc.solve(as_table(d))
    assert np.max(np.abs(s1.p - s2.p)) <= 1e-12


def test_table_with_driving_matches_the_closed_form():
    d = get_model_dict("two_baths")
    d["protocol"] = [{"time": 1.0, "energies": [0, 2, 3]}, {"time": 2.0, "energies": [0, 1, 2]}]
    s1, s2 = trajmc.solve(d), trajmc.solve(as_table(d))
    assert np.max(np.abs(s1.p - s2.p)) <= 1e-12
    assert np.max(np.abs(s1.work() - s2.work())) <= 1e-12


def test_kernel_lnf_of_a_table_is_the_table():
    m = trajmc.load_model(get_model_dict("three_spins_table"))
    np.testing.assert_array_equal(kernel_lnf(m, 0), m.baths[0].kernel.lnf)


def test_rate_by_hand():
    """One jump, computed from the formula: k = gamma |S_ss'|^2 f(E, E') / V_E."""
    lnV = [0.0, np.log(3.0), np.log(7.0), np.log(12.0)]
    lnf = np.log([[1.0, 2.0, 0.5, 0.1], [2.0, 4.0, 3.0, 0.2], [0.5, 3.0, 9.0, 5.0], [0.1, 0.2, 5.0, 8.0]])
    d = {"system": {"energies": [0, 1], "coupling": [[0, 0.5], [0.5, 0]]},
         "baths": [{"name": "B", "dos": {"model": "table", "lnV": lnV}, "emax": 3,
                    "kernel": {"model": "table", "gamma": 0.3, "lnf": lnf.tolist()}}],
         "initial": {"system": [0.0, 1.0], "baths": [{"state": "microcanonical", "energy": 1}]}}
    net = build_network(trajmc.load_model(d))
    # (s=1, E=1) -> (s=0, E=2): 0.3 * 0.25 * f(1, 2) / V_1 = 0.3 * 0.25 * 3 / 3; back: 0.3 * 0.25 * 3 / 7
    i, j = net.index_of([[1, 1], [0, 2]])
    down = net.rate[(net.source == i) & (net.target == j)]
    up = net.rate[(net.source == j) & (net.target == i)]
    np.testing.assert_allclose(down, [0.3 * 0.25 * 3.0 / 3.0], rtol=1e-14)
    np.testing.assert_allclose(up, [0.3 * 0.25 * 3.0 / 7.0], rtol=1e-14)


def test_round_trip_through_toml_keeps_the_table(tmp_path):
    m = trajmc.load_model(get_model_dict("two_baths_table"))
    path = tmp_path / "m.toml"
    path.write_text(m.to_toml())
    m2 = trajmc.load_model(path)
    assert m2.digest == m.digest
    np.testing.assert_array_equal(m2.baths[0].kernel.lnf, m.baths[0].kernel.lnf)
    assert np.isneginf(m2.baths[0].kernel.lnf).any()


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".txt"])
def test_table_from_a_file(tmp_path, suffix):
    d = get_model_dict("three_spins_table")
    lnf = np.array(d["baths"][0]["kernel"]["lnf"])
    f = tmp_path / f"lnf{suffix}"
    if suffix == ".npy":
        np.save(f, lnf)
    else:
        np.savetxt(f, lnf, delimiter="," if suffix == ".csv" else " ", header="ln f(E, E')")
    d2 = copy.deepcopy(d)
    d2["baths"][0]["kernel"] = {"model": "table", "gamma": 0.6, "file": f.name}
    path = tmp_path / "m.toml"
    import tomli_w
    path.write_text(tomli_w.dumps(d2))
    m, m_inline = trajmc.load_model(path), trajmc.load_model(d)
    np.testing.assert_array_equal(m.baths[0].kernel.lnf, m_inline.baths[0].kernel.lnf)
    assert "lnf" in m.to_dict()["baths"][0]["kernel"]  # the resolved model holds the numbers, not the path


def _with_kernel(kernel, name="three_spins_table"):
    d = get_model_dict(name)
    d["baths"][0]["kernel"] = kernel
    return d


def _lnf(name="three_spins_table"):
    return np.array(MODELS[name]["baths"][0]["kernel"]["lnf"])


def _bad_cases(tmp_path):
    f = _lnf()
    asym = f.copy()
    asym[2, 5] += 1e-3
    hole = f.copy()
    hole[3, 4] = -np.inf  # f(3, 4) = 0 but f(4, 3) > 0
    nan, pinf = f.copy(), f.copy()
    nan[1, 2] = nan[2, 1] = np.nan
    pinf[0, 0] = np.inf
    none = np.full_like(f, -np.inf)
    (tmp_path / "text.csv").write_text("a,b\nc,d\n")
    (tmp_path / "bytes.csv").write_bytes(b"\xff\xfe\x00garbage")
    np.save(tmp_path / "shape.npy", f[:5, :5])
    np.save(tmp_path / "cplx.npy", f.astype(complex))
    k = "baths[0].kernel"
    return [
        ({"model": "table", "gamma": 0.6}, k, "exactly one of 'lnf' or 'file'"),
        ({"model": "table", "lnf": f.tolist(), "file": "x.npy"}, k, "exactly one"),
        ({"model": "table", "lnf": f[:-1].tolist()}, f"{k}.lnf", "must have 21 entries"),
        ({"model": "table", "lnf": [r[:-1] for r in f.tolist()]}, f"{k}.lnf[0]", "must have 21 entries"),
        ({"model": "table", "lnf": f[:3, :3]}, f"{k}.lnf", "must be 21 x 21"),
        ({"model": "table", "lnf": asym.tolist()}, f"{k}.lnf[2][5]", "must be symmetric"),
        ({"model": "table", "lnf": hole.tolist()}, f"{k}.lnf[3][4]", "must be symmetric"),
        ({"model": "table", "lnf": nan.tolist()}, f"{k}.lnf[1][2]", "must be a number, got NaN"),
        ({"model": "table", "lnf": nan}, f"{k}.lnf[1][2]", "finite or -inf"),
        ({"model": "table", "lnf": pinf.tolist()}, f"{k}.lnf[0][0]", "must be finite"),
        ({"model": "table", "lnf": none.tolist()}, f"{k}.lnf", "no finite entry"),
        ({"model": "table", "lnf": f.tolist(), "spectral": {"shape": "flat"}}, f"{k}.spectral", "does not apply"),
        ({"model": "table", "lnf": f.tolist(), "E_ref": 3}, f"{k}.E_ref", "does not apply"),
        ({"model": "sqrt", "lnf": f.tolist()}, f"{k}.lnf", "only applies to the 'table' kernel"),
        ({"model": "table", "file": str(tmp_path / "missing.npy")}, f"{k}.file", "does not exist"),
        ({"model": "table", "file": str(tmp_path / "text.csv")}, f"{k}.file", "not a readable numeric table"),
        ({"model": "table", "file": str(tmp_path / "bytes.csv")}, f"{k}.file", "not a readable numeric table"),
        ({"model": "table", "file": str(tmp_path / "shape.npy")}, f"{k}.file", "21 x 21"),
        ({"model": "table", "file": str(tmp_path / "cplx.npy")}, f"{k}.file", "real 2-D table"),
        ({"model": "table", "lnf": f.tolist(), "gamma": -1.0}, f"{k}.gamma", "must be > 0"),
    ]


def test_bad_tables_are_one_line_errors_naming_the_entry(tmp_path):
    for kernel, key, text in _bad_cases(tmp_path):
        with pytest.raises(ModelError) as exc:
            trajmc.load_model(_with_kernel(kernel))
        msg = str(exc.value)
        assert exc.value.key == key, (kernel.get("file"), msg)
        assert text in msg, msg
        assert "\n" not in msg


def test_table_grid_limit():
    G = MAX_TABLE_GRID + 1
    d = {"system": {"energies": [0, 1], "coupling": [[0, 1], [1, 0]]},
         "baths": [{"dos": {"model": "oscillators", "n": 2}, "emax": G - 1,
                    "kernel": {"model": "table", "lnf": [[0.0]]}}],
         "initial": {"system": [0, 1], "baths": [{"state": "microcanonical", "energy": 3}]}}
    with pytest.raises(ModelError, match="above the limit") as exc:
        trajmc.load_model(d)
    assert exc.value.key == "baths[0].kernel.model"


def test_table_rate_overflow_is_named():
    f = _lnf()
    f[f > -np.inf] += 800.0  # e^800 overflows a double
    with pytest.raises(ModelError, match="beyond double precision") as exc:
        build_network(trajmc.load_model(_with_kernel({"model": "table", "gamma": 1.0, "lnf": f.tolist()})))
    assert exc.value.key == "baths[0].kernel"


@pytest.mark.parametrize("engine", ["enumerated", "implicit"])
def test_monte_carlo_on_a_driven_table_model_passes_validation(engine):
    d = get_model_dict("two_baths_table")
    d["protocol"] = [{"time": 1.5, "energies": [0, 2, 3]}]
    sol = trajmc.solve(d)
    ens = trajmc.simulate(d, trajectories=20_000, seed=31, threads=THREADS, engine=engine)
    assert ens.stats["path"] == engine
    res = run_checks(ens, sol, alpha=ALPHA)
    assert verdict(res), [(r.name, r.detail) for r in res if r.counted and not r.passed]


def test_validation_sees_a_wrong_table():
    """Power: the run simulates f, the exact side solves f with one coupling row scaled by 1.5."""
    d = get_model_dict("three_spins_table")
    ens = trajmc.simulate(d, trajectories=50_000, seed=32, threads=THREADS)
    wrong = copy.deepcopy(d)
    f = np.array(wrong["baths"][0]["kernel"]["lnf"])
    f[8:, :] += np.log(1.5)
    f[:, 8:] += np.log(1.5)
    wrong["baths"][0]["kernel"]["lnf"] = f.tolist()
    res = run_checks(ens, trajmc.solve(wrong, times=ens.times), alpha=ALPHA)
    assert not verdict(res)
