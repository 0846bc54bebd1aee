"""Dask backend against a real LocalCluster of 2 worker processes (no mocks).

Bit-identity is exact equality of integer accumulators: no false-alarm rate is involved.
"""
import os
import signal

import numpy as np
import pytest

import trajmc
from trajmc import engine
from trajmc.cluster import DaskSession, run_plan_dask
from trajmc.runio import RunWriter, load_run, resume_run

distributed = pytest.importorskip("distributed")

MODEL = "two-baths"
N, CS = 24_000, 1000  # 24 chunks


def _small_two_baths():
    d = trajmc.get_example(MODEL)
    for b, emax in zip(d["baths"], (150, 40)):
        b["dos"]["n"] = 4
        b["emax"] = emax
    d["times"] = {"stop": 3.0, "num": 7}
    return d


FIELDS = ("counts", "cross", "heat", "work", "jumps", "rec_x", "rec_n", "path_t", "path_x", "path_len")


def _same(a, b):
    for k in FIELDS:
        x, y = getattr(a, k), getattr(b, k)
        assert (x is None) == (y is None), k
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=k)


@pytest.fixture(scope="module")
def session():
    s = DaskSession(workers=2)
    yield s
    s.close()


@pytest.fixture(scope="module")
def threaded():
    plan = engine.make_plan(_small_two_baths(), trajectories=N, seed=17, chunk_size=CS, records=True, paths=3)
    acc = engine.new_accumulators(plan)
    engine.run_plan(plan, acc, threads=2)
    return plan, acc


def test_dask_is_bit_identical_to_threads(session, threaded):
    plan, ref = threaded
    acc = engine.new_accumulators(plan)
    info = run_plan_dask(plan, acc, session)
    _same(acc, ref)
    assert info["backend"] == "dask" and info["workers"] == 2
    assert len(info["worker_compile_s"]) == 2  # compiled (or loaded from cache) once per worker


def test_simulate_api_with_an_existing_scheduler(session, threaded):
    plan, ref = threaded
    ens = trajmc.simulate(_small_two_baths(), trajectories=N, seed=17, chunk_size=CS, records=True, paths=3,
                          backend="dask", scheduler=session.address)
    _same(ens.acc, ref)
    assert ens.stats["backend"] == "dask" and ens.stats["scheduler"] == session.address


def test_killing_a_worker_mid_run_keeps_the_result(session, threaded):
    plan, ref = threaded
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
    _same(acc, ref)
    session.client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker


def test_resume_after_interrupting_the_client(tmp_path, session, threaded):
    plan, ref = threaded
    run = tmp_path / "run"
    w = RunWriter.create(run, plan)
    run_plan_dask(plan, w.acc, session, checkpoint=w.checkpoint, stop_after=9)  # the client stops here
    w.checkpoint(w.acc)
    with pytest.raises(trajmc.RunError, match="--resume"):
        load_run(run)
    ens = resume_run(run, threads=1, backend="dask", scheduler=session.address)
    _same(ens.acc, ref)
    _same(load_run(run).acc, ref)


def test_cli_workers_flag(tmp_path, threaded):
    from trajmc.cli import main

    out = tmp_path / "cli"
    model = tmp_path / "m.toml"
    model.write_text(trajmc.load_model(_small_two_baths()).to_toml())
    rc = main(["simulate", str(model), "--trajectories", str(N), "--seed", "17", "--chunk-size", str(CS),
               "--workers", "2", "--out", str(out), "--quiet"])
    assert rc == 0
    ens = load_run(out)
    np.testing.assert_array_equal(ens.counts, threaded[1].counts)
    import json

    prov = json.loads((out / "provenance.json").read_text())
    assert prov["backend"]["backend"] == "dask" and prov["backend"]["workers"] == 2


def test_bad_backend_arguments():
    with pytest.raises(trajmc.ModelError, match="backend"):
        trajmc.simulate(_small_two_baths(), trajectories=10, backend="mpi")
    with pytest.raises(trajmc.ModelError, match="backend"):
        trajmc.simulate(_small_two_baths(), trajectories=10, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(trajmc.ModelError, match="workers"):
        trajmc.simulate(_small_two_baths(), trajectories=10, backend="dask", workers=0)
