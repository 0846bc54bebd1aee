"""Results that behave like their peers: Solution, Ensemble and QuantumSolution share method names and
return types; tidy long-format tables with standard errors; short reprs and notebook summaries; saving a
result made in Python; extending a finished run bit-identically; the written model.toml layout."""
from __future__ import annotations

import inspect
import json
import tomllib

import numpy as np
import pandas as pd
import pytest
from conftest import ALL_MODELS, THREADS, assert_bad_input, cli, get_model_dict

import trajmc
from trajmc import fluctuations as fl
from trajmc import microscopic as mic
from trajmc import tables
from trajmc.examples import EXAMPLES
from trajmc.simulation import extended

CHUNK = 512


def _sim(md, n, seed=11, **kw):
    kw.setdefault("chunk_size", CHUNK)
    return trajmc.simulate(md, trajectories=n, seed=seed, threads=THREADS, **kw)


def _assert_same_acc(a, b):
    """Every accumulator array (sums, jumps, fingerprints, records, paths) and the windows equal, bit for bit."""
    da, db = a.acc.arrays(), b.acc.arrays()
    assert sorted(da) == sorted(db)
    for k in da:
        assert da[k].dtype == db[k].dtype and np.array_equal(da[k], db[k], equal_nan=True), k
    for x, y in zip(a.acc.windows, b.acc.windows, strict=True):
        np.testing.assert_array_equal(x, y)
    assert a.acc.chunks_done == b.acc.chunks_done


def _quantum():
    E, B = mic.random_matrix_bath([10, 14, 18, 24], 1.0, 2.5, 3)
    m = mic.Microscopic([[0.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]], E, B, 1.0)
    return m.evolve(0.1, {"system": [0.0, 1.0], "bath": {"state": "canonical", "beta": 0.3}}, [0.0, 1.0, 2.0])


@pytest.fixture(scope="module")
def two():
    """The two-bath model solved exactly and simulated on both paths (small runs)."""
    md = get_model_dict("two_baths")
    return {"sol": trajmc.solve(md), "enumerated": _sim(md, 3000, engine="enumerated"),
            "implicit": _sim(md, 3000, engine="implicit")}


# --------------------------------------------------------------------------- 1. same names, same types

@pytest.mark.parametrize("which", ["sol", "enumerated", "implicit"])
def test_p_system_and_its_se_have_one_type_everywhere(two, which):
    r = two[which]
    p, se = r.p_system(), r.p_system_se()
    assert isinstance(p, np.ndarray) and p.dtype == np.float64 and p.shape == (len(r.times), 3)
    assert isinstance(se, np.ndarray) and se.shape == p.shape
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    if which == "sol":
        assert not se.any()  # exact
    else:
        np.testing.assert_allclose(se, np.sqrt(p * (1 - p) / r.trajectories), rtol=1e-15)
        # the estimate agrees with the exact marginal within its error bars (5.5 sigma, 3 levels x 7 times)
        assert np.all(np.abs(p - two["sol"].p_system()) <= 5.5 * np.maximum(se, 1 / r.trajectories))
    assert isinstance(r.thermo(), pd.DataFrame)


@pytest.mark.parametrize("which", ["sol", "enumerated", "implicit"])
@pytest.mark.parametrize("bath", ["A", "C", 1])
def test_heat_distribution_same_type_and_its_mean_is_the_heat_column(two, which, bath):
    r = two[which]
    th = r.thermo()
    name = bath if isinstance(bath, str) else r.bath_names[bath]
    for k in (1, 3, -1):
        h = r.heat_distribution(bath, k)
        assert isinstance(h, pd.Series) and h.name == f"P(Q_{name})" and h.index.name == "Q"
        assert h.index.dtype == np.int64 and h.dtype == np.float64 and (h > 0).all()
        assert h.sum() == pytest.approx(1.0, abs=1e-12)
        # computed from other data (exact: the heat propagation; MC: the heat histogram) than thermo's Q
        assert float(h.index.to_numpy() @ h.to_numpy()) == pytest.approx(th[f"Q_{name}"].iloc[k], abs=1e-9)


def test_exact_and_monte_carlo_heat_distributions_agree(two):
    """The same quantity on both results: the Monte Carlo histogram within its error bars of the exact one."""
    ex = two["sol"].heat_table("A")
    for path in ("enumerated", "implicit"):
        mc = two[path].heat_table("A")
        m = mc.merge(ex, on=["t", "Q"], how="outer", suffixes=("_mc", "_ex")).fillna(0.0)
        se = np.sqrt(m.P_ex * (1 - m.P_ex) / two[path].trajectories) + 1e-12
        assert (np.abs(m.P_mc - m.P_ex) <= 6 * se + 1.0 / two[path].trajectories).all(), path


def test_fluctuations_returns_what_the_results_return(two):
    sol = two["sol"]
    d = fl.heat_distribution(sol.segments, 1, sol.times)
    assert isinstance(d, fl.HeatDistribution)
    q, P = d  # still unpacks as before
    assert q.dtype == np.int64 and P.shape == (len(sol.times), len(q))
    for k in (2, -1):
        pd.testing.assert_series_equal(d.series(k, "C"), sol.heat_distribution("C", k))
    pd.testing.assert_frame_equal(d.table(sol.times), sol.heat_table("C"))


def test_work_and_bath_distributions_match_between_solution_and_ensemble():
    md = trajmc.get_example("driven-qubit")
    md["times"] = {"values": [0.0, 1.5, 2.5]}
    sol = trajmc.solve(md)
    ens = _sim(md, 4000, seed=5)
    for k in (1, 2):
        ws, we = sol.work_distribution(k), ens.work_distribution(k)
        assert type(ws) is type(we) and ws.name == we.name == "P(W)" and ws.index.dtype == we.index.dtype
        assert ws.sum() == pytest.approx(1.0, abs=1e-12)
        assert float(ws.index.to_numpy() @ ws.to_numpy()) == pytest.approx(sol.work()[k], abs=1e-9)
        both = pd.concat([ws, we], axis=1).fillna(0.0).to_numpy()
        se = np.sqrt(both[:, 0] * (1 - both[:, 0]) / 4000)
        assert np.all(np.abs(both[:, 0] - both[:, 1]) <= 6 * se + 1e-3)
        bs, be = sol.bath_distribution("B", k), ens.bath_distribution("B", k)
        assert bs.name == be.name == "p(E_B)" and bs.index.dtype == be.index.dtype == np.int64
        assert bs.sum() == pytest.approx(1.0, abs=1e-12)
        assert float(bs.index.to_numpy() @ bs.to_numpy()) == pytest.approx(sol.thermo()["E_B"].iloc[k], abs=1e-8)
    undriven = trajmc.solve(get_model_dict("qubit_osc_sqrt")).work_distribution()
    assert undriven.to_dict() == {0: 1.0}


@pytest.mark.parametrize("which", ["sol", "enumerated", "implicit", "quantum"])
def test_bad_bath_or_time_names_the_valid_choices(two, which):
    r = _quantum() if which == "quantum" else two[which]
    valid = ", ".join(r.bath_names)
    for call in (lambda: r.heat_distribution("nope"), lambda: r.heat_table("nope"),
                 lambda: r.bath_distribution("nope"), lambda: r.heat_distribution(7)):
        with pytest.raises(trajmc.ModelError, match=f"bath.*{valid}"):
            call()
    with pytest.raises(trajmc.ModelError, match="t_index"):
        r.bath_distribution(0, len(r.times))


def test_quantum_solution_is_shaped_like_a_solution():
    q = _quantum()
    assert q.bath_names == ["B"]
    p, se = q.p_system(), q.p_system_se()
    assert type(p) is np.ndarray and p.shape == se.shape == (3, 2) and not se.any()
    tab = q.p_system_table()
    assert list(tab.columns) == ["t", "s", "p", "p_se"]
    np.testing.assert_array_equal(tab.p.to_numpy(), p.ravel())
    b = q.bath_distribution("B", -1)
    np.testing.assert_allclose(b.to_numpy(), q.p_bath()[-1][b.index.to_numpy()], rtol=0, atol=0)
    with pytest.raises(trajmc.UnsupportedError, match="joint distribution"):
        q.heat_distribution("B")


def test_get_example_is_a_dict_and_load_example_a_model():
    for name in EXAMPLES:
        d = trajmc.get_example(name)
        assert type(d) is dict
        m = trajmc.load_example(name)
        assert isinstance(m, trajmc.Model) and m.bath_names == [b["name"] for b in d["baths"]]
    assert trajmc.load_example("two-baths").bath_names == ["hot", "cold"]
    with pytest.raises(trajmc.ModelError, match="two-baths"):
        trajmc.load_example("nope")


# --------------------------------------------------------------------------- 2. long-format tables

@pytest.mark.parametrize("which", ["sol", "enumerated", "implicit"])
def test_p_system_table_is_long_format_with_se(two, which):
    r = two[which]
    tab = r.p_system_table()
    assert list(tab.columns) == ["t", "s", "p", "p_se"]
    assert [str(t) for t in tab.dtypes] == ["float64", "int64", "float64", "float64"]
    assert len(tab) == len(r.times) * 3
    wide = tab.pivot(index="t", columns="s", values="p")
    np.testing.assert_array_equal(wide.to_numpy(), r.p_system())
    np.testing.assert_array_equal(wide.index.to_numpy(), r.times)
    np.testing.assert_array_equal(tab.pivot(index="t", columns="s", values="p_se").to_numpy(), r.p_system_se())


@pytest.mark.parametrize("which", ["sol", "enumerated", "implicit"])
def test_heat_table_is_long_format_with_se(two, which):
    r = two[which]
    tab = r.heat_table("C")
    assert list(tab.columns) == ["t", "Q", "P", "P_se"]
    assert [str(t) for t in tab.dtypes] == ["float64", "int64", "float64", "float64"]
    assert (tab.P > 0).all()
    np.testing.assert_allclose(tab.groupby("t").P.sum().to_numpy(), 1.0, rtol=0, atol=1e-12)
    assert sorted(tab.t.unique()) == list(r.times)
    for k, t in enumerate(r.times):
        one = tab[tab.t == t]
        np.testing.assert_array_equal(one.P.to_numpy(), r.heat_distribution("C", k).to_numpy())
        np.testing.assert_array_equal(one.Q.to_numpy(), r.heat_distribution("C", k).index.to_numpy())
    if which == "sol":
        assert not tab.P_se.any()
    else:
        np.testing.assert_allclose(tab.P_se, np.sqrt(tab.P * (1 - tab.P) / r.trajectories), rtol=1e-15)


# --------------------------------------------------------------------------- 3. reprs

@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_repr_is_short(name):
    m = trajmc.load_model(get_model_dict(name))
    r = repr(m)
    assert len(r) < 400 and "\n" not in r and repr(m.name) in r
    for b in m.bath_names:
        assert f"{b}:" in r
    h = m._repr_html_()
    assert h.startswith("<div>") and "<table>" in h and h.count("<tr>") >= 3 + m.n_baths


def test_result_reprs_are_short_and_say_what_they_hold(two, tmp_path):
    q = _quantum()
    for r, must in [(two["sol"], ["Solution", "'two_baths'", "exact", "A, C"]),
                    (two["enumerated"], ["Ensemble", "'two_baths'", "trajectories 3000", "seed 11", "enumerated"]),
                    (two["implicit"], ["Ensemble", "implicit", "marginals only"]),
                    (q, ["QuantumSolution", "baths B", "dimension"])]:
        text = repr(r)
        assert "\n" not in text and len(text) < 300, text
        for m in must:
            assert m in text, (m, text)
        h = r._repr_html_()
        assert h.startswith("<div><b>") and "<table>" in h and type(r).__name__ in h
    run = two["enumerated"].save(tmp_path / "r")
    assert str(run) in repr(trajmc.load_run(run))


# --------------------------------------------------------------------------- 4. save

@pytest.mark.parametrize("path, records", [("enumerated", True), ("implicit", False)])
def test_save_then_load_run_is_identical(tmp_path, path, records):
    md = get_model_dict("two_baths")
    ens = _sim(md, 1500, seed=3, engine=path, records=records, paths=2)
    d = ens.save(tmp_path / "run")
    back = trajmc.load_run(d)
    _assert_same_acc(ens, back)
    pd.testing.assert_frame_equal(ens.thermo(), back.thermo(), check_exact=True)
    if records:
        for k, v in ens.records.items():
            np.testing.assert_array_equal(v, back.records[k])
    prov = json.loads((d / "provenance.json").read_text())
    assert prov["status"] == "complete" and prov["chunking"]["trajectories"] == 1500
    with pytest.raises(trajmc.RunError, match="complete run"):
        ens.save(d)  # a second save never mixes two results
    ens.save(d, overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(trajmc.RunError, match="notes.txt"):
        ens.save(tmp_path / "other", overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------- 5. extending a run

@pytest.mark.parametrize("name, path, kw", [
    ("two_baths", "enumerated", {"records": True, "paths": 3}),
    ("two_baths", "implicit", {"records": True}),
    ("qubit_osc_sqrt", "implicit", {}),
    ("three_spins_eth", "enumerated", {"trajectory_entropy": True}),
])
def test_extend_is_bit_identical_to_one_longer_run(name, path, kw):
    md = get_model_dict(name)
    short = _sim(md, 3 * CHUNK, seed=21, engine=path, **kw)
    longer = short.extend(7 * CHUNK + 100, threads=1)  # the new last chunk may be partial
    ref = _sim(md, 7 * CHUNK + 100, seed=21, engine=path, **kw)
    _assert_same_acc(longer, ref)
    pd.testing.assert_frame_equal(longer.thermo(), ref.thermo(), check_exact=True)
    assert longer.trajectories == ref.trajectories == 7 * CHUNK + 100
    assert short.trajectories == 3 * CHUNK  # the original is untouched
    if kw.get("records"):
        for k, v in ref.records.items():
            np.testing.assert_array_equal(longer.records[k], v)
    if kw.get("trajectory_entropy"):
        pd.testing.assert_frame_equal(longer.trajectory_entropy(), ref.trajectory_entropy(), check_exact=True)


def test_extend_run_in_place_and_to_a_new_directory(tmp_path):
    md = get_model_dict("two_baths")
    n1, n2 = 2 * CHUNK, 5 * CHUNK
    a = _sim(md, n1, seed=8, out=tmp_path / "a", records=True)
    ref = _sim(md, n2, seed=8, records=True)
    (tmp_path / "a" / "figures").mkdir()
    (tmp_path / "a" / "figures" / "old.png").write_bytes(b"stale")
    got = trajmc.extend_run(tmp_path / "a", n2, out=tmp_path / "b", threads=1)
    _assert_same_acc(got, ref)
    _assert_same_acc(trajmc.load_run(tmp_path / "b"), ref)
    _assert_same_acc(trajmc.load_run(tmp_path / "a"), a)  # out= leaves the source as it was
    got = trajmc.extend_run(tmp_path / "a", n2, threads=1)
    back = trajmc.load_run(tmp_path / "a")
    _assert_same_acc(back, ref)
    pd.testing.assert_frame_equal(back.thermo(), ref.thermo(), check_exact=True)
    assert not (tmp_path / "a" / "figures" / "old.png").exists()  # drawn from the old result
    est = pd.read_csv(tmp_path / "a" / "estimates.csv", index_col=0)
    np.testing.assert_allclose(est["Sigma"].to_numpy(), ref.thermo()["Sigma"].to_numpy(), rtol=1e-15)
    assert tomllib.loads((tmp_path / "a" / "model.toml").read_text())["simulation"]["trajectories"] == n2


def test_cli_resume_with_trajectories_extends_a_finished_run(tmp_path, capsys):
    md = get_model_dict("qubit_osc_sqrt")
    md["simulation"] = {"chunk_size": CHUNK}
    f = tmp_path / "m.toml"
    f.write_text(trajmc.model.toml_dumps(md))
    d = tmp_path / "run"
    assert cli(["simulate", f, "--trajectories", 2 * CHUNK, "--seed", 9, "--out", d, "--threads", 1, "--quiet"]) == 0
    assert_bad_input(["simulate", "--resume", d, "--quiet"], capsys, match="--trajectories N")
    assert_bad_input(["simulate", "--resume", d, "--trajectories", CHUNK, "--quiet"], capsys, match="must exceed")
    assert cli(["simulate", "--resume", d, "--trajectories", 3 * CHUNK, "--threads", 1, "--quiet"]) == 0
    ref = _sim(md, 3 * CHUNK, seed=9, paths=5)  # the command line keeps 5 paths by default
    _assert_same_acc(trajmc.load_run(d), ref)
    assert (d / "figures" / "summary.png").is_file()


def test_extend_refuses_what_cannot_be_bit_identical(tmp_path):
    md = get_model_dict("qubit_osc_sqrt")
    ens = _sim(md, 2 * CHUNK + 7, seed=2)
    with pytest.raises(trajmc.ModelError, match="last chunk is partial"):
        ens.extend(4 * CHUNK)
    ens = _sim(md, 2 * CHUNK, seed=2)
    for bad in (2 * CHUNK, CHUNK, 0, 1.5, "many"):
        with pytest.raises(trajmc.ModelError, match="trajectories"):
            ens.extend(bad)
    with pytest.raises(trajmc.RunError, match="no such run directory"):
        trajmc.extend_run(tmp_path / "missing", 10**4)


def test_the_fixed_point_scale_does_not_change_with_the_run_size():
    """Runs of any size up to SCALE_TRAJECTORIES sum the entropy terms at one scale: extending stays exact."""
    for g in (0.0, 3.7, 250.0, 1e6):
        s = tables.fixed_point_scale(g, 1)
        assert all(tables.fixed_point_scale(g, n) == s for n in (10**3, 10**6, 10**8, tables.SCALE_TRAJECTORIES))
        # and the sums cannot overflow: SCALE_TRAJECTORIES values of |g| * scale fit in int64
        assert (g * s + 1) * tables.SCALE_TRAJECTORIES < 2**63
    assert tables.fixed_point_scale(250.0, 4 * tables.SCALE_TRAJECTORIES) < tables.fixed_point_scale(250.0, 1)


def test_extend_beyond_the_scale_is_refused_with_the_largest_reachable(monkeypatch):
    monkeypatch.setattr(tables, "SCALE_TRAJECTORIES", 1)  # the scale then falls with the run size
    md = get_model_dict("two_baths")
    ens = _sim(md, 2 * CHUNK, seed=4, engine="enumerated")
    big = 2 * CHUNK
    while tables.fixed_point_scale(float(np.abs(ens.plan.g0).max()), big) == ens.plan.g_scale:
        big *= 2
    with pytest.raises(trajmc.ModelError, match=r"fixed-point scale.*at most (\d+) trajectories") as ei:
        extended(ens.plan, ens.acc, big)
    top = int(ei.value.args[0].rsplit("at most ", 1)[1].split()[0])
    assert tables.fixed_point_scale(float(np.abs(ens.plan.g0).max()), top) == ens.plan.g_scale
    assert tables.fixed_point_scale(float(np.abs(ens.plan.g0).max()), top + 1) != ens.plan.g_scale


# --------------------------------------------------------------------------- 6. model.toml

@pytest.mark.parametrize("name", ALL_MODELS + [f"example:{n}" for n in EXAMPLES])
def test_written_model_toml_round_trips_and_keeps_short_arrays_on_one_line(name):
    md = trajmc.get_example(name.split(":")[1]) if name.startswith("example:") else get_model_dict(name)
    m = trajmc.load_model(md)
    text = m.to_toml()
    back = trajmc.load_model(tomllib.loads(text))
    assert back.digest == m.digest and back.to_dict() == m.to_dict()
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= 100
    assert f"energies = {m.energies.tolist()}" in lines
    # several numbers a line (tomli_w's layout put each array element on its own line)
    n_numbers = sum(_count_scalars(v) for v in m.to_dict().values())
    assert len(lines) <= 40 + n_numbers / 2, (len(lines), n_numbers)
    assert "[[baths]]" in lines and "[system]" in lines


def _count_scalars(x):
    if isinstance(x, dict):
        return sum(_count_scalars(v) for v in x.values())
    if isinstance(x, list):
        return sum(_count_scalars(v) for v in x)
    return 1


def test_toml_writer_handles_what_models_hold():
    d = {"a": [1.5, float("-inf"), float("inf")], "s": 'q"u\\o\nte\x01', "nested": {"x": {"y": [[1, 2], [3]]}},
         "odd key": True, "rows": [{"k": i, "v": list(range(40))} for i in range(2)], "empty": []}
    back = tomllib.loads(trajmc.model.toml_dumps(d))
    assert back == d


def test_spins_bath_emax_above_its_top_energy_is_refused(tmp_path, capsys):
    md = get_model_dict("three_spins_eth")  # 30 spins of quantum 1
    trajmc.load_model(md)  # emax = 30 = n * quantum is fine
    md["baths"][0]["emax"] = 31
    with pytest.raises(trajmc.ModelError, match=r"^baths\[0\]\.emax: is 31 but 30 spins of quantum 1 hold at most "
                                                r"E = 30") as ei:
        trajmc.load_model(md)
    assert "\n" not in str(ei.value)
    f = tmp_path / "m.toml"
    f.write_text(trajmc.model.toml_dumps(md))
    assert_bad_input(["solve", f], capsys, match="baths[0].emax")


# --------------------------------------------------------------------------- 7. docstrings

@pytest.mark.parametrize("cls", [trajmc.Ensemble, trajmc.Solution, mic.QuantumSolution])
def test_every_public_member_has_a_numpydoc_docstring(cls):
    for name, member in inspect.getmembers(cls):
        if name.startswith("_"):
            continue
        doc = inspect.getdoc(member)
        assert doc and len(doc) > 20, f"{cls.__name__}.{name} has no docstring"
        if inspect.isfunction(member):
            ret = inspect.signature(member).return_annotation
            params = [p for p in inspect.signature(member).parameters if p != "self"]
            if ret is not None and ret is not inspect.Signature.empty and ret != "None":
                assert "Returns\n-------" in doc, f"{cls.__name__}.{name}: no Returns section"
            if params:
                assert "Parameters\n----------" in doc, f"{cls.__name__}.{name}: no Parameters section"


def test_thermo_docstring_names_the_estimator_the_run_uses():
    doc = inspect.getdoc(trajmc.Ensemble.thermo)
    assert "jackknife" in doc
    assert "Miller-Madow" not in doc.split("\n")[0]  # the correction is the jackknife; Miller-Madow only enters the SE
