"""Compiled Gillespie kernels.  Private: take named tuples of contiguous arrays, fill caller buffers, check nothing.

Direct-method SSA.  Per jump: one ziggurat exponential for the waiting time and (unless the state has a
single way out) one uniform that picks the jump in O(1) with Walker's alias method, whatever the number
of levels.  Two ways to hold the state:

* **enumerated** (:class:`Enumerated`): the state is an index into the reachable network; each row of
  the CSR out-edges carries an alias table.  Accumulates the full joint occupation ``p_x(t)``.
* **implicit** (:class:`Implicit`): the state is ``(s, E_1..E_N)`` and nothing is enumerated.  A jump
  through bath ``nu`` depends only on ``(nu, s, s', E_nu)``, so per-bath tables of exit rates and alias
  tables over the target level suffice (memory ``O(N n_s^2 (emax+1))``).  The uniform first picks the
  bath (linear in the number of baths), its remainder the target level.  Accumulates marginals: the
  joint ``(s, E_nu)`` of every bath in energy windows that the driver grows on demand.

Everything a trajectory contributes is added when it ends.  Integer accumulators live in one slot per
thread (integer sums are exact, so the totals do not depend on which thread ran which chunk); float sums
(``mom``) live in one slot per chunk and are added in chunk order by the driver.  The kernels poll
``ctl[0]`` (set by the driver on SIGINT/SIGTERM) at every trajectory and every 65536 jumps, and return
early with a chunk status; a chunk that did not finish is discarded and run again later from its seed.
"""
from __future__ import annotations

from typing import NamedTuple

import numba as nb
import numpy as np

from ._rng import next_double, next_exponential

# chunk status codes
OK = 0
ABORTED = 1  # ctl[0] was set: the chunk is incomplete
STALLED = 2  # time stopped advancing (a step below double precision): the run cannot continue
OVERFLOW = 3  # a sample fell outside an accumulator window (implicit path): grow the windows, run again

#: per-chunk float channels of ``mom[slot, :, k]``: sums over trajectories at sample time k
M_ACT = 0  # jumps so far: n, n^2, n^3, n^4
M_DS = 4  # trajectory entropy production: ds, ds^2, exp(-ds), exp(-2 ds)
M_QQ = 8  # heat products Q_nu Q_mu (N * N channels)

STALL_LIMIT = 1 << 20
POLL_MASK = 0xFFFF


class Clock(NamedTuple):
    """Sample and protocol times, shared by both paths."""

    times: np.ndarray  # (n_t + 1,) f8: sample times followed by +inf (a sentinel that ends every scan)
    seg_t: np.ndarray  # (n_seg,) f8: end of each protocol segment (the last is +inf)
    seg_of: np.ndarray  # (n_t,) i8: segment in force at each sample time (a switch at t counts at t)
    levels: np.ndarray  # (n_seg, n_s) i8: level energies of each segment
    woff: np.ndarray  # (1,) i8: row of zero work in the work histogram
    zk: np.ndarray  # ziggurat tables (see _rng)
    zw: np.ndarray
    zf: np.ndarray


class Enumerated(NamedTuple):
    """The reachable network: CSR out-edges of every segment with per-row alias tables."""

    cum0: np.ndarray  # (k,) f8 cumulative initial probabilities over ``support`` (last = 1)
    support: np.ndarray  # (k,) i8 state index of each initial support entry
    indptr: np.ndarray  # (n_seg, n + 1) i8 row offsets of segment k into the concatenated edges
    target: np.ndarray  # (m,) i8 target state of each edge
    aprob: np.ndarray  # (m,) f8 alias: probability of keeping column j of its row
    aalt: np.ndarray  # (m,) i8 alias: target state taken otherwise
    inv_exit: np.ndarray  # (n_seg, n) f8 1 / exit rate (unused where a state has no out-edge)
    s_of: np.ndarray  # (n,) i8 system level of each state
    E: np.ndarray  # (n, N) i8 bath energies of each state
    g0: np.ndarray  # (n,) i8 fixed-point ln(p0/V) of the initial state, summed per (state, time) in ``cross``
    lnq: np.ndarray  # (n, n_t) f8 exact -ln(p_t(x)/V_x) (shifted per class), or (0, 0): no entropy streaming
    dsbin: np.ndarray  # (2,) f8 lowest edge and inverse width of the Delta s_obs histogram bins


class Implicit(NamedTuple):
    """Per-bath rate tables on the whole grid; row ``toff[seg, nu] + s * G[nu] + E`` of bath ``nu``."""

    cum_s: np.ndarray  # (n_s,) f8 cumulative p_s(0) (product start)
    cum_E: np.ndarray  # (sum G,) f8 cumulative p_E(0) of each bath, bath nu at eoff[nu]
    eoff: np.ndarray  # (N,) i8
    init_rows: np.ndarray  # (k, 1 + N) i8 joint initial table (k = 0: product start)
    init_cum: np.ndarray  # (k,) f8
    G: np.ndarray  # (N,) i8 grid sizes emax + 1
    toff: np.ndarray  # (n_seg, N) i8
    exit: np.ndarray  # (R,) f8 exit rate of each (seg, bath, s, E) row
    aprob: np.ndarray  # (R * K,) f8 alias probabilities over the K target columns of each row
    aidx: np.ndarray  # (R * K,) i2 alias columns
    inv1: np.ndarray  # (R,) f8 one bath: 1 / exit rate of each row (0 where there is no way out); else (0,)
    tgl: np.ndarray  # (N, n_s, K) i8 target level of each column (-1: padding)
    g_s: np.ndarray  # (n_s,) i8 fixed-point ln p_s(0) (one bath: a0 = g_s[s] + g_E[E], for ``cross1``)
    g_E: np.ndarray  # (G_0,) i8 fixed-point ln p_E(0) - ln V_E
    g_rows: np.ndarray  # (k,) i8 fixed-point ln(p0/V) of the joint initial rows


class Windows(NamedTuple):
    """Energy windows of the windowed accumulators (implicit path; heat on both paths)."""

    lo: np.ndarray  # (N,) i8 lowest bath energy of the (s, E_nu) window
    wid: np.ndarray  # (N,) i8
    moff: np.ndarray  # (N,) i8 offset of bath nu's window in the flat marginal axis (wid * n_s entries)
    qlo: np.ndarray  # (N,) i8 lowest heat of the heat window
    qwid: np.ndarray  # (N,) i8
    qoff: np.ndarray  # (N,) i8 offset of bath nu's heat window in the flat heat axis


class Out(NamedTuple):
    """What a wave fills.  Leading axis: thread slot (T) or chunk slot (W) as noted; unused: size 0."""

    sys2: np.ndarray  # (T, n_s, n_s, n_t) i8 trajectories in level s_t at time k that started in s_0
    heat: np.ndarray  # (T, sum qwid, n_t) i8 heat into the system from each bath (windowed)
    qsum: np.ndarray  # (T, N, n_s, n_s, n_t) i8 sum of that heat, by (s_0, s_t)
    work: np.ndarray  # (T, HW, n_t) i8 work done so far (driven; row woff + W)
    viol: np.ndarray  # (T, 2) i8 first-law violations, samples checked
    ft: np.ndarray  # (T, n_s, n_s, qwid_0, n_t) i8 joint (s_0, s_t, heat of bath 0) (two baths) or size 0
    counts: np.ndarray  # (T, n, n_t) i8 enumerated: occupation of every state
    cross: np.ndarray  # (T, n, n_t) i8 enumerated: sum of g0(x_0) over trajectories in x at time k
    dsh: np.ndarray  # (T, B + 2, n_t) i8 enumerated with lnq: Delta s_obs histogram (under/overflow bins)
    marg: np.ndarray  # (T, sum wid * n_s, n_t) i8 implicit: joint (s, E_nu) of each bath (windowed)
    cross1: np.ndarray  # (T, wid_0 * n_s, n_t) i8 implicit, one bath: sum of a0(x_0) per (s, E) window cell
    ext: np.ndarray  # (T, N, 4) i8 out-of-window extremes: min E, max E, min heat, max heat
    visited: np.ndarray  # (T, N, 2) i8 implicit: lowest and highest bath energy of any state visited
    jumps: np.ndarray  # (W,) i8 jumps of each chunk
    fprint: np.ndarray  # (W,) u8 fingerprint of each chunk's random stream (its generator's end state)
    status: np.ndarray  # (W,) i8 chunk status (OK, ABORTED, STALLED, OVERFLOW)
    mom: np.ndarray  # (W, M, n_t) f8 per-chunk float sums (channels M_ACT, M_DS, M_QQ), contiguous in time
    rec_x: np.ndarray  # (R, n_t) i4 per-trajectory state (enumerated) or level (implicit); R = 0: off
    rec_n: np.ndarray  # (R, n_t) i4 jumps so far
    rec_w: np.ndarray  # (R, n_t) i4 work so far (driven) or (0, n_t)
    rec_E: np.ndarray  # (R, n_t, N) i4 implicit: bath energies, or size 0
    path_t: np.ndarray  # (P, cap) f8 jump times of the run's first P trajectories
    path_x: np.ndarray  # (P, cap) i8 state (enumerated) or level (implicit) after each jump
    path_E: np.ndarray  # (P, cap, N) i8 implicit: bath energies after each jump
    path_len: np.ndarray  # (P,) i8


# --------------------------------------------------------------------------- shared pieces


@nb.njit(inline="always", cache=True)
def _search(cum, lo, hi, u):
    """Smallest i in [lo, hi) with u < cum[i] (cum increasing, cum[hi - 1] = 1)."""
    hi -= 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if u < cum[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


@nb.njit(inline="always", cache=True)
def _alias_column(v, K, aprob, aidx, base):
    """Column of an alias table of K columns at ``base``, from a uniform ``v`` in [0, 1)."""
    vk = v * K
    col = int(vk)
    if col >= K:  # only if rounding pushed v to 1
        col = K - 1
    if vk - col >= aprob[base + col]:
        col = aidx[base + col]
    return col


# The per-sample additions to the integer buffers are written out in both kernels on purpose: a helper taking
# the output tuple, even marked inline="always", cost ~100 ns per sample (the tuple is passed by value).
# Helpers that take a few arrays, like this one, cost nothing.


@nb.njit(inline="always", cache=True)
def _tally_floats(mom, n_t, N, js, qs):
    """One trajectory's per-chunk float sums, channel by channel (``mom`` is (M, n_t): contiguous in time)."""
    for k in range(n_t):
        nf = float(js[k])
        n2 = nf * nf
        mom[M_ACT, k] += nf
        mom[M_ACT + 1, k] += n2
        mom[M_ACT + 2, k] += n2 * nf
        mom[M_ACT + 3, k] += n2 * n2
    for nu in range(N):
        for mu in range(N):
            c = M_QQ + nu * N + mu
            for k in range(n_t):
                mom[c, k] += float(qs[k, nu]) * float(qs[k, mu])

# --------------------------------------------------------------------------- enumerated path


@nb.njit(cache=True, nogil=True)
def enumerated_chunk(rng, n_traj, slot, tid, rec0, paths_on, ck, net, win, out, ctl):
    """Simulate ``n_traj`` trajectories with generator state ``rng`` (uint64[4], advanced in place).

    ``slot``: this chunk's row in the per-chunk outputs; ``tid``: the thread slot of the per-thread
    outputs; ``rec0``: first record row; ``paths_on``: keep the paths of the first trajectories.
    Returns the number of jumps; ``out.status[slot]`` says whether the chunk finished.
    """
    n_t = ck.times.shape[0] - 1
    N = net.E.shape[1]
    k0 = net.support.shape[0]
    record = out.rec_x.shape[0] > 0
    wrec = out.rec_w.shape[0] > 0
    driven = ck.seg_t.shape[0] > 1
    P = out.path_len.shape[0] if paths_on else 0
    cap = out.path_t.shape[1]
    stream_ds = net.lnq.shape[0] > 0
    nb_ds = out.dsh.shape[1] - 2
    times = ck.times
    total = 0
    xs = np.empty(n_t + 1, np.int64)  # state at each sample time (slot n_t absorbs a harmless store)
    js = np.empty(n_t + 1, np.int64)  # jumps made before each sample time
    ws = np.zeros(n_t + 1, np.int64)  # work done up to each sample time
    qs = np.empty((n_t, N), np.int64)
    mom = out.mom[slot]
    ft_on = out.ft.shape[1] > 0
    out.status[slot] = OK
    for i in range(n_traj):
        if ctl[0] != 0:
            out.status[slot] = ABORTED
            return total
        x = net.support[_search(net.cum0, 0, k0, next_double(rng))]
        x0 = x
        track = i < P
        t = 0.0
        k = 0
        nj = 0
        seg = 0
        tsw = ck.seg_t[0]
        w = 0
        stalls = 0
        if track:
            out.path_t[i, 0] = 0.0
            out.path_x[i, 0] = x
            out.path_len[i] = 1
        while True:
            a = net.indptr[seg, x]
            b = net.indptr[seg, x + 1]
            if a == b:
                tn = np.inf
            else:
                tn = t + next_exponential(rng, ck.zk, ck.zw, ck.zf) * net.inv_exit[seg, x]
            switch = tn >= tsw  # the protocol switches first: the memoryless clock restarts after it
            if switch:
                tn = tsw
            # samples in [t, tn): usually 0 or 1, so store unconditionally and advance by a comparison
            xs[k] = x
            js[k] = nj
            ws[k] = w
            k += times[k] < tn
            while times[k] < tn:
                xs[k] = x
                js[k] = nj
                ws[k] = w
                k += 1
            if k >= n_t:
                break
            if tn <= t:
                stalls += 1
                if stalls > STALL_LIMIT:
                    out.status[slot] = STALLED
                    return total
            else:
                stalls = 0
            t = tn
            if switch:
                seg += 1
                w += ck.levels[seg, net.s_of[x]] - ck.levels[seg - 1, net.s_of[x]]
                tsw = ck.seg_t[seg]
                continue
            d = b - a
            if d > 1:
                v = next_double(rng) * d
                col = int(v)
                j = a + col
                x = net.target[j] if v - col < net.aprob[j] else net.aalt[j]
            else:
                x = net.target[a]
            nj += 1
            if (nj & POLL_MASK) == 0 and ctl[0] != 0:
                out.status[slot] = ABORTED
                return total
            if track and out.path_len[i] < cap:
                out.path_t[i, out.path_len[i]] = t
                out.path_x[i, out.path_len[i]] = x
                out.path_len[i] += 1
        # the trajectory is done: add what it contributes
        s0 = net.s_of[x0]
        g = net.g0[x0]
        es0 = ck.levels[0, s0]
        bad = 0
        for kk in range(n_t):  # one array at a time: the big ones stream through the cache in order
            y = xs[kk]
            out.counts[tid, y, kk] += 1
            out.cross[tid, y, kk] += g
        for kk in range(n_t):
            y = xs[kk]
            st = net.s_of[y]
            dE = ck.levels[ck.seg_of[kk], st] - es0 - ws[kk]
            for nu in range(N):
                q = net.E[x0, nu] - net.E[y, nu]
                qs[kk, nu] = q
                dE -= q
                out.qsum[tid, nu, s0, st, kk] += q
            bad += dE != 0
            out.sys2[tid, s0, st, kk] += 1
        for nu in range(N):  # full heat windows on this path: always inside
            off = win.qoff[nu] - win.qlo[nu]
            for kk in range(n_t):
                out.heat[tid, off + qs[kk, nu], kk] += 1
        if ft_on:
            for kk in range(n_t):
                out.ft[tid, s0, net.s_of[xs[kk]], qs[kk, 0] - win.qlo[0], kk] += 1
        if driven:
            for kk in range(n_t):
                out.work[tid, ck.woff[0] + ws[kk], kk] += 1
        out.viol[tid, 0] += bad
        out.viol[tid, 1] += n_t
        _tally_floats(mom, n_t, N, js, qs)
        if stream_ds:
            base = net.lnq[x0, 0]
            for kk in range(n_t):
                ds = net.lnq[xs[kk], kk] - base
                mom[M_DS, kk] += ds
                mom[M_DS + 1, kk] += ds * ds
                e = np.exp(-ds)
                mom[M_DS + 2, kk] += e
                mom[M_DS + 3, kk] += e * e
                f = (ds - net.dsbin[0]) * net.dsbin[1]
                if f < 0.0:
                    bi = 0
                elif f >= nb_ds:
                    bi = nb_ds + 1
                else:
                    bi = int(f) + 1
                out.dsh[tid, bi, kk] += 1
        if record:
            r = rec0 + i
            for kk in range(n_t):
                out.rec_x[r, kk] = xs[kk]
                out.rec_n[r, kk] = js[kk]
            if wrec:
                for kk in range(n_t):
                    out.rec_w[r, kk] = ws[kk]
        total += nj
    return total


@nb.njit(cache=True, nogil=True, parallel=True)
def enumerated_wave(states, sizes, rec0, first, ck, net, win, out, ctl):
    """Run the chunks of one wave in parallel (chunk slot c: generator ``states[c]``, ``sizes[c]``
    trajectories, records from row ``rec0[c]``, paths if ``first[c]``)."""
    jumps = out.jumps  # (an array taken out of the tuple: a setitem on out.jumps inside prange is lost)
    fprint = out.fprint
    for c in nb.prange(states.shape[0]):
        tid = nb.get_thread_id()
        st = states[c].copy()
        jumps[c] = enumerated_chunk(st, sizes[c], c, tid, rec0[c], first[c] != 0, ck, net, win, out, ctl)
        fprint[c] = st[0] ^ st[3]


# --------------------------------------------------------------------------- implicit path


@nb.njit(cache=True, nogil=True)
def implicit_chunk(rng, n_traj, slot, tid, rec0, paths_on, ck, tab, win, out, ctl):
    """As :func:`enumerated_chunk`, with the state held as ``(s, E_1..E_N)`` and per-bath rate tables."""
    n_t = ck.times.shape[0] - 1
    N = tab.G.shape[0]
    n_s = tab.cum_s.shape[0]
    K = tab.tgl.shape[2]
    joint = tab.init_rows.shape[0] > 0
    record = out.rec_x.shape[0] > 0
    wrec = out.rec_w.shape[0] > 0
    driven = ck.seg_t.shape[0] > 1
    P = out.path_len.shape[0] if paths_on else 0
    cap = out.path_t.shape[1]
    one_bath = N == 1
    one_way = one_bath and K == 1
    cross_on = out.cross1.shape[1] > 0
    ft_on = out.ft.shape[1] > 0
    times = ck.times
    total = 0
    E = np.empty(N, np.int64)
    E0 = np.empty(N, np.int64)
    rr = np.empty(N)
    vlo = np.empty(N, np.int64)  # the lowest and highest energy visited, kept in registers / cache
    vhi = np.empty(N, np.int64)
    for nu in range(N):
        vlo[nu] = out.visited[tid, nu, 0]
        vhi[nu] = out.visited[tid, nu, 1]
    ls = np.empty(n_t + 1, np.int64)  # level at each sample time
    es = np.empty((n_t + 1, N), np.int64)  # bath energies at each sample time
    js = np.empty(n_t + 1, np.int64)
    ws = np.zeros(n_t + 1, np.int64)
    qs = np.empty((n_t, N), np.int64)
    lev = ck.levels
    mom = out.mom[slot]
    out.status[slot] = OK
    for i in range(n_traj):
        if ctl[0] != 0:
            out.status[slot] = ABORTED
            break
        if joint:
            row = _search(tab.init_cum, 0, tab.init_cum.shape[0], next_double(rng))
            s = tab.init_rows[row, 0]
            for nu in range(N):
                E[nu] = tab.init_rows[row, 1 + nu]
        else:
            row = 0
            s = _search(tab.cum_s, 0, n_s, next_double(rng))
            for nu in range(N):
                lo = tab.eoff[nu]
                E[nu] = _search(tab.cum_E, lo, lo + tab.G[nu], next_double(rng)) - lo
        s0 = s
        for nu in range(N):
            E0[nu] = E[nu]
            vlo[nu] = min(vlo[nu], E[nu])
            vhi[nu] = max(vhi[nu], E[nu])
        track = i < P
        t = 0.0
        k = 0
        nj = 0
        seg = 0
        tsw = ck.seg_t[0]
        w = 0
        stalls = 0
        aborted = False
        if track:
            out.path_t[i, 0] = 0.0
            out.path_x[i, 0] = s
            for nu in range(N):
                out.path_E[i, 0, nu] = E[nu]
            out.path_len[i] = 1
        while True:
            if one_bath:  # one look-up and a multiplication
                row1 = tab.toff[seg, 0] + s * tab.G[0] + E[0]
                inv = tab.inv1[row1]
                if inv > 0.0:
                    tn = t + next_exponential(rng, ck.zk, ck.zw, ck.zf) * inv
                else:
                    tn = np.inf
            else:
                tot = 0.0
                for nu in range(N):
                    r = tab.exit[tab.toff[seg, nu] + s * tab.G[nu] + E[nu]]
                    rr[nu] = r
                    tot += r
                if tot > 0.0:
                    tn = t + next_exponential(rng, ck.zk, ck.zw, ck.zf) / tot
                else:
                    tn = np.inf
            switch = tn >= tsw
            if switch:
                tn = tsw
            ls[k] = s
            js[k] = nj
            ws[k] = w
            for nu in range(N):
                es[k, nu] = E[nu]
            k += times[k] < tn
            while times[k] < tn:
                ls[k] = s
                js[k] = nj
                ws[k] = w
                for nu in range(N):
                    es[k, nu] = E[nu]
                k += 1
            if k >= n_t:
                break
            if tn <= t:
                stalls += 1
                if stalls > STALL_LIMIT:
                    out.status[slot] = STALLED
                    aborted = True
                    break
            else:
                stalls = 0
            t = tn
            if switch:
                seg += 1
                w += lev[seg, s] - lev[seg - 1, s]
                tsw = ck.seg_t[seg]
                continue
            # which bath, then which target level: one uniform (its remainder picks the level)
            if one_way:
                nu = 0
                row = row1
                v = 0.0
            elif one_bath:
                nu = 0
                row = row1
                v = next_double(rng)
            else:
                xq = next_double(rng) * tot
                nu = N - 1
                c = 0.0
                for m in range(N - 1):
                    if xq < c + rr[m]:
                        nu = m
                        break
                    c += rr[m]
                if rr[nu] > 0.0:
                    v = (xq - c) / rr[nu]
                else:  # rounding carried xq past the last bath with a positive rate
                    while rr[nu] == 0.0:
                        nu -= 1
                    v = 0.9999999999999999
                row = tab.toff[seg, nu] + s * tab.G[nu] + E[nu]
            col = _alias_column(v, K, tab.aprob, tab.aidx, row * K)
            s2 = tab.tgl[nu, s, col]
            e = E[nu] + lev[seg, s] - lev[seg, s2]
            E[nu] = e
            s = s2
            if e < vlo[nu]:
                vlo[nu] = e
            if e > vhi[nu]:
                vhi[nu] = e
            nj += 1
            if (nj & POLL_MASK) == 0 and ctl[0] != 0:
                out.status[slot] = ABORTED
                aborted = True
                break
            if track and out.path_len[i] < cap:
                p = out.path_len[i]
                out.path_t[i, p] = t
                out.path_x[i, p] = s
                for m in range(N):
                    out.path_E[i, p, m] = E[m]
                out.path_len[i] = p + 1
        if aborted:
            break
        # the trajectory is done: add what it contributes, one pass over the sample times
        es0 = lev[0, s0]
        if cross_on:
            g = tab.g_rows[row] if joint else tab.g_s[s0] + tab.g_E[E0[0]]
        bad = 0
        inside = True
        for kk in range(n_t):
            st = ls[kk]
            dE = lev[ck.seg_of[kk], st] - es0 - ws[kk]
            for nu in range(N):
                ee = es[kk, nu]
                q = E0[nu] - ee
                qs[kk, nu] = q
                dE -= q
                ci = ee - win.lo[nu]
                if ci >= 0 and ci < win.wid[nu]:
                    cell = win.moff[nu] + ci * n_s + st
                    out.marg[tid, cell, kk] += 1
                    if cross_on:
                        out.cross1[tid, cell, kk] += g
                else:
                    inside = False
                    if ee < out.ext[tid, nu, 0]:
                        out.ext[tid, nu, 0] = ee
                    if ee > out.ext[tid, nu, 1]:
                        out.ext[tid, nu, 1] = ee
            bad += dE != 0
            out.sys2[tid, s0, st, kk] += 1
            for nu in range(N):
                q = qs[kk, nu]
                out.qsum[tid, nu, s0, st, kk] += q
                hi = q - win.qlo[nu]
                if hi >= 0 and hi < win.qwid[nu]:
                    out.heat[tid, win.qoff[nu] + hi, kk] += 1
                    if ft_on and nu == 0:
                        out.ft[tid, s0, st, hi, kk] += 1
                else:
                    inside = False
                    if q < out.ext[tid, nu, 2]:
                        out.ext[tid, nu, 2] = q
                    if q > out.ext[tid, nu, 3]:
                        out.ext[tid, nu, 3] = q
            if driven:
                out.work[tid, ck.woff[0] + ws[kk], kk] += 1
        out.viol[tid, 0] += bad
        out.viol[tid, 1] += n_t
        _tally_floats(mom, n_t, N, js, qs)
        if not inside:
            out.status[slot] = OVERFLOW
        if record:
            r = rec0 + i
            for kk in range(n_t):
                out.rec_x[r, kk] = ls[kk]
                out.rec_n[r, kk] = js[kk]
                for nu in range(N):
                    out.rec_E[r, kk, nu] = es[kk, nu]
            if wrec:
                for kk in range(n_t):
                    out.rec_w[r, kk] = ws[kk]
        total += nj
    for nu in range(N):
        out.visited[tid, nu, 0] = vlo[nu]
        out.visited[tid, nu, 1] = vhi[nu]
    return total


@nb.njit(cache=True, nogil=True, parallel=True)
def implicit_wave(states, sizes, rec0, first, ck, tab, win, out, ctl):
    """As :func:`enumerated_wave`, on the implicit path."""
    jumps = out.jumps  # (an array taken out of the tuple: a setitem on out.jumps inside prange is lost)
    fprint = out.fprint
    for c in nb.prange(states.shape[0]):
        tid = nb.get_thread_id()
        st = states[c].copy()
        jumps[c] = implicit_chunk(st, sizes[c], c, tid, rec0[c], first[c] != 0, ck, tab, win, out, ctl)
        fprint[c] = st[0] ^ st[3]


# --------------------------------------------------------------------------- alias tables


@nb.njit(cache=True)
def alias_rows(weights, aprob, aidx):
    """Walker/Vose alias tables of the rows of ``weights`` (R, K) into ``aprob``/``aidx`` (R, K).

    Column j of row r is kept with probability ``aprob[r, j]``, else column ``aidx[r, j]`` is taken;
    picking a column uniformly and applying that rule samples ``weights[r] / sum``.  Rows of zero
    weight get a trivial table (never used: such a state has no way out).
    """
    R, K = weights.shape
    small = np.empty(K, np.int64)
    large = np.empty(K, np.int64)
    q = np.empty(K)
    for r in range(R):
        tot = 0.0
        for j in range(K):
            tot += weights[r, j]
        if tot <= 0.0:
            for j in range(K):
                aprob[r, j] = 1.0
                aidx[r, j] = j
            continue
        ns = 0
        nl = 0
        for j in range(K):
            q[j] = weights[r, j] * K / tot
            aidx[r, j] = j
            if q[j] < 1.0:
                small[ns] = j
                ns += 1
            else:
                large[nl] = j
                nl += 1
        while ns > 0 and nl > 0:
            ns -= 1
            j = small[ns]
            g = large[nl - 1]
            aprob[r, j] = q[j]
            aidx[r, j] = g
            q[g] = (q[g] + q[j]) - 1.0
            if q[g] < 1.0:
                nl -= 1
                small[ns] = g
                ns += 1
        while nl > 0:
            nl -= 1
            aprob[r, large[nl]] = 1.0
        while ns > 0:  # rounding leftovers: keep them
            ns -= 1
            aprob[r, small[ns]] = 1.0


@nb.njit(cache=True)
def alias_csr(indptr, rates, target, aprob, aalt):
    """Alias tables of the CSR rows (variable length): ``aalt`` holds the target state of the alias."""
    n = indptr.shape[0] - 1
    for x in range(n):
        a = indptr[x]
        b = indptr[x + 1]
        K = b - a
        if K == 0:
            continue
        w = rates[a:b].reshape(1, K)
        p = np.empty((1, K))
        idx = np.empty((1, K), np.int64)
        alias_rows(w, p, idx)
        for j in range(K):
            aprob[a + j] = p[0, j]
            aalt[a + j] = target[a + idx[0, j]]
