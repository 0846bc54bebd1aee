"""Command line (INTERFACE.md): ``python -m trajmc simulate | examples | solve`` and its error contract.

Bad input: exit status 2 and one line on stderr, never a traceback, nothing written.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w

import trajmc
from trajmc import engine, runio
from trajmc.cli import build_parser, main

from conftest import get_model_dict


def cli(argv):
    """``main(argv)`` -> exit status (argparse errors exit through SystemExit)."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code


def assert_bad_input(argv, capsys, match=None):
    rc = cli(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    if match is not None:
        assert match in lines[0], lines[0]
    return lines[0]


def _files(d: Path):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


# --------------------------------------------------------------------------- simulate


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "run"
    rc = main(["simulate", "--example", "qubit-linear-exact", "--trajectories", "2000", "--out", str(d), "--quiet"])
    assert rc == 0
    return d


def test_simulate_writes_run_directory(cli_run):
    d = cli_run
    for name in ("model.toml", "provenance.json", "estimates.csv", "estimates.parquet", "accumulators.npz",
                 "figures/summary.png"):
        assert (d / name).is_file(), name
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
    m = tomllib.loads((d / "model.toml").read_text())
    assert m["name"] == "qubit-linear-exact" and m["simulation"]["trajectories"] == 2000


def test_cli_run_equals_python_api(cli_run):
    run = trajmc.load_run(cli_run)
    ens = trajmc.simulate(trajmc.get_example("qubit-linear-exact"), trajectories=2000, seed=4, threads=1, paths=5)
    for f in ("counts", "cross", "heat", "jumps", "path_t", "path_x", "path_len"):
        np.testing.assert_array_equal(getattr(run.acc, f), getattr(ens.acc, f), err_msg=f)
    np.testing.assert_array_equal(run.records["x"], ens.records["x"])
    assert run.stats["jumps"] == ens.stats["jumps"]


def test_simulate_prints_summary(tmp_path, capsys):
    d = tmp_path / "loud"
    assert cli(["simulate", "--example", "qubit-linear-exact", "--trajectories", "500", "--seed", "9",
                "--threads", "1", "--chunk-size", "100", "--out", d]) == 0
    out = capsys.readouterr().out
    assert "500 trajectories" in out and "5 chunks" in out and str(d) in out and "S_obs" in out
    assert json.loads((d / "provenance.json").read_text())["seed"]["entropy"] == "9"


def test_simulate_model_file(tmp_path, capsys):
    f = tmp_path / "m.toml"
    md = get_model_dict("qubit_osc_sqrt")
    md["simulation"] = {"trajectories": 700, "seed": 21}
    f.write_text(tomli_w.dumps(md))
    assert cli(["simulate", f, "--out", tmp_path / "r", "--quiet"]) == 0
    run = trajmc.load_run(tmp_path / "r")
    assert run.stats["trajectories"] == 700 and run.stats["seed_entropy"] == 21


def test_simulate_resume_in_process(tmp_path, capsys):
    d = tmp_path / "part"
    md = trajmc.get_example("qubit-linear-exact")
    plan = engine.make_plan(md, trajectories=3000, seed=4, chunk_size=500, paths=5)
    w = runio.RunWriter.create(d, plan)
    engine.run_plan(plan, w.acc, 1, stop_after=2)
    w.checkpoint(w.acc)
    err = assert_bad_input(["simulate", "--resume", d, "--seed", 3], capsys)
    assert "--resume" in err
    assert cli(["simulate", "--resume", d, "--quiet", "--threads", 2]) == 0
    full = trajmc.simulate(md, trajectories=3000, seed=4, chunk_size=500, paths=5, threads=1)
    np.testing.assert_array_equal(trajmc.load_run(d).counts, full.counts)
    assert_bad_input(["simulate", "--resume", d, "--quiet"], capsys, match="already complete")


# --------------------------------------------------------------------------- examples, solve


def test_examples_lists_names(capsys):
    assert cli(["examples"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.strip().splitlines()]
    assert len(names) >= 4
    assert set(names) == set(trajmc.list_examples())
    for n in names:
        trajmc.load_model(trajmc.get_example(n))


def test_solve_prints_table(capsys):
    assert cli(["solve", "--example", "qubit-oscillators"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    for c in ("S_obs", "Sigma", "Sigma_tilde", "E_S"):
        assert c in lines[0]
    rows = [ln for ln in lines if ln.strip()[:1].isdigit()]
    assert len(rows) >= 5
    first = rows[0].split()
    assert float(first[0]) == 0.0 and float(first[2]) == 0.0  # t = 0: Sigma = 0


def test_solve_csv(tmp_path, capsys):
    f = tmp_path / "sol.csv"
    assert cli(["solve", "--example", "qubit-linear-exact", "--csv", f]) == 0
    import pandas as pd

    th = pd.read_csv(f, index_col=0)
    ex = trajmc.solve(trajmc.get_example("qubit-linear-exact")).thermo()
    np.testing.assert_allclose(th["S_obs"], ex["S_obs"], rtol=1e-12)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("argv, match", [
    (["simulate", "--example", "qubit-linear-exact", "--trajectories", "0"], "--trajectories"),
    (["simulate", "--example", "qubit-linear-exact", "--trajectories", "abc"], "abc"),
    (["simulate", "--example", "qubit-linear-exact", "--trajectories", "-5"], "--trajectories"),
    (["simulate", "--example", "qubit-linear-exact", "--threads", "0"], "--threads"),
    (["simulate", "--example", "qubit-linear-exact", "--threads", "100000"], "threads"),
    (["simulate", "--example", "qubit-linear-exact", "--seed", "-1"], "--seed"),
    (["simulate", "--example", "qubit-linear-exact", "--chunk-size", "0"], "--chunk-size"),
    (["simulate", "--example", "nosuch"], "nosuch"),
    (["simulate", "--bogus"], "--bogus"),
    (["nosuchcommand"], None),
    ([], None),
])
def test_bad_arguments(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written, not even a default runs/ directory
    assert_bad_input(argv, capsys, match)
    assert _files(tmp_path) == []


def test_missing_model_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_bad_input(["simulate", "nosuch.toml", "--quiet"], capsys, match="nosuch.toml")
    assert _files(tmp_path) == []


@pytest.mark.parametrize("edit, key", [
    (lambda m: m.__setitem__("colour", "red"), "colour"),
    (lambda m: m["baths"][0]["kernel"].__setitem__("gama", 1.0), "gama"),
    (lambda m: m["baths"][0]["kernel"].__setitem__("gamma", -1.0), "gamma"),
    (lambda m: m["system"].__setitem__("energies", [0, 0.5]), "energies"),
])
def test_invalid_model_file(tmp_path, capsys, monkeypatch, edit, key):
    md = get_model_dict("qubit_osc_sqrt")
    edit(md)
    f = tmp_path / "bad.toml"
    f.write_text(tomli_w.dumps(md))
    monkeypatch.chdir(tmp_path)
    err = assert_bad_input(["simulate", f, "--quiet"], capsys)
    assert key in err
    assert _files(tmp_path) == ["bad.toml"]
    assert_bad_input(["solve", f], capsys, match=key)


def test_not_toml(tmp_path, capsys):
    f = tmp_path / "bad.toml"
    f.write_text("this is [not toml")
    assert_bad_input(["simulate", f, "--quiet", "--out", tmp_path / "r"], capsys, match="TOML")
    assert not (tmp_path / "r").exists()


def test_out_non_empty_directory(tmp_path, capsys):
    d = tmp_path / "busy"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    assert_bad_input(["simulate", "--example", "qubit-linear-exact", "--trajectories", "100", "--out", d,
                      "--quiet"], capsys, match="not empty")
    assert _files(d) == ["notes.txt"]
    assert (d / "notes.txt").read_text() == "keep me"


def test_out_existing_run_is_not_overwritten(cli_run, capsys):
    before = {p: p.read_bytes() for p in cli_run.rglob("*") if p.is_file()}
    assert_bad_input(["simulate", "--example", "qubit-linear-exact", "--trajectories", "100", "--out", cli_run,
                      "--quiet"], capsys)
    assert {p: p.read_bytes() for p in cli_run.rglob("*") if p.is_file()} == before


def test_resume_of_non_run_directory(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("x")
    assert_bad_input(["simulate", "--resume", tmp_path, "--quiet"], capsys, match="not a trajmc run directory")
    assert_bad_input(["simulate", "--resume", tmp_path / "nowhere", "--quiet"], capsys)
    assert _files(tmp_path) == ["x.txt"]


def test_model_and_example_together(tmp_path, capsys):
    f = tmp_path / "m.toml"
    f.write_text(tomli_w.dumps(get_model_dict("qubit_osc_sqrt")))
    assert_bad_input(["simulate", f, "--example", "two-baths", "--quiet", "--out", tmp_path / "r"], capsys)
    assert not (tmp_path / "r").exists()


def test_parser_lists_subcommands():
    text = build_parser().format_help()
    for c in ("simulate", "validate", "analyze", "examples", "solve"):
        assert c in text


# --------------------------------------------------------------------------- as a program


def test_subprocess_simulate_and_bad_input(tmp_path):
    d = tmp_path / "sp"
    r = subprocess.run([sys.executable, "-m", "trajmc", "simulate", "--example", "qubit-linear-exact",
                        "--trajectories", "2000", "--out", str(d), "--quiet"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    run = trajmc.load_run(d)
    assert run.stats["trajectories"] == 2000
    r = subprocess.run([sys.executable, "-m", "trajmc", "simulate", "--example", "qubit-linear-exact",
                        "--trajectories", "abc"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "trajmc", "simulate", "--resume", str(tmp_path / "nowhere")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
