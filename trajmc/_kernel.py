"""Compiled Gillespie kernel.  Private: takes contiguous arrays, fills caller buffers, checks nothing.

Direct-method SSA on the network's CSR out-edges.  Per jump: one ziggurat
exponential times the precomputed inverse exit rate, and (only when the state
has more than one out-edge) one uniform for a linear search of the row's
cumulative probabilities.  A trajectory is read at each sample time as the
state it occupies then.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from ._rng import next_double, next_exponential


@nb.njit(cache=True, nogil=True)
def run_chunk(rng, n_traj, cum0, support, indptr, target, cum, inv_exit, seg_t, dlev, s_of, times, g0, E, hoff,
              counts, cross, heat, work, woff, rec_x, rec_n, rec_w, path_t, path_x, path_len, zk, zw, zf):
    """Simulate ``n_traj`` trajectories with generator state ``rng`` (uint64[4], advanced in place).

    Parameters
    ----------
    cum0 : (k,) float64   cumulative initial probabilities over ``support`` (last = 1.0)
    support : (k,) int64  state index of each initial support entry
    indptr : (n_seg, n+1) int64; target, cum : (m,) CSR out-edges of every protocol segment
        (row offsets of segment k point into the concatenated edge arrays); ``cum`` holds cumulative
        jump probabilities per row (last = 1.0)
    inv_exit : (n_seg, n) float64  1 / exit rate (unused where a state has no out-edge)
    seg_t : (n_seg,) float64  end time of each segment (the last is +inf)
    dlev : (n_seg, n_s) int64  work done on level s at the switch into segment k (row 0 unused)
    s_of : (n,) int64  system level of each state
    times : (n_t + 1,) float64  sample times followed by +inf
    g0 : (n, 2) int64  functions of the initial state (fixed point) accumulated in ``cross``
    E : (n, N) int64  bath energies; hoff : (N,) int64 offsets of each bath's heat histogram
        (bath nu's change d is counted at row ``hoff[nu] + d``)
    counts : (n, n_t) int64         += occupation counts (state-major: a dwelling trajectory's
                                       consecutive samples share a cache line)
    cross : (n, n_t, 2) int64       += g0[x0] summed over trajectories in state x at time t
    heat : (H, n_t) int64           += histograms of bath energy changes
    work : (Hw, n_t) int64          += histogram of the work done so far (row ``woff + W``); driven only
    rec_x, rec_n, rec_w : (n_traj, n_t) int32 or (0, n_t)  per-trajectory state, jumps and work
    path_t, path_x : (P, cap) ; path_len : (P,)  full jump paths of the first P trajectories

    Returns
    -------
    int : number of jumps
    """
    n_t = times.shape[0] - 1  # times[n_t] = +inf: a sentinel that ends every scan
    N = E.shape[1]
    k0 = support.shape[0]
    record = rec_x.shape[0] > 0
    driven = seg_t.shape[0] > 1
    P = path_len.shape[0]
    cap = path_t.shape[1]
    total = 0
    xs = np.empty(n_t + 1, np.int64)  # state at each sample time (slot n_t absorbs a harmless store)
    js = np.empty(n_t + 1, np.int64)  # jumps made before each sample time
    ws = np.zeros(n_t + 1, np.int64)  # work done up to each sample time
    for i in range(n_traj):
        # initial state: binary search of the cumulative distribution
        u = next_double(rng)
        lo = 0
        hi = k0 - 1
        while lo < hi:
            mid = (lo + hi) >> 1
            if u < cum0[mid]:
                hi = mid
            else:
                lo = mid + 1
        x = support[lo]
        x0 = x
        track = i < P
        t = 0.0
        k = 0
        nj = 0
        seg = 0
        tsw = seg_t[0]
        w = 0
        if track:
            path_t[i, 0] = 0.0
            path_x[i, 0] = x
            path_len[i] = 1
        while True:
            a = indptr[seg, x]
            b = indptr[seg, x + 1]
            if a == b:
                tn = np.inf
            else:
                tn = t + next_exponential(rng, zk, zw, zf) * inv_exit[seg, x]
            switch = tn >= tsw  # the protocol switches first: the memoryless clock restarts after it
            if switch:
                tn = tsw
            # samples in [t, tn): usually 0 or 1, so store unconditionally and advance by a comparison
            # (no branch to mispredict); longer dwells fall through to the loop
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
            t = tn
            if switch:
                seg += 1
                w += dlev[seg, s_of[x]]
                tsw = seg_t[seg]
                continue
            j = a
            if b - a > 1:
                u = next_double(rng)
                while j < b - 1 and u >= cum[j]:
                    j += 1
            x = target[j]
            nj += 1
            if track and path_len[i] < cap:
                path_t[i, path_len[i]] = t
                path_x[i, path_len[i]] = x
                path_len[i] += 1
        ga = g0[x0, 0]
        gb = g0[x0, 1]
        for k in range(n_t):
            y = xs[k]
            counts[y, k] += 1
            cross[y, k, 0] += ga
            cross[y, k, 1] += gb
        for nu in range(N):
            base = hoff[nu] - E[x0, nu]
            for k in range(n_t):
                heat[base + E[xs[k], nu], k] += 1
        if driven:
            for k in range(n_t):
                work[woff + ws[k], k] += 1
        if record:
            for k in range(n_t):
                rec_x[i, k] = xs[k]
                rec_n[i, k] = js[k]
            if driven:
                for k in range(n_t):
                    rec_w[i, k] = ws[k]
        total += nj
    return total


@nb.njit(cache=True, parallel=True)
def run_wave(states, sizes, cum0, support, indptr, target, cum, inv_exit, seg_t, dlev, s_of, times, g0, E, hoff,
             counts, cross, heat, work, woff, jumps, fprint, rec_x, rec_n, rec_w, rec_off, path_t, path_x, path_len,
             zk, zw, zf):
    """Run the chunks of one wave in parallel into per-thread integer accumulators.

    ``states`` (W, 4) uint64 generator states; ``sizes`` (W,) trajectories per chunk;
    ``counts``/``cross``/``heat``/``work`` have a leading axis of one slot per thread: integer sums
    are exact and order-free, so the totals do not depend on which thread ran which chunk.
    ``rec_off`` (W,) first row of each chunk in the records (unused when they are empty).
    Paths are recorded for chunk slot 0 only (``path_len`` is empty otherwise).
    ``fprint`` (W,) uint64 receives each chunk's fingerprint (its generator's end state).
    """
    W = states.shape[0]
    record = rec_x.shape[0] > 0
    wrec = rec_w.shape[0] > 0
    for c in nb.prange(W):
        tid = nb.get_thread_id()
        st = states[c].copy()
        if record:
            rx = rec_x[rec_off[c]:rec_off[c] + sizes[c]]
            rn = rec_n[rec_off[c]:rec_off[c] + sizes[c]]
        else:
            rx = rec_x[:0]
            rn = rec_n[:0]
        if wrec:
            rw = rec_w[rec_off[c]:rec_off[c] + sizes[c]]
        else:
            rw = rec_w[:0]
        if c == 0:
            pl = path_len
        else:
            pl = path_len[:0]
        jumps[c] = run_chunk(st, sizes[c], cum0, support, indptr, target, cum, inv_exit, seg_t, dlev, s_of, times,
                             g0, E, hoff, counts[tid], cross[tid], heat[tid], work[tid], woff, rx, rn, rw,
                             path_t, path_x, pl, zk, zw, zf)
        fprint[c] = st[0] ^ st[3]  # the generator's end state: a fingerprint of the chunk's whole stream
