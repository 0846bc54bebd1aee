"""Command line (see the README): ``python -m trajmc simulate | validate | analyze | examples | solve | --version``.

Both Monte Carlo paths (``--engine enumerated`` and ``--engine implicit``) are driven through every command.
Bad input: exit status 2 and one line on stderr, never a traceback, nothing written.  Interruption (SIGINT,
SIGTERM): exit status 130, one line naming the directory to ``--resume``, a checkpoint that adds up.

The only statistical verdicts here are those of ``validate``, run at a family-wise false-alarm rate of 1e-6
(``--alpha 1e-6``).
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomli_w
from conftest import THREADS, assert_bad_input, cli, get_model_dict

import trajmc
from trajmc import engine, rundir
from trajmc.cli import build_parser, main
from trajmc.simulation import plan_run

PATHS = ["enumerated", "implicit"]
EXAMPLE = "qubit-linear-exact"  # 2 levels x 21 bath energies: fast on both paths, exact solution in ms
ALPHA = "1e-6"



def _files(d: Path):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def assert_same_acc(a, b):
    fa, fb = a.arrays(), b.arrays()
    assert set(fa) == set(fb)
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
    assert a.chunks_done == b.chunks_done


def _model_file(tmp_path, md, name="m.toml"):
    f = tmp_path / name
    f.write_text(tomli_w.dumps(md))
    return f


# --------------------------------------------------------------------------- simulate


@pytest.fixture(scope="module", params=PATHS)
def cli_run(request, tmp_path_factory):
    """A run written by ``simulate --example qubit-linear-exact --engine PATH``; (directory, path)."""
    d = tmp_path_factory.mktemp("cli") / "run"
    rc = main(["simulate", "--example", EXAMPLE, "--trajectories", "2000", "--engine", request.param, "--out", str(d),
               "--quiet"])
    assert rc == 0
    return d, request.param


def test_simulate_writes_run_directory(cli_run):
    d, path = cli_run
    for name in ("model.toml", "provenance.json", "estimates.csv", "estimates.parquet", "p_system.csv",
                 "accumulators.npz", "figures/summary.png"):
        assert (d / name).is_file(), name
    assert not (d / "records.npz").exists()  # records are off by default: every statistic is streamed
    assert (d / "entropy_reference.npz").exists() == (path == "enumerated")
    assert (d / "figures" / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    prov = json.loads((d / "provenance.json").read_text())
    for k in ("trajmc", "numpy", "numba"):
        assert prov["software"][k], k
    assert prov["software"]["trajmc"] == trajmc.__version__
    assert "git_commit" in prov
    assert prov["seed"]["entropy"] == "4"  # the example's seed
    assert prov["chunking"]["chunk_size"] == 4096 and prov["chunking"]["chunks"] == 1
    assert prov["timings"]["compile_s"] >= 0
    assert prov["status"] == "complete"
    assert prov["engine"]["path"] == path and prov["records"] is False
    m = tomllib.loads((d / "model.toml").read_text())
    assert m["name"] == EXAMPLE and m["simulation"]["trajectories"] == 2000
    assert m["simulation"]["engine"] == path and m["simulation"]["records"] is False


def test_cli_run_equals_python_api(cli_run):
    d, path = cli_run
    run = trajmc.load_run(d)
    ens = trajmc.simulate(trajmc.get_example(EXAMPLE), trajectories=2000, seed=4, threads=1, paths=5, engine=path)
    assert_same_acc(run.acc, ens.acc)
    assert run.records is None and ens.records is None
    assert run.stats["jumps"] == ens.stats["jumps"] and run.stats["path"] == path
    pd.testing.assert_frame_equal(run.thermo(), ens.thermo(), check_exact=True)


def test_default_engine_is_enumerated_for_a_small_model(tmp_path):
    assert cli(["simulate", "--example", EXAMPLE, "--trajectories", "300", "--out", tmp_path / "r", "--quiet"]) == 0
    prov = json.loads((tmp_path / "r" / "provenance.json").read_text())
    assert prov["engine"]["path"] == "enumerated" and "reachable joint states" in prov["engine"]["reason"]


@pytest.mark.parametrize("path", PATHS)
def test_simulate_prints_summary(tmp_path, capsys, path):
    d = tmp_path / "loud"
    f = _model_file(tmp_path, get_model_dict("two_baths"))
    assert cli(["simulate", f, "--trajectories", "500", "--seed", "9", "--threads", "1", "--chunk-size", "100",
                "--engine", path, "--out", d]) == 0
    out = capsys.readouterr().out
    assert "500 trajectories" in out and "5 chunks" in out and str(d) in out and "Sigma_tilde" in out
    assert "Q_A" in out and "Q_C" in out
    if path == "implicit":  # two baths, marginals only: the entropies that need the joint are bounds
        assert "S_obs_upper" in out and "marginals only" in out
    else:
        assert "S_obs" in out and "S_obs_upper" not in out and "marginals only" not in out
    assert json.loads((d / "provenance.json").read_text())["seed"]["entropy"] == "9"


def test_simulate_model_file(tmp_path):
    md = get_model_dict("qubit_osc_sqrt")
    md["simulation"] = {"trajectories": 700, "seed": 21}
    assert cli(["simulate", _model_file(tmp_path, md), "--out", tmp_path / "r", "--quiet"]) == 0
    run = trajmc.load_run(tmp_path / "r")
    assert run.stats["trajectories"] == 700 and run.stats["seed_entropy"] == 21


@pytest.mark.parametrize("text, n", [("1e4", 10_000), ("2.5e3", 2500), ("3000", 3000), ("1E3", 1000)])
def test_integer_counts_written_as_floats_are_accepted(tmp_path, text, n):
    assert cli(["simulate", "--example", EXAMPLE, "--trajectories", text, "--chunk-size", "5e2", "--out",
                tmp_path / "r", "--quiet"]) == 0
    run = trajmc.load_run(tmp_path / "r")
    assert run.stats["trajectories"] == n and run.stats["chunk_size"] == 500


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("flag", ["--records", "--no-records"])
def test_records_flags(tmp_path, path, flag):
    md = get_model_dict("qubit_osc_sqrt")
    md["simulation"] = {"trajectories": 600, "seed": 5, "records": flag == "--no-records"}  # the flag overrides
    assert cli(["simulate", _model_file(tmp_path, md), flag, "--engine", path, "--out", tmp_path / "r",
                "--quiet"]) == 0
    run = trajmc.load_run(tmp_path / "r")
    on = flag == "--records"
    assert (tmp_path / "r" / "records.npz").exists() == on and (run.records is not None) == on
    if on:
        assert set(run.records) == ({"x", "jumps"} if path == "enumerated" else {"s", "E", "jumps"})
        assert run.records["jumps"].shape == (600, len(run.times))
        ens = trajmc.simulate(md, records=True, engine=path, threads=THREADS, paths=5)
        for k in run.records:
            np.testing.assert_array_equal(run.records[k], ens.records[k], err_msg=k)


def test_simulate_resume_in_process(tmp_path, capsys):
    d = tmp_path / "part"
    md = trajmc.get_example(EXAMPLE)
    plan = plan_run(md, trajectories=3000, seed=4, chunk_size=500, paths=5, threads=THREADS)
    w = rundir.RunWriter.create(d, plan)
    engine.run_plan(plan, w.acc, 1, stop_after=2)
    w.checkpoint(w.acc)
    for extra in (["--seed", 3], ["--engine", "implicit"], ["--no-records"], ["--memory-budget", "4GiB"],
                  ["--max-jumps", "1e9"], ["--trajectories", 10]):
        err = assert_bad_input(["simulate", "--resume", d, *extra], capsys)
        assert "--resume" in err
    assert cli(["simulate", "--resume", d, "--quiet", "--threads", THREADS]) == 0
    full = trajmc.simulate(md, trajectories=3000, seed=4, chunk_size=500, paths=5, threads=1)
    assert_same_acc(trajmc.load_run(d).acc, full.acc)
    assert (d / "figures" / "summary.png").is_file()
    assert_bad_input(["simulate", "--resume", d, "--quiet"], capsys, match="already complete")


def test_version(capsys):
    assert cli(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"trajmc {trajmc.__version__}"


# Regression test: a model name that is matplotlib mathtext ("$x^$" does not parse) must not fail a command
@pytest.mark.regression
@pytest.mark.parametrize("path", PATHS)
def test_model_name_with_mathtext_does_not_crash_the_figures(tmp_path, capsys, path):
    md = get_model_dict("qubit_osc_sqrt")
    md["name"] = "$x^$ {bad} %s _^ $"
    md["protocol"] = [{"time": 1.0, "energies": [0, 2]}]  # driven: the work figure too
    f = _model_file(tmp_path, md)
    d = tmp_path / "r"
    assert cli(["simulate", f, "--trajectories", 1000, "--engine", path, "--out", d]) == 0
    assert cli(["analyze", d]) == 0
    assert cli(["validate", d, "--alpha", ALPHA]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and md["name"] in out
    assert (d / "figures" / "summary.png").is_file()
    assert trajmc.load_run(d).model.name == md["name"]


def test_a_figure_that_fails_is_a_warning(tmp_path, capsys, monkeypatch):
    import trajmc.plotting

    def broken(*a, **k):
        raise ValueError("no figure today\nsecond line")

    monkeypatch.setattr(trajmc.plotting, "summary_figure", broken)
    d = tmp_path / "r"
    assert cli(["simulate", "--example", EXAMPLE, "--trajectories", 300, "--out", d, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "trajmc: warning: the summary figure could not be drawn (ValueError: no figure today)"]
    trajmc.load_run(d)  # the run itself is complete


# --------------------------------------------------------------------------- validate, analyze


@pytest.mark.parametrize("path", PATHS)
def test_validate_example(tmp_path, capsys, path):
    d = tmp_path / "v"
    rc = cli(["validate", "--example", EXAMPLE, "--trajectories", 3000, "--engine", path, "--alpha", ALPHA,
              "--out", d])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert "PASS" in out.strip().splitlines()[-1] and "GillespieVsExact" in out
    v = json.loads((d / "validation.json").read_text())
    assert v["passed"] is True
    assert (d / "validation.md").is_file() and (d / "figures").is_dir()
    run = trajmc.load_run(d)
    assert run.stats["trajectories"] == 3000 and run.plan.path == path


@pytest.mark.parametrize("path", PATHS)
def test_validate_model_file_quiet_and_run_directory(tmp_path, capsys, path):
    md = get_model_dict("two_baths")
    f = _model_file(tmp_path, md)
    d = tmp_path / "v"
    assert cli(["validate", f, "--trajectories", 2000, "--seed", 3, "--engine", path, "--alpha", ALPHA, "--out", d,
                "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert cli(["validate", d, "--alpha", ALPHA, "--quiet"]) == 0  # a run directory, validated as it was run
    err = assert_bad_input(["validate", d, "--engine", path], capsys, match="--engine")
    assert "run directory" in err


def test_analyze_run_directory(cli_run, tmp_path, capsys):
    import shutil

    d = tmp_path / "a"
    shutil.copytree(cli_run[0], d)
    assert cli(["analyze", d]) == 0
    out = capsys.readouterr().out
    assert EXAMPLE in out and f"{cli_run[1]} path" in out and str(d / "figures") in out
    tables = {p.name for p in (d / "analysis").iterdir()}
    assert "activity.csv" in tables and any(t.startswith("heat") for t in tables)
    assert any(p.suffix == ".png" for p in (d / "figures").iterdir())
    trajmc.load_run(d)  # analyze writes beside the run, never into its checked files
    assert cli(["analyze", d, "--quiet"]) == 0
    assert capsys.readouterr().out == ""


def test_analyze_bad_input(tmp_path, capsys):
    assert_bad_input(["analyze", tmp_path], capsys, match="not a trajmc run directory")
    f = tmp_path / "m.toml"
    f.write_text("x = 1")
    err = assert_bad_input(["analyze", f], capsys, match="run directory")
    assert "model file" in err and f"trajmc simulate {f} --out RUN_DIR" in err  # says what it needs
    g = tmp_path / "notes.txt"
    g.write_text("x")
    assert_bad_input(["analyze", g], capsys, match="not a file")
    assert_bad_input(["analyze"], capsys)


@pytest.fixture(scope="module")
def two_bath_run(tmp_path_factory):
    """A run of the two-bath test model (baths A and C)."""
    base = tmp_path_factory.mktemp("two")
    f = _model_file(base, get_model_dict("two_baths"))
    d = base / "run"
    assert cli(["simulate", f, "--trajectories", 1500, "--seed", 4, "--engine", "enumerated", "--out", d,
                "--quiet"]) == 0
    return d


def _copy(run, tmp_path):
    import shutil

    d = tmp_path / "run"
    shutil.copytree(run, d)
    return d


def test_analyze_bath_and_times(two_bath_run, tmp_path, capsys):
    d = _copy(two_bath_run, tmp_path)
    times = trajmc.load_run(d).times
    asked = [times[2] + 0.01, times[-1]]  # read at the nearest sample times
    assert cli(["analyze", d, "--bath", "C", "--times", *asked, "--quiet"]) == 0
    cum = pd.read_csv(d / "analysis" / "heat_cumulants.csv")
    assert set(cum.bath) == {"C"}
    np.testing.assert_allclose(sorted(set(cum.t)), [times[2], times[-1]])
    dist = pd.read_csv(d / "analysis" / "heat_distribution.csv")
    assert set(dist.bath) == {"C"}
    assert cli(["analyze", d, "--bath", "A", "--bath", "C", "--quiet"]) == 0  # both, default times
    cum = pd.read_csv(d / "analysis" / "heat_cumulants.csv")
    assert set(cum.bath) == {"A", "C"} and len(set(cum.t)) == 3


def test_analyze_bad_bath_and_times_list_what_is_valid(two_bath_run, tmp_path, capsys):
    d = _copy(two_bath_run, tmp_path)
    err = assert_bad_input(["analyze", d, "--bath", "B"], capsys, match="bath")
    assert "'B'" in err and "A, C" in err
    t_end = trajmc.load_run(d).times[-1]
    err = assert_bad_input(["analyze", d, "--times", 2 * t_end + 1], capsys, match="times")
    assert f"0 .. {t_end:g}" in err
    assert not (d / "analysis").exists()  # refused before anything was written


def test_analyze_out_folder(two_bath_run, tmp_path, capsys):
    d = _copy(two_bath_run, tmp_path)
    before = _files(d)
    o = tmp_path / "elsewhere" / "an"
    assert cli(["analyze", d, "--out", o]) == 0
    out = capsys.readouterr().out
    assert f"tables in {o}" in out and f"figures in {o / 'figures'}" in out
    assert (o / "heat_cumulants.csv").is_file() and (o / "activity.csv").is_file()
    assert any(p.suffix == ".png" for p in (o / "figures").iterdir())
    assert _files(d) == before  # nothing written into the run directory
    assert_bad_input(["analyze", d, "--out", d / "mine"], capsys, match="inside the run directory")
    (tmp_path / "file").write_text("x")
    assert_bad_input(["analyze", d, "--out", tmp_path / "file"], capsys, match="not a directory")
    assert _files(d) == before


# --------------------------------------------------------------------------- examples, solve


def test_examples_lists_names(capsys):
    assert cli(["examples"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.strip().splitlines()]
    assert len(names) >= 4
    assert set(names) == set(trajmc.list_examples())
    for n in names:
        trajmc.load_model(trajmc.get_example(n))


def _printed_table(out):
    """The table ``solve`` prints: (columns, times, values (n_rows, n_columns))."""
    lines = out.strip().splitlines()
    cols = lines[0].split()
    assert lines[1].split() == ["t"]
    rows = np.array([[float(v) for v in ln.split()] for ln in lines[2:]])
    assert rows.shape[1] == len(cols) + 1
    return cols, rows[:, 0], rows[:, 1:]


@pytest.mark.parametrize("example", ["two-baths", "driven-qubit"])
def test_solve_prints_every_time_with_p_s_heat_and_work(capsys, example):
    assert cli(["solve", "--example", example]) == 0
    cols, t, vals = _printed_table(capsys.readouterr().out)
    sol = trajmc.solve(trajmc.get_example(example), progress=False)
    th, ps = sol.thermo(), np.asarray(sol.p_system())
    driven = bool(sol.model.protocol)
    assert cols == ([f"p_{s}" for s in range(ps.shape[1])] + ["S_obs", "Sigma", "Sigma_tilde", "S_sh", "I", "D", "E_S"]
                    + [f"Q_{b}" for b in sol.model.bath_names] + (["W"] if driven else []))
    np.testing.assert_allclose(t, sol.times, rtol=1e-5)  # every time, the last included
    want = np.column_stack([ps] + [th[c].to_numpy() for c in cols[ps.shape[1]:]])
    np.testing.assert_allclose(vals, want, rtol=1e-5, atol=1e-12)  # printed to 6 significant digits
    if driven:
        assert vals[-1, cols.index("W")] > 0  # the driven example does work on the system


@pytest.mark.parametrize("every", [1, 3, 7, 1000])
def test_solve_every_keeps_the_last_time(capsys, every):
    assert cli(["solve", "--example", "two-baths", "--every", every, "--quiet"]) == 0
    _, t, _ = _printed_table(capsys.readouterr().out)
    times = trajmc.load_model(trajmc.get_example("two-baths")).times
    want = list(times[::every]) + ([] if (len(times) - 1) % every == 0 else [times[-1]])
    np.testing.assert_allclose(t, want, rtol=1e-5)


def test_solve_csv(tmp_path):
    f = tmp_path / "sol.csv"
    assert cli(["solve", "--example", EXAMPLE, "--csv", f]) == 0
    th = pd.read_csv(f, index_col=0)
    ex = trajmc.solve(trajmc.get_example(EXAMPLE)).thermo()
    np.testing.assert_array_equal(th["S_obs"].to_numpy(), ex["S_obs"].to_numpy())  # CSV keeps every digit


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("argv, match", [
    (["simulate", "--example", EXAMPLE, "--trajectories", "0"], "--trajectories"),
    (["simulate", "--example", EXAMPLE, "--trajectories", "abc"], "abc"),
    (["simulate", "--example", EXAMPLE, "--trajectories", "-5"], "--trajectories"),
    (["simulate", "--example", EXAMPLE, "--trajectories", "1.5"], "1.5"),
    (["simulate", "--example", EXAMPLE, "--trajectories", "1e300"], "--trajectories"),
    (["simulate", "--example", EXAMPLE, "--trajectories", "nan"], "--trajectories"),
    (["simulate", "--example", EXAMPLE, "--trajectories", "inf"], "--trajectories"),
    (["simulate", "--example", EXAMPLE, "--threads", "0"], "--threads"),
    (["simulate", "--example", EXAMPLE, "--threads", "100000"], "threads"),
    (["simulate", "--example", EXAMPLE, "--seed", "-1"], "--seed"),
    (["simulate", "--example", EXAMPLE, "--seed", "0.5"], "--seed"),
    (["simulate", "--example", EXAMPLE, "--chunk-size", "0"], "--chunk-size"),
    (["simulate", "--example", EXAMPLE, "--chunk-size", "12.5"], "--chunk-size"),
    (["simulate", "--example", EXAMPLE, "--engine", "fast"], "--engine"),
    (["simulate", "--example", EXAMPLE, "--memory-budget", "lots"], "memory_budget"),
    (["simulate", "--example", EXAMPLE, "--memory-budget", "0"], "memory_budget"),
    (["simulate", "--example", EXAMPLE, "--memory-budget", "1KiB"], "memory_budget"),
    (["simulate", "--example", EXAMPLE, "--engine", "implicit", "--memory-budget", "1KiB"], "memory_budget"),
    (["simulate", "--example", EXAMPLE, "--max-jumps", "0"], "--max-jumps"),
    (["simulate", "--example", EXAMPLE, "--max-jumps", "abc"], "--max-jumps"),
    (["simulate", "--example", EXAMPLE, "--max-jumps", "10"], "max_jumps"),
    (["simulate", "--example", EXAMPLE, "--engine", "implicit", "--max-jumps", "10"], "max_jumps"),
    (["simulate", "--example", EXAMPLE, "--records", "--no-records", "--memory-budget", "1KiB"], "memory_budget"),
    (["simulate", "--example", "nosuch"], "nosuch"),
    (["simulate", "--bogus"], "--bogus"),
    (["validate"], "validate needs"),
    (["validate", "--example", "nosuch"], "nosuch"),
    (["validate", "--example", EXAMPLE, "--memory-budget", "1KiB"], "memory_budget"),
    (["validate", "--example", EXAMPLE, "--max-jumps", "10"], "max_jumps"),
    (["validate", "--example", EXAMPLE, "--alpha", "1"], "--alpha"),
    (["validate", "--example", EXAMPLE, "--trajectories", "1.5"], "1.5"),
    (["validate", "nosuch.toml", "--example", EXAMPLE], "not two"),
    (["solve", "--example", "nosuch"], "nosuch"),
    (["solve", "--example", EXAMPLE, "--every", "0"], "--every"),
    (["solve", "--example", EXAMPLE, "--every", "2.5"], "--every"),
    (["simulate", "--example", EXAMPLE, "--backend", "threads", "--workers", "2"], "--backend dask"),
    (["analyze", "somewhere", "--times", "x"], "--times"),
    (["analyze", "somewhere", "--times", "-1"], "--times"),
    (["nosuchcommand"], None),
    ([], None),
])
def test_bad_arguments(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written, not even a default runs/ directory
    assert_bad_input(argv, capsys, match)
    assert _files(tmp_path) == []


@pytest.mark.parametrize("path", PATHS)
def test_refused_budget_writes_nothing_even_with_out(tmp_path, capsys, path):
    """The memory estimate is checked before the run directory exists."""
    d = tmp_path / "r"
    err = assert_bad_input(["simulate", "--example", EXAMPLE, "--engine", path, "--memory-budget", "1KiB", "--out", d],
                           capsys, match="memory_budget")
    assert "--memory-budget" in err  # ... and names the setting to change
    assert not d.exists()
    err = assert_bad_input(["simulate", "--example", EXAMPLE, "--engine", path, "--trajectories", "1e6",
                            "--max-jumps", "1e5", "--out", d], capsys, match="max_jumps")
    assert not d.exists()


def test_max_jumps_raised_allows_the_run(tmp_path):
    d = tmp_path / "r"
    assert cli(["simulate", "--example", EXAMPLE, "--trajectories", 300, "--max-jumps", "1e6", "--out", d,
                "--quiet"]) == 0
    assert trajmc.load_run(d).stats["jumps"] <= 1e6


def test_missing_model_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_bad_input(["simulate", "nosuch.toml", "--quiet"], capsys, match="nosuch.toml")
    assert_bad_input(["validate", "nosuch.toml", "--quiet"], capsys, match="nosuch.toml")
    assert _files(tmp_path) == []


@pytest.mark.parametrize("edit, key", [
    (lambda m: m.__setitem__("colour", "red"), "colour"),
    (lambda m: m["baths"][0]["kernel"].__setitem__("gama", 1.0), "gama"),
    (lambda m: m["baths"][0]["kernel"].__setitem__("gamma", -1.0), "gamma"),
    (lambda m: m["system"].__setitem__("energies", [0, 0.5]), "energies"),
    (lambda m: m.__setitem__("simulation", {"engine": "fast"}), "engine"),
    (lambda m: m.__setitem__("simulation", {"records": "yes"}), "records"),
    (lambda m: m.__setitem__("simulation", {"max_jumps": -1}), "max_jumps"),
    (lambda m: m.__setitem__("name", "a/b"), "name"),
])
def test_invalid_model_file(tmp_path, capsys, monkeypatch, edit, key):
    md = get_model_dict("qubit_osc_sqrt")
    edit(md)
    f = _model_file(tmp_path, md, "bad.toml")
    monkeypatch.chdir(tmp_path)
    err = assert_bad_input(["simulate", f, "--quiet"], capsys)
    assert key in err
    assert _files(tmp_path) == ["bad.toml"]
    assert_bad_input(["validate", f, "--quiet"], capsys, match=key)
    assert_bad_input(["solve", f], capsys, match=key)
    assert _files(tmp_path) == ["bad.toml"]


def test_not_toml(tmp_path, capsys):
    f = tmp_path / "bad.toml"
    f.write_text("this is [not toml")
    assert_bad_input(["simulate", f, "--quiet", "--out", tmp_path / "r"], capsys, match="TOML")
    f.write_bytes(b"name = \xff\xfe")
    assert_bad_input(["simulate", f, "--quiet", "--out", tmp_path / "r"], capsys, match="UTF-8")
    assert not (tmp_path / "r").exists()


def test_out_non_empty_directory(tmp_path, capsys):
    d = tmp_path / "busy"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    assert_bad_input(["simulate", "--example", EXAMPLE, "--trajectories", "100", "--out", d, "--quiet"], capsys,
                     match="not empty")
    assert _files(d) == ["notes.txt"]
    assert (d / "notes.txt").read_text() == "keep me"


def test_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert_bad_input(["simulate", "--example", EXAMPLE, "--trajectories", "100", "--out", f, "--quiet"], capsys)
    assert f.read_text() == "x"


def test_out_existing_run_is_not_overwritten(cli_run, capsys):
    d = cli_run[0]
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    assert_bad_input(["simulate", "--example", EXAMPLE, "--trajectories", "100", "--out", d, "--quiet"], capsys)
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == before


def test_tampered_run_directory_is_one_line(cli_run, tmp_path, capsys):
    import shutil

    d = tmp_path / "t"
    shutil.copytree(cli_run[0], d)
    (d / "provenance.json").write_bytes(b"\xff\xfe[]")
    for argv in (["validate", d], ["analyze", d], ["simulate", "--resume", d]):
        assert_bad_input(argv, capsys, match="provenance.json")


def test_resume_of_non_run_directory(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("x")
    assert_bad_input(["simulate", "--resume", tmp_path, "--quiet"], capsys, match="not a trajmc run directory")
    assert_bad_input(["simulate", "--resume", tmp_path / "nowhere", "--quiet"], capsys)
    assert _files(tmp_path) == ["x.txt"]


def test_model_and_example_together(tmp_path, capsys):
    f = _model_file(tmp_path, get_model_dict("qubit_osc_sqrt"))
    assert_bad_input(["simulate", f, "--example", "two-baths", "--quiet", "--out", tmp_path / "r"], capsys)
    assert not (tmp_path / "r").exists()


def _actions(parser, name="trajmc"):
    import argparse

    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub, p in a.choices.items():
                yield from _actions(p, sub)
        else:
            yield name, a


def test_every_argument_has_help_text():
    import argparse

    seen = 0
    for cmd, a in _actions(build_parser()):
        assert a.help and a.help != argparse.SUPPRESS and len(a.help) > 10, (cmd, a.option_strings or a.dest)
        seen += 1
    assert seen > 40


def test_example_choices_are_listed(capsys):
    """An unknown example, in every command that takes one, is refused with the list of the known ones."""
    for cmd in ("simulate", "validate", "solve"):
        err = assert_bad_input([cmd, "--example", "nosuch"], capsys, match="nosuch")
        for name in trajmc.list_examples():
            assert name in err, (cmd, name)
    for opt, choices in (("--engine", ("auto", "enumerated", "implicit")), ("--backend", ("threads", "dask"))):
        err = assert_bad_input(["simulate", "--example", EXAMPLE, opt, "nosuch"], capsys, match=opt)
        for c in choices:
            assert f"'{c}'" in err


def test_parser_lists_subcommands_and_options():
    ap = build_parser()
    text = ap.format_help()
    for c in ("simulate", "validate", "analyze", "examples", "solve", "--version"):
        assert c in text
    sim = ap._subparsers._group_actions[0].choices["simulate"].format_help()
    for o in ("--engine", "--records", "--no-records", "--memory-budget", "--max-jumps", "--resume", "--workers",
              "--backend"):
        assert o in sim, o
    for cmd, opts in (("analyze", ("--bath", "--times", "--out", "--quiet")), ("solve", ("--every", "--csv"))):
        text = ap._subparsers._group_actions[0].choices[cmd].format_help()
        for o in opts:
            assert o in text, (cmd, o)


# --------------------------------------------------------------------------- as a program


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", "trajmc", *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kw)


def test_subprocess_simulate_and_bad_input(tmp_path):
    d = tmp_path / "sp"
    r = _run(["simulate", "--example", EXAMPLE, "--trajectories", "2e3", "--engine", "implicit", "--out", d,
              "--quiet"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    run = trajmc.load_run(d)
    assert run.stats["trajectories"] == 2000 and run.plan.path == "implicit"
    for args in (["simulate", "--example", EXAMPLE, "--trajectories", "abc"],
                 ["simulate", "--example", EXAMPLE, "--trajectories", "1.5"],
                 ["simulate", "--resume", tmp_path / "nowhere"]):
        r = _run(args, cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "runs").exists()
    r = _run(["--version"])
    assert r.returncode == 0 and r.stdout.strip() == f"trajmc {trajmc.__version__}"


# --------------------------------------------------------------------------- a real SIGINT / SIGTERM


def _wait_for(proc, cond, what):
    """Poll until ``cond()`` (the process must still run); the deadline only guards against a hung test."""
    deadline = time.monotonic() + 600
    while not cond():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (status {proc.returncode}) before {what}:\n{err}")
        assert time.monotonic() < deadline, f"waited 600 s for {what}"
        time.sleep(0.02)


def _prov(d):
    try:
        return json.loads((d / "provenance.json").read_text())
    except (OSError, ValueError):
        return None


def _assert_interrupted_and_resumable(proc, d):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # (a warning about the size of the run may precede it)
    assert last.startswith("trajmc: interrupted") and last.endswith(f"--resume {d}"), err
    prov = json.loads((d / "provenance.json").read_text())
    assert prov["status"] == "running"
    with pytest.raises(trajmc.RunError, match="incomplete"):
        trajmc.load_run(d)
    plan, acc, _ = rundir._read(d, allow_partial=True)  # the checkpoint: exactly its chunks_done chunks
    done = acc.chunks_done
    assert done == prov["chunking"]["chunks_done"] < plan.n_chunks
    assert np.all(acc.sys2.reshape(plan.n_t, -1).sum(axis=1) == done * plan.chunk_size)
    assert np.all(acc.counts.sum(axis=1) == done * plan.chunk_size)
    assert np.all(acc.jumps[:done] > 0) and np.all(acc.jumps[done:] == 0)
    w, _ = rundir.RunWriter.resume(d)  # ... and it can be resumed (not run here: it would take hours)
    assert w.acc.chunks_done == done
    return done


@pytest.mark.regression
@pytest.mark.filterwarnings("ignore:trajmc. the run will make")
def test_sigint_between_many_chunks_then_resumable(tmp_path):
    """~1e6 chunks of 1e5 trajectories (an hour or more): SIGINT once the first checkpoint with finished
    chunks is on disk."""
    f = _model_file(tmp_path, get_model_dict("two_baths"))
    d = tmp_path / "ctrlc"
    proc = subprocess.Popen([sys.executable, "-m", "trajmc", "simulate", str(f), "--trajectories", "1e11",
                             "--chunk-size", "1e5", "--max-jumps", "1e13", "--threads", str(THREADS), "--out", str(d),
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(proc, lambda: (_prov(d) or {}).get("chunking", {}).get("chunks_done", 0) > 0,
                  "a checkpoint with finished chunks")
        proc.send_signal(signal.SIGINT)
        assert _assert_interrupted_and_resumable(proc, d) > 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.regression
@pytest.mark.filterwarnings("ignore:trajmc. the run will make")
def test_sigterm_inside_an_hours_long_chunk_then_resumable(tmp_path):
    """Every trajectory makes ~1e12 jumps: SIGTERM lands inside a chunk (or before the first one) and must
    stop it; the default run directory (no --out) is named in the resume hint."""
    md = get_model_dict("qubit_osc_sqrt")
    md["baths"][0]["kernel"]["gamma"] = 1e12  # ~1.3e12 jumps per trajectory to t = 1
    md["times"] = {"values": [0.0, 1.0]}
    f = _model_file(tmp_path, md)
    assert engine.make_plan(md, trajectories=4, chunk_size=1, max_jumps=1e15).expected_jumps > 4e12
    proc = subprocess.Popen([sys.executable, "-m", "trajmc", "simulate", str(f), "--trajectories", "4",
                             "--chunk-size", "1", "--max-jumps", "1e15", "--threads", str(THREADS), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        runs = tmp_path / "runs"
        _wait_for(proc, lambda: runs.is_dir() and any((p / "provenance.json").is_file() for p in runs.iterdir()),
                  "the run directory")
        d = Path("runs") / next(runs.iterdir()).name
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 130, err
        lines = err.strip().splitlines()
        assert "Traceback" not in err and len(lines) == 2, err
        assert lines[0].startswith("trajmc: the run will make ~")  # the size warning: one line
        assert lines[1].startswith("trajmc: interrupted") and lines[1].endswith(f"--resume {d}"), err
        with pytest.raises(trajmc.RunError, match="incomplete"):
            trajmc.load_run(tmp_path / d)
        plan, acc, _ = rundir._read(tmp_path / d, allow_partial=True)
        assert acc.chunks_done == 0 and acc.sys2.sum() == 0 and acc.jumps.sum() == 0  # no chunk could finish
        rundir.RunWriter.resume(tmp_path / d)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# --------------------------------------------------------------------------- the optional cluster extra

HINT = "pip install 'trajmc[cluster]'"


@pytest.fixture
def without_dask(monkeypatch):
    """As if dask and distributed were not installed: importing them fails (sys.modules entries of None)."""
    for name in ("dask", "distributed"):
        monkeypatch.setitem(sys.modules, name, None)


def test_dask_backend_without_the_extra_is_one_line(without_dask, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "r"
    for argv in (["simulate", "--example", EXAMPLE, "--backend", "dask", "--out", d],
                 ["simulate", "--example", EXAMPLE, "--workers", 2, "--out", d],
                 ["simulate", "--example", EXAMPLE, "--scheduler", "tcp://127.0.0.1:1", "--out", d],
                 ["validate", "--example", EXAMPLE, "--workers", 2, "--out", d],
                 ["simulate", "--resume", d, "--backend", "dask"]):
        err = assert_bad_input(argv, capsys, match=HINT)
        assert "dask" in err and "distributed" in err
    assert _files(tmp_path) == []  # refused before anything was written
    with pytest.raises(trajmc.TrajmcError, match=HINT.replace("[", r"\[").replace("]", r"\]")):
        trajmc.simulate(trajmc.get_example(EXAMPLE), trajectories=100, backend="dask", out=d)
    assert not d.exists()


def test_everything_else_works_without_dask(without_dask, tmp_path, capsys):
    d = tmp_path / "r"
    assert cli(["simulate", "--example", EXAMPLE, "--trajectories", 500, "--backend", "threads", "--out", d,
                "--quiet"]) == 0
    assert cli(["validate", d, "--alpha", ALPHA, "--quiet"]) == 0
    assert cli(["analyze", d, "--quiet"]) == 0
    assert cli(["solve", "--example", EXAMPLE, "--quiet"]) == 0
    assert cli(["examples"]) == 0


_NO_DASK = """
import sys

class NoDask:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("dask", "distributed"):
            raise ImportError(f"No module named {name!r} (blocked by the test)", name=name)

sys.meta_path.insert(0, NoDask())
import trajmc
from trajmc.cli import main

for argv in (["examples"], ["solve", "--example", sys.argv[1], "--quiet"],
             ["simulate", "--example", sys.argv[1], "--trajectories", "500", "--out", sys.argv[2], "--quiet"],
             ["validate", sys.argv[2], "--alpha", "1e-6", "--quiet"], ["analyze", sys.argv[2], "--quiet"]):
    rc = main(argv)
    assert rc == 0, (argv, rc)
rc = main(["simulate", "--example", sys.argv[1], "--workers", "2", "--quiet"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed"))
print("rc", rc, "loaded", loaded)
"""


def test_a_fresh_interpreter_without_dask(tmp_path):
    """``import trajmc`` and every command but the Dask backend, in a process where dask cannot be imported."""
    r = subprocess.run([sys.executable, "-c", _NO_DASK, EXAMPLE, str(tmp_path / "r")], capture_output=True,
                       text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "rc 2 loaded []"
    assert r.stderr.strip().splitlines()[-1].startswith("trajmc: error: backend:") and HINT in r.stderr
    trajmc.load_run(tmp_path / "r")


# --------------------------------------------------------------------------- progress of the commands


@pytest.fixture
def status_at_every_update(monkeypatch):
    """Status lines at every update (interval 0) so that short work shows them (stderr is not a terminal)."""
    import functools

    from trajmc import analyze, progress, simulation, solver, validate

    fast = functools.partial(progress.Progress, interval=0.0, heartbeat=False)
    for mod in (simulation, solver, validate, analyze):
        monkeypatch.setattr(mod, "Progress", fast)


def test_commands_report_progress_unless_quiet(status_at_every_update, tmp_path, capsys):
    d = tmp_path / "r"
    name = trajmc.get_example(EXAMPLE)["name"]
    for argv, what in ((["simulate", "--example", EXAMPLE, "--trajectories", 2000, "--chunk-size", 500, "--out", d],
                        f"simulate {name} (enumerated): 4/4 chunks (100%)"),
                       (["validate", d, "--alpha", ALPHA], "validate ("),
                       (["analyze", d], "analyze (exchange FT): 5/5 steps (100%)"),
                       (["solve", "--example", EXAMPLE], f"solve {name}: ")):
        assert cli(argv) in (0, 1)
        out, err = capsys.readouterr()
        assert what in err, (argv, err)
        assert what not in out  # progress goes to stderr only
        quiet_dir = tmp_path / f"q-{argv[0]}"
        q = [a if a != d or argv[0] != "simulate" else quiet_dir for a in argv]
        assert cli([*q, "--quiet"]) in (0, 1)
        assert capsys.readouterr().err == "", argv


def test_import_loads_neither_dask_nor_matplotlib():
    """``import trajmc`` and the command line's module leave the optional and the slow packages unloaded."""
    code = ("import sys, trajmc, trajmc.cli; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'dask', 'distributed', 'matplotlib'}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
