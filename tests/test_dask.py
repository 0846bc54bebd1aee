"""Dask backend against a real LocalCluster of 2 worker processes (no mocks), on both Monte Carlo paths.

Bit-identity is exact equality of every accumulator (integer sums, and float sums added in chunk order):
no false-alarm rate is involved.
"""
import dataclasses
import json
import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest
from conftest import THREADS, get_model_dict, signal_from_another_thread

import trajmc
from trajmc import engine
from trajmc.cluster import DaskSession, WorkerLost, run_plan_dask
from trajmc.ensemble import Ensemble
from trajmc.rundir import RunWriter, load_run, resume_run
from trajmc.simulation import make_stats, plan_run
from trajmc.tables import windows_from

distributed = pytest.importorskip("distributed")

PATHS = ["enumerated", "implicit"]
MODEL = "two_baths"  # 675 joint states, two baths: bounds on the implicit path, Delta s_obs on the enumerated one
N, CS = 24_000, 1000  # 24 chunks


def _wide_model():
    """The two-baths example (baths of 201 and 61 energies) on fewer times: its implicit windows (grown from
    one value) stay inside the grids, so how they grew shows in their layout."""
    md = trajmc.get_example("two-baths")
    md["times"] = {"stop": 3.0, "num": 7}
    return md


def _plan(path, tiny_windows=False):
    """The run's plan (records and paths on; Delta s_obs streamed on the enumerated path).  ``tiny_windows``
    (implicit): accumulator windows of one energy and one heat value on the wide model, so they must grow in
    every chunk."""
    md = _wide_model() if tiny_windows else get_model_dict(MODEL)
    plan = plan_run(md, trajectories=N, seed=17, chunk_size=CS, records=True, paths=3, engine_=path, threads=THREADS)
    assert plan.path == path and plan.trajectory_entropy == (path == "enumerated")
    if tiny_windows:
        w = plan.windows
        plan.windows = windows_from(w.lo + w.wid // 2, np.ones_like(w.wid), np.zeros_like(w.qlo),
                                    np.ones_like(w.qwid), plan.n_levels)
    return plan


def _ensemble(plan, acc):
    return Ensemble(plan, acc, make_stats(plan, acc, 1, 0.0, 0.0))


def _on_windows(plan, acc, win):
    """A copy of ``acc`` re-laid on the (larger) windows ``win`` (the original is left as it is)."""
    acc = dataclasses.replace(acc)
    engine.grow_accumulators(plan, acc, win)
    return acc


def _on_common_windows(plan, a, b):
    big = engine._merge_windows(a.windows, b.windows, plan.n_levels)
    return _on_windows(plan, a, big), _on_windows(plan, b, big)


def assert_same_acc(a, b):
    fa, fb = a.arrays(), b.arrays()
    assert set(fa) == set(fb)
    for k in fa:
        assert fa[k].dtype == fb[k].dtype, k
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
    assert all(np.array_equal(x, y) for x, y in zip(a.windows, b.windows, strict=True))
    assert a.chunks_done == b.chunks_done


def assert_same_run(plan, a, b):
    assert_same_acc(a, b)
    pd.testing.assert_frame_equal(_ensemble(plan, a).thermo(), _ensemble(plan, b).thermo(), check_exact=True)


@pytest.fixture(scope="module")
def session():
    s = DaskSession(workers=2)
    yield s
    s.close()


_THREADED = {}


@pytest.fixture
def threaded():
    """``threaded(path, tiny_windows=False)`` -> (plan, accumulators) of the run on numba threads (cached)."""
    def get(path, tiny_windows=False):
        key = (path, tiny_windows)
        if key not in _THREADED:
            plan = _plan(path, tiny_windows)
            acc = engine.new_accumulators(plan)
            engine.run_plan(plan, acc, threads=THREADS)
            _THREADED[key] = plan, acc
        return _THREADED[key]
    return get


@pytest.mark.parametrize("path", PATHS)
def test_dask_is_bit_identical_to_threads(session, threaded, path):
    plan, ref = threaded(path)
    acc = engine.new_accumulators(plan)
    info = run_plan_dask(plan, acc, session)
    assert_same_run(plan, acc, ref)
    assert acc.rec_x is not None and acc.path_len.sum() > 0 and (acc.dsh is not None) == (path == "enumerated")
    assert info["backend"] == "dask" and info["workers"] == 2
    assert len(info["worker_compile_s"]) == 2  # compiled (or loaded from cache) once per worker


def test_implicit_windows_grown_inside_workers_give_the_threaded_result(session, threaded):
    """Every chunk overflows its one-value windows and is rerun on grown windows inside its worker; the totals
    (merged in chunk order) equal the threaded run's entry for entry on the common windows, and every
    per-trajectory record, path, jump count and random-stream fingerprint exactly."""
    plan_t, ref = threaded("implicit", tiny_windows=True)
    plan = _plan("implicit", tiny_windows=True)
    acc = engine.new_accumulators(plan)
    run_plan_dask(plan, acc, session)
    assert np.all(acc.windows.wid > 1) and np.all(ref.windows.wid > 1)  # both grew
    for k in ("jumps", "fingerprint", "rec_x", "rec_n", "rec_E", "path_t", "path_x", "path_E", "path_len", "mom",
              "sys2", "qsum", "viol"):
        np.testing.assert_array_equal(getattr(acc, k), getattr(ref, k), err_msg=k)
    assert_same_run(plan, *_on_common_windows(plan, acc, ref))
    # and against a run of the same model whose windows never had to grow
    plan0 = plan_run(_wide_model(), trajectories=N, seed=17, chunk_size=CS, records=True, paths=3,
                     engine_="implicit", threads=THREADS)
    ref0 = engine.run_plan(plan0, engine.new_accumulators(plan0), THREADS)
    assert_same_run(plan, *_on_common_windows(plan, acc, ref0))


# BUG (trajmc/estimate.py, marginals(), lines 145-153): the implicit bath marginals span the accumulator
# windows, and the entropy sums over them are pairwise float sums whose grouping depends on the window layout.
# Windows grown by different chunk schedules (threads vs Dask, or the adaptive wave size) therefore give
# thermo() values that differ in the last bits (D, I_<bath>, S_obs_upper, ...) although every count is equal.
# Deterministic reproducer: the same accumulators laid out on wider windows.
def test_implicit_estimates_do_not_depend_on_the_window_layout(threaded):
    plan, acc = threaded("implicit", tiny_windows=True)
    w = acc.windows
    wider = windows_from(np.zeros_like(w.lo), np.array([201, 61]), w.qlo - 7, w.qwid + 14, plan.n_levels)
    relaid = _on_windows(plan, acc, wider)
    pd.testing.assert_frame_equal(_ensemble(plan, acc).thermo(), _ensemble(plan, relaid).thermo(), check_exact=True)


@pytest.mark.parametrize("path", PATHS)
def test_simulate_api_with_an_existing_scheduler(session, threaded, path):
    plan, ref = threaded(path)
    ens = trajmc.simulate(get_model_dict(MODEL), trajectories=N, seed=17, chunk_size=CS, records=True, paths=3,
                          engine=path, backend="dask", scheduler=session.address)
    assert_same_run(plan, ens.acc, ref)
    assert ens.stats["backend"] == "dask" and ens.stats["scheduler"] == session.address
    assert ens.stats["path"] == path


@pytest.mark.parametrize("path", PATHS)
def test_killing_a_worker_mid_run_keeps_the_result(session, threaded, path):
    _, ref = threaded(path, tiny_windows=path == "implicit")
    plan = _plan(path, tiny_windows=path == "implicit")
    pids = session.client.run(os.getpid)
    victim = sorted(pids.values())[0]
    killed = []

    def progress(done):
        if done >= 4 and not killed:  # mid-run: some chunks done, others in flight on the victim
            os.kill(victim, signal.SIGKILL)
            killed.append(done)

    acc = engine.new_accumulators(plan)
    run_plan_dask(plan, acc, session, progress=progress, max_inflight=6)
    assert killed and killed[0] < plan.n_chunks
    if path == "implicit":  # windows grown in another order: compare on common windows
        acc, ref = _on_common_windows(plan, acc, ref)
    assert_same_run(plan, acc, ref)
    session.client.wait_for_workers(2, timeout=120)  # the nanny restarts the killed worker


@pytest.fixture
def one_worker():
    own = DaskSession(workers=1)
    yield own
    own.close()


def _kill_the_worker_at(session, chunks):
    """A progress callback that SIGKILLs the session's (only) worker once ``chunks`` chunks are done."""
    victim = next(iter(session.client.run(os.getpid).values()))
    killed = []

    def progress(done):
        if done >= chunks and not killed:
            os.kill(victim, signal.SIGKILL)
            killed.append(done)
    return progress, killed


@pytest.mark.slow  # fault recovery, 6-7 s each: pre-release tier (CI time)
# Regression test: BUG cluster.run_plan_dask scattered the plan once; a worker that died with the only copy
# (--workers 1, or the last worker that had it) ended the run in FutureCancelledError ... (exit 1).  The plan is
# now scattered again and the lost chunks resubmitted.
@pytest.mark.regression
@pytest.mark.filterwarnings("ignore:Port .* is already in use")
@pytest.mark.parametrize("path", PATHS)
def test_losing_the_only_worker_is_survived(one_worker, threaded, path):
    _, ref = threaded(path, tiny_windows=path == "implicit")
    plan = _plan(path, tiny_windows=path == "implicit")
    progress, killed = _kill_the_worker_at(one_worker, 4)
    acc = engine.new_accumulators(plan)
    run_plan_dask(plan, acc, one_worker, progress=progress, max_inflight=6)
    assert killed and killed[0] < plan.n_chunks
    if path == "implicit":
        acc, ref = _on_common_windows(plan, acc, ref)
    assert_same_run(plan, acc, ref)


@pytest.mark.slow  # fault recovery, 6-7 s each: pre-release tier (CI time)
@pytest.mark.filterwarnings("ignore:Port .* is already in use")
def test_a_cluster_that_cannot_recover_stops_with_a_resumable_checkpoint(one_worker, threaded, tmp_path):
    """With no recovery allowed, the same loss ends in one WorkerLost line; the checkpoint holds exactly the
    chunks finished, and resuming on threads completes the run bit for bit."""
    plan, ref = threaded("enumerated")
    run = tmp_path / "run"
    w = RunWriter.create(run, plan)
    progress, killed = _kill_the_worker_at(one_worker, 3)
    with pytest.raises(WorkerLost) as info:
        run_plan_dask(plan, w.acc, one_worker, progress=progress, checkpoint=w.checkpoint, max_inflight=6,
                      max_recoveries=0)
    assert killed and len(str(info.value).splitlines()) == 1 and "checkpoint" in str(info.value)
    w.close()
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["status"] == "running" and killed[0] <= prov["chunking"]["chunks_done"] < plan.n_chunks
    ens = resume_run(run, threads=THREADS)
    assert_same_run(plan, ens.acc, ref)


@pytest.mark.parametrize("path", PATHS)
def test_resume_after_stopping_the_client(tmp_path, session, threaded, path):
    plan, ref = threaded(path)
    run = tmp_path / "run"
    w = RunWriter.create(run, plan)
    run_plan_dask(plan, w.acc, session, checkpoint=w.checkpoint, stop_after=9)  # the client stops here
    w.checkpoint(w.acc)
    with pytest.raises(trajmc.RunError, match="--resume"):
        load_run(run)
    ens = resume_run(run, threads=1, backend="dask", scheduler=session.address)
    assert_same_run(plan, ens.acc, ref)
    assert_same_run(plan, load_run(run).acc, ref)


@pytest.mark.regression
@pytest.mark.parametrize("path", PATHS)
def test_ctrl_c_on_the_client_then_resume_on_threads(tmp_path, session, threaded, path):
    """SIGINT while results arrive: Interrupted, in-flight tasks cancelled, a checkpoint of exactly chunks_done
    chunks; resuming on threads (another backend) completes it bit for bit."""
    plan, ref = threaded(path)
    run = tmp_path / "run"
    w = RunWriter.create(run, plan)
    sent = []

    def progress(done):
        if done >= 3 and not sent:
            sent.append(done)
            signal_from_another_thread()  # a real SIGINT, handled by the client's stop flag

    with pytest.raises(trajmc.Interrupted, match="interrupted after"):
        run_plan_dask(plan, w.acc, session, progress=progress, checkpoint=w.checkpoint)
    prov = json.loads((run / "provenance.json").read_text())
    done = prov["chunking"]["chunks_done"]
    assert prov["status"] == "running" and sent[0] <= done < plan.n_chunks
    with pytest.raises(trajmc.RunError, match="incomplete"):
        load_run(run)
    ens = resume_run(run, threads=THREADS)
    assert_same_run(plan, ens.acc, ref)


@pytest.mark.slow  # fault recovery, 6-7 s each: pre-release tier (CI time)
# Regression test: BUG cluster.run_plan_dask looked at the stop flag only when a task finished, so SIGINT/SIGTERM
# on the client did nothing while a chunk ran (hours for a stiff model); it now polls while it waits
@pytest.mark.regression
@pytest.mark.filterwarnings("ignore:trajmc. the run will make")
@pytest.mark.filterwarnings("ignore:Port .* is already in use")  # a second LocalCluster's dashboard
def test_ctrl_c_on_the_client_while_a_chunk_runs_for_hours(tmp_path):
    md = get_model_dict("qubit_osc_sqrt")
    md["baths"][0]["kernel"]["gamma"] = 1e12  # ~1.3e12 jumps per trajectory to t = 1
    md["times"] = {"values": [0.0, 1.0]}
    plan = engine.make_plan(md, trajectories=2, chunk_size=1, seed=1, max_jumps=1e15)
    own = DaskSession(workers=1)  # its worker stays busy with the cancelled chunk: closed (killed) below
    try:
        w = RunWriter.create(tmp_path / "run", plan)
        seen = []

        def interrupt_once_running():
            deadline = time.monotonic() + 600
            while not any(own.client.processing().values()):  # the chunk has reached the worker
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)
            seen.append(1)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

        th = threading.Thread(target=interrupt_once_running, daemon=True)
        th.start()
        with pytest.raises(trajmc.Interrupted, match="interrupted after 0 of 2 chunks"):
            run_plan_dask(plan, w.acc, own, checkpoint=w.checkpoint)
        th.join()
        assert seen
        prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
        assert prov["status"] == "running" and prov["chunking"]["chunks_done"] == 0
    finally:
        own.close()


@pytest.mark.parametrize("path", ["implicit"])
def test_cli_workers_flag(tmp_path, threaded, path):
    from trajmc.cli import main

    plan, ref = threaded(path)
    out = tmp_path / "cli"
    model = tmp_path / "m.toml"
    model.write_text(trajmc.load_model(get_model_dict(MODEL)).to_toml())
    rc = main(["simulate", str(model), "--trajectories", str(N), "--seed", "17", "--chunk-size", str(CS),
               "--records", "--paths", "3", "--engine", path, "--workers", "2", "--out", str(out), "--quiet"])
    assert rc == 0
    assert_same_run(plan, load_run(out).acc, ref)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["backend"]["backend"] == "dask" and prov["backend"]["workers"] == 2
    assert prov["engine"]["path"] == path


def test_bad_backend_arguments():
    md = get_model_dict(MODEL)
    with pytest.raises(trajmc.ModelError, match="backend"):
        trajmc.simulate(md, trajectories=10, backend="mpi")
    with pytest.raises(trajmc.ModelError, match="backend"):
        trajmc.simulate(md, trajectories=10, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(trajmc.ModelError, match="workers"):
        trajmc.simulate(md, trajectories=10, backend="dask", workers=0)


@pytest.mark.slow
def test_unreachable_scheduler_writes_nothing(tmp_path):
    """(slow: the client waits its 20 s connection timeout)"""
    with pytest.raises(trajmc.TrajmcError, match="scheduler"):
        trajmc.simulate(get_model_dict(MODEL), trajectories=10, backend="dask", scheduler="tcp://127.0.0.1:1",
                        out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_cli_survives_killing_its_only_worker(tmp_path, threaded):
    """(slow: a LocalCluster in a subprocess, ~40 s) `simulate --workers 1`, its worker process SIGKILLed once
    the first checkpoint with finished chunks is on disk (~2 s into a run of 600 chunks, far from its end): the
    run completes (exit 0), identical to threads."""
    import subprocess
    import sys

    import psutil

    n, cs = 300_000, 500
    plan = plan_run(get_model_dict(MODEL), trajectories=n, seed=17, chunk_size=cs, engine_="enumerated", paths=5,
                    threads=1)  # what the command line plans
    ref = engine.run_plan(plan, engine.new_accumulators(plan), THREADS)
    model = tmp_path / "m.toml"
    model.write_text(trajmc.load_model(get_model_dict(MODEL)).to_toml())
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "trajmc", "simulate", str(model), "--trajectories", str(n),
                             "--seed", "17", "--chunk-size", str(cs), "--engine", "enumerated", "--workers", "1",
                             "--out", str(out), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline
            try:
                done = json.loads((out / "provenance.json").read_text())["chunking"]["chunks_done"]
            except (OSError, ValueError, KeyError):
                done = 0
            if done > 0:
                break
            time.sleep(0.02)
        # the worker: the client's child started by multiprocessing (its nanny runs in the client)
        workers = [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        assert len(workers) == 1, [c.cmdline() for c in psutil.Process(proc.pid).children()]
        workers[0].kill()
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert done < plan.n_chunks
    assert_same_run(plan, load_run(out).acc, ref)


def test_cli_reports_a_lost_cluster_in_one_line_with_the_resume_hint(tmp_path, monkeypatch, capsys):
    from trajmc.cli import main

    def lost(self, *a, **k):
        self.close()
        raise WorkerLost("dask: no worker left at tcp://x (waited 120 s for one to join); 0 of 4 chunks are in the "
                         "checkpoint")

    monkeypatch.setattr(RunWriter, "run", lost)
    out = tmp_path / "run"
    rc = main(["simulate", "--example", "qubit-linear-exact", "--trajectories", "400", "--chunk-size", "100", "--out",
               str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("trajmc: error: dask: no worker left") and err.strip().endswith(f"--resume {out}"), err
    monkeypatch.undo()
    assert resume_run(out, threads=1).stats["trajectories"] == 400
