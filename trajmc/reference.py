"""Pure-Python reference Gillespie: the compiled kernel's algorithm, draw for draw.

It consumes the same xoshiro256++ stream in the same order as
:func:`trajmc._kernel.run_chunk`, so its trajectories must equal the kernel's
bit for bit (a test checks this).  Slow by design: it is a specification.
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


def reference_chunk(arrays, state, n_traj):
    """Simulate ``n_traj`` trajectories like the kernel (``arrays`` from ``engine.Plan.arrays``).

    Returns
    -------
    list of dict, one per trajectory: ``x`` (state at each sample time), ``jumps`` and ``work``
    (at each sample time), ``path_t``, ``path_x`` (every jump), ``total_jumps``.
    """
    rng = ReferenceRNG(state)
    cum0, support = arrays["cum0"].tolist(), arrays["support"].tolist()
    indptr, target, cum = arrays["indptr"].tolist(), arrays["target"].tolist(), arrays["cum"].tolist()
    inv_exit, times = arrays["inv_exit"].tolist(), arrays["times"][:-1].tolist()
    seg_t, dlev, s_of = arrays["seg_t"].tolist(), arrays["dlev"].tolist(), arrays["s_of"].tolist()
    n_t = len(times)
    out = []
    for _ in range(n_traj):
        u = rng.next_double()
        lo, hi = 0, len(cum0) - 1
        while lo < hi:
            mid = (lo + hi) >> 1
            if u < cum0[mid]:
                hi = mid
            else:
                lo = mid + 1
        x = support[lo]
        t, k, nj, seg, w = 0.0, 0, 0, 0, 0
        xs, js, ws, pt, px = [], [], [], [0.0], [x]
        while True:
            a, b = indptr[seg][x], indptr[seg][x + 1]
            tn = math.inf if a == b else t + rng.next_exponential() * inv_exit[seg][x]
            switch = tn >= seg_t[seg]  # protocol switch first: the waiting time is drawn afresh after it
            if switch:
                tn = seg_t[seg]
            while k < n_t and times[k] < tn:
                xs.append(x)
                js.append(nj)
                ws.append(w)
                k += 1
            if k == n_t:
                break
            t = tn
            if switch:
                seg += 1
                w += dlev[seg][s_of[x]]
                continue
            j = a
            if b - a > 1:
                u = rng.next_double()
                while j < b - 1 and u >= cum[j]:
                    j += 1
            x = target[j]
            nj += 1
            pt.append(t)
            px.append(x)
        out.append({"x": np.array(xs), "jumps": np.array(js), "work": np.array(ws), "path_t": np.array(pt),
                    "path_x": np.array(px), "total_jumps": nj})
    return out
