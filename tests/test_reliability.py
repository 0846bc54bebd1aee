"""Reliability under bad input, concurrency and damage (issue 14): one-line errors naming the key, nothing
written on rejection, a locked run directory, leftovers of killed runs, symlinked output directories.

Every test here failed before its fix (the comment above each group says how).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from conftest import TABLE_LNV, get_model_dict

import trajmc
from trajmc import model as model_mod
from trajmc.cli import main

BASE = "qubit_osc_sqrt"
EXAMPLE = "qubit-linear-exact"  # 2 levels x 21 bath energies: fast on both paths


def cli(argv):
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


def model_error(source):
    """load_model(source) raises a one-line ModelError; its message."""
    with pytest.raises(trajmc.ModelError) as info:
        trajmc.load_model(source)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip()
    return info.value


def _files(d: Path):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def _table_model(tmp_path, fname):
    d = get_model_dict("qubit_table_sqrt")
    d["baths"][0]["dos"] = {"model": "table", "file": fname}
    f = tmp_path / "m.toml"
    f.write_text(tomli_w.dumps(d))
    return f


# --------------------------------------------------------------------------- bad input: tracebacks before
# (UnicodeDecodeError, _csv.Error, RecursionError, ValueError/OverflowError from huge integers)


def test_non_utf8_table_file(tmp_path, capsys):
    (tmp_path / "dos.csv").write_bytes(b"E,lnV\n0,0.0\n1,\xff\xfe\n")
    f = _table_model(tmp_path, "dos.csv")
    exc = model_error(f)
    assert exc.key == "baths[0].dos.file" and "UTF-8" in str(exc)
    assert_bad_input(["simulate", f, "--out", tmp_path / "r", "--quiet"], capsys, match="baths[0].dos.file")
    assert not (tmp_path / "r").exists()


def test_csv_field_over_the_csv_limit(tmp_path, capsys):
    (tmp_path / "dos.csv").write_text('E,lnV\n0,"' + "1" * 200_000 + '"\n')
    f = _table_model(tmp_path, "dos.csv")
    exc = model_error(f)
    assert exc.key == "baths[0].dos.file" and "CSV" in str(exc) and len(str(exc)) < 400
    assert_bad_input(["simulate", f, "--out", tmp_path / "r", "--quiet"], capsys, match="baths[0].dos.file")
    assert not (tmp_path / "r").exists()


def test_table_file_that_is_not_a_regular_file(tmp_path):
    (tmp_path / "dir.csv").mkdir()
    assert "not a regular file" in str(model_error(_table_model(tmp_path, "dir.csv")))
    os.mkfifo(tmp_path / "fifo.csv")  # reading it would block forever
    assert "not a regular file" in str(model_error(_table_model(tmp_path, "fifo.csv")))


def test_table_file_with_too_many_rows_or_bytes(tmp_path, monkeypatch):
    (tmp_path / "dos.csv").write_text("\n".join(repr(v) for v in TABLE_LNV * 3) + "\n")
    f = _table_model(tmp_path, "dos.csv")
    trajmc.load_model(f)
    monkeypatch.setattr(model_mod, "MAX_ENERGY", 50)  # a table longer than any grid is not read to its end
    assert "more than 51 lnV rows" in str(model_error(f))
    monkeypatch.setattr(model_mod, "MAX_FILE_BYTES", 100)
    assert "too large" in str(model_error(f))


def test_inline_lnv_longer_than_any_grid(monkeypatch):
    d = get_model_dict("qubit_table_sqrt")
    monkeypatch.setattr(model_mod, "MAX_ENERGY", 30)
    assert model_error(d).key == "baths[0].dos.lnV"


def _nested(depth, leaf=0):
    x = leaf
    for _ in range(depth):
        x = [x]
    return x


@pytest.mark.parametrize("depth", [17, 1000, 100_000])
def test_dict_nested_deep(depth):
    d = get_model_dict(BASE)
    d["system"]["energies"] = _nested(depth)
    exc = model_error(d)
    assert exc.key.startswith("system.energies[0]") and "nested more than 16 deep" in str(exc)


def test_dict_containing_itself():
    d = get_model_dict(BASE)
    loop = []
    loop.append(loop)
    d["system"]["energies"] = loop
    assert model_error(d).key.startswith("system.energies")
    d = get_model_dict(BASE)
    d["initial"]["me"] = d
    assert model_error(d).key.startswith("initial.me")


def test_shared_substructures_are_fine():
    d = get_model_dict("two_baths")
    d["initial"]["baths"] = [{"state": "canonical", "beta": 1.5}] * 2  # one dict, twice (as in the README)
    trajmc.load_model(d)
    wide = [[0.0] * 3] * 3  # a wide DAG walked once
    d = get_model_dict(BASE)
    d["simulation"] = {"x": [wide] * 1000}
    assert model_error(d).key == "simulation.x"  # the unknown key, not the walk


def test_toml_nested_1000_deep(tmp_path, capsys):
    f = tmp_path / "deep.toml"
    src = trajmc.load_model(get_model_dict(BASE)).to_toml()
    assert "energies = [\n    0,\n    1,\n]" in src
    f.write_text(src.replace("energies = [\n    0,\n    1,\n]", "energies = " + "[" * 1000 + "]" * 1000))
    text = f.read_text()
    assert "[" * 1000 in text
    exc = model_error(f)
    assert exc.key == "system.energies" and "nested more than 16 deep" in str(exc)
    assert_bad_input(["simulate", f, "--out", tmp_path / "r", "--quiet"], capsys, match="system.energies")
    assert not (tmp_path / "r").exists()
    f.write_text('name = "x"\n[system]\nenergies = ' + "[" * 100 + "]" * 100 + "\n")  # parses, too deep
    assert model_error(f).key.startswith("system.energies[0]")
    # arrays of tables get their index, also in their sub-tables
    f.write_text(src.replace("emax = ", "emax = " + "[" * 1000 + "]" * 1000 + "\nx = ", 1))
    assert model_error(f).key == "baths[0].emax"
    f.write_text(src.replace("n = 6", "n = " + "[" * 1000 + "]" * 1000, 1))
    assert model_error(f).key == "baths[0].dos.n"


def test_toml_integer_too_long_to_convert(tmp_path):
    f = tmp_path / "big.toml"
    f.write_text(trajmc.load_model(get_model_dict(BASE)).to_toml().replace("emax = 60", "emax = " + "9" * 5000))
    exc = model_error(f)
    assert exc.key == "baths[0].emax" and "too long" in str(exc)


HUGE = [
    (("baths", 0, "emax"), 10**5000, "baths[0].emax"),
    (("times",), {"stop": 10**5000}, "times.stop"),
    (("simulation",), {"seed": 10**5000}, "simulation.seed"),
    (("simulation",), {"trajectories": 10**5000}, "simulation.trajectories"),
    (("simulation",), {"trajectories": 2**63}, "simulation.trajectories"),
    (("simulation",), {"chunk_size": 1e19}, "simulation.chunk_size"),
    (("simulation",), {"max_jumps": 10**400}, "simulation.max_jumps"),
    (("system", "coupling"), [[0, 10**400], [10**400, 0]], "system.coupling[0][1]"),
]


@pytest.mark.parametrize("path,value,key", HUGE, ids=[k for _, _, k in HUGE])
def test_huge_numbers_name_their_key(path, value, key):
    d = get_model_dict(BASE)
    cur = d
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    exc = model_error(d)
    assert exc.key == key and len(str(exc)) < 300, str(exc)


def test_huge_counts_through_the_api_and_the_cli(tmp_path, capsys):
    md = get_model_dict(BASE)
    for kw, key in (({"trajectories": 10**30}, "trajectories"), ({"chunk_size": 10**19}, "chunk_size"),
                    ({"seed": 10**5000}, "seed"), ({"trajectories": 10**5000}, "trajectories")):
        with pytest.raises(trajmc.ModelError) as info:
            trajmc.simulate(md, out=tmp_path / "r", **kw)
        assert info.value.key == key and len(str(info.value)) < 300
    assert not (tmp_path / "r").exists()
    f = tmp_path / "m.toml"
    md["simulation"] = {"chunk_size": 1e19}
    f.write_text(tomli_w.dumps(md))
    assert_bad_input(["simulate", f, "--out", tmp_path / "r", "--quiet"], capsys, match="simulation.chunk_size")
    for args in (["--trajectories", "1e19"], ["--chunk-size", "1e19"], ["--trajectories", "9" * 5000],
                 ["--seed", "9" * 5000], ["--max-jumps", "9" * 5000]):
        line = assert_bad_input(["simulate", "--example", EXAMPLE, "--out", tmp_path / "r", "--quiet", *args], capsys)
        assert len(line) < 300 and args[0][2:] in line, line
    assert not (tmp_path / "r").exists()


def test_a_100kb_unknown_key_is_not_echoed_in_full(tmp_path, capsys):
    d = get_model_dict(BASE)
    d["x" * 100_000] = 1
    d["system"]["y" * 100_000] = 1
    assert len(str(model_error(d))) < 300
    d = get_model_dict(BASE)
    d["system"]["k\n" * 50_000] = 1  # not an identifier: quoted, still short and one line
    assert len(str(model_error(d))) < 300
    d = get_model_dict(BASE)
    d["baths"][0]["dos"]["model"] = "z" * 100_000  # a long value
    assert len(str(model_error(d))) < 300
    f = tmp_path / "m.toml"
    d = get_model_dict(BASE)
    d["q" * 100_000] = 1
    f.write_text(tomli_w.dumps(d))
    line = assert_bad_input(["solve", f], capsys)
    assert len(line) < 300


# --------------------------------------------------------------------------- names: hidden run directories


@pytest.mark.parametrize("name,fragment", [(".hidden", "'.'"), ("..", "'.'"), (".", "'.'"), ("a" * 101, "100"),
                                           ("line\nbreak", "control"), ("tab\there", "control"), ("", "non-empty")])
def test_bad_model_names(name, fragment):
    d = get_model_dict(BASE)
    d["name"] = name
    exc = model_error(d)
    assert exc.key == "name" and fragment in str(exc)


def test_hidden_name_writes_nothing(tmp_path, capsys):
    d = get_model_dict(BASE)
    d["name"] = ".secret"
    f = tmp_path / "m.toml"
    f.write_text(tomli_w.dumps(d))
    assert_bad_input(["simulate", f, "--quiet"], capsys, match="name")
    assert _files(tmp_path) == ["m.toml"]


def test_unicode_names_are_fine():
    d = get_model_dict(BASE)
    d["name"] = "qubit é 量子 run-1"
    assert trajmc.load_model(d).name == d["name"]


# --------------------------------------------------------------------------- the table-file path policy


def test_table_file_policy(tmp_path, monkeypatch):
    """Relative to the model file; absolute paths and symbolic links are followed; the numbers are copied
    into the resolved model, so a run does not depend on the file afterwards."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "dos.csv").write_text("\n".join(repr(v) for v in TABLE_LNV) + "\n")
    sub = tmp_path / "models"
    sub.mkdir()
    (sub / "link.csv").symlink_to(shared / "dos.csv")
    inline = trajmc.load_model(get_model_dict("qubit_table_sqrt")).baths[0].lnV
    for fname in ("../shared/dos.csv", str(shared / "dos.csv"), "link.csv"):
        m = trajmc.load_model(_table_model(sub, fname))
        np.testing.assert_array_equal(m.baths[0].lnV, inline)
        assert m.to_dict()["baths"][0]["dos"] == {"model": "table", "lnV": [float(x) for x in TABLE_LNV]}
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    trajmc.simulate(_table_model(sub, "link.csv"), trajectories=200, seed=1, out=run)
    (shared / "dos.csv").unlink()
    assert trajmc.load_run(run).stats["trajectories"] == 200  # self-contained
