"""Reliability under bad input, concurrency and damage (issue 14): one-line errors naming the key, nothing
written on rejection, a locked run directory, leftovers of killed runs, symlinked output directories.

Every test here failed before its fix (the comment above each group says how).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from conftest import TABLE_LNV, assert_bad_input, cli, get_model_dict

import trajmc
from trajmc import model as model_mod

BASE = "qubit_osc_sqrt"
EXAMPLE = "qubit-linear-exact"  # 2 levels x 21 bath energies: fast on both paths



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
    assert "energies = [0, 1]" in src  # short arrays on one line (model.toml's layout)
    f.write_text(src.replace("energies = [0, 1]", "energies = " + "[" * 1000 + "]" * 1000))
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


# --------------------------------------------------------------------------- the run-directory lock
# (before: two `simulate --out D` started together both exited 0; D held one run, or a mixture)


def _python(code, *args, **kw):
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


HOLDER = ("import sys\nfrom trajmc.runlock import RunLock\nlock = RunLock(sys.argv[1]).acquire()\n"
          "print('locked', flush=True)\nsys.stdin.read()\nlock.release()\n")


def _wait_for(proc, cond, what, deadline_s=600):
    """Poll until ``cond()`` (the process must still run); the deadline only guards against a hung test."""
    deadline = time.monotonic() + deadline_s
    while not cond():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended (status {proc.returncode}) before {what}:\n{err}")
        assert time.monotonic() < deadline, f"waited {deadline_s} s for {what}"
        time.sleep(0.02)


def _snapshot(d: Path):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("done") / "run"
    assert cli(["simulate", "--example", EXAMPLE, "--trajectories", "2000", "--seed", "3", "--out", d,
                "--quiet"]) == 0
    assert not (d / ".lock").exists()  # released (and removed) at the end
    return d


def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_a_second_writer_is_refused_while_one_holds_the_lock(complete_run, tmp_path, capsys):
    d = _copy_run(complete_run, tmp_path / "run")
    before = _snapshot(d)
    holder = _python(HOLDER, d)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for argv in (["analyze", d], ["validate", d], ["simulate", "--resume", d],
                     ["simulate", "--example", EXAMPLE, "--out", d, "--overwrite", "--quiet"]):
            line = assert_bad_input(argv, capsys, match="in use by another trajmc process")
            assert f"pid {holder.pid} on {socket.gethostname()}" in line, line
        with pytest.raises(trajmc.RunError, match="in use"):
            trajmc.simulate(get_model_dict(BASE), trajectories=10, out=d, overwrite=True)
        after = _snapshot(d)
        assert set(after) == set(before) | {".lock"}
        assert all(after[k] == before[k] for k in before)  # nothing written
    finally:
        holder.communicate("")
    assert holder.returncode == 0
    assert not (d / ".lock").exists()
    assert cli(["analyze", d, "--quiet"]) == 0  # free again


def test_another_thread_of_the_same_process_is_refused(complete_run, tmp_path):
    import threading

    from trajmc.rundir import locked

    d = _copy_run(complete_run, tmp_path / "run")
    seen = []
    with locked(d), locked(d):  # reentrant in one thread
        def other():
            try:
                with locked(d):
                    seen.append("got it")
            except trajmc.RunError as exc:
                seen.append(str(exc))
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(seen) == 1 and "in use" in seen[0]
    assert not (d / ".lock").exists()


LONG = ["--trajectories", "1e11", "--chunk-size", "1e5", "--max-jumps", "1e13", "--threads", "1", "--quiet"]


def _long_run(tmp_path, d):
    f = tmp_path / "m.toml"
    f.write_text(tomli_w.dumps(get_model_dict("two_baths")))
    proc = subprocess.Popen([sys.executable, "-m", "trajmc", "simulate", str(f), "--out", str(d), "--seed", "5", *LONG],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(proc, lambda: (d / "provenance.json").is_file(), "the first checkpoint")
    return f, proc


@pytest.mark.filterwarnings("ignore:trajmc. the run will make")
def test_two_simulates_into_one_directory(tmp_path):
    """A long run writes D; a second `simulate --out D` (and --resume, analyze) started meanwhile is refused with
    exit 2 and one line; the first run's directory is untouched and resumable."""
    d = tmp_path / "D"
    f, first = _long_run(tmp_path, d)
    try:
        for args in (["simulate", f, "--out", d, "--seed", "6", "--trajectories", "100", "--quiet"],
                     ["simulate", f, "--out", d, "--overwrite", "--trajectories", "100", "--quiet"],
                     ["simulate", "--resume", d, "--quiet"], ["analyze", d]):
            r = subprocess.run([sys.executable, "-m", "trajmc", *map(str, args)], capture_output=True, text=True,
                               timeout=300)
            assert r.returncode == 2, r.stderr
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and "in use by another trajmc process" in lines[0], r.stderr
            assert f"pid {first.pid} on {socket.gethostname()}" in lines[0]
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=300)
        assert first.returncode == 130, err
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    prov = json.loads((d / "provenance.json").read_text())
    assert prov["seed"]["entropy"] == "5" and "--seed" in prov["command"]  # the first run's
    assert not (d / ".lock").exists()
    w, _ = trajmc.rundir.RunWriter.resume(d)
    w.close()


@pytest.mark.filterwarnings("ignore:trajmc. the run will make")
def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path):
    d = tmp_path / "D"
    _, proc = _long_run(tmp_path, d)
    pid = proc.pid
    proc.kill()  # SIGKILL: no cleanup, the lock file stays
    proc.communicate()
    rec = json.loads((d / ".lock").read_text())
    assert rec["pid"] == pid and rec["host"] == socket.gethostname()
    with pytest.warns(UserWarning, match=f"took over the lock left by pid {pid} on"):
        w, _ = trajmc.rundir.RunWriter.resume(d)
    assert json.loads((d / ".lock").read_text())["pid"] == os.getpid()
    w.close()
    assert not (d / ".lock").exists()


def test_stale_lock_recorded_by_another_host_is_taken_over(complete_run, tmp_path, capsys):
    """No process holds its flock (the kernel drops it with its process), so it is stale whatever it records."""
    d = _copy_run(complete_run, tmp_path / "run")
    (d / ".lock").write_text(json.dumps({"pid": 4242, "host": "elsewhere.example", "command": "trajmc simulate"}))
    assert cli(["analyze", d, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "took over the lock left by pid 4242 on elsewhere.example" in err and len(err.strip().splitlines()) == 1
    assert not (d / ".lock").exists()


class _NoFlock:
    """fcntl on a file system without flock (NFS without lockd, some FUSE mounts)."""

    LOCK_EX, LOCK_NB = 2, 4

    @staticmethod
    def flock(fd, op):
        import errno

        raise OSError(errno.ENOLCK, "No locks available")


def test_without_flock_the_record_decides(complete_run, tmp_path, monkeypatch, capsys):
    from trajmc import runlock

    monkeypatch.setattr(runlock, "fcntl", _NoFlock)
    d = _copy_run(complete_run, tmp_path / "run")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)  # a process of this host that has ended
    host = socket.gethostname()
    (d / ".lock").write_text(json.dumps({"pid": dead, "host": host}))
    with pytest.warns(UserWarning, match=f"took over the lock left by pid {dead}"):
        with runlock.run_lock(d):
            assert json.loads((d / ".lock").read_text())["pid"] == os.getpid()
    assert not (d / ".lock").exists()
    sleeper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        (d / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": host}))
        assert_bad_input(["analyze", d], capsys, match=f"in use by another trajmc process (pid {sleeper.pid}")
    finally:
        sleeper.communicate(b"")
    (d / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere.example"}))
    line = assert_bad_input(["analyze", d], capsys, match="elsewhere.example")
    assert "remove" in line and ".lock" in line
    (d / ".lock").unlink()
    assert cli(["analyze", d, "--quiet"]) == 0  # O_EXCL lock, released and removed
    assert not (d / ".lock").exists()


def test_lock_file_that_is_a_symlink_is_not_followed(complete_run, tmp_path, capsys):
    d = _copy_run(complete_run, tmp_path / "run")
    target = tmp_path / "elsewhere.txt"
    target.write_text("precious")
    (d / ".lock").symlink_to(target)
    assert_bad_input(["analyze", d], capsys, match="symbolic link")
    assert target.read_text() == "precious"


# --------------------------------------------------------------------------- leftovers and --overwrite
# (before: temporary files of a killed checkpoint write stayed for good; a directory left by a run killed before its
# first checkpoint could be neither resumed nor reused)

SIM = ["--example", EXAMPLE, "--trajectories", "4000", "--chunk-size", "500", "--seed", "9", "--records", "--quiet"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every recovery must reproduce, and how often it writes each file."""
    from trajmc import rundir

    d = tmp_path_factory.mktemp("ref") / "run"
    writes = []
    real = rundir.atomic_write

    def counting(path, write):
        writes.append(Path(path).name)
        return real(path, write)

    rundir.atomic_write = counting
    try:
        assert cli(["simulate", *SIM, "--out", d]) == 0
    finally:
        rundir.atomic_write = real
    return trajmc.load_run(d), writes


def assert_same_run(a, b):
    fa, fb = a.acc.arrays(), b.acc.arrays()
    assert set(fa) == set(fb)
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def _tmp_files(d):
    return [p for p in d.rglob("*.tmp")]


def test_resume_removes_temporary_files_of_a_killed_write(tmp_path, reference):
    from trajmc import engine, rundir

    ref, _ = reference
    d = tmp_path / "run"
    plan = ref.plan
    w = rundir.RunWriter.create(d, trajmc.simulation.plan_run(ref.model, records=True, paths=5))
    engine.run_plan(w.plan, w.acc, 1, stop_after=3, checkpoint=w.checkpoint)
    w.checkpoint(w.acc)
    w.close()
    (d / "figures").mkdir()
    for name in (".accumulators.npz.k2j4_x9a.tmp", ".records.npz.0000abcd.tmp", "figures/.summary.png.zzzzzzzz.tmp"):
        (d / name).write_bytes(b"half a file")
    (d / "notes.tmp").write_text("not one of ours")  # not named like atomic_write's files: left alone
    assert cli(["simulate", "--resume", d, "--quiet"]) == 0
    assert [p.name for p in _tmp_files(d)] == ["notes.tmp"]
    assert_same_run(trajmc.load_run(d), ref)
    assert plan.n_chunks == 8


KILLER = r'''
import os, signal, sys
from pathlib import Path
import trajmc.rundir as rd
from trajmc.cli import main
name, nth, phase = sys.argv[1], int(sys.argv[2]), sys.argv[3]
real, seen = rd.atomic_write, []

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def atomic_write(path, write):
    if Path(path).name == name:
        seen.append(path)
    if len(seen) != nth or Path(path).name != name:
        return real(path, write)
    if phase == "before":
        die()
    if phase == "tmp":  # the temporary file written in full, not yet renamed
        def write_then_die(fh):
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
            die()
        return real(path, write_then_die)
    real(path, write)
    die()

rd.atomic_write = atomic_write
sys.exit(main(sys.argv[4:]))
'''

# (file, its n-th write, when): before the rename's temporary file exists, with it written in full, after the rename
KILL_POINTS = [("model.toml", 1, "before"), ("model.toml", 1, "tmp"), ("model.toml", 1, "after"),
               ("entropy_reference.npz", 1, "tmp"), ("entropy_reference.npz", 1, "after"),
               ("records.npz", 1, "tmp"), ("accumulators.npz", 1, "tmp"), ("accumulators.npz", 1, "after"),
               ("provenance.json", 1, "tmp"), ("provenance.json", 1, "after"), ("records.npz", 2, "tmp"),
               ("accumulators.npz", 2, "tmp"), ("provenance.json", 2, "tmp"), ("accumulators.npz", 3, "after"),
               ("estimates.csv", 1, "tmp"), ("estimates.parquet", 1, "after"), ("p_system.csv", 1, "tmp"),
               ("provenance.json", 3, "tmp"), ("provenance.json", 3, "after"), ("summary.png", 1, "tmp")]
FAST_KILL_POINTS = [("model.toml", 1, "before"), ("accumulators.npz", 1, "tmp"), ("provenance.json", 2, "tmp"),
                    ("estimates.parquet", 1, "after")]


def _kill_and_recover(tmp_path, reference, point, capsys):
    ref, writes = reference
    name, nth, phase = point
    assert writes.count(name) >= nth, (point, writes)
    d = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", KILLER, name, str(nth), phase, "simulate", *SIM, "--out", str(d)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert d.is_dir()
    leftovers = sorted(p.name for p in d.iterdir())
    try:  # killed after the run was complete (only its figure missing)
        done = trajmc.load_run(d)
        how = "complete"
    except trajmc.RunError:
        rc = cli(["simulate", "--resume", d, "--quiet"])
        err = capsys.readouterr().err
        if rc == 0:
            how = "resumed"
        else:
            lines = err.strip().splitlines()  # (after the warning that the killed writer's lock was taken over)
            assert rc == 2 and "--overwrite" in lines[-1] and lines[-1].startswith("trajmc: error:"), err
            assert all("took over the lock" in x for x in lines[:-1]), err
            rc = cli(["simulate", *SIM, "--out", d])
            err = capsys.readouterr().err
            if all(n == ".lock" or n.endswith(".tmp") for n in leftovers):  # killed before its first file
                assert rc == 0, err
                how = "reused"
            else:
                assert rc == 2 and "--overwrite" in err, err  # not reused without being asked
                assert cli(["simulate", *SIM, "--out", d, "--overwrite"]) == 0
                how = "overwritten"
        done = trajmc.load_run(d)
    assert_same_run(done, ref)
    if how != "complete":
        assert _tmp_files(d) == [], _tmp_files(d)
        assert not (d / ".lock").exists()
    return how, leftovers


@pytest.mark.parametrize("point", FAST_KILL_POINTS, ids=["-".join(map(str, p)) for p in FAST_KILL_POINTS])
def test_sigkill_at_a_write_leaves_a_resumable_or_reusable_directory(tmp_path, reference, point, capsys):
    how, leftovers = _kill_and_recover(tmp_path, reference, point, capsys)
    expected = {("model.toml", 1, "before"): "reused", ("accumulators.npz", 1, "tmp"): "overwritten",
                ("provenance.json", 2, "tmp"): "resumed", ("estimates.parquet", 1, "after"): "resumed"}[point]
    assert how == expected, (how, leftovers)
    assert ".lock" in leftovers  # the killed writer's lock, stale: taken over


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS, ids=["-".join(map(str, p)) for p in KILL_POINTS])
def test_sigkill_at_every_write(tmp_path, reference, point, capsys):
    """(slow: one killed subprocess per point) whatever write the kill interrupts, the directory is complete,
    resumable, or refused with --overwrite in the message and then reused by --overwrite; the result is the
    uninterrupted run's, and no temporary file or lock is left."""
    _kill_and_recover(tmp_path, reference, point, capsys)


@pytest.mark.filterwarnings("ignore:trajmc. the run will make")
def test_sigterm_as_soon_as_the_directory_appears(tmp_path):
    """The issue's case: SIGTERM right after the run directory is created.  Creation defers the signal to its
    first checkpoint, so the directory is resumable (or, if the signal came first, was never made)."""
    d = tmp_path / "D"
    f = tmp_path / "m.toml"
    f.write_text(tomli_w.dumps(get_model_dict("two_baths")))
    proc = subprocess.Popen([sys.executable, "-m", "trajmc", "simulate", str(f), "--out", str(d), *LONG],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(proc, d.exists, "the run directory")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130 and "Traceback" not in err, err
    if d.exists():
        assert err.strip().endswith(f"--resume {d}"), err
        w, _ = trajmc.rundir.RunWriter.resume(d)
        w.close()
        assert not (d / ".lock").exists()


def test_overwrite_a_complete_run(complete_run, tmp_path, capsys):
    d = _copy_run(complete_run, tmp_path / "run")
    assert cli(["analyze", d, "--quiet"]) == 0
    assert (d / "analysis").is_dir()
    line = assert_bad_input(["simulate", "--example", EXAMPLE, "--trajectories", "500", "--out", d, "--quiet"],
                            capsys, match="holds a complete run")
    assert "--overwrite" in line
    assert cli(["simulate", "--example", EXAMPLE, "--trajectories", "500", "--seed", "4", "--out", d, "--overwrite",
                "--quiet"]) == 0
    run = trajmc.load_run(d)
    assert run.stats["trajectories"] == 500 and run.stats["seed_entropy"] == 4
    assert not (d / "analysis").exists() and not (d / "validation.md").exists()  # nothing stale from the old run
    assert (d / "figures" / "summary.png").is_file()


def test_overwrite_of_an_interrupted_run_is_explicit(tmp_path, capsys):
    from trajmc import engine, rundir

    d = tmp_path / "run"
    w = rundir.RunWriter.create(d, trajmc.simulation.plan_run(trajmc.get_example(EXAMPLE), trajectories=4000,
                                                              chunk_size=500, seed=1))
    engine.run_plan(w.plan, w.acc, 1, stop_after=2, checkpoint=w.checkpoint)
    w.checkpoint(w.acc)
    w.close()
    line = assert_bad_input(["simulate", "--example", EXAMPLE, "--out", d, "--quiet"], capsys,
                            match="interrupted run (2 of 8 chunks)")
    assert f"--resume {d}" in line and "--overwrite" in line
    assert_bad_input(["simulate", "--resume", d, "--overwrite"], capsys, match="--overwrite")  # not with --resume
    assert cli(["simulate", "--example", EXAMPLE, "--trajectories", "300", "--out", d, "--overwrite",
                "--quiet"]) == 0
    assert trajmc.load_run(d).stats["trajectories"] == 300


def test_overwrite_never_removes_what_trajmc_did_not_write(complete_run, tmp_path, capsys):
    for extra in ("notes.txt", "figures/my-plot.pdf", "analysis/sub"):
        d = _copy_run(complete_run, tmp_path / extra.replace("/", "_"))
        p = d / extra
        p.parent.mkdir(exist_ok=True)
        if extra.endswith("sub"):
            p.mkdir()
        else:
            p.write_text("mine")
        before = _snapshot(d)
        for flags in ([], ["--overwrite"]):
            line = assert_bad_input(["simulate", "--example", EXAMPLE, "--trajectories", "100", "--out", d, "--quiet",
                                     *flags], capsys, match="which trajmc did not write")
            assert extra in line
        assert _snapshot(d) == before


def test_overwrite_refused_by_a_bad_option_changes_nothing(complete_run, tmp_path, capsys):
    d = _copy_run(complete_run, tmp_path / "run")
    before = _snapshot(d)
    assert_bad_input(["simulate", "--example", EXAMPLE, "--trajectories", "100", "--engine", "implicit",
                      "--records", "--memory-budget", "1KiB", "--out", d, "--overwrite", "--quiet"], capsys,
                     match="memory_budget")
    assert _snapshot(d) == before


def test_overwrite_removes_a_symlinked_figures_dir_but_not_its_target(complete_run, tmp_path):
    d = _copy_run(complete_run, tmp_path / "run")
    import shutil

    shutil.rmtree(d / "figures")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.png").write_bytes(b"png")
    (d / "figures").symlink_to(target)
    assert cli(["simulate", "--example", EXAMPLE, "--trajectories", "100", "--out", d, "--overwrite", "--quiet"]) == 0
    assert not (d / "figures").is_symlink() and (d / "figures" / "summary.png").is_file()
    assert sorted(p.name for p in target.iterdir()) == ["keep.png"]


def test_a_directory_holding_only_leftovers_is_reused(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere.example"}))
    (d / ".model.toml.abcdefgh.tmp").write_text("half")
    with pytest.warns(UserWarning, match="took over the lock"):
        trajmc.simulate(get_model_dict(BASE), trajectories=100, seed=1, out=d)
    assert sorted(p.name for p in d.iterdir()) == ["accumulators.npz", "entropy_reference.npz", "estimates.csv",
                                                   "estimates.parquet", "model.toml", "p_system.csv",
                                                   "provenance.json"]


# --------------------------------------------------------------------------- symlinked output directories
# (before: analyze wrote its figures through a symbolic link figures/ -> anywhere)


@pytest.mark.parametrize("sub,argv", [("figures", ["analyze"]), ("analysis", ["analyze"]), ("figures", ["validate"]),
                                      ("figures", ["simulate", "--resume"])])
def test_symlinked_output_directory_is_refused(complete_run, tmp_path, capsys, sub, argv):
    import shutil

    d = _copy_run(complete_run, tmp_path / "run")  # (--resume checks its figures/ first: refused before anything)
    shutil.rmtree(d / sub, ignore_errors=True)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (d / sub).symlink_to(target)
    before = _snapshot(d)
    line = assert_bad_input([*argv, d], capsys, match="symbolic link")
    assert f"{d / sub}" in line
    assert list(target.iterdir()) == [] and _snapshot(d) == before and not (d / ".lock").exists()


def test_analyze_run_api_refuses_a_symlinked_analysis_dir(complete_run, tmp_path):
    from trajmc.analyze import analyze_run

    d = _copy_run(complete_run, tmp_path / "run")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (d / "analysis").symlink_to(target)
    with pytest.raises(trajmc.RunError, match="symbolic link"):
        analyze_run(d, quiet=True)
    assert list(target.iterdir()) == []


# --------------------------------------------------------------------------- found by the fuzzer (test_fuzz_inputs)


@pytest.mark.regression
def test_joint_state_beyond_int64_names_its_key():
    """BUG: initial.joint.states took any integer; 2**63 raised OverflowError in np.array(int64)."""
    d = get_model_dict("two_baths")
    d["initial"] = {"joint": {"states": [[2**63, 3, 2], [2, 1, 1]], "p": [0.5, 0.5]}}
    assert model_error(d).key == "initial.joint.states[0][0]"


@pytest.mark.regression
def test_solve_at_times_of_1e300():
    """BUG: the Chebyshev term count for L t ~ 1e300 overflowed int64 to a negative number (IndexError)."""
    d = get_model_dict(BASE)
    d["times"] = {"stop": 1e300, "num": 5}
    sol = trajmc.solve(d)
    assert np.all(np.isfinite(sol.p)) and abs(sol.p[-1].sum() - 1) < 1e-9
    with pytest.raises(trajmc.ModelError, match="times.stop"):  # the Monte Carlo refuses: steps below resolution
        trajmc.simulate(d, trajectories=10, seed=1)


@pytest.mark.regression
@pytest.mark.parametrize("width", [1e300, 1e-300])
def test_gaussian_width_at_the_ends_of_the_double_range(width, recwarn):
    """BUG: width**2 of a Python float raised OverflowError at 1e300 (a RuntimeWarning leaked at 1e-300)."""
    d = get_model_dict(BASE)
    d["baths"][0]["kernel"]["spectral"] = {"shape": "gaussian", "width": width}
    p = trajmc.solve(d).p_system()
    assert np.all(np.isfinite(p))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@pytest.mark.regression
@pytest.mark.parametrize("n,beta", [(2**31, 0.4), (10**12, -0.4), (10**9, 0.0)])
def test_a_canonical_state_of_a_huge_bounded_bath_is_refused_quickly(n, beta):
    """BUG: the canonical truncation of a spins bath summed over its whole range 0..n w: n = 2^31 allocated
    17 GB (the process was killed); now it searches as for an unbounded bath and stops where the state peaks
    beyond the grid."""
    d = get_model_dict("three_spins_eth")
    d["baths"][0]["dos"]["n"] = n
    d["initial"]["baths"][0]["beta"] = beta
    t0 = time.perf_counter()
    exc = model_error(d)
    assert exc.key == "baths[0].emax" and "beyond the grid" in str(exc)
    assert time.perf_counter() - t0 < 10
    d["baths"][0]["dos"]["n"] = 40  # a bath that fits its grid still loads, with its suggestion when it does not
    d["initial"]["baths"][0]["beta"] = 0.4
    d["baths"][0]["emax"] = 40
    trajmc.load_model(d)
    d["baths"][0]["dos"]["n"] = 400
    assert "would do" in str(model_error(d))


@pytest.mark.regression
@pytest.mark.parametrize("stop", [1e-3, 3.0, 1e300])
def test_solve_with_rates_near_the_double_range(stop):
    """BUG: rates of 1e304 (an exponential bath at beta = 700): scipy's expm returns NaN beyond a norm of ~1e40,
    solve returned NaN probabilities without a word (and simulate failed with an IndexError building its
    Delta s_obs reference); at t = 1e300 no route was priced (every cost inf) and eigh, inaccurate there, lost
    a third of the probability.  Now expm is scaled and squared, and an unpriced class takes it."""
    d = get_model_dict("two_baths")
    d["baths"][0]["dos"] = {"model": "exponential", "beta": 700.0}
    d["initial"] = {"system": [1 / 3] * 3, "baths": [{"state": "microcanonical", "energy": 0},
                                                    {"state": "microcanonical", "energy": 1}]}
    d["times"] = {"stop": stop, "num": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no overflow warnings on the way
        sol = trajmc.solve(d)
    assert np.all(np.isfinite(sol.p))
    np.testing.assert_allclose(sol.p.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(sol.p_system()[-1][0], 1.0, atol=1e-12)  # the stiff jumps relax at once
    with pytest.raises(trajmc.ModelError, match="times.stop"):  # the Monte Carlo refuses: steps below resolution
        trajmc.simulate(d, trajectories=10, seed=1)


def test_scaled_expm_matches_the_closed_form():
    from trajmc.solver import _stochastic_expm

    for a in (1e10, 1e50, 1e300):
        W = np.array([[[-a, 1.0], [a, -1.0]]])
        for dt in (0.5, 1e300):
            P = _stochastic_expm(W, dt)[0]
            np.testing.assert_allclose(P, [[1 / (1 + a), 1 / (1 + a)], [a / (1 + a), a / (1 + a)]], rtol=1e-12)
