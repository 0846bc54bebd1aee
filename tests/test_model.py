"""Model loader: validation (one test per error, each naming its key), defaults, files, round trips."""
from __future__ import annotations

import re
import tomllib

import numpy as np
import pytest
from conftest import ALL_MODELS, TABLE_LNV, get_model_dict
from scipy.special import gammaln, logsumexp

import trajmc
from trajmc.model import TRUNCATION_TOL

BASE = "qubit_osc_sqrt"


def expect_error(d, key, *fragments):
    """load_model(d) raises a one-line ModelError that starts with ``key`` (and mentions ``fragments``)."""
    with pytest.raises(trajmc.ModelError) as info:
        trajmc.load_model(d)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{key}: "), msg
    assert info.value.key == key
    for f in fragments:
        assert f in msg, (f, msg)
    assert isinstance(info.value, trajmc.TrajmcError)
    return msg


def _set(d, path, value):
    """Set d[path] where path is like 'baths.0.dos.n' (value DELETE removes the key)."""
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    cur = d
    for k in keys[:-1]:
        cur = cur[k]
    if value is DELETE:
        del cur[keys[-1]]
    else:
        cur[keys[-1]] = value


DELETE = object()

# (path to set, value, key named in the message, fragment of the message)
CASES = [
    # unknown keys, at every level
    ("colour", "red", "colour", "unknown key"),
    ("system.extra", 1, "system.extra", "unknown key"),
    ("baths.0.temperature", 1.0, "baths[0].temperature", "unknown key"),
    ("baths.0.dos.width", 1.0, "baths[0].dos.width", "unknown key"),
    ("baths.0.dos.beta", 1.0, "baths[0].dos.beta", "oscillators"),
    ("baths.0.kernel.foo", 1.0, "baths[0].kernel.foo", "unknown key"),
    ("baths.0.kernel.spectral.foo", 1.0, "baths[0].kernel.spectral.foo", "unknown key"),
    ("baths.0.kernel.spectral.width", 1.0, "baths[0].kernel.spectral.width", "gaussian"),
    ("baths.0.kernel.spectral.cutoff", 1.0, "baths[0].kernel.spectral.cutoff", "exponential"),
    ("baths.0.kernel.E_ref", 3.0, "baths[0].kernel.E_ref", "golden"),
    ("initial.foo", 1, "initial.foo", "unknown key"),
    ("initial.baths.0.foo", 1, "initial.baths[0].foo", "unknown key"),
    ("times.foo", 1, "times.foo", "unknown key"),
    ("simulation", {"threads": 4}, "simulation.threads", "unknown key"),
    # missing required keys
    ("system", DELETE, "system", "missing"),
    ("baths", DELETE, "baths", "missing"),
    ("initial", DELETE, "initial", "missing"),
    ("system.energies", DELETE, "system.energies", "missing"),
    ("system.coupling", DELETE, "system.coupling", "missing"),
    ("baths.0.dos", DELETE, "baths[0].dos", "missing"),
    ("baths.0.emax", DELETE, "baths[0].emax", "missing"),
    ("baths.0.kernel", DELETE, "baths[0].kernel", "missing"),
    ("baths.0.dos.model", DELETE, "baths[0].dos.model", "missing"),
    ("baths.0.dos.n", DELETE, "baths[0].dos.n", "missing"),
    ("baths.0.kernel.model", DELETE, "baths[0].kernel.model", "missing"),
    ("initial.system", DELETE, "initial.system", "required"),
    ("initial.baths", DELETE, "initial.baths", "required"),
    ("initial.baths.0.state", DELETE, "initial.baths[0].state", "missing"),
    ("initial.baths.0.beta", DELETE, "initial.baths[0].beta", "required"),
    ("baths.0.kernel.spectral", {"shape": "gaussian"}, "baths[0].kernel.spectral.width", "required"),
    ("baths.0.kernel.spectral", {"shape": "exponential"}, "baths[0].kernel.spectral.cutoff", "required"),
    ("baths.0.dos", {"model": "exponential"}, "baths[0].dos.beta", "missing"),
    # wrong types and values
    ("name", 5, "name", "string"),
    ("name", "", "name", "non-empty"),
    ("name", "a/b", "name", "path"),
    ("system", "qubit", "system", "table"),
    ("system.energies", "01", "system.energies", "list"),
    ("system.energies", [0, "1"], "system.energies[1]", "integer"),
    ("system.energies", [0, True], "system.energies[1]", "integer"),
    ("system.energies", [0, 2.5], "system.energies[1]", "2.5"),
    ("system.energies", [0, float("nan")], "system.energies[1]", "integer"),
    ("system.energies", [0], "system.energies", "2 levels"),
    ("system.energies", [0, 1, 2], "system.coupling", "3 entries"),
    ("baths", {}, "baths", "list"),
    ("baths", [], "baths", "empty"),
    ("baths.0", "B", "baths[0]", "table"),
    ("baths.0.name", "1B", "baths[0].name", "identifier"),
    ("baths.0.name", "a b", "baths[0].name", "identifier"),
    ("baths.0.name", 3, "baths[0].name", "string"),
    ("baths.0.emax", "60", "baths[0].emax", "integer"),
    ("baths.0.emax", 60.5, "baths[0].emax", "integer"),
    ("baths.0.emax", -1, "baths[0].emax", ">= 0"),
    ("baths.0.dos", "oscillators", "baths[0].dos", "table"),
    ("baths.0.dos.model", "bosons", "baths[0].dos.model", "oscillators"),
    ("baths.0.dos.n", -3, "baths[0].dos.n", "-3"),
    ("baths.0.dos.n", 0, "baths[0].dos.n", ">= 1"),
    ("baths.0.dos.n", 2.5, "baths[0].dos.n", "integer"),
    ("baths.0.dos.n", "6", "baths[0].dos.n", "integer"),
    ("baths.0.dos.quantum", 0, "baths[0].dos.quantum", ">= 1"),
    ("baths.0.kernel.model", "cubic", "baths[0].kernel.model", "sqrt"),
    ("baths.0.kernel.gamma", 0.0, "baths[0].kernel.gamma", "> 0"),
    ("baths.0.kernel.gamma", -1.0, "baths[0].kernel.gamma", "> 0"),
    ("baths.0.kernel.gamma", float("nan"), "baths[0].kernel.gamma", "NaN"),
    ("baths.0.kernel.gamma", float("inf"), "baths[0].kernel.gamma", "finite"),
    ("baths.0.kernel.gamma", "1", "baths[0].kernel.gamma", "number"),
    ("baths.0.kernel.spectral", "flat", "baths[0].kernel.spectral", "table"),
    ("baths.0.kernel.spectral.shape", "lorentz", "baths[0].kernel.spectral.shape", "gaussian"),
    ("baths.0.kernel.spectral", {"shape": "gaussian", "width": -1.0}, "baths[0].kernel.spectral.width", "> 0"),
    ("baths.0.kernel.spectral", {"shape": "exponential", "cutoff": 0}, "baths[0].kernel.spectral.cutoff", "> 0"),
    # coupling
    ("system.coupling", [[0, 1], [2, 0]], "system.coupling", "Hermitian"),
    ("system.coupling", [[0, "1j"], ["1j", 0]], "system.coupling", "Hermitian"),
    ("system.coupling", [[0, 1], [1, 0], [0, 0]], "system.coupling", "2 entries"),
    ("system.coupling", [[0, 1, 0], [1, 0, 0]], "system.coupling[0]", "2 entries"),
    ("system.coupling", [[1, 0], [0, 2]], "system.coupling", "off-diagonal"),
    ("system.coupling", [[0, "nan"], ["nan", 0]], "system.coupling[0][1]", "finite"),
    ("system.coupling", [[0, "one"], [1, 0]], "system.coupling[0][1]", "complex"),
    ("system.coupling", [[0, None], [1, 0]], "system.coupling[0][1]", "number"),
    ("system.coupling", [[[0, 1], [1, 0]], [[0, 1], [3, 0]]], "system.coupling[1]", "Hermitian"),
    ("system.coupling", {"S": 1}, "system.coupling", "list"),
    ("baths.0.coupling", [[0, 1], [0, 0]], "baths[0].coupling", "Hermitian"),
    # initial system state
    ("initial.system", [0.5, 0.6], "initial.system", "sum to 1"),
    ("initial.system", [0.0, 0.0], "initial.system", "sum to 1"),
    ("initial.system", [1.5, -0.5], "initial.system[1]", ">= 0"),
    ("initial.system", [0.5, float("nan")], "initial.system[1]", "NaN"),
    ("initial.system", [0.5, float("inf")], "initial.system[1]", "finite"),
    ("initial.system", [1.0], "initial.system", "2 entries"),
    ("initial.system", [0.5, 0.25, 0.25], "initial.system", "2 entries"),
    ("initial.system", "ground", "initial.system", "list"),
    ("initial.system", {"gibbs": False, "beta": 1.0}, "initial.system.gibbs", "true"),
    ("initial.system", {"gibbs": "yes", "beta": 1.0}, "initial.system.gibbs", "true or false"),
    ("initial.system", {"gibbs": True}, "initial.system.beta", "missing"),
    ("initial.system", {"gibbs": True, "beta": "hot"}, "initial.system.beta", "number"),
    ("initial.system", {"gibbs": True, "beta": 1.0, "T": 2}, "initial.system.T", "unknown key"),
    # initial bath states
    ("initial.baths", [], "initial.baths", "empty"),
    ("initial.baths", [{"state": "canonical", "beta": 0.8}] * 2, "initial.baths", "1 entries"),
    ("initial.baths", {"state": "canonical", "beta": 0.8}, "initial.baths", "list"),
    ("initial.baths.0.state", "thermal", "initial.baths[0].state", "canonical"),
    ("initial.baths.0.energy", 3, "initial.baths[0].energy", "canonical"),
    ("initial.baths.0.beta", -0.5, "initial.baths[0].beta", "> 0"),
    ("initial.baths.0.beta", float("nan"), "initial.baths[0].beta", "NaN"),
    ("initial.baths.0", {"state": "microcanonical"}, "initial.baths[0].energy", "required"),
    ("initial.baths.0", {"state": "microcanonical", "energy": 61}, "initial.baths[0].energy", "off the grid"),
    ("initial.baths.0", {"state": "microcanonical", "energy": -1}, "initial.baths[0].energy", "off the grid"),
    ("initial.baths.0", {"state": "microcanonical", "energy": 2.5}, "initial.baths[0].energy", "integer"),
    ("initial.baths.0", {"state": "microcanonical", "energy": 5, "p": [1.0]}, "initial.baths[0].p", "microcanonical"),
    ("initial.baths.0", {"state": "table"}, "initial.baths[0].p", "required"),
    ("initial.baths.0", {"state": "table", "p": [1.0]}, "initial.baths[0].p", "61 entries"),
    ("initial.baths.0", {"state": "table", "p": [0.5] + [0.0] * 60}, "initial.baths[0].p", "sum to 1"),
    ("initial.baths.0", {"state": "table", "p": [1.0] + [0.0] * 60, "energy": 0}, "initial.baths[0].energy",
     "table"),
    # times
    ("times", {"values": [0.5, 1.0]}, "times.values", "start at 0"),
    ("times", {"values": [0.0, 1.0, 1.0]}, "times.values", "increasing"),
    ("times", {"values": [0.0, 2.0, 1.0]}, "times.values", "increasing"),
    ("times", {"values": [0.0, -1.0]}, "times.values[1]", ">= 0"),
    ("times", {"values": [0.0, float("nan")]}, "times.values[1]", "NaN"),
    ("times", {"values": []}, "times.values", "empty"),
    ("times", {"values": [0.0, 1.0], "stop": 2.0}, "times.values", "excludes"),
    ("times", {"stop": 0.0}, "times.stop", "> 0"),
    ("times", {"stop": -1.0}, "times.stop", "> 0"),
    ("times", {"stop": 1.0, "num": 1}, "times.num", ">= 2"),
    ("times", {"stop": 1.0, "num": 2.5}, "times.num", "integer"),
    ("times", [0.0, 1.0], "times", "table"),
    # simulation
    ("simulation", {"trajectories": 0}, "simulation.trajectories", ">= 1"),
    ("simulation", {"trajectories": "many"}, "simulation.trajectories", "integer"),
    ("simulation", {"seed": -1}, "simulation.seed", ">= 0"),
    ("simulation", {"seed": 1.5}, "simulation.seed", "integer"),
    ("simulation", {"chunk_size": 0}, "simulation.chunk_size", ">= 1"),
    ("simulation", [1], "simulation", "table"),
    # protocol
    ("protocol", [{"time": 1.0, "energies": [0, 2.5]}], "protocol[0].energies[1]", "integer"),
    ("protocol", [{"time": 1.0, "energies": [0, 2, 3]}], "protocol[0].energies", "2 entries"),
    ("protocol", [{"time": 0.0, "energies": [0, 2]}], "protocol[0].time", "> 0"),
    ("protocol", [{"time": 1.0, "energies": [0, 2]}, {"time": 1.0, "energies": [0, 3]}], "protocol[1].time",
     "increase"),
    ("protocol", [{"time": 2.0, "energies": [0, 2]}, {"time": 1.0, "energies": [0, 3]}], "protocol[1].time",
     "increase"),
    ("protocol", [{"energies": [0, 2]}], "protocol[0].time", "missing"),
    ("protocol", [{"time": 1.0}], "protocol[0].energies", "missing"),
    ("protocol", [{"time": 1.0, "energies": [0, 2], "work": 1}], "protocol[0].work", "unknown key"),
    ("protocol", "step", "protocol", "list"),
    ("protocol", [5], "protocol[0]", "table"),
]


@pytest.mark.parametrize("path,value,key,fragment", CASES, ids=[f"{c[0]}={c[1]!r}"[:60] for c in CASES])
def test_validation_error_names_the_key(path, value, key, fragment):
    d = get_model_dict(BASE)
    _set(d, path, value)
    expect_error(d, key, fragment)


def test_non_string_key():
    d = get_model_dict(BASE)
    d["baths"][0][3] = 1
    with pytest.raises(trajmc.ModelError, match=r"^baths\[0\]: keys must be strings"):
        trajmc.load_model(d)


def test_duplicate_bath_names():
    d = get_model_dict("two_baths")
    d["baths"][1]["name"] = "A"
    expect_error(d, "baths[1].name", "duplicate")


def test_linear_kernel_needs_oscillators_or_spins():
    d = get_model_dict("three_exp_golden")
    d["baths"][0]["kernel"] = {"model": "linear"}
    expect_error(d, "baths[0].kernel.model", "linear")


def test_bath_coupling_of_the_second_bath():
    d = get_model_dict("two_baths_mixed")
    d["baths"][1]["coupling"][1][0][1] = "2j"  # no longer the conjugate of [1][0]
    expect_error(d, "baths[1].coupling[1]", "Hermitian")


# --------------------------------------------------------------------------- grids and bath states


def test_microcanonical_where_the_bath_has_no_microstates():
    d = get_model_dict("qubit_spins_linear")  # spins of quantum 2: only even energies
    d["initial"]["baths"] = [{"state": "microcanonical", "energy": 3}]
    expect_error(d, "initial.baths[0].energy", "no microstates")
    d = get_model_dict("three_spins_eth")
    d["baths"][0]["dos"]["n"] = 5  # microstates only up to E = 5 < emax = 30: a grid above them is refused
    d["initial"]["baths"] = [{"state": "microcanonical", "energy": 5}]
    expect_error(d, "baths[0].emax", "5 spins", "at most E = 5")
    d["baths"][0]["emax"] = 5
    d["initial"]["baths"] = [{"state": "microcanonical", "energy": 7}]
    expect_error(d, "initial.baths[0].energy", "off the grid")
    d["initial"]["baths"] = [{"state": "microcanonical", "energy": 5}]
    trajmc.load_model(d)


def test_bath_table_state_on_empty_windows():
    d = get_model_dict("qubit_spins_linear")
    p = [0.0] * 51
    p[3] = 1.0
    d["initial"]["baths"] = [{"state": "table", "p": p}]
    expect_error(d, "initial.baths[0].p", "no microstates")
    p[3], p[4] = 0.0, 1.0
    m = trajmc.load_model(d)
    assert m.bath_states[0].state == "table" and m.bath_states[0].p[4] == 1.0


def test_small_grids():
    # spins of quantum 2 with emax = 1: the grid {0, 1} still holds the E = 0 microstate
    d = get_model_dict("qubit_spins_linear")
    d["baths"][0]["emax"] = 1
    d["initial"]["baths"] = [{"state": "microcanonical", "energy": 0}]
    m = trajmc.load_model(d)
    assert np.isfinite(m.baths[0].lnV[0]) and not np.isfinite(m.baths[0].lnV[1])
    sol = trajmc.solve(m)  # the excited level cannot decay: E = 2 is off the grid
    np.testing.assert_array_equal(sol.states.to_numpy(), [[1, 0]])
    np.testing.assert_array_equal(sol.p, np.ones((len(sol.times), 1)))
    # ... but canonical at beta = 0.3 on that grid cuts off almost everything
    d["initial"]["baths"] = [{"state": "canonical", "beta": 0.3}]
    expect_error(d, "baths[0].emax", "cuts off")
    # emax = 0 is a valid one-point grid
    d = get_model_dict(BASE)
    d["baths"][0]["emax"] = 0
    d["initial"]["baths"] = [{"state": "microcanonical", "energy": 0}]
    assert trajmc.load_model(d).baths[0].lnV.shape == (1,)


def test_grid_without_microstates():
    d = get_model_dict("qubit_table_sqrt")
    d["baths"][0]["dos"] = {"model": "table", "lnV": [float("-inf"), float("-inf"), 1.0, 2.0]}
    d["baths"][0]["emax"] = 1
    expect_error(d, "baths[0].emax", "no bath microstates")
    d["baths"][0]["dos"] = {"model": "table", "lnV": [float("-inf")] * 4}
    d["baths"][0]["emax"] = 3
    expect_error(d, "baths[0].dos", "no finite entry")


def _true_truncation(n, beta, emax):
    E = np.arange(20000)
    x = gammaln(E + n) - gammaln(E + 1) - gammaln(n) - beta * E
    return float(np.exp(logsumexp(x[emax + 1:]) - logsumexp(x)))


def test_canonical_truncation_is_reported():
    m = trajmc.load_model(get_model_dict(BASE))  # oscillators n = 6, beta = 0.8, emax = 60
    tr = m.bath_states[0].truncated
    assert 0 < tr <= TRUNCATION_TOL
    assert abs(tr - _true_truncation(6, 0.8, 60)) <= 1e-6 * tr
    # the canonical state is normalised on the grid
    pi = m.canonical_pi(0)
    assert abs(pi.sum() - 1) <= 1e-14
    x = m.baths[0].lnV - 0.8 * np.arange(61)
    np.testing.assert_allclose(pi, np.exp(x - logsumexp(x)), rtol=1e-13, atol=0)


@pytest.mark.parametrize("name,nu,beta", [(BASE, 0, 0.3), ("three_exp_golden", 0, 0.45), ("two_baths", 0, 0.5),
                                          ("two_baths_mixed", 1, 0.5)])
def test_canonical_truncation_error_suggests_a_working_emax(name, nu, beta):
    d = get_model_dict(name)
    d["initial"]["baths"][nu]["beta"] = beta
    msg = expect_error(d, f"baths[{nu}].emax", "cuts off", "emax")
    m = re.search(r"emax = (\d+) would do", msg)
    assert m, msg
    suggested = int(m.group(1))
    assert suggested > d["baths"][nu]["emax"]
    d["baths"][nu]["emax"] = suggested
    model = trajmc.load_model(d)
    assert model.bath_states[nu].truncated <= TRUNCATION_TOL
    if d["baths"][nu]["dos"]["model"] == "oscillators":
        n = d["baths"][nu]["dos"]["n"]
        assert _true_truncation(n, beta, suggested) <= TRUNCATION_TOL


def test_canonical_state_must_be_normalisable():
    d = get_model_dict("three_exp_golden")  # exponential(beta = 0.3) bath
    d["initial"]["baths"][0]["beta"] = 0.3
    expect_error(d, "initial.baths[0].beta", "beta > 0.3")
    d["initial"]["baths"][0]["beta"] = 0.1
    expect_error(d, "initial.baths[0].beta", "normalisable")
    d = get_model_dict(BASE)
    d["initial"]["baths"][0]["beta"] = 0.0
    expect_error(d, "initial.baths[0].beta", "> 0")


def test_bounded_bath_accepts_any_beta():
    d = get_model_dict("three_spins_eth")  # 30 spins on the whole grid 0..30
    for beta in (-0.7, 0.0, 0.7):
        d["initial"]["baths"][0]["beta"] = beta
        m = trajmc.load_model(d)
        assert m.bath_states[0].truncated == 0.0
        assert abs(m.canonical_pi(0).sum() - 1) <= 1e-14


# --------------------------------------------------------------------------- table dos


def test_table_dos_inline():
    m = trajmc.load_model(get_model_dict("qubit_table_sqrt"))
    np.testing.assert_array_equal(m.baths[0].lnV, np.array(TABLE_LNV[:41]))
    d = get_model_dict("qubit_table_sqrt")
    d["baths"][0]["emax"] = 41
    expect_error(d, "baths[0].emax", "0..40")
    d = get_model_dict("qubit_table_sqrt")
    d["baths"][0]["dos"]["lnV"][2] = float("nan")
    expect_error(d, "baths[0].dos.lnV[2]", "NaN")
    d["baths"][0]["dos"]["lnV"][2] = float("inf")
    expect_error(d, "baths[0].dos.lnV[2]", "finite")
    d = get_model_dict("qubit_table_sqrt")
    d["baths"][0]["dos"]["quantum"] = 2
    expect_error(d, "baths[0].dos.quantum", "table")
    d["baths"][0]["dos"] = {"model": "table"}
    expect_error(d, "baths[0].dos", "exactly one")
    d["baths"][0]["dos"] = {"model": "table", "lnV": [0.0, 1.0], "file": "x.csv"}
    expect_error(d, "baths[0].dos", "exactly one")


def _toml_model_with_table_file(fname):
    d = get_model_dict("qubit_table_sqrt")
    d["baths"][0]["dos"] = {"model": "table", "file": fname}
    d["simulation"] = {"seed": 1}
    return d


def _write_csv(path, with_header=True):
    lines = ["# bath density of states", "E,lnV"] if with_header else []
    for E, v in enumerate(TABLE_LNV):
        lines.append(f"{E},{v!r}")  # repr(-inf) = '-inf', which float() reads back
    path.write_text("\n".join(lines) + "\n")


def test_table_dos_file_relative_to_the_model_file(tmp_path, monkeypatch):
    import tomli_w

    sub = tmp_path / "models"
    sub.mkdir()
    _write_csv(sub / "dos.csv")
    (sub / "m.toml").write_text(tomli_w.dumps(_toml_model_with_table_file("dos.csv")))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    m = trajmc.load_model(sub / "m.toml")
    inline = trajmc.load_model(get_model_dict("qubit_table_sqrt"))
    np.testing.assert_array_equal(m.baths[0].lnV, inline.baths[0].lnV)
    assert m.source == str(sub / "m.toml")
    np.testing.assert_array_equal(trajmc.solve(m).p, trajmc.solve(inline).p)
    # a headerless one-column file, by absolute path
    (tmp_path / "plain.csv").write_text("\n".join(repr(v) for v in TABLE_LNV) + "\n")
    m2 = trajmc.load_model(_toml_model_with_table_file(str(tmp_path / "plain.csv")))
    np.testing.assert_array_equal(m2.baths[0].lnV, inline.baths[0].lnV)
    # a dict source resolves a relative file against the working directory
    monkeypatch.chdir(sub)
    m3 = trajmc.load_model(_toml_model_with_table_file("dos.csv"))
    np.testing.assert_array_equal(m3.baths[0].lnV, inline.baths[0].lnV)


def test_table_dos_file_errors(tmp_path):
    import tomli_w

    (tmp_path / "m.toml").write_text(tomli_w.dumps(_toml_model_with_table_file("missing.csv")))
    expect_error(tmp_path / "m.toml", "baths[0].dos.file", "does not exist")
    (tmp_path / "bad.csv").write_text("E,lnV\n0,1.0\n1,abc\n")
    (tmp_path / "m.toml").write_text(tomli_w.dumps(_toml_model_with_table_file("bad.csv")))
    expect_error(tmp_path / "m.toml", "baths[0].dos.file", "numbers")
    (tmp_path / "empty.csv").write_text("# nothing\n")
    (tmp_path / "m.toml").write_text(tomli_w.dumps(_toml_model_with_table_file("empty.csv")))
    expect_error(tmp_path / "m.toml", "baths[0].dos.file", "no lnV")
    (tmp_path / "nan.csv").write_text("0\n1\nnan\n")
    (tmp_path / "m.toml").write_text(tomli_w.dumps(_toml_model_with_table_file("nan.csv")))
    expect_error(tmp_path / "m.toml", "baths[0].dos.file[2]", "NaN")


# --------------------------------------------------------------------------- initial states


def test_gibbs_system_state():
    d = get_model_dict("three_spins_eth")  # eps = 0, 1, 3
    d["initial"]["system"] = {"gibbs": True, "beta": 0.7}
    m = trajmc.load_model(d)
    w = np.exp(-0.7 * np.array([0, 1, 3]))
    np.testing.assert_allclose(m.p_system, w / w.sum(), rtol=1e-14)
    assert m.system_gibbs_beta == 0.7
    assert m.to_dict()["initial"]["system"] == {"gibbs": True, "beta": 0.7}
    # extreme beta: all weight in the ground level, no overflow
    d["initial"]["system"] = {"gibbs": True, "beta": 1e6}
    np.testing.assert_array_equal(trajmc.load_model(d).p_system, [1.0, 0.0, 0.0])


def test_joint_initial_table():
    d = get_model_dict("two_baths")
    d["initial"] = {"joint": {"states": [[0, 3, 2], [2, 1, 1], [1, 5, 0]], "p": [0.5, 0.25, 0.25]}}
    m = trajmc.load_model(d)
    assert m.bath_states is None and m.p_system is None
    np.testing.assert_array_equal(m.joint[0], [[0, 3, 2], [2, 1, 1], [1, 5, 0]])
    np.testing.assert_array_equal(m.joint[1], [0.5, 0.25, 0.25])
    assert np.isnan(m.beta_ref(0)) and m.canonical_pi(0) is None
    sol = trajmc.solve(m)
    assert sol.thermo()["D"].isna().all()


JOINT_CASES = [
    ({"states": [[0, 3, 2]], "p": [1.0], "q": 1}, "initial.joint.q", "unknown key"),
    ({"states": [[0, 3, 2]]}, "initial.joint.p", "missing"),
    ({"p": [1.0]}, "initial.joint.states", "missing"),
    ({"states": [], "p": []}, "initial.joint.states", "empty"),
    ({"states": "all", "p": [1.0]}, "initial.joint.states", "list"),
    ({"states": [[0, 3]], "p": [1.0]}, "initial.joint.states[0]", "3 entries"),
    ({"states": [[0, 3, 2.5]], "p": [1.0]}, "initial.joint.states[0][2]", "integer"),
    ({"states": [[3, 3, 2]], "p": [1.0]}, "initial.joint.states[0][0]", "not in 0..2"),
    ({"states": [[-1, 3, 2]], "p": [1.0]}, "initial.joint.states[0][0]", "not in 0..2"),
    ({"states": [[0, 3, 2], [0, 25, 2]], "p": [0.5, 0.5]}, "initial.joint.states[1][1]", "off the grid"),
    ({"states": [[0, 3, 9]], "p": [1.0]}, "initial.joint.states[0][2]", "off the grid"),
    ({"states": [[0, -1, 2]], "p": [1.0]}, "initial.joint.states[0][1]", "off the grid"),
    ({"states": [[0, 3, 2], [0, 3, 2]], "p": [0.5, 0.5]}, "initial.joint.states", "twice"),
    ({"states": [[0, 3, 2], [1, 3, 2]], "p": [0.5, 0.6]}, "initial.joint.p", "sum to 1"),
    ({"states": [[0, 3, 2], [1, 3, 2]], "p": [1.0]}, "initial.joint.p", "2 entries"),
    ({"states": [[0, 3, 2], [1, 3, 2]], "p": [1.5, -0.5]}, "initial.joint.p[1]", ">= 0"),
]


@pytest.mark.parametrize("joint,key,fragment", JOINT_CASES, ids=[c[1] + ":" + c[2] for c in JOINT_CASES])
def test_joint_initial_table_errors(joint, key, fragment):
    d = get_model_dict("two_baths")
    d["initial"] = {"joint": joint}
    expect_error(d, key, fragment)


def test_joint_excludes_system_and_baths():
    d = get_model_dict(BASE)
    d["initial"]["joint"] = {"states": [[0, 3]], "p": [1.0]}
    expect_error(d, "initial.joint", "excludes")


def test_joint_on_a_window_without_microstates():
    d = get_model_dict("qubit_table_sqrt")  # lnV = -inf at E = 5
    d["initial"] = {"joint": {"states": [[0, 5]], "p": [1.0]}}
    expect_error(d, "initial.joint.states[0][1]", "no microstates")


def test_golden_reference_energy_defaults_to_mean_initial_energy():
    m = trajmc.load_model(get_model_dict("three_exp_golden"))
    pi = m.canonical_pi(0)
    assert abs(m.baths[0].kernel.E_ref - float(np.dot(pi, np.arange(len(pi))))) <= 1e-12
    d = get_model_dict("three_exp_golden")
    d["baths"][0]["kernel"]["E_ref"] = 7
    assert trajmc.load_model(d).baths[0].kernel.E_ref == 7.0
    d["baths"][0]["kernel"]["E_ref"] = -1
    expect_error(d, "baths[0].kernel.E_ref", ">= 0")


# --------------------------------------------------------------------------- defaults, examples, sources


def test_defaults_are_filled_in():
    d = {"system": {"energies": [0, 1], "coupling": [[0, 1], [1, 0]]},
         "baths": [{"dos": {"model": "oscillators", "n": 4}, "emax": 30, "kernel": {"model": "sqrt"}}],
         "initial": {"system": [0, 1], "baths": [{"state": "microcanonical", "energy": 10}]}}
    m = trajmc.load_model(d)
    assert m.name == "model"
    assert m.bath_names == ["baths0"]
    k = m.baths[0].kernel
    assert k.gamma == 1.0 and k.spectral.shape == "flat"
    assert m.baths[0].quantum == 1
    np.testing.assert_array_equal(m.times, np.linspace(0, 5, 51))
    assert m.simulation["trajectories"] == 100_000 and m.simulation["seed"] is None
    assert m.protocol == ()
    assert m.n_levels == 2 and m.n_baths == 1
    np.testing.assert_array_equal(m.coupling_weight(0), [[0, 1], [1, 0]])


def test_coupling_forms():
    d = get_model_dict("two_baths_mixed")
    m = trajmc.load_model(d)
    assert m.coupling.shape == (1, 3, 3)
    assert m.baths[1].coupling.shape == (2, 3, 3)
    np.testing.assert_allclose(m.coupling_weight(1), [[0, 2, 1], [2, 0, 1], [1, 1, 0]])
    np.testing.assert_allclose(m.coupling_weight(0), [[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    m = trajmc.load_model(get_model_dict("three_exp_golden"))
    assert m.coupling[0, 1, 2] == 0.3 - 0.4j and m.coupling[0, 2, 1] == 0.3 + 0.4j
    np.testing.assert_allclose(m.coupling_weight(0)[1, 2], 0.25, rtol=1e-15)
    # diagonal elements do not make jumps
    m = trajmc.load_model(get_model_dict("qubit_table_sqrt"))
    np.testing.assert_array_equal(np.diag(m.coupling_weight(0)), [0, 0])


def test_negative_and_unsorted_system_energies_are_fine():
    d = get_model_dict("three_spins_eth")
    d["system"]["energies"] = [3, -1, 0]
    sol = trajmc.solve(d)
    th = sol.thermo()
    tot = th["E_S"] + th["E_spin"]
    assert np.max(np.abs(tot - tot.iloc[0])) <= 1e-10


@pytest.mark.parametrize("name", list(trajmc.list_examples()))
def test_builtin_examples_load(name):
    m = trajmc.load_model(trajmc.get_example(name))
    assert m.name == name
    assert trajmc.get_example(name) is not trajmc.get_example(name)


def test_unknown_example():
    with pytest.raises(trajmc.ModelError, match="unknown example"):
        trajmc.get_example("nope")


def test_sources(tmp_path):
    with pytest.raises(trajmc.ModelError, match="does not exist"):
        trajmc.load_model(tmp_path / "missing.toml")
    with pytest.raises(trajmc.ModelError, match="is a directory"):
        trajmc.load_model(str(tmp_path))  # a directory is not a model file
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[system\nenergies = [0, 1]\n')
    with pytest.raises(trajmc.ModelError, match="not valid TOML") as info:
        trajmc.load_model(bad)
    assert "\n" not in str(info.value)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00\x81name")
    with pytest.raises(trajmc.ModelError):
        trajmc.load_model(binary)
    for junk in (None, 5, [1, 2], b"bytes"):
        with pytest.raises(trajmc.ModelError, match="TOML path or a dict"):
            trajmc.load_model(junk)
    m = trajmc.load_model(get_model_dict(BASE))
    assert trajmc.load_model(m) is m


def test_load_does_not_modify_the_dict():
    d = get_model_dict("two_baths_mixed")
    before = repr(d)
    trajmc.load_model(d)
    assert repr(d) == before


def test_a_driven_model_loads():
    d = get_model_dict(BASE)
    d["protocol"] = [{"time": 1.0, "energies": [0, 2]}, {"time": 2.0, "energies": [0, -3]}]
    m = trajmc.load_model(d)
    assert [s.time for s in m.protocol] == [1.0, 2.0]
    assert m.protocol[1].energies == (0, -3)
    d["protocol"] = {"time": 1.0, "energies": [0, 2]}  # one table instead of an array of tables
    assert len(trajmc.load_model(d).protocol) == 1
    th = trajmc.solve(d).thermo()  # driving is supported: the first law carries the work
    dE = (th["E_S"] - th["E_S"].iloc[0]) + sum(th[c] - th[c].iloc[0] for c in th.columns if c.startswith("E_B"))
    assert np.max(np.abs(dE - th["W"])) <= 1e-10


# --------------------------------------------------------------------------- round trips


def _variants():
    out = {name: get_model_dict(name) for name in ALL_MODELS}
    d = get_model_dict(BASE)
    d["initial"] = {"system": {"gibbs": True, "beta": 0.3},
                    "baths": [{"state": "microcanonical", "energy": 10, "beta": 0.5}]}
    out["gibbs-micro"] = d
    d = get_model_dict(BASE)
    d["initial"] = {"joint": {"states": [[0, 3], [1, 2], [1, 7]], "p": [0.2, 0.3, 0.5]}}
    out["joint"] = d
    d = get_model_dict("qubit_spins_linear")
    p = np.zeros(51)
    p[[4, 10, 12]] = [0.1, 0.6, 0.3]
    d["initial"]["baths"] = [{"state": "table", "p": p.tolist()}]
    d["times"] = {"values": [0.0, 0.1, 1.0 / 3.0, 0.35]}
    out["bath-table"] = d
    d = get_model_dict("two_baths_mixed")
    d["simulation"] = {"trajectories": 1234, "seed": 99, "chunk_size": 100}
    d["baths"][1]["kernel"]["E_ref"] = 4.5
    out["seeded"] = d
    return out


VARIANTS = _variants()


def _with_seed(d):
    d.setdefault("simulation", {}).setdefault("seed", 7)
    return d


# Regression: re-normalising p_s(0) = [0.6, 0.3, 0.1] changed it by one ulp on every reload,
# so the TOML round trip (and a run's model digest) drifted; fixed: a normalised p is kept as is.
REGRESSION_RENORM = pytest.mark.regression
INEXACT_SUM = {"two_baths_mixed", "seeded"}  # p_s(0) = [0.6, 0.3, 0.1]


@pytest.mark.parametrize("label", [pytest.param(k, marks=REGRESSION_RENORM) if k in INEXACT_SUM else k
                                   for k in sorted(VARIANTS)])
def test_toml_round_trip(label, tmp_path):
    m = trajmc.load_model(_with_seed(VARIANTS[label]))
    f = tmp_path / "model.toml"
    f.write_text(m.to_toml())
    m2 = trajmc.load_model(f)
    assert m2.to_dict() == m.to_dict()
    assert m2.digest == m.digest
    assert tomllib.loads(f.read_text())["name"] == m.name
    a, b = trajmc.solve(m), trajmc.solve(m2)
    np.testing.assert_array_equal(a.p, b.p)
    np.testing.assert_array_equal(a.network.states, b.network.states)
    # and through the dict form
    m3 = trajmc.load_model(m.to_dict())
    assert m3.to_dict() == m.to_dict()


def test_toml_round_trip_of_a_driven_model(tmp_path):
    d = _with_seed(get_model_dict(BASE))
    d["protocol"] = [{"time": 1.0, "energies": [0, 2]}, {"time": 2.5, "energies": [0, 1]}]
    m = trajmc.load_model(d)
    f = tmp_path / "driven.toml"
    f.write_text(m.to_toml())
    assert trajmc.load_model(f).to_dict() == m.to_dict()


def test_toml_round_trip_without_seed(tmp_path):
    m = trajmc.load_model(get_model_dict(BASE))
    assert m.simulation["seed"] is None
    f = tmp_path / "model.toml"
    f.write_text(m.to_toml())
    m2 = trajmc.load_model(f)
    assert m2.to_dict() == m.to_dict()


def test_digest_identifies_the_physics():
    a = trajmc.load_model(get_model_dict(BASE))
    d = get_model_dict(BASE)
    d["name"] = "other"
    d["simulation"] = {"seed": 3, "trajectories": 10}
    assert trajmc.load_model(d).digest == a.digest  # name and Monte Carlo settings are not physics
    d["baths"][0]["kernel"]["gamma"] = 1.5
    assert trajmc.load_model(d).digest != a.digest


# --------------------------------------------------------------------------- known bugs (see the report)


def test_to_dict_reloads_without_seed():
    m = trajmc.load_model(get_model_dict(BASE))
    assert trajmc.load_model(m.to_dict()).to_dict() == m.to_dict()


def test_with_times_updates_the_digest():
    m = trajmc.load_model(get_model_dict(BASE))
    _ = m.digest
    m2 = m.with_times([0.0, 1.0])
    fresh = trajmc.load_model(get_model_dict(BASE)).with_times([0.0, 1.0])
    assert m2.digest == fresh.digest != m.digest


def test_bath_named_S_does_not_shadow_the_system_energy():
    d = get_model_dict(BASE)
    d["baths"][0]["name"] = "S"
    try:
        trajmc.load_model(d)
    except trajmc.ModelError as exc:  # rejecting the name is a valid fix
        assert str(exc).startswith("baths[0].name")
        return
    sol = trajmc.solve(d)
    th = sol.thermo()
    np.testing.assert_allclose(th["E_S"].to_numpy(), sol.p_system() @ np.array([0.0, 1.0]), atol=1e-12)


HUGE = [
    ("baths.0.emax", 10**15, "baths[0].emax"),  # MemoryError (np.arange of 10**15 points)
    ("baths.0.emax", 2**70, "baths[0].emax"),  # ValueError: Maximum allowed size exceeded
    ("baths.0.emax", 1e300, "baths[0].emax"),  # ValueError
    ("times", {"stop": 1.0, "num": 10**15}, "times.num"),  # MemoryError (linspace)
    ("baths.0.dos.n", 2**80, "baths[0].dos.n"),  # TypeError from gammaln on a Python int
    ("baths.0.dos.quantum", 2**80, "baths[0].dos.quantum"),  # OverflowError
    ("system.energies", [0, 2**63], "system.energies[1]"),  # OverflowError in np.array(int64)
    ("system.energies", [0, 1e30], "system.energies[1]"),  # OverflowError
]


@pytest.mark.parametrize("path,value,key", HUGE, ids=[f"{p}={v!r}"[:40] for p, v, _ in HUGE])
def test_huge_integers_are_model_errors(path, value, key):
    d = get_model_dict(BASE)
    _set(d, path, value)
    expect_error(d, key)


def test_unknown_key_with_a_newline_gives_a_one_line_message():
    d = get_model_dict(BASE)
    d["system"]["bad\nkey"] = 1
    with pytest.raises(trajmc.ModelError) as info:
        trajmc.load_model(d)
    assert len(str(info.value).splitlines()) == 1


def test_distribution_normalisation_is_idempotent():
    d = get_model_dict(BASE)
    d["system"]["energies"] = [0, 1, 2]
    d["system"]["coupling"] = [[0, 1, 1], [1, 0, 1], [1, 1, 0]]
    d["initial"]["system"] = [0.6, 0.3, 0.1]
    m = trajmc.load_model(d)
    d["initial"]["system"] = m.p_system.tolist()
    np.testing.assert_array_equal(trajmc.load_model(d).p_system, m.p_system)
