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
def run_chunk(rng, n_traj, cum0, support, indptr, target, cum, inv_exit, times, g0, E, hoff,
              counts, cross, heat, rec_x, rec_n, path_t, path_x, path_len, zk, zw, zf):
    """Simulate ``n_traj`` trajectories with generator state ``rng`` (uint64[4], advanced in place).

    Parameters
    ----------
    cum0 : (k,) float64   cumulative initial probabilities over ``support`` (last = 1.0)
    support : (k,) int64  state index of each initial support entry
    indptr, target, cum : CSR out-edges; ``cum`` cumulative jump probabilities per row (last = 1.0)
    inv_exit : (n,) float64  1 / exit rate (unused where a state has no out-edge)
    times : (n_t + 1,) float64  sample times followed by +inf
    g0 : (n, n_g) int64  functions of the initial state (fixed point) accumulated in ``cross``
    E : (n, N) int64  bath energies; hoff : (N,) int64 offsets of each bath's heat histogram
        (bath nu's change d is counted at column ``hoff[nu] + d``)
    counts : (n, n_t) int64         += occupation counts (state-major: a dwelling trajectory's
                                       consecutive samples share a cache line)
    cross : (n, n_t, 2) int64       += g0[x0] summed over trajectories in state x at time t
    heat : (H, n_t) int64           += histograms of bath energy changes
    rec_x, rec_n : (n_traj, n_t) int32 or (0, n_t)  per-trajectory state and jump count at each time
    path_t, path_x : (P, cap) ; path_len : (P,)  full jump paths of the first P trajectories

    Returns
    -------
    int : number of jumps
    """
    n_t = times.shape[0] - 1  # times[n_t] = +inf: a sentinel that ends every scan
    N = E.shape[1]
    k0 = support.shape[0]
    record = rec_x.shape[0] > 0
    P = path_len.shape[0]
    cap = path_t.shape[1]
    total = 0
    xs = np.empty(n_t + 1, np.int64)  # state at each sample time (slot n_t absorbs a harmless store)
    js = np.empty(n_t + 1, np.int64)  # jumps made before each sample time
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
        if track:
            path_t[i, 0] = 0.0
            path_x[i, 0] = x
            path_len[i] = 1
        while True:
            a = indptr[x]
            b = indptr[x + 1]
            if a == b:
                tn = np.inf
            else:
                tn = t + next_exponential(rng, zk, zw, zf) * inv_exit[x]
            # samples in [t, tn): usually 0 or 1, so store unconditionally and advance by a comparison
            # (no branch to mispredict); longer dwells fall through to the loop
            xs[k] = x
            js[k] = nj
            k += times[k] < tn
            while times[k] < tn:
                xs[k] = x
                js[k] = nj
                k += 1
            if k >= n_t:
                break
            j = a
            if b - a > 1:
                u = next_double(rng)
                while j < b - 1 and u >= cum[j]:
                    j += 1
            x = target[j]
            t = tn
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
        if record:
            for k in range(n_t):
                rec_x[i, k] = xs[k]
                rec_n[i, k] = js[k]
        total += nj
    return total


@nb.njit(cache=True, parallel=True)
def run_wave(states, sizes, cum0, support, indptr, target, cum, inv_exit, times, g0, E, hoff,
             counts, cross, heat, jumps, rec_x, rec_n, rec_off, path_t, path_x, path_len, zk, zw, zf):
    """Run the chunks of one wave in parallel into per-thread integer accumulators.

    ``states`` (W, 4) uint64 generator states; ``sizes`` (W,) trajectories per chunk;
    ``counts``/``cross``/``heat`` have a leading axis of one slot per thread: integer sums
    are exact and order-free, so the totals do not depend on which thread ran which chunk.
    ``rec_off`` (W,) first row of each chunk in ``rec_x``/``rec_n`` (unused when they are empty).
    Paths are recorded for chunk slot 0 only (``path_len`` is empty otherwise).
    """
    W = states.shape[0]
    record = rec_x.shape[0] > 0
    for c in nb.prange(W):
        tid = nb.get_thread_id()
        st = states[c].copy()
        if record:
            rx = rec_x[rec_off[c]:rec_off[c] + sizes[c]]
            rn = rec_n[rec_off[c]:rec_off[c] + sizes[c]]
        else:
            rx = rec_x[:0]
            rn = rec_n[:0]
        if c == 0:
            pl = path_len
        else:
            pl = path_len[:0]
        jumps[c] = run_chunk(st, sizes[c], cum0, support, indptr, target, cum, inv_exit, times, g0, E, hoff,
                             counts[tid], cross[tid], heat[tid], rx, rn, path_t, path_x, pl, zk, zw, zf)
