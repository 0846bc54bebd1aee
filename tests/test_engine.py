"""The Monte Carlo engine: reference Gillespie bit for bit, random numbers, determinism, interruption.

* ``reference_chunk`` (pure Python, the specification) must reproduce both compiled kernels (enumerated
  network and implicit per-bath tables) exactly: per-trajectory records, full jump paths, jump counts, and
  every streaming accumulator rebuilt from the reference trajectories.
* The generator: xoshiro256++ against the published reference vector, the ziggurat exponential and the
  uniform against their laws (KS and G-tests with a stated false-alarm rate).
* Determinism (same seed -> bit-identical results for any thread count and any chunk schedule: stops,
  restarts, interruptions inside a chunk), on both paths.
"""
from __future__ import annotations

import threading

import numba as nb
import numpy as np
import pandas as pd
import pytest
from conftest import THREADS, get_model_dict
from scipy import stats as sst

import trajmc
from trajmc import _kernel as K
from trajmc import _rng, engine
from trajmc._rng import next_double, next_exponential
from trajmc.ensemble import Ensemble
from trajmc.reference import ReferenceRNG, reference_chunk
from trajmc.stats import g_test

# Per-test false-alarm rate of every statistical assertion in this file.
ALPHA = 1e-6
PATHS = ["enumerated", "implicit"]


def _plan(model, trajectories, seed, chunk_size, path="enumerated", records=True, paths=0, times=None):
    return engine.make_plan(model, trajectories=trajectories, seed=seed, times=times, chunk_size=chunk_size,
                            records=records, paths=paths, engine=path)


def _run(model, trajectories, seed, chunk_size, threads=1, path="enumerated", records=True, paths=0, times=None,
         stop_after=None):
    plan = _plan(model, trajectories, seed, chunk_size, path, records, paths, times)
    acc = engine.new_accumulators(plan)
    engine.run_plan(plan, acc, threads, stop_after=stop_after)
    return plan, acc


def assert_acc_equal(a, b):
    fa, fb = a.arrays(), b.arrays()
    assert set(fa) == set(fb)
    for f in fa:
        assert fa[f].dtype == fb[f].dtype, f
        assert np.array_equal(fa[f], fb[f]), f"accumulator {f} differs"
    assert a.chunks_done == b.chunks_done
    assert all(np.array_equal(x, y) for x, y in zip(a.windows, b.windows, strict=True))


# --------------------------------------------------------------------------- reference Gillespie


REF_MODELS = ["qubit_osc_sqrt", "three_exp_golden", "qubit_spins_linear", "two_baths", "two_baths_mixed"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", REF_MODELS)
def test_reference_chunk_reproduces_kernel_bit_for_bit(name, path):
    """Records, paths, jump counts of every chunk (the last one partial), on several threads."""
    N, cs, P = 230, 64, 12  # 4 chunks, the last one partial (38 trajectories)
    plan, acc = _run(get_model_dict(name), N, 20240531, cs, threads=THREADS, path=path, paths=P)
    assert plan.n_chunks == 4 and plan.paths == P and plan.path == path
    for c in range(plan.n_chunks):
        size = int(plan.chunk_sizes(c, c + 1)[0])
        ref = reference_chunk(plan, _rng.chunk_state(plan.entropy, c), size)
        lo = c * cs
        np.testing.assert_array_equal(acc.rec_x[lo:lo + size], np.array([r["x"] for r in ref]))
        np.testing.assert_array_equal(acc.rec_n[lo:lo + size], np.array([r["jumps"] for r in ref]))
        if path == "implicit":
            np.testing.assert_array_equal(acc.rec_E[lo:lo + size], np.array([r["E"] for r in ref]))
        assert acc.jumps[c] == sum(r["total_jumps"] for r in ref)
        if c == 0:  # paths are kept for the first P trajectories of the run
            for i in range(P):
                L = acc.path_len[i]
                assert L == len(ref[i]["path_t"]) <= engine.PATH_CAPACITY
                # exact float equality: same draws, same arithmetic
                assert np.array_equal(acc.path_t[i, :L], ref[i]["path_t"])
                assert np.array_equal(acc.path_x[i, :L], ref[i]["path_x"])
                if path == "implicit":
                    assert np.array_equal(acc.path_E[i, :L], ref[i]["path_E"])
    assert acc.jumps.sum() > N  # the whole run really moves (otherwise the comparison is vacuous)


@pytest.mark.parametrize("path", PATHS)
def test_reference_on_a_driven_model(path):
    md = trajmc.get_example("driven-qubit")
    md["baths"][0]["emax"] = 200
    plan, acc = _run(md, 100, 5, 50, threads=THREADS, path=path, paths=5)
    for c in range(plan.n_chunks):
        ref = reference_chunk(plan, _rng.chunk_state(plan.entropy, c), 50)
        np.testing.assert_array_equal(acc.rec_x[c * 50:(c + 1) * 50], np.array([r["x"] for r in ref]))
        np.testing.assert_array_equal(acc.rec_w[c * 50:(c + 1) * 50], np.array([r["work"] for r in ref]))
    assert np.any(acc.rec_w != 0)


def _rebuild_from_reference(plan):
    """Every streamed accumulator, rebuilt from reference trajectories in kernel order."""
    n_t, n_s, N = plan.n_t, plan.n_levels, plan.n_baths
    win = plan.windows
    out = engine.new_accumulators(plan)
    st = plan.network.states if plan.network is not None else None
    lev = plan.clock.levels
    for c in range(plan.n_chunks):
        size = int(plan.chunk_sizes(c, c + 1)[0])
        mom = np.zeros_like(out.mom)
        for r in reference_chunk(plan, _rng.chunk_state(plan.entropy, c), size):
            if plan.path == "enumerated":
                x = r["x"]
                s = st[x, 0]
                E = st[x, 1:]
            else:
                s, E = r["x"], r["E"]
            q = E[0] - E  # (n_t, N) heat into the system
            for k in range(n_t):
                out.sys2[k, s[0], s[k]] += 1
                for nu in range(N):
                    out.heat[k, win.qoff[nu] + q[k, nu] - win.qlo[nu]] += 1
                    out.qsum[k, nu, s[0], s[k]] += q[k, nu]
                    if plan.path == "implicit":
                        out.marg[k, win.moff[nu] + (E[k, nu] - win.lo[nu]) * n_s + s[k]] += 1
                if plan.path == "enumerated":
                    out.counts[k, x[k]] += 1
                    out.cross[k, x[k]] += plan.tables.g0[x[0]]
                n = float(r["jumps"][k])
                for p in range(4):
                    mom[k, K.M_ACT + p] += n ** (p + 1)
                for nu in range(N):
                    for mu in range(N):
                        mom[k, K.M_QQ + nu * N + mu] += float(q[k, nu]) * float(q[k, mu])
                bal = lev[plan.clock.seg_of[k], s[k]] - lev[0, s[0]] - q[k].sum() - r["work"][k]
                out.viol[0] += bal != 0
            out.viol[1] += n_t
            out.jumps[c] += r["total_jumps"]
        out.mom += mom
    return out


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ["three_spins_eth", "two_baths"])
def test_accumulators_equal_reference_sums(name, path):
    plan, acc = _run(get_model_dict(name), 300, 7, 100, threads=THREADS, path=path, records=False)
    ref = _rebuild_from_reference(plan)
    for f in ("sys2", "heat", "qsum", "viol", "counts", "cross", "marg", "jumps"):
        a, b = getattr(acc, f), getattr(ref, f)
        if a is None:
            assert b is None
            continue
        np.testing.assert_array_equal(a, b, err_msg=f)
    # float sums: per chunk in trajectory order, then chunk by chunk: the same rounding
    np.testing.assert_array_equal(acc.mom[:, :K.M_DS], ref.mom[:, :K.M_DS])
    np.testing.assert_array_equal(acc.mom[:, K.M_QQ:], ref.mom[:, K.M_QQ:])
    assert acc.viol[0] == 0 and acc.viol[1] == 300 * plan.n_t


def test_long_paths_truncated_at_capacity_match_reference():
    """A trajectory with more jumps than PATH_CAPACITY keeps exactly its first PATH_CAPACITY points."""
    md = get_model_dict("qubit_osc_sqrt")
    md["baths"][0]["kernel"]["gamma"] = 30.0
    plan, acc = _run(md, 3, 11, 3, paths=3, times=[0.0, 100.0])
    cap = engine.PATH_CAPACITY
    ref = reference_chunk(plan, _rng.chunk_state(plan.entropy, 0), 3)
    for i in range(3):
        assert len(ref[i]["path_t"]) > cap  # the test needs truncation
        assert acc.path_len[i] == cap
        assert np.array_equal(acc.path_t[i], ref[i]["path_t"][:cap])
        assert np.array_equal(acc.path_x[i], ref[i]["path_x"][:cap])
        assert acc.rec_n[i, -1] == ref[i]["total_jumps"]


@pytest.mark.parametrize("path", PATHS)
def test_records_rebuild_the_marginals(path):
    """Level counts, heat histograms and jump totals are functions of the per-trajectory records."""
    plan, acc = _run(get_model_dict("two_baths_mixed"), 5000, 3, 512, threads=THREADS, path=path)
    if path == "enumerated":
        s = plan.network.states[acc.rec_x, 0]
        E = plan.network.states[acc.rec_x][:, :, 1:]
    else:
        s, E = acc.rec_x, acc.rec_E
    assert np.all(acc.rec_n[:, 0] == 0) and np.all(np.diff(acc.rec_n, axis=1) >= 0)
    assert acc.rec_n[:, -1].sum() == acc.jumps.sum()  # jumps are counted up to the last sample time only
    w = acc.windows
    for k in range(plan.n_t):
        np.testing.assert_array_equal(acc.sys2[k].sum(axis=0), np.bincount(s[:, k], minlength=plan.n_levels))
        for nu in range(plan.n_baths):
            q = E[:, 0, nu] - E[:, k, nu]
            np.testing.assert_array_equal(acc.heat[k, w.qoff[nu]: w.qoff[nu] + w.qwid[nu]],
                                          np.bincount(q - w.qlo[nu], minlength=w.qwid[nu]))


def test_implicit_windows_grow_without_changing_the_result(monkeypatch):
    """Tiny initial windows force several regrowths (and reruns of chunks): the totals equal a run whose
    windows never had to grow, entry for entry on the common energies."""
    md = get_model_dict("two_baths")
    p0, a0 = _run(md, 3000, 21, 256, threads=THREADS, path="implicit", records=False)
    _tiny_windows(monkeypatch)
    p1, a1 = _run(md, 3000, 21, 256, threads=THREADS, path="implicit", records=False)
    assert np.all(a1.windows.wid > 1)  # it grew
    big = engine._merge_windows(a0.windows, a1.windows, p0.n_levels)
    engine.grow_accumulators(p0, a0, big)
    engine.grow_accumulators(p1, a1, big)
    assert_acc_equal(a0, a1)


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
DET_N, DET_CS = 20_000, 256  # 79 chunks: several waves


def _ens(plan, acc):
    return Ensemble(plan, acc, {})


@pytest.mark.parametrize("path", PATHS)
def test_same_seed_bit_identical_for_any_thread_count(path):
    p1, a1 = _run(get_model_dict(DET_MODEL), DET_N, 42, DET_CS, threads=1, path=path, paths=7)
    p2, a2 = _run(get_model_dict(DET_MODEL), DET_N, 42, DET_CS, threads=THREADS, path=path, paths=7)
    assert p1.n_chunks == 79
    assert_acc_equal(a1, a2)
    pd.testing.assert_frame_equal(_ens(p1, a1).thermo(), _ens(p2, a2).thermo(), check_exact=True)


def test_simulate_threads_do_not_change_result():
    md = get_model_dict("qubit_osc_sqrt")
    e1 = trajmc.simulate(md, trajectories=30_000, seed=5, threads=1, chunk_size=1000, paths=3)
    e2 = trajmc.simulate(md, trajectories=30_000, seed=5, threads=THREADS, chunk_size=1000, paths=3)
    assert_acc_equal(e1.acc, e2.acc)
    assert e1.stats["jumps"] == e2.stats["jumps"]
    assert e1.stats["threads"] == 1 and e2.stats["threads"] == THREADS
    pd.testing.assert_frame_equal(e1.thermo(), e2.thermo(), check_exact=True)
    np.testing.assert_array_equal(e1.p, e2.p)
    np.testing.assert_array_equal(e1.p_system(), e2.p_system())
    pd.testing.assert_frame_equal(e1.trajectory_entropy(), e2.trajectory_entropy(), check_exact=True)
    for (t1, x1), (t2, x2) in zip(e1.paths, e2.paths, strict=True):
        assert np.array_equal(t1, t2) and np.array_equal(x1, x2)


@pytest.mark.parametrize("path", PATHS)
def test_chunk_schedule_does_not_change_result(path):
    """stop_after / continue, with thread counts changing between sessions."""
    md = get_model_dict(DET_MODEL)
    p0, a0 = _run(md, DET_N, 42, DET_CS, threads=THREADS, path=path, paths=7)
    plan = _plan(md, DET_N, 42, DET_CS, path, True, 7)
    acc = engine.new_accumulators(plan)
    for stop, threads in [(1, THREADS), (5, 1), (40, THREADS), (41, 1), (None, THREADS)]:
        engine.run_plan(plan, acc, threads, stop_after=stop)
        if stop is not None:
            assert acc.chunks_done == stop
            assert np.all(acc.sys2.reshape(plan.n_t, -1).sum(axis=1) == stop * DET_CS)
    assert_acc_equal(a0, acc)
    pd.testing.assert_frame_equal(_ens(p0, a0).thermo(), _ens(plan, acc).thermo(), check_exact=True)


class _StopAfterWaves(engine.StopFlag):
    """A stop request that arrives while wave number ``n`` runs (deterministic stand-in for Ctrl-C)."""

    def __init__(self, n):
        super().__init__()
        self.n = n
        self.waves = 0


def _interrupt_in_wave(monkeypatch, n):
    """Make the n-th wave see its stop flag set while it runs: the kernel itself must stop."""
    real = engine._in_thread

    def in_thread(fn, args, threads, stop, ctl):
        stop.waves += 1
        if stop.waves == n:
            stop.set = True
            ctl[0] = 1  # what the signal handler does while the kernel runs
        return real(fn, args, threads, stop, ctl)

    monkeypatch.setattr(engine, "_in_thread", in_thread)


@pytest.mark.parametrize("path", PATHS)
def test_interrupted_inside_a_wave_continues_bit_identically(path, monkeypatch):
    """A stop request while a wave runs: the kernel stops its chunks, the unfolded work is discarded, the
    checkpoint holds exactly chunks_done chunks, and continuing gives the uninterrupted result."""
    md = get_model_dict(DET_MODEL)
    p0, a0 = _run(md, DET_N, 9, DET_CS, threads=THREADS, path=path)
    plan = _plan(md, DET_N, 9, DET_CS, path)
    acc = engine.new_accumulators(plan)
    saved = []
    _interrupt_in_wave(monkeypatch, 2)  # the first wave runs one chunk per thread, so a second one exists
    with pytest.raises(trajmc.Interrupted, match="interrupted after"):
        engine.run_plan(plan, acc, THREADS, checkpoint=lambda a: saved.append((a.chunks_done, a.sys2.copy())),
                        stop=_StopAfterWaves(2))
    monkeypatch.undo()
    done, sys2 = saved[-1]
    assert done == acc.chunks_done and 0 < done < plan.n_chunks
    assert np.all(sys2.reshape(plan.n_t, -1).sum(axis=1) == done * DET_CS)
    assert np.all(acc.jumps[done:] == 0)
    engine.run_plan(plan, acc, 1)
    assert_acc_equal(a0, acc)


def test_kernel_stops_inside_a_long_trajectory():
    """The kernel polls the stop flag every 65536 jumps: a trajectory that would take hours stops when the
    flag is set from another thread (here once the kernel has demonstrably started that trajectory)."""
    md = get_model_dict("qubit_osc_sqrt")
    md["baths"][0]["kernel"]["gamma"] = 1e12  # ~1.3e12 jumps to t = 1: hours, so the flag comes first
    plan = engine.make_plan(md, trajectories=1, seed=3, chunk_size=1, paths=1, times=[0.0, 1.0], max_jumps=1e15)
    assert plan.expected_jumps > 1e12
    acc = engine.new_accumulators(plan)
    out = engine._new_out(plan, acc, 1, 1)
    ctl = np.zeros(1, np.int64)
    res = {}
    th = threading.Thread(target=lambda: res.update(j=K.enumerated_chunk(
        _rng.chunk_state(plan.entropy, 0), 1, 0, 0, 0, True, plan.clock, plan.tables, acc.windows, out, ctl)))
    th.start()
    while out.path_len[0] < 1000 and th.is_alive():  # inside the trajectory, jumping
        th.join(0.01)
    ctl[0] = 1
    th.join(120)
    assert not th.is_alive(), "the kernel ignored the stop flag"
    # stopped inside its one trajectory (an aborted chunk reports the jumps of finished trajectories only)
    assert out.status[0] == K.ABORTED and out.path_len[0] >= 1000 and res["j"] == 0


def test_stop_flag_set_before_a_chunk_aborts_at_once():
    plan = engine.make_plan(get_model_dict("two_baths"), trajectories=100, seed=1, chunk_size=100)
    acc = engine.new_accumulators(plan)
    out = engine._new_out(plan, acc, 1, 1)
    j = K.enumerated_chunk(_rng.chunk_state(1, 0), 100, 0, 0, 0, False, plan.clock, plan.tables, acc.windows, out,
                           np.ones(1, np.int64))
    assert j == 0 and out.status[0] == K.ABORTED and out.sys2.sum() == 0


def test_different_seeds_differ():
    md = get_model_dict("qubit_osc_sqrt")
    e1 = trajmc.simulate(md, trajectories=5000, seed=1, threads=1)
    e2 = trajmc.simulate(md, trajectories=5000, seed=2, threads=1)
    assert not np.array_equal(e1.counts, e2.counts)
    assert not e1.thermo().equals(e2.thermo())


def test_chunk_size_is_part_of_the_seeding():
    """Chunks are fixed by trajectories and chunk size (documented): another chunk size, another sample."""
    md = get_model_dict("qubit_osc_sqrt")
    e1 = trajmc.simulate(md, trajectories=5000, seed=1, threads=1, chunk_size=1000)
    e2 = trajmc.simulate(md, trajectories=5000, seed=1, threads=1, chunk_size=500)
    assert not np.array_equal(e1.counts, e2.counts)


def test_fresh_entropy_is_recorded_and_replays():
    md = get_model_dict("qubit_osc_sqrt")
    e1 = trajmc.simulate(md, trajectories=5000, seed=None, threads=THREADS, chunk_size=700)
    e2 = trajmc.simulate(md, trajectories=5000, seed=None, threads=THREADS, chunk_size=700)
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
                                     ({"paths": 1001}, "paths"), ({"engine": "fast"}, "engine"),
                                     ({"chunk_size": 2**31}, "chunk_size")])
def test_bad_plan_parameters_rejected(kw, key):
    with pytest.raises(trajmc.ModelError, match=key):
        engine.make_plan(get_model_dict("qubit_osc_sqrt"), **{"trajectories": 10, **kw})


@pytest.mark.parametrize("threads", [0, -2, 1.0, True, 10**6])
def test_bad_threads_rejected(threads):
    with pytest.raises(trajmc.ModelError, match="threads"):
        trajmc.simulate(get_model_dict("qubit_osc_sqrt"), trajectories=10, seed=1, threads=threads)


def test_plan_chunking_and_stats():
    md = get_model_dict("qubit_osc_sqrt")
    ens = trajmc.simulate(md, trajectories=10_001, seed=3, threads=THREADS, chunk_size=1000)
    st = ens.stats
    assert st["chunks"] == 11 and st["chunk_size"] == 1000 and st["trajectories"] == 10_001
    assert st["jumps"] == int(ens.acc.jumps.sum()) > 0
    assert np.all(ens.acc.jumps > 0) and len(ens.acc.jumps) == 11
    assert ens.records is None and st["records"] is False  # records are off by default: all is streamed
    assert st["path"] == "enumerated" and st["memory_estimate"] > 0
    for k in ("wall_s", "compile_s"):
        assert st[k] >= 0
    assert np.all(ens.counts.sum(axis=1) == 10_001)
    assert ens.trajectories == 10_001
    assert ens.p.shape == ens.p_se.shape == (len(ens.times), ens.network.n_states)
    assert list(ens.states.columns) == ["s", "E_B"]


def test_paths_are_limited_to_trajectories_and_chunk():
    plan = engine.make_plan(get_model_dict("qubit_osc_sqrt"), trajectories=5, seed=1, chunk_size=3, paths=10)
    assert plan.paths == 3


@pytest.mark.parametrize("path", PATHS)
def test_heat_distribution_is_the_streamed_histogram(path):
    """heat_distribution reads the streamed histogram; it sums to 1 and its mean is the table's Q."""
    ens = trajmc.simulate(get_model_dict("two_baths"), trajectories=20_000, seed=8, threads=THREADS, engine=path)
    th = ens.thermo()
    w = ens.acc.windows
    for nu, b in enumerate(ens.model.bath_names):
        for k in (1, len(ens.times) - 1):
            hd = ens.heat_distribution(b, k)
            raw = ens.acc.heat[k, w.qoff[nu]: w.qoff[nu] + w.qwid[nu]]
            assert hd.to_numpy().tolist() == (raw[raw > 0] / ens.trajectories).tolist()
            assert np.isclose(hd.sum(), 1.0, rtol=0, atol=1e-12)
            mean = float(raw @ np.arange(w.qlo[nu], w.qlo[nu] + w.qwid[nu])) / ens.trajectories
            assert np.isclose(mean, th[f"Q_{b}"].iloc[k], rtol=0, atol=1e-12)
    with pytest.raises(trajmc.ModelError, match="this model's baths: A, C"):
        ens.heat_distribution("nope")


def _tiny_windows(monkeypatch):
    """Initial windows of one energy: every run has to grow them, several times."""
    real = engine.initial_windows

    def tiny(model, path, jumps, n_s):
        from trajmc.tables import windows_from

        w = real(model, path, jumps, n_s)
        return windows_from(w.lo + w.wid // 2, np.ones_like(w.wid), np.zeros_like(w.qlo), np.ones_like(w.qwid), n_s)

    monkeypatch.setattr(engine, "initial_windows", tiny)


def test_grown_windows_do_not_depend_on_the_schedule(monkeypatch):
    """Windows grow when a wave overflows, and which wave that is depends on the thread count and the
    machine's speed; the run ends on canonical windows (the initial ones widened to the samples), so the
    stored arrays are identical whatever the schedule."""
    _tiny_windows(monkeypatch)
    md = get_model_dict("two_baths")
    p1, a1 = _run(md, 6000, 23, 128, threads=1, path="implicit", records=False)
    p2, a2 = _run(md, 6000, 23, 128, threads=THREADS, path="implicit", records=False)
    plan = _plan(md, 6000, 23, 128, "implicit", False)
    a3 = engine.new_accumulators(plan)
    for stop in (1, 2, 7, None):  # growth at other points of the run
        engine.run_plan(plan, a3, 1, stop_after=stop)
    assert np.all(a1.windows.wid > 1)
    assert_acc_equal(a1, a2)
    assert_acc_equal(a1, a3)
