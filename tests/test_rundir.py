"""Run directories (``trajmc.rundir``): write, reload bit for bit, resume bit-identically, refuse tampered data.

Every check here is exact (equality of integers, float bits or bytes): no false-alarm rate is involved.
Runs cover both Monte Carlo paths (``engine="enumerated"`` with the full joint and streamed Delta s_obs,
``engine="implicit"`` with marginals only), with and without per-trajectory records, driven and not.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tomllib

import numpy as np
import pandas as pd
import pytest
import tomli_w
from conftest import THREADS, get_model_dict, signal_from_another_thread

import trajmc
from trajmc import engine, rundir
from trajmc.simulation import plan_run

N, CS = 6000, 500  # 12 chunks, all full
PATHS = ["enumerated", "implicit"]
CASES = [(path, records, driven) for path in PATHS for records in (False, True) for driven in (False, True)]
CASE_IDS = [f"{p}-{'records' if r else 'streamed'}-{'driven' if d else 'undriven'}" for p, r, d in CASES]
RECORD_CASES = [c for c in CASES if c[1]]
RECORD_IDS = [i for c, i in zip(CASES, CASE_IDS, strict=True) if c[1]]


def model_dict(driven):
    """Two baths (675 joint states) undriven; a qubit in oscillators with two switches of its gap driven."""
    if not driven:
        return get_model_dict("two_baths")
    md = get_model_dict("qubit_osc_sqrt")
    md["protocol"] = [{"time": 0.7, "energies": [0, 2]}, {"time": 1.9, "energies": [0, 1]}]
    return md


def simulate_case(case, out=None, threads=THREADS, seed=12, trajectories=N):
    path, records, driven = case
    return trajmc.simulate(model_dict(driven), trajectories=trajectories, seed=seed, threads=threads, chunk_size=CS,
                           paths=4, records=records, engine=path, out=out)


def assert_same_ensemble(a, b):
    """Every accumulator (dtype and bits), the windows, and everything the Ensemble derives from them."""
    fa, fb = a.acc.arrays(), b.acc.arrays()
    assert set(fa) == set(fb)
    for k in fa:
        assert fa[k].dtype == fb[k].dtype, k
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
    assert all(np.array_equal(x, y) for x, y in zip(a.acc.windows, b.acc.windows, strict=True))
    assert a.acc.chunks_done == b.acc.chunks_done
    assert a.plan.path == b.plan.path and a.plan.record == b.plan.record
    assert a.plan.trajectory_entropy == b.plan.trajectory_entropy
    np.testing.assert_array_equal(a.times, b.times)
    pd.testing.assert_frame_equal(a.thermo(), b.thermo(), check_exact=True)
    assert a.thermo().attrs == b.thermo().attrs
    np.testing.assert_array_equal(a.p_system(), b.p_system())
    np.testing.assert_array_equal(a.p_system_se(), b.p_system_se())
    assert a.joint == b.joint
    if a.joint:
        np.testing.assert_array_equal(a.p, b.p)
        np.testing.assert_array_equal(a.p_se, b.p_se)
        pd.testing.assert_frame_equal(a.states, b.states)
    else:
        assert a.p is None and b.p is None and a.states is None and b.states is None
    pd.testing.assert_frame_equal(a.activity(), b.activity(), check_exact=True)
    ta, tb = a.trajectory_entropy(), b.trajectory_entropy()
    assert (ta is None) == (tb is None)
    if ta is not None:
        pd.testing.assert_frame_equal(ta, tb, check_exact=True)
    assert a.first_law == b.first_law
    for bath in a.model.bath_names:
        pd.testing.assert_series_equal(a.heat_distribution(bath), b.heat_distribution(bath), check_exact=True)
        pd.testing.assert_series_equal(a.bath_distribution(bath), b.bath_distribution(bath), check_exact=True)
    pd.testing.assert_series_equal(a.work_distribution(), b.work_distribution(), check_exact=True)
    ra, rb = a.records, b.records
    assert (ra is None) == (rb is None)
    if ra is not None:
        assert set(ra) == set(rb)
        for k in ra:
            np.testing.assert_array_equal(ra[k], rb[k], err_msg=f"records[{k}]")
    assert len(a.paths) == len(b.paths)
    for (t1, x1), (t2, x2) in zip(a.paths, b.paths, strict=True):
        assert np.array_equal(t1, t2) and np.array_equal(x1, x2)
    for k in ("trajectories", "jumps", "chunks", "chunk_size", "seed_entropy", "path", "records",
              "trajectory_entropy"):
        assert a.stats[k] == b.stats[k], k


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """``finished(case)`` -> (run directory, the in-memory Ensemble that wrote it), cached per module."""
    cache = {}
    root = tmp_path_factory.mktemp("runs")

    def get(case):
        if case not in cache:
            d = root / "-".join(str(x) for x in case)
            cache[case] = d, simulate_case(case, out=d)
        return cache[case]
    return get


@pytest.fixture
def copy_of(finished, tmp_path):
    """``copy_of(case)`` -> a fresh copy of a finished run directory (to tamper with)."""
    def get(case):
        d = tmp_path / "copy"
        shutil.copytree(finished(case)[0], d)
        return d
    return get


# --------------------------------------------------------------------------- layout and round trips


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_run_directory_layout(finished, case):
    path, records, driven = case
    d, ens = finished(case)
    assert ens.plan.path == path and ens.plan.record == records and ens.plan.driven == driven
    streamed = path == "enumerated"  # the exact p_x(t) is small: Delta s_obs is streamed by default
    assert ens.plan.trajectory_entropy == streamed
    want = {"model.toml", "provenance.json", "accumulators.npz", "estimates.csv", "estimates.parquet",
            "p_system.csv"} | ({"records.npz"} if records else set()) \
        | ({"entropy_reference.npz"} if streamed else set())
    assert {p.name for p in d.iterdir()} == want  # no figures: rundir never draws; no temporary files left
    prov = json.loads((d / "provenance.json").read_text())
    assert prov["schema_version"] == rundir.SCHEMA and prov["status"] == "complete"
    assert prov["seed"]["entropy"] == "12"
    assert prov["chunking"] == {"trajectories": N, "chunk_size": CS, "chunks": 12, "chunks_done": 12}
    assert prov["jumps"] == ens.stats["jumps"] == int(ens.acc.jumps.sum()) > 0
    assert prov["engine"]["path"] == path and prov["engine"]["reason"] == "requested"
    assert prov["engine"]["memory"]["total"] == ens.stats["memory_estimate"] > 0
    assert prov["first_law"] == {"violations": 0, "samples": N * len(ens.times)}
    assert prov["records"] is records and prov["paths"] == 4
    assert set(prov["checksums"]["files_sha256"]) == want - {"provenance.json"}
    m = tomllib.loads((d / "model.toml").read_text())
    assert m["simulation"] == {"trajectories": N, "seed": 12, "chunk_size": CS, "engine": path, "records": records,
                               "trajectory_entropy": streamed}
    assert ("protocol" in m) == driven


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_load_run_is_identical(finished, case):
    d, ens = finished(case)
    run = trajmc.load_run(d)
    assert_same_ensemble(ens, run)
    assert run.stats["run_dir"] == str(d)
    assert run.stats["threads"] == ens.stats["threads"]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_saved_tables_equal_the_ensemble(finished, case):
    d, ens = finished(case)
    th = ens.thermo()
    pd.testing.assert_frame_equal(pd.read_parquet(d / "estimates.parquet"), th, check_exact=True)
    pd.testing.assert_frame_equal(pd.read_csv(d / "estimates.csv", index_col=0), th, check_exact=True)
    ps = pd.read_csv(d / "p_system.csv", index_col=0)
    np.testing.assert_array_equal(ps.index.to_numpy(), ens.times)
    for s in range(ens.model.n_levels):
        np.testing.assert_array_equal(ps[f"p_{s}"].to_numpy(), ens.p_system()[:, s])
        np.testing.assert_array_equal(ps[f"p_{s}_se"].to_numpy(), ens.p_system_se()[:, s])


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_load_run_equals_simulate_without_out_on_one_thread(finished, case):
    mem = simulate_case(case, threads=1)
    assert_same_ensemble(finished(case)[1], mem)


def test_save_run_of_a_loaded_run_reloads_identically(finished, tmp_path):
    case = ("implicit", True, True)
    run = trajmc.load_run(finished(case)[0])
    rundir.save_run(run, tmp_path / "again")
    assert_same_ensemble(run, trajmc.load_run(tmp_path / "again"))


# --------------------------------------------------------------------------- resume


def _partial_run(d, case, stop_after, threads=THREADS):
    """A run directory whose run stopped after ``stop_after`` chunks (its last checkpoint written)."""
    path, records, driven = case
    plan = plan_run(model_dict(driven), trajectories=N, seed=12, chunk_size=CS, records=records,
                                      paths=4, engine_=path, threads=threads)
    w = rundir.RunWriter.create(d, plan)
    engine.run_plan(plan, w.acc, threads, stop_after=stop_after, checkpoint=w.checkpoint)
    w.checkpoint(w.acc)
    return plan, w


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_resume_is_bit_identical(finished, case, tmp_path):
    d = tmp_path / "part"
    _partial_run(d, case, stop_after=5)
    prov = json.loads((d / "provenance.json").read_text())
    assert prov["status"] == "running" and prov["chunking"]["chunks_done"] == 5
    with pytest.raises(trajmc.RunError, match="incomplete run .5 of 12 chunks.*--resume"):
        trajmc.load_run(d)
    ens = rundir.resume_run(d, threads=1)
    assert_same_ensemble(finished(case)[1], ens)
    assert_same_ensemble(finished(case)[1], trajmc.load_run(d))
    assert json.loads((d / "provenance.json").read_text())["status"] == "complete"
    with pytest.raises(trajmc.RunError, match="already complete"):
        rundir.resume_run(d, threads=1)


@pytest.mark.parametrize("case", RECORD_CASES, ids=RECORD_IDS)
def test_resume_from_the_initial_checkpoint(finished, case, tmp_path):
    d = tmp_path / "fresh"
    _partial_run(d, case, stop_after=0)
    assert json.loads((d / "provenance.json").read_text())["chunking"]["chunks_done"] == 0
    assert_same_ensemble(finished(case)[1], rundir.resume_run(d, threads=THREADS))


def _interrupt_in_wave(monkeypatch, n):
    """The n-th wave sees its stop flag set while it runs (what SIGINT/SIGTERM do): the kernel itself stops."""
    real = engine._in_thread
    waves = []

    def in_thread(fn, args, threads, stop, ctl):
        waves.append(1)
        if len(waves) == n:
            stop.set = True
            ctl[0] = 1
        return real(fn, args, threads, stop, ctl)

    monkeypatch.setattr(engine, "_in_thread", in_thread)


@pytest.mark.parametrize("case", RECORD_CASES, ids=RECORD_IDS)
def test_interrupted_inside_a_wave_then_resumed_is_bit_identical(finished, case, tmp_path, monkeypatch):
    """A stop request inside the second wave: Interrupted, a checkpoint holding exactly chunks_done chunks,
    and --resume gives the uninterrupted run."""
    path, records, driven = case
    d = tmp_path / "int"
    plan = plan_run(model_dict(driven), trajectories=N, seed=12, chunk_size=CS, records=records,
                                      paths=4, engine_=path, threads=THREADS)
    w = rundir.RunWriter.create(d, plan)
    _interrupt_in_wave(monkeypatch, 2)  # the first wave runs one chunk per thread, so a second one exists
    with pytest.raises(trajmc.Interrupted, match="interrupted after"):
        w.run(THREADS)
    monkeypatch.undo()
    prov = json.loads((d / "provenance.json").read_text())
    done = prov["chunking"]["chunks_done"]
    assert prov["status"] == "running" and 0 < done < plan.n_chunks
    _, acc, _ = rundir._read(d, allow_partial=True)
    assert acc.chunks_done == done
    assert np.all(acc.sys2.reshape(plan.n_t, -1).sum(axis=1) == done * CS)
    assert np.all(acc.jumps[done:] == 0) and np.all(acc.jumps[:done] > 0)
    with pytest.raises(trajmc.RunError, match="incomplete"):
        trajmc.load_run(d)
    assert_same_ensemble(finished(case)[1], rundir.resume_run(d, threads=1))


def test_keyboard_interrupt_between_waves_then_resumed_is_bit_identical(finished, tmp_path):
    """A KeyboardInterrupt raised between waves (from the progress callback, as a Ctrl-C handled there)."""
    case = ("implicit", True, False)
    d = tmp_path / "kbd"
    plan = plan_run(model_dict(False), trajectories=N, seed=12, chunk_size=CS, records=True, paths=4,
                    engine_="implicit", threads=1)
    w = rundir.RunWriter.create(d, plan)

    def progress(k):
        raise KeyboardInterrupt

    with pytest.raises(trajmc.Interrupted):
        engine.run_plan(plan, w.acc, 1, progress=progress, checkpoint=w.checkpoint)
    # the first wave has one chunk per thread, and small buffers are folded after every wave
    assert json.loads((d / "provenance.json").read_text())["chunking"]["chunks_done"] == 1
    assert_same_ensemble(finished(case)[1], rundir.resume_run(d, threads=THREADS))


# Regression test: BUG runio.save_run/RunWriter.run: after the last wave the accumulators are written before
# provenance.json gets their checksum, with Ctrl-C not deferred; an interruption in between left a directory that
# neither load_run nor --resume accepted.  The final save now runs with SIGINT/SIGTERM deferred.
@pytest.mark.regression
def test_ctrl_c_while_saving_leaves_a_usable_run(finished, tmp_path, monkeypatch):
    case = ("enumerated", True, False)
    d = tmp_path / "save"
    plan = plan_run(model_dict(False), trajectories=N, seed=12, chunk_size=CS, records=True,
                                      paths=4, engine_="enumerated", threads=THREADS)
    w = rundir.RunWriter.create(d, plan)
    real = rundir._sha
    sent = []

    def ctrl_c_then_hash(path):  # called by save_run between writing the data and provenance.json
        if not sent:
            sent.append(path)
            signal_from_another_thread()
        return real(path)

    monkeypatch.setattr(rundir, "_sha", ctrl_c_then_hash)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in `python -m trajmc`
    try:
        try:
            w.run(THREADS)
        except (KeyboardInterrupt, trajmc.Interrupted):
            pass
    finally:
        signal.signal(signal.SIGINT, old)
    monkeypatch.undo()
    assert sent
    # either the run was saved completely, or it can be finished with --resume
    if json.loads((d / "provenance.json").read_text())["status"] == "complete":
        run = trajmc.load_run(d)
    else:
        run = rundir.resume_run(d, threads=THREADS)
    assert_same_ensemble(finished(case)[1], run)


# Regression test: BUG runio.RunWriter.checkpoint: accumulators.npz and provenance.json (holding its checksum) are
#  two separate atomic renames; a process killed between them leaves a run that cannot be resumed
@pytest.mark.regression
@pytest.mark.parametrize("path", PATHS)
def test_kill_between_checkpoint_writes_leaves_a_resumable_run(finished, tmp_path, path):
    case = (path, True, False)
    d = tmp_path / "kill"
    plan, w = _partial_run(d, case, stop_after=3)
    engine.run_plan(plan, w.acc, THREADS, stop_after=7)
    rundir._save_accumulators(d, plan, w.acc)  # ... and the process dies before provenance.json is written
    assert json.loads((d / "provenance.json").read_text())["chunking"]["chunks_done"] == 3
    assert_same_ensemble(finished(case)[1], rundir.resume_run(d, threads=THREADS))


def test_saved_but_unconfirmed_run_is_incomplete(finished, tmp_path):
    """Every chunk checkpointed but the final save never happened (no estimates, status 'running'): load_run
    says so, --resume writes the rest."""
    case = ("implicit", False, False)
    d = tmp_path / "unsaved"
    _partial_run(d, case, stop_after=None)
    assert json.loads((d / "provenance.json").read_text())["chunking"]["chunks_done"] == 12
    with pytest.raises(trajmc.RunError, match="incomplete"):
        trajmc.load_run(d)
    assert_same_ensemble(finished(case)[1], rundir.resume_run(d, threads=1))


# Regression test: BUG rundir._read rebuilt the plan under the default max_jumps (1e13): a run started with a
# higher --max-jumps / max_jumps= could be neither resumed nor loaded (ModelError simulation.max_jumps)
@pytest.mark.regression
@pytest.mark.filterwarnings("ignore:trajmc. the run will make")
def test_run_above_the_default_max_jumps_can_be_resumed(tmp_path):
    md = get_model_dict("qubit_osc_sqrt")
    md["baths"][0]["kernel"]["gamma"] = 1e12  # ~1.3e12 jumps per trajectory: 40 of them exceed the default
    md["times"] = {"values": [0.0, 1.0]}
    plan = plan_run(md, trajectories=40, chunk_size=1, seed=2, max_jumps=1e15)
    assert plan.expected_jumps > engine.DEFAULT_MAX_JUMPS
    d = tmp_path / "big"
    rundir.RunWriter.create(d, plan)  # interrupted before its first chunk
    with pytest.raises(trajmc.RunError, match="incomplete"):
        trajmc.load_run(d)
    w, _ = rundir.RunWriter.resume(d)  # (not run: it would take days)
    assert w.plan.n_chunks == 40 and w.acc.chunks_done == 0


def test_fresh_entropy_run_reloads_and_replays(tmp_path):
    md = get_model_dict("qubit_osc_sqrt")
    ens = trajmc.simulate(md, trajectories=3000, seed=None, threads=1, out=tmp_path / "r")
    run = trajmc.load_run(tmp_path / "r")
    assert run.stats["seed_entropy"] == ens.stats["seed_entropy"]
    assert_same_ensemble(ens, run)
    again = trajmc.simulate(md, trajectories=3000, seed=ens.stats["seed_entropy"], threads=THREADS)
    assert_same_ensemble(ens, again)


# --------------------------------------------------------------------------- tampering: model.toml


TAMPER_CASES = [("enumerated", True, False), ("implicit", True, True)]
TAMPER_IDS = ["enumerated-records", "implicit-records-driven"]


def _edit_toml(d, edit):
    m = tomllib.loads((d / "model.toml").read_text())
    edit(m)
    (d / "model.toml").write_text(tomli_w.dumps(m))


def _set(*keys_value):
    """``_set("a", 0, "b", v)`` -> an edit doing ``d["a"][0]["b"] = v``."""
    *keys, last, value = keys_value

    def edit(d):
        for k in keys:
            d = d[k]
        d[last] = value
    return edit


MODEL_EDITS = [
    ("name", _set("name", "renamed")),
    ("gamma", _set("baths", 0, "kernel", "gamma", 1.5)),
    ("coupling", lambda m: m["system"].__setitem__("coupling", (np.array(m["system"]["coupling"]) * 0.9).tolist())),
    ("energies", lambda m: m["system"].__setitem__("energies", [0] + [e + 1 for e in m["system"]["energies"][1:]])),
    ("beta", _set("initial", "baths", 0, "beta", 0.55)),
    ("emax", lambda m: m["baths"][0].__setitem__("emax", m["baths"][0]["emax"] - 1)),
    ("times", lambda m: m.__setitem__("times", {"stop": m["times"]["stop"], "num": m["times"]["num"] - 1})),
    ("trajectories", _set("simulation", "trajectories", N - 1)),
    ("seed", _set("simulation", "seed", 13)),
    ("chunk_size", _set("simulation", "chunk_size", 1000)),
    ("engine", lambda m: m["simulation"].__setitem__(
        "engine", "implicit" if m["simulation"]["engine"] == "enumerated" else "enumerated")),
    ("records", _set("simulation", "records", False)),
    ("trajectory_entropy", lambda m: m["simulation"].__setitem__(
        "trajectory_entropy", not m["simulation"]["trajectory_entropy"])),
    ("comment only", lambda m: None),  # same content, other bytes: the file's SHA-256 differs
]


def _comment(d):
    with open(d / "model.toml", "a") as fh:
        fh.write("# edited\n")


@pytest.mark.parametrize("case", TAMPER_CASES, ids=TAMPER_IDS)
@pytest.mark.parametrize("what, edit", MODEL_EDITS, ids=[w for w, _ in MODEL_EDITS])
def test_edited_model_toml_is_refused(copy_of, case, what, edit):
    d = copy_of(case)
    _comment(d) if what == "comment only" else _edit_toml(d, edit)
    with pytest.raises(trajmc.RunError) as exc:
        trajmc.load_run(d)
    assert "\n" not in str(exc.value)
    with pytest.raises(trajmc.RunError):
        rundir.resume_run(d, threads=1)


@pytest.mark.parametrize("case", TAMPER_CASES, ids=TAMPER_IDS)
@pytest.mark.parametrize("what, edit", MODEL_EDITS, ids=[w for w, _ in MODEL_EDITS])
def test_edited_model_toml_of_an_interrupted_run_is_refused(tmp_path, case, what, edit):
    """Before the run is complete too: --resume must not continue a run under another model (or name)."""
    d = tmp_path / "part"
    _partial_run(d, case, stop_after=2)
    _comment(d) if what == "comment only" else _edit_toml(d, edit)
    with pytest.raises(trajmc.RunError) as exc:
        rundir.resume_run(d, threads=1)
    assert "\n" not in str(exc.value)


# --------------------------------------------------------------------------- tampering: accumulators.npz


def _load_npz(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _bump_first(a):
    """The array with one entry changed (numbers +1, a string altered)."""
    a = a.copy()
    if a.dtype.kind == "U":
        return np.array(str(a)[::-1] if str(a) else "x")
    flat = a.reshape(-1)
    if flat.size:
        flat[flat.size // 2] += 1
    return a


@pytest.mark.parametrize("case", TAMPER_CASES, ids=TAMPER_IDS)
def test_every_altered_accumulator_is_refused(copy_of, case):
    """One entry of each stored array changed, or the array dropped (in turn): RunError every time.

    ``wall_s`` (a timing, not a result) is outside the data checksum by design (identical runs have identical
    checksums), but a finished run's provenance.json holds the file's SHA-256, so it is refused too."""
    d = copy_of(case)
    orig = _load_npz(d / "accumulators.npz")
    keys = sorted(orig)
    assert {"sys2", "heat", "mom", "jumps", "fingerprint", "win_lo", "checksum", "chunks_done"} <= set(keys)
    assert ("counts" in keys) == (case[0] == "enumerated") and ("marg" in keys) == (case[0] == "implicit")
    for k in keys:
        arr = dict(orig)
        arr[k] = _bump_first(orig[k])
        if np.array_equal(arr[k], orig[k]):  # an empty array (e.g. no work histogram): drop it instead
            arr.pop(k)
        np.savez(d / "accumulators.npz", **arr)
        with pytest.raises(trajmc.RunError) as exc:
            trajmc.load_run(d)
        assert "\n" not in str(exc.value), k
        np.savez(d / "accumulators.npz", **{j: v for j, v in orig.items() if j != k})  # the array dropped
        with pytest.raises(trajmc.RunError) as exc:
            trajmc.load_run(d)
        assert "\n" not in str(exc.value), k


@pytest.mark.parametrize("case", TAMPER_CASES, ids=TAMPER_IDS)
def test_altered_accumulators_of_an_interrupted_run_are_refused(tmp_path, case):
    d = tmp_path / "part"
    _partial_run(d, case, stop_after=4)
    orig = _load_npz(d / "accumulators.npz")
    for k in ("sys2", "heat", "mom", "jumps", "chunks_done", "win_wid", "counts" if case[0] == "enumerated"
              else "marg"):
        arr = dict(orig, **{k: _bump_first(orig[k])})
        np.savez(d / "accumulators.npz", **arr)
        with pytest.raises(trajmc.RunError):
            rundir.resume_run(d, threads=1)


def test_consistent_counts_with_a_recomputed_checksum_are_refused_when_complete(copy_of):
    """Moving one count between states keeps every sum and the file's own checksum (recomputed): only the
    checksum in provenance.json can tell."""
    d = copy_of(("enumerated", False, False))
    plan, acc, _ = rundir._read(d)
    nz = np.flatnonzero(acc.counts[3])
    acc.counts[3, nz[0]] -= 1
    acc.counts[3, nz[1]] += 1
    rundir._save_accumulators(d, plan, acc)
    with pytest.raises(trajmc.RunError, match="provenance.json"):
        trajmc.load_run(d)


# Regression test: BUG runio._read: a truncated accumulators.npz raised zipfile.BadZipFile (a traceback)
@pytest.mark.regression
@pytest.mark.parametrize("name", ["accumulators.npz", "records.npz", "entropy_reference.npz"])
def test_truncated_npz_raises_run_error(copy_of, name):
    d = copy_of(("enumerated", True, False))
    p = d / name
    b = p.read_bytes()
    p.write_bytes(b[:len(b) // 2])
    with pytest.raises(trajmc.RunError, match=name):
        trajmc.load_run(d)


@pytest.mark.parametrize("name", ["accumulators.npz", "records.npz", "entropy_reference.npz"])
def test_npz_replaced_by_garbage_raises_run_error(copy_of, name):
    d = copy_of(("enumerated", True, False))
    (d / name).write_bytes(b"\xff\xfe not a zip file")
    with pytest.raises(trajmc.RunError, match=name):
        trajmc.load_run(d)


# --------------------------------------------------------------------------- tampering: records.npz


@pytest.mark.regression
@pytest.mark.parametrize("case", TAMPER_CASES, ids=TAMPER_IDS)
def test_altered_records_are_refused(copy_of, case):
    d = copy_of(case)
    orig = _load_npz(d / "records.npz")
    assert set(orig) == ({"x", "n"} if case == TAMPER_CASES[0] else {"x", "n", "w", "E"})
    for k in orig:
        np.savez_compressed(d / "records.npz", **dict(orig, **{k: _bump_first(orig[k])}))
        with pytest.raises(trajmc.RunError, match="records.npz"):
            trajmc.load_run(d)
        np.savez_compressed(d / "records.npz", **{j: v for j, v in orig.items() if j != k})
        with pytest.raises(trajmc.RunError, match="records.npz"):
            trajmc.load_run(d)


@pytest.mark.regression
@pytest.mark.parametrize("case", TAMPER_CASES, ids=TAMPER_IDS)
def test_altered_records_of_an_interrupted_run_are_refused(tmp_path, case):
    d = tmp_path / "part"
    _partial_run(d, case, stop_after=4)
    orig = _load_npz(d / "records.npz")
    x = orig["x"].copy()
    x[3 * CS + 7, -1] += 1  # inside the finished chunks
    np.savez_compressed(d / "records.npz", **dict(orig, x=x))
    with pytest.raises(trajmc.RunError, match="records.npz"):
        rundir.resume_run(d, threads=1)


# Regression test: BUG runio._read: a missing records.npz of a run with records=True silently gave all-zero records
@pytest.mark.regression
@pytest.mark.parametrize("case", TAMPER_CASES, ids=TAMPER_IDS)
def test_missing_records_are_refused(copy_of, case):
    d = copy_of(case)
    os.remove(d / "records.npz")
    with pytest.raises(trajmc.RunError, match="records.npz"):
        trajmc.load_run(d)


# --------------------------------------------------------------------------- tampering: entropy_reference.npz


def test_altered_entropy_reference_is_refused(copy_of):
    d = copy_of(("enumerated", False, False))
    orig = _load_npz(d / "entropy_reference.npz")
    for k in orig:
        np.savez(d / "entropy_reference.npz", **dict(orig, **{k: orig[k] * (1 + 2**-40)}))
        with pytest.raises(trajmc.RunError, match="entropy_reference.npz"):
            trajmc.load_run(d)
    os.remove(d / "entropy_reference.npz")
    with pytest.raises(trajmc.RunError, match="entropy_reference.npz"):
        trajmc.load_run(d)


# Regression test: BUG rundir checkpoints recorded no checksum of entropy_reference.npz (nor of model.toml): an
# interrupted run whose reference was edited resumed silently, streaming Delta s_obs against other numbers
@pytest.mark.regression
def test_altered_entropy_reference_of_an_interrupted_run_is_refused(tmp_path):
    d = tmp_path / "part"
    _partial_run(d, ("enumerated", False, False), stop_after=4)
    orig = _load_npz(d / "entropy_reference.npz")
    lnq = orig["lnq"].copy()
    lnq[lnq.shape[0] // 2, -1] += 0.5
    np.savez(d / "entropy_reference.npz", **dict(orig, lnq=lnq))
    with pytest.raises(trajmc.RunError, match="entropy_reference.npz"):
        rundir.resume_run(d, threads=1)


# --------------------------------------------------------------------------- tampering: tables


@pytest.mark.parametrize("name", ["estimates.csv", "estimates.parquet", "p_system.csv"])
def test_altered_tables_are_refused(copy_of, name):
    d = copy_of(("implicit", False, False))
    p = d / name
    if name.endswith(".csv"):
        text = p.read_text()
        i = next(i for i, c in enumerate(text) if c in "123456789" and i > text.index("\n"))
        p.write_text(text[:i] + str(int(text[i]) % 9 + 1) + text[i + 1:])
    else:
        pd.read_parquet(p).assign(E_S=0.0).to_parquet(p)
    with pytest.raises(trajmc.RunError, match=name):
        trajmc.load_run(d)
    os.remove(p)
    with pytest.raises(trajmc.RunError, match=name):
        trajmc.load_run(d)


# --------------------------------------------------------------------------- tampering: provenance.json


def _edit_json(path, edit):
    p = json.loads(path.read_text())
    edit(p)
    path.write_text(json.dumps(p))


def _drop(*keys):
    *path, last = keys

    def edit(d):
        for k in path:
            d = d[k]
        d.pop(last)
    return edit


PROV_EDITS = [
    ("seed", _set("seed", "entropy", "13")),
    ("trajectories", _set("chunking", "trajectories", N + 1)),
    ("chunk_size", _set("chunking", "chunk_size", 1000)),
    ("chunks", _set("chunking", "chunks", 13)),
    ("chunks_done", _set("chunking", "chunks_done", 11)),
    ("digest", _set("model", "digest", "0" * 64)),
    ("model name", _set("model", "name", "another")),
    ("accumulators checksum", _set("checksums", "accumulators_sha256", "0" * 64)),
    ("a file checksum", _set("checksums", "files_sha256", "estimates.csv", "0" * 64)),
    ("records checksum", _set("checksums", "files_sha256", "records.npz", "0" * 64)),
    ("files checksums dropped", _drop("checksums", "files_sha256")),
    ("one file checksum dropped", _drop("checksums", "files_sha256", "p_system.csv")),
    ("checksums dropped", _drop("checksums")),
    ("path", lambda p: p["engine"].__setitem__("path", {"enumerated": "implicit"}.get(p["engine"]["path"],
                                                                                        "enumerated"))),
    ("trajectory_entropy", lambda p: p["engine"].__setitem__("trajectory_entropy",
                                                             not p["engine"]["trajectory_entropy"])),
    ("records", _set("records", False)),
    ("jumps", lambda p: p.__setitem__("jumps", p["jumps"] + 1)),
    ("first-law violations", _set("first_law", "violations", 1)),
    ("first-law samples", lambda p: p["first_law"].__setitem__("samples", p["first_law"]["samples"] - 1)),
    ("status running", _set("status", "running")),
    ("status other", _set("status", "done")),
    ("schema", _set("schema_version", 3)),
]


@pytest.mark.parametrize("case", TAMPER_CASES, ids=TAMPER_IDS)
@pytest.mark.parametrize("what, edit", PROV_EDITS, ids=[w for w, _ in PROV_EDITS])
def test_altered_provenance_is_refused(copy_of, case, what, edit):
    d = copy_of(case)
    _edit_json(d / "provenance.json", edit)
    with pytest.raises(trajmc.RunError) as exc:
        trajmc.load_run(d)
    assert "\n" not in str(exc.value)


WRONG_TYPES = [
    ("schema_version", _set("schema_version", "4")),
    ("status", _set("status", ["complete"])),
    ("seed", _set("seed", "entropy", 12)),
    ("seed table", _set("seed", [12])),
    ("chunking", _set("chunking", None)),
    ("chunking.trajectories", _set("chunking", "trajectories", str(N))),
    ("chunking.chunk_size", _set("chunking", "chunk_size", float(CS))),
    ("chunking.chunks_done", _set("chunking", "chunks_done", True)),
    ("model", _set("model", "two_baths")),
    ("model.digest", _set("model", "digest", 5)),
    ("model.name", _set("model", "name", None)),
    ("engine", _set("engine", [])),
    ("engine.path", _set("engine", "path", 1)),
    ("engine.trajectory_entropy", _set("engine", "trajectory_entropy", "yes")),
    ("paths", _set("paths", "4")),
    ("paths bool", _set("paths", True)),
    ("records", _set("records", 1)),
    ("checksums", _set("checksums", [])),
    ("checksums.accumulators_sha256", _set("checksums", "accumulators_sha256", None)),
    ("checksums.files_sha256", _set("checksums", "files_sha256", "abc")),
    ("checksums.files_sha256 list", _set("checksums", "files_sha256", [])),
    ("checksums.files_sha256 entry", _set("checksums", "files_sha256", "model.toml", 0)),
    ("jumps", _set("jumps", "many")),
    ("first_law", _set("first_law", 0)),
]


@pytest.mark.parametrize("what, edit", WRONG_TYPES, ids=[w for w, _ in WRONG_TYPES])
def test_provenance_with_a_wrong_field_type_raises_run_error(copy_of, what, edit):
    d = copy_of(TAMPER_CASES[0])
    _edit_json(d / "provenance.json", edit)
    with pytest.raises(trajmc.RunError) as exc:
        trajmc.load_run(d)
    assert "provenance.json" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(trajmc.RunError):
        rundir.resume_run(d, threads=1)


@pytest.mark.parametrize("what, edit", [
    ("timings", _set("timings", "fast")),
    ("timings.threads", _set("timings", "threads", "2")),
    ("timings.compile_s", _set("timings", "compile_s", [])),
    ("backend", _set("backend", [])),
])
def test_provenance_metadata_of_a_wrong_type_is_ignored(copy_of, finished, what, edit):
    """Timings and backend are descriptive only: a wrong type there loses them, never the run."""
    d = copy_of(TAMPER_CASES[0])
    _edit_json(d / "provenance.json", edit)
    assert_same_ensemble(finished(TAMPER_CASES[0])[1], trajmc.load_run(d))


def test_provenance_backend_cannot_overwrite_the_counts(copy_of, finished):
    d = copy_of(TAMPER_CASES[0])
    _edit_json(d / "provenance.json", _set("backend", {"backend": "threads", "jumps": 1, "trajectories": 2}))
    run = trajmc.load_run(d)
    assert run.stats["jumps"] == finished(TAMPER_CASES[0])[1].stats["jumps"] and run.stats["trajectories"] == N


@pytest.mark.parametrize("content", [b"[]", b"null", b"3", b'"complete"', b"{not json", b"", b"\xff\xfe\x00{",
                                     b'{"schema_version": 4, "status": "compl\xe9te"}'],
                         ids=["list", "null", "number", "string", "not json", "empty", "utf16 bytes", "latin-1"])
def test_damaged_provenance_raises_run_error(copy_of, content):
    d = copy_of(TAMPER_CASES[0])
    (d / "provenance.json").write_bytes(content)
    with pytest.raises(trajmc.RunError, match="provenance.json") as exc:
        trajmc.load_run(d)
    assert "\n" not in str(exc.value)
    with pytest.raises(trajmc.RunError, match="provenance.json"):
        rundir.resume_run(d, threads=1)


# --------------------------------------------------------------------------- not a run directory


@pytest.mark.parametrize("name", ["model.toml", "provenance.json", "accumulators.npz"])
def test_missing_file_is_refused(copy_of, name):
    d = copy_of(TAMPER_CASES[0])
    os.remove(d / name)
    with pytest.raises(trajmc.RunError, match=name):
        trajmc.load_run(d)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(trajmc.RunError, match="not a trajmc run directory"):
        trajmc.load_run(tmp_path)
    with pytest.raises(trajmc.RunError):
        rundir.resume_run(tmp_path, threads=1)


def test_not_toml_model_is_a_run_error(copy_of):
    d = copy_of(TAMPER_CASES[0])
    (d / "model.toml").write_bytes(b"name = \xff[")
    with pytest.raises(trajmc.RunError, match="model.toml"):
        trajmc.load_run(d)


def test_create_refuses_non_empty_directory(tmp_path):
    d = tmp_path / "busy"
    d.mkdir()
    (d / "keep.txt").write_text("mine")
    with pytest.raises(trajmc.RunError, match="not empty"):
        trajmc.simulate(get_model_dict("qubit_osc_sqrt"), trajectories=10, seed=1, out=d)
    assert sorted(p.name for p in d.iterdir()) == ["keep.txt"]
    # an existing empty directory is fine
    e = tmp_path / "empty"
    e.mkdir()
    trajmc.simulate(get_model_dict("qubit_osc_sqrt"), trajectories=10, seed=1, out=e)
    trajmc.load_run(e)


def test_refused_run_writes_nothing(tmp_path):
    """A run over its memory budget or its max_jumps is refused before the directory is created."""
    for kw, key in (({"memory_budget": "1KiB"}, "memory_budget"), ({"max_jumps": 10}, "max_jumps")):
        with pytest.raises(trajmc.ModelError, match=key):
            trajmc.simulate(get_model_dict("two_baths"), trajectories=1000, seed=1, out=tmp_path / "r", **kw)
        assert not (tmp_path / "r").exists()
