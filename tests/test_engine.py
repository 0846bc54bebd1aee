"""The Monte Carlo engine: reference Gillespie bit for bit, random numbers, determinism, interruption.

* ``reference_chunk`` (pure Python, the specification) must reproduce the compiled
  kernel exactly: per-trajectory records, full jump paths, jump counts, and every
  streaming accumulator rebuilt from the reference trajectories.
* The generator: xoshiro256++ against the published reference vector, the
  ziggurat exponential and the uniform against their laws (KS and G-tests with a
  stated false-alarm rate).
* Determinism (STYLE.md "Seeds"): same seed -> bit-identical results for any
  thread count and any chunk schedule (stops, restarts, interruptions).
"""
from __future__ import annotations

import signal

import numba as nb
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sst

import trajmc
from trajmc import _rng, engine
from trajmc._rng import next_double, next_exponential
from trajmc.ensemble import Ensemble
from trajmc.reference import ReferenceRNG, reference_chunk
from trajmc.stats import g_test

from conftest import get_model_dict, signal_from_another_thread

# Per-test false-alarm rate of every statistical assertion in this file.
ALPHA = 1e-6

ACC_FIELDS = ["counts", "cross", "heat", "jumps", "rec_x", "rec_n", "path_t", "path_x", "path_len"]


def _run(model, trajectories, seed, chunk_size, threads=1, records=True, paths=0, times=None, stop_after=None):
    plan = engine.make_plan(model, trajectories=trajectories, seed=seed, times=times, chunk_size=chunk_size,
                            records=records, paths=paths)
    acc = engine.new_accumulators(plan)
    engine.run_plan(plan, acc, threads, stop_after=stop_after)
    return plan, acc


def assert_acc_equal(a, b, fields=ACC_FIELDS):
    for f in fields:
        x, y = getattr(a, f), getattr(b, f)
        if x is None or y is None:
            assert x is None and y is None, f
            continue
        assert x.dtype == y.dtype, f
        assert np.array_equal(x, y), f"accumulator {f} differs"
    assert a.chunks_done == b.chunks_done


# --------------------------------------------------------------------------- reference Gillespie


REF_MODELS = ["qubit_osc_sqrt", "three_exp_golden", "qubit_spins_linear", "two_baths", "two_baths_mixed"]


@pytest.mark.parametrize("name", REF_MODELS)
def test_reference_chunk_reproduces_kernel_bit_for_bit(name):
    """Records, paths, jump counts of chunks 0, 1 and the last (partial) chunk, on 2 threads."""
    N, cs, K = 230, 64, 12  # 4 chunks, the last one partial (38 trajectories)
    plan, acc = _run(get_model_dict(name), N, 20240531, cs, threads=2, paths=K)
    assert plan.n_chunks == 4 and plan.paths == K
    for c in range(plan.n_chunks):
        size = int(plan.chunk_sizes(c, c + 1)[0])
        ref = reference_chunk(plan.arrays, _rng.chunk_state(plan.entropy, c), size)
        lo = c * cs
        rx = np.array([r["x"] for r in ref])
        rn = np.array([r["jumps"] for r in ref])
        np.testing.assert_array_equal(acc.rec_x[lo:lo + size], rx)
        np.testing.assert_array_equal(acc.rec_n[lo:lo + size], rn)
        assert acc.jumps[c] == sum(r["total_jumps"] for r in ref)
        if c == 0:  # paths are kept for the first K trajectories of the run
            for i in range(K):
                L = acc.path_len[i]
                assert L == len(ref[i]["path_t"]) <= engine.PATH_CAPACITY
                # exact float equality: same draws, same arithmetic
                assert np.array_equal(acc.path_t[i, :L], ref[i]["path_t"])
                assert np.array_equal(acc.path_x[i, :L], ref[i]["path_x"])
                assert ref[i]["path_x"][0] == rx[i, 0]
    # the whole run really moves (otherwise the comparison is vacuous)
    assert acc.jumps.sum() > N


@pytest.mark.parametrize("name", ["three_spins_eth", "two_baths"])
def test_reference_paths_of_a_later_chunk(name, monkeypatch):
    """The kernel keeps paths for chunk 0 only; to compare full paths on another chunk's stream, chunk
    slot 0 is fed the generator state of chunk 5 (the seeding hook is the only thing replaced)."""
    real = _rng.chunk_state
    monkeypatch.setattr(engine._rng, "chunk_state", lambda e, i: real(e, 5 if i == 0 else i))
    plan, acc = _run(get_model_dict(name), 40, 77, 40, paths=40)
    monkeypatch.undo()
    ref = reference_chunk(plan.arrays, real(plan.entropy, 5), 40)
    for i in range(40):
        L = acc.path_len[i]
        assert L == len(ref[i]["path_t"])
        assert np.array_equal(acc.path_t[i, :L], ref[i]["path_t"])
        assert np.array_equal(acc.path_x[i, :L], ref[i]["path_x"])
        np.testing.assert_array_equal(acc.rec_x[i], ref[i]["x"])
    assert acc.path_len.sum() > 80


def _accumulators_from_reference(plan):
    """Rebuild counts, cross, heat and jumps from reference trajectories of every chunk."""
    a = plan.arrays
    n_t, n = len(plan.times), plan.network.n_states
    counts = np.zeros((n_t, n), np.int64)
    cross = np.zeros((n_t, n, 2), np.int64)
    heat = np.zeros((n_t, a["H"]), np.int64)
    jumps = np.zeros(plan.n_chunks, np.int64)
    for c in range(plan.n_chunks):
        size = int(plan.chunk_sizes(c, c + 1)[0])
        for r in reference_chunk(a, _rng.chunk_state(plan.entropy, c), size):
            x0 = r["path_x"][0]
            for k, x in enumerate(r["x"]):
                counts[k, x] += 1
                cross[k, x] += a["g0"][x0]
                for nu in range(a["E"].shape[1]):
                    heat[k, a["hoff"][nu] + a["E"][x, nu] - a["E"][x0, nu]] += 1
            jumps[c] += r["total_jumps"]
    return counts, cross, heat, jumps


@pytest.mark.parametrize("name", ["three_spins_eth", "two_baths"])
def test_accumulators_equal_reference_sums(name):
    plan, acc = _run(get_model_dict(name), 300, 7, 100, threads=2, records=False)
    counts, cross, heat, jumps = _accumulators_from_reference(plan)
    np.testing.assert_array_equal(acc.counts, counts)
    np.testing.assert_array_equal(acc.cross, cross)
    np.testing.assert_array_equal(acc.heat, heat)
    np.testing.assert_array_equal(acc.jumps, jumps)


def test_long_paths_truncated_at_capacity_match_reference():
    """A trajectory with more jumps than PATH_CAPACITY keeps exactly its first PATH_CAPACITY points."""
    md = get_model_dict("qubit_osc_sqrt")
    md["baths"][0]["kernel"]["gamma"] = 30.0
    plan, acc = _run(md, 3, 11, 3, paths=3, times=[0.0, 100.0])
    cap = engine.PATH_CAPACITY
    ref = reference_chunk(plan.arrays, _rng.chunk_state(plan.entropy, 0), 3)
    for i in range(3):
        assert len(ref[i]["path_t"]) > cap  # the test needs truncation
        assert acc.path_len[i] == cap
        assert np.array_equal(acc.path_t[i], ref[i]["path_t"][:cap])
        assert np.array_equal(acc.path_x[i], ref[i]["path_x"][:cap])
        assert acc.rec_n[i, -1] == ref[i]["total_jumps"]


def test_records_rebuild_every_accumulator():
    """counts, cross, heat and jump totals are functions of the per-trajectory records."""
    plan, acc = _run(get_model_dict("two_baths_mixed"), 5000, 3, 512, threads=2)
    a = plan.arrays
    x0 = acc.rec_x[:, 0]
    assert plan.times[0] == 0.0
    assert np.all(acc.rec_n[:, 0] == 0)
    assert np.all(np.diff(acc.rec_n, axis=1) >= 0)
    # jumps are counted up to the last sample time only (the kernel stops there)
    assert acc.rec_n[:, -1].sum() == acc.jumps.sum()
    for k in range(len(plan.times)):
        xk = acc.rec_x[:, k]
        n = plan.network.n_states
        np.testing.assert_array_equal(acc.counts[k], np.bincount(xk, minlength=n))
        for j in range(2):
            np.testing.assert_array_equal(acc.cross[k, :, j],
                                          np.bincount(xk, weights=a["g0"][x0, j], minlength=n).astype(np.int64))
        for nu in range(a["E"].shape[1]):
            d = a["E"][xk, nu] - a["E"][x0, nu]
            em, off = a["emax"][nu], a["hoff"][nu]
            np.testing.assert_array_equal(acc.heat[k, off - em:off + em + 1],
                                          np.bincount(d + em, minlength=2 * em + 1))


# --------------------------------------------------------------------------- random numbers


def test_xoshiro256pp_reference_vector():
    """State (1, 2, 3, 4): the outputs of Vigna's xoshiro256plusplus.c (as in rand_xoshiro's tests)."""
    expected = [41943041, 58720359, 3588806011781223, 3591011842654386, 9228616714210784205,
                9973669472204895162, 14011001112246962877, 12406186145184390807, 15849039046786891736,
                10450023813501588000]
    r = ReferenceRNG([1, 2, 3, 4])
    assert [r.next_u64() for _ in range(10)] == expected
    s = np.array([1, 2, 3, 4], dtype=np.uint64)
    assert _u64_draws(s, 10).tolist() == expected


def test_chunk_state_is_seedsequence_spawn():
    """Chunk i is seeded by SeedSequence(entropy, spawn_key=(i,)), i.e. the i-th spawned child."""
    entropy = 123456789012345678901234567890
    kids = np.random.SeedSequence(entropy).spawn(5)
    for i, kid in enumerate(kids):
        np.testing.assert_array_equal(_rng.chunk_state(entropy, i), kid.generate_state(4, np.uint64))
    states = {tuple(_rng.chunk_state(7, i)) for i in range(200)}
    assert len(states) == 200


@nb.njit
def _u64_draws(s, n):
    out = np.empty(n, np.uint64)
    for i in range(n):
        out[i] = _rng.next_u64(s)
    return out


@nb.njit
def _exp_draws(s, n, zk, zw, zf):
    out = np.empty(n)
    for i in range(n):
        out[i] = next_exponential(s, zk, zw, zf)
    return out


@nb.njit
def _uniform_draws(s, n):
    out = np.empty(n)
    for i in range(n):
        out[i] = next_double(s)
    return out


def _exp(n, entropy=2024, chunk=0):
    return _exp_draws(_rng.chunk_state(entropy, chunk), n, _rng.ZIG_K, _rng.ZIG_W, _rng.ZIG_F)


def test_compiled_draws_equal_reference_rng():
    st = _rng.chunk_state(99, 3)
    ref = ReferenceRNG(st)
    e = _exp_draws(st.copy(), 20000, _rng.ZIG_K, _rng.ZIG_W, _rng.ZIG_F)
    assert np.array_equal(e, [ref.next_exponential() for _ in range(20000)])
    # 20000 draws take the tail (x > R) ~9 times: that branch is compared too
    assert np.count_nonzero(e > _rng.ZIG_R) > 0
    ref = ReferenceRNG(st)
    u = _uniform_draws(st.copy(), 1000)
    assert np.array_equal(u, [ref.next_double() for _ in range(1000)])


def test_ziggurat_exponential_ks():
    # KS of 10^6 draws against Exp(1): false alarm 1e-6 (ALPHA) by construction of the p-value
    x = _exp(1_000_000)
    assert np.all(x >= 0) and np.all(np.isfinite(x))
    assert sst.kstest(x, "expon").pvalue > ALPHA


def test_ziggurat_exponential_binned_and_tail():
    """G-test in 500 equal-probability bins (sensitive to the layer and wedge structure the KS
    statistic averages away) and the tail mass beyond the base layer R = 7.697 (z-test)."""
    n = 2_000_000
    x = _exp(n, entropy=31337, chunk=5)
    edges = -np.log1p(-np.linspace(0, 1, 501)[1:-1])  # Exp(1) quantiles
    counts = np.bincount(np.searchsorted(edges, x), minlength=500)
    assert g_test(counts, np.full(500, 1 / 500)).pvalue > ALPHA
    tail = np.count_nonzero(x > _rng.ZIG_R)
    pt = np.exp(-_rng.ZIG_R)
    z = (tail - n * pt) / np.sqrt(n * pt * (1 - pt))
    assert abs(z) < 4.89  # two-sided normal false alarm 1e-6
    # the mean and the second moment (E x = 1, E x^2 = 2; Var x = 1, Var x^2 = 20)
    assert abs(x.mean() - 1.0) / np.sqrt(1.0 / n) < 4.89
    assert abs((x * x).mean() - 2.0) / np.sqrt(20.0 / n) < 4.89


def test_uniform_ks_and_bits():
    u = _uniform_draws(_rng.chunk_state(5, 0), 1_000_000)
    assert np.all((u >= 0) & (u < 1))
    assert sst.kstest(u, "uniform").pvalue > ALPHA  # false alarm 1e-6
    # 53-bit resolution: every draw is a multiple of 2^-53 and the low bits are used
    k = u * 2.0**53
    assert np.array_equal(k, np.floor(k))
    low = (k.astype(np.int64) & 0xFF)
    assert g_test(np.bincount(low, minlength=256), np.full(256, 1 / 256)).pvalue > ALPHA


def test_serial_pairs_uniform():
    """Consecutive uniforms are independent: 32x32 grid of (u_i, u_{i+1}) pairs, G-test."""
    u = _uniform_draws(_rng.chunk_state(17, 1), 1_000_000)
    i = (u[0::2] * 32).astype(int) * 32 + (u[1::2] * 32).astype(int)
    assert g_test(np.bincount(i, minlength=1024), np.full(1024, 1 / 1024)).pvalue > ALPHA


def test_chunks_streams_uncorrelated():
    """Neighbouring chunk streams: correlation of 10^5 paired uniforms, |z| < 4.89 (false alarm 1e-6)."""
    n = 100_000
    a = _uniform_draws(_rng.chunk_state(8, 0), n)
    b = _uniform_draws(_rng.chunk_state(8, 1), n)
    r = np.corrcoef(a, b)[0, 1]
    assert abs(r) * np.sqrt(n) < 4.89


# --------------------------------------------------------------------------- determinism


DET_MODEL = "two_baths"
DET_N, DET_CS = 20_000, 256  # 79 chunks: several waves of 16 x threads chunks


def _ens(plan, acc):
    return Ensemble(plan, acc, {})


def test_same_seed_bit_identical_for_1_and_2_threads():
    p1, a1 = _run(get_model_dict(DET_MODEL), DET_N, 42, DET_CS, threads=1, paths=7)
    p2, a2 = _run(get_model_dict(DET_MODEL), DET_N, 42, DET_CS, threads=2, paths=7)
    assert p1.n_chunks == 79
    assert_acc_equal(a1, a2)
    pd.testing.assert_frame_equal(_ens(p1, a1).thermo(), _ens(p2, a2).thermo(), check_exact=True)


def test_simulate_threads_do_not_change_result():
    md = get_model_dict("qubit_osc_sqrt")
    e1 = trajmc.simulate(md, trajectories=30_000, seed=5, threads=1, chunk_size=1000, paths=3)
    e2 = trajmc.simulate(md, trajectories=30_000, seed=5, threads=2, chunk_size=1000, paths=3)
    assert_acc_equal(e1.acc, e2.acc)
    assert e1.stats["jumps"] == e2.stats["jumps"]
    assert e1.stats["threads"] == 1 and e2.stats["threads"] == 2
    pd.testing.assert_frame_equal(e1.thermo(), e2.thermo(), check_exact=True)
    np.testing.assert_array_equal(e1.p, e2.p)
    np.testing.assert_array_equal(e1.p_system()[0], e2.p_system()[0])
    for (t1, x1), (t2, x2) in zip(e1.paths, e2.paths):
        assert np.array_equal(t1, t2) and np.array_equal(x1, x2)


def test_chunk_schedule_does_not_change_result():
    """stop_after / continue, with thread counts changing between sessions."""
    md = get_model_dict(DET_MODEL)
    p0, a0 = _run(md, DET_N, 42, DET_CS, threads=2, paths=7)
    plan = engine.make_plan(md, trajectories=DET_N, seed=42, chunk_size=DET_CS, records=True, paths=7)
    acc = engine.new_accumulators(plan)
    for stop, threads in [(1, 2), (5, 1), (40, 2), (41, 1), (None, 2)]:
        engine.run_plan(plan, acc, threads, stop_after=stop)
        if stop is not None:
            assert acc.chunks_done == stop
            # partial accumulators are consistent with the chunks done
            assert np.all(acc.counts.sum(axis=1) == stop * DET_CS)
    assert_acc_equal(a0, acc)
    pd.testing.assert_frame_equal(_ens(p0, a0).thermo(), _ens(plan, acc).thermo(), check_exact=True)


def test_interrupted_run_continues_bit_identically():
    """A KeyboardInterrupt between waves: checkpoint called with consistent accumulators,
    Interrupted raised, and continuing gives the uninterrupted result."""
    md = get_model_dict(DET_MODEL)
    p0, a0 = _run(md, DET_N, 9, DET_CS, threads=2)
    plan = engine.make_plan(md, trajectories=DET_N, seed=9, chunk_size=DET_CS, records=True)
    acc = engine.new_accumulators(plan)
    saved = []

    def progress(k):  # the first wave has one chunk per thread (waves then adapt to ~0.5 s)
        raise KeyboardInterrupt

    def checkpoint(a):
        saved.append((a.chunks_done, a.counts.copy(), a.jumps.copy()))

    with pytest.raises(trajmc.Interrupted, match="interrupted after 2 of 79 chunks"):
        engine.run_plan(plan, acc, 2, progress=progress, checkpoint=checkpoint, checkpoint_every=1e9)
    done, counts, jumps = saved[-1]
    assert done == acc.chunks_done == 2
    assert np.all(counts.sum(axis=1) == 2 * DET_CS)
    assert np.all(jumps[:2] > 0) and np.all(jumps[2:] == 0)
    engine.run_plan(plan, acc, 1)
    assert_acc_equal(a0, acc)




# Regression test: BUG engine.run_plan: SIGINT/SIGTERM are masked in the main thread only, so a Ctrl-C during a wa
# ve is delivered to a numba worker thread and the KeyboardInterrupt is raised right after _call_
# wave returns, inside the 'deferred' block: the wave is in the thread buffers and gets flushed, 
# but chunks_done/jumps are not advanced, so the checkpoint holds the counts of chunks_done + W c
# hunks and resume fails ('counts do not add up')
@pytest.mark.regression
def test_signal_during_a_wave_keeps_accumulators_consistent(monkeypatch):
    """Reproduces deterministically what a real Ctrl-C does ~3 times in 4 (test_runio's Ctrl-C test)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in `python -m trajmc`
    try:
        md = get_model_dict(DET_MODEL)
        p0, a0 = _run(md, DET_N, 9, DET_CS, threads=2)
        plan = engine.make_plan(md, trajectories=DET_N, seed=9, chunk_size=DET_CS, records=True)
        acc = engine.new_accumulators(plan)
        real = engine._call_wave
        calls = []

        def wave_with_ctrl_c(*args):
            real(*args)
            calls.append(1)
            if len(calls) == 1:  # the first wave (one chunk per thread) leaves chunks to interrupt
                signal_from_another_thread()  # Ctrl-C arriving while the wave runs

        monkeypatch.setattr(engine, "_call_wave", wave_with_ctrl_c)
        saved = []
        with pytest.raises((trajmc.Interrupted, KeyboardInterrupt)):
            engine.run_plan(plan, acc, 2, checkpoint=lambda a: saved.append((a.chunks_done, a.counts.copy())))
        done, counts = saved[-1]
        assert done == acc.chunks_done
        assert np.all(counts.sum(axis=1) == min(done * DET_CS, DET_N)), (done, counts.sum(axis=1)[0] / DET_CS)
        monkeypatch.setattr(engine, "_call_wave", real)
        engine.run_plan(plan, acc, 2)
        assert_acc_equal(a0, acc)
    finally:
        signal.signal(signal.SIGINT, old)


def test_different_seeds_differ():
    md = get_model_dict("qubit_osc_sqrt")
    e1 = trajmc.simulate(md, trajectories=5000, seed=1, threads=1)
    e2 = trajmc.simulate(md, trajectories=5000, seed=2, threads=1)
    assert not np.array_equal(e1.counts, e2.counts)
    assert not np.array_equal(e1.records["x"], e2.records["x"])
    assert not e1.thermo().equals(e2.thermo())


def test_chunk_size_is_part_of_the_seeding():
    """Chunks are fixed by trajectories and chunk size (documented): another chunk size, another sample."""
    md = get_model_dict("qubit_osc_sqrt")
    e1 = trajmc.simulate(md, trajectories=5000, seed=1, threads=1, chunk_size=1000)
    e2 = trajmc.simulate(md, trajectories=5000, seed=1, threads=1, chunk_size=500)
    assert not np.array_equal(e1.records["x"], e2.records["x"])


def test_fresh_entropy_is_recorded_and_replays():
    md = get_model_dict("qubit_osc_sqrt")
    e1 = trajmc.simulate(md, trajectories=5000, seed=None, threads=2, chunk_size=700)
    e2 = trajmc.simulate(md, trajectories=5000, seed=None, threads=2, chunk_size=700)
    ent = e1.stats["seed_entropy"]
    assert isinstance(ent, int) and ent >= 2**64  # SeedSequence entropy: 128 bits from the OS
    assert ent != e2.stats["seed_entropy"]
    again = trajmc.simulate(md, trajectories=5000, seed=ent, threads=1, chunk_size=700)
    assert_acc_equal(e1.acc, again.acc)
    pd.testing.assert_frame_equal(e1.thermo(), again.thermo(), check_exact=True)
    ss = trajmc.simulate(md, trajectories=5000, seed=np.random.SeedSequence(ent), threads=1, chunk_size=700)
    assert_acc_equal(e1.acc, ss.acc)


def test_model_seed_is_the_default():
    md = get_model_dict("qubit_osc_sqrt")
    md["simulation"] = {"seed": 77, "trajectories": 3000}
    e1 = trajmc.simulate(md, threads=1)
    e2 = trajmc.simulate(get_model_dict("qubit_osc_sqrt"), trajectories=3000, seed=77, threads=1)
    assert e1.stats["seed_entropy"] == 77 and e1.stats["trajectories"] == 3000
    assert_acc_equal(e1.acc, e2.acc)


@pytest.mark.parametrize("seed", [-1, 1.5, "3", True, np.random.SeedSequence(1).spawn(1)[0]])
def test_bad_seeds_rejected(seed):
    with pytest.raises(trajmc.ModelError, match="seed"):
        engine.make_plan(get_model_dict("qubit_osc_sqrt"), trajectories=10, seed=seed)


@pytest.mark.parametrize("kw, key", [({"trajectories": 0}, "trajectories"), ({"trajectories": 2.0}, "trajectories"),
                                     ({"chunk_size": 0}, "chunk_size"), ({"paths": -1}, "paths"),
                                     ({"paths": 1001}, "paths")])
def test_bad_plan_parameters_rejected(kw, key):
    with pytest.raises(trajmc.ModelError, match=key):
        engine.make_plan(get_model_dict("qubit_osc_sqrt"), **{"trajectories": 10, **kw})


@pytest.mark.parametrize("threads", [0, -2, 1.0, True, 10**6])
def test_bad_threads_rejected(threads):
    with pytest.raises(trajmc.ModelError, match="threads"):
        trajmc.simulate(get_model_dict("qubit_osc_sqrt"), trajectories=10, seed=1, threads=threads)


def test_plan_chunking_and_stats():
    md = get_model_dict("qubit_osc_sqrt")
    ens = trajmc.simulate(md, trajectories=10_001, seed=3, threads=2, chunk_size=1000, records=False)
    st = ens.stats
    assert st["chunks"] == 11 and st["chunk_size"] == 1000 and st["trajectories"] == 10_001
    assert st["jumps"] == int(ens.acc.jumps.sum()) > 0
    assert np.all(ens.acc.jumps > 0) and len(ens.acc.jumps) == 11
    assert ens.records is None
    for k in ("wall_s", "compile_s"):
        assert st[k] >= 0
    assert np.all(ens.counts.sum(axis=1) == 10_001)
    assert ens.trajectories == 10_001
    assert ens.p.shape == ens.p_se.shape == (len(ens.times), ens.network.n_states)
    assert list(ens.states.columns) == ["s", "E_B"]


def test_paths_are_limited_to_trajectories_and_chunk():
    plan = engine.make_plan(get_model_dict("qubit_osc_sqrt"), trajectories=5, seed=1, chunk_size=3, paths=10)
    assert plan.paths == 3


def test_heat_distribution_matches_mean_heat():
    ens = trajmc.simulate(get_model_dict("two_baths"), trajectories=20_000, seed=8, threads=2)
    th = ens.thermo()
    for b in ens.model.bath_names:
        for k in (1, len(ens.times) - 1):
            hd = ens.heat_distribution(b, k)
            assert np.isclose(hd.sum(), 1.0, rtol=0, atol=1e-12)
            assert np.isclose((hd.index.to_numpy() * hd.to_numpy()).sum(), th[f"Q_{b}"].iloc[k], rtol=0, atol=1e-12)
