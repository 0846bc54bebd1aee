"""Pure-Python reference Gillespie: the compiled kernels' algorithms, draw for draw.

It consumes the same xoshiro256++ stream in the same order as :func:`trajmc._kernel.enumerated_chunk`
and :func:`trajmc._kernel.implicit_chunk`, from the same tables, so its trajectories must equal the
kernels' bit for bit (a test checks this).  Slow by design: it is a specification.
"""
from __future__ import annotations

import math

import numpy as np

from . import _rng

__all__ = ["ReferenceRNG", "reference_chunk"]

M64 = (1 << 64) - 1


class ReferenceRNG:
    """xoshiro256++ and the ziggurat exponential in Python integers."""

    def __init__(self, state):
        self.s = [int(x) for x in state]
        self.zk = [int(x) for x in _rng.ZIG_K]
        self.zw = [float(x) for x in _rng.ZIG_W]
        self.zf = [float(x) for x in _rng.ZIG_F]

    @staticmethod
    def _rotl(x, k):
        return ((x << k) | (x >> (64 - k))) & M64

    def next_u64(self):
        s = self.s
        result = (self._rotl((s[0] + s[3]) & M64, 23) + s[0]) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = self._rotl(s[3], 45)
        return result

    def next_double(self):
        return float(self.next_u64() >> 11) * (1.0 / 9007199254740992.0)

    def next_exponential(self):
        while True:
            ri = self.next_u64() >> 3
            idx = ri & 0xFF
            ri >>= 8
            x = float(ri) * self.zw[idx]
            if ri < self.zk[idx]:
                return x
            if idx == 0:
                return 7.697117470131487 - math.log1p(-self.next_double())
            if (self.zf[idx - 1] - self.zf[idx]) * self.next_double() + self.zf[idx] < math.exp(-x):
                return x


def _search(cum, lo, hi, u):
    hi -= 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if u < cum[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


def reference_chunk(plan, state, n_traj):
    """Simulate ``n_traj`` trajectories like the plan's kernel, from generator ``state``.

    Returns
    -------
    list of dict, one per trajectory: ``x`` (state index, enumerated; level, implicit) and ``E`` (bath
    energies, implicit) at each sample time, ``jumps`` and ``work`` at each sample time, ``path_t``,
    ``path_x`` (and ``path_E``) at every jump, ``total_jumps``.
    """
    rng = ReferenceRNG(state)
    ck = plan.clock
    times = ck.times[:-1].tolist()
    seg_t, lev = ck.seg_t.tolist(), ck.levels.tolist()
    step = _enumerated_step if plan.path == "enumerated" else _implicit_step
    tab = _as_lists(plan.tables)
    out = []
    for _ in range(n_traj):
        st = _initial(plan.path, tab, rng)
        t, k, nj, seg, w = 0.0, 0, 0, 0, 0
        xs, es, js, ws = [], [], [], []
        pt, px, pe = [0.0], [st[0]], [list(st[1])]
        while True:
            rate = _exit(plan.path, tab, seg, st)
            tn = math.inf if rate == 0 else t + _wait(plan.path, rng, rate)
            switch = tn >= seg_t[seg]  # protocol switch first: the waiting time is drawn afresh after it
            if switch:
                tn = seg_t[seg]
            while k < len(times) and times[k] < tn:
                xs.append(st[0])
                es.append(list(st[1]))
                js.append(nj)
                ws.append(w)
                k += 1
            if k == len(times):
                break
            t = tn
            if switch:
                seg += 1
                s = st[0] if plan.path == "implicit" else tab["s_of"][st[0]]
                w += lev[seg][s] - lev[seg - 1][s]
                continue
            st = step(tab, lev, seg, st, rng)
            nj += 1
            pt.append(t)
            px.append(st[0])
            pe.append(list(st[1]))
        d = {"x": np.array(xs), "jumps": np.array(js), "work": np.array(ws), "path_t": np.array(pt),
             "path_x": np.array(px), "total_jumps": nj}
        if plan.path == "implicit":
            d["E"] = np.array(es)
            d["path_E"] = np.array(pe)
        out.append(d)
    return out


def _as_lists(tab):
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in tab._asdict().items()}


def _initial(path, tab, rng):
    if path == "enumerated":
        x = tab["support"][_search(tab["cum0"], 0, len(tab["cum0"]), rng.next_double())]
        return x, []
    N = len(tab["G"])
    if tab["init_rows"]:
        row = tab["init_rows"][_search(tab["init_cum"], 0, len(tab["init_cum"]), rng.next_double())]
        return row[0], list(row[1:])
    s = _search(tab["cum_s"], 0, len(tab["cum_s"]), rng.next_double())
    E = []
    for nu in range(N):
        lo = tab["eoff"][nu]
        E.append(_search(tab["cum_E"], lo, lo + tab["G"][nu], rng.next_double()) - lo)
    return s, E


def _exit(path, tab, seg, st):
    """Enumerated: the inverse exit rate (0: none); implicit: the per-bath exit rates (total 0: none)."""
    if path == "enumerated":
        x = st[0]
        a, b = tab["indptr"][seg][x], tab["indptr"][seg][x + 1]
        return 0 if a == b else tab["inv_exit"][seg][x]
    s, E = st
    if len(E) == 1:  # one bath: the kernel multiplies by the tabulated inverse exit rate
        inv = tab["inv1"][tab["toff"][seg][0] + s * tab["G"][0] + E[0]]
        return 0 if inv == 0 else ("inv", inv)
    rr = [tab["exit"][tab["toff"][seg][nu] + s * tab["G"][nu] + E[nu]] for nu in range(len(E))]
    tot = 0.0
    for r in rr:
        tot += r
    return 0 if tot == 0 else ("tot", tot)


def _wait(path, rng, rate):
    e = rng.next_exponential()
    if path == "enumerated":
        return e * rate
    return e * rate[1] if rate[0] == "inv" else e / rate[1]


def _enumerated_step(tab, lev, seg, st, rng):
    x = st[0]
    a, b = tab["indptr"][seg][x], tab["indptr"][seg][x + 1]
    d = b - a
    if d > 1:
        v = rng.next_double() * d
        col = int(v)
        j = a + col
        x = tab["target"][j] if v - col < tab["aprob"][j] else tab["aalt"][j]
    else:
        x = tab["target"][a]
    return x, []


def _implicit_step(tab, lev, seg, st, rng):
    s, E = st[0], list(st[1])
    N = len(E)
    K = len(tab["tgl"][0][0])
    rr = [tab["exit"][tab["toff"][seg][nu] + s * tab["G"][nu] + E[nu]] for nu in range(N)]
    tot = 0.0
    for r in rr:
        tot += r
    if N == 1 and K == 1:
        nu, v = 0, 0.0
    elif N == 1:
        nu, v = 0, rng.next_double()
    else:
        xq = rng.next_double() * tot
        nu, c = N - 1, 0.0
        for m in range(N - 1):
            if xq < c + rr[m]:
                nu = m
                break
            c += rr[m]
        if rr[nu] > 0.0:
            v = (xq - c) / rr[nu]
        else:
            while rr[nu] == 0.0:
                nu -= 1
            v = 0.9999999999999999
    row = tab["toff"][seg][nu] + s * tab["G"][nu] + E[nu]
    vk = v * K
    col = min(int(vk), K - 1)
    if vk - col >= tab["aprob"][row * K + col]:
        col = tab["aidx"][row * K + col]
    s2 = tab["tgl"][nu][s][col]
    E[nu] += lev[seg][s] - lev[seg][s2]
    return s2, E
