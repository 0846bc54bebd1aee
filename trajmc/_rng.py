"""The random numbers of the Monte Carlo: xoshiro256++ and a ziggurat exponential.

Inlined into the compiled kernel (a generator call through numpy's bit
generator interface costs an indirect call per draw).  Each chunk of
trajectories gets its own generator, seeded from
``SeedSequence(entropy, spawn_key=(chunk,))``, so results never depend on how
chunks are scheduled.  :mod:`trajmc.reference` replays the same draws in pure
Python.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

__all__ = ["chunk_state", "ZIG_K", "ZIG_W", "ZIG_F", "ZIG_R"]

U64 = np.uint64
MASK64 = (1 << 64) - 1


def chunk_state(entropy: int, chunk: int) -> np.ndarray:
    """xoshiro256++ state (4 uint64) of chunk ``chunk``: ``SeedSequence(entropy, spawn_key=(chunk,))``."""
    st = np.random.SeedSequence(entropy, spawn_key=(int(chunk),)).generate_state(4, np.uint64)
    if not st.any():  # the all-zero state is the one forbidden state
        st[0] = 1
    return st


def _ziggurat_tables():
    """Marsaglia-Tsang (2000) exponential ziggurat, 256 layers, 53-bit integers."""
    m = float(1 << 53)
    de = 7.697117470131487
    ve = 3.949659822581572e-3
    te = de
    q = ve / math.exp(-de)
    k = np.zeros(256, dtype=np.uint64)
    w = np.zeros(256)
    f = np.zeros(256)
    k[0] = np.uint64(int((de / q) * m))
    k[1] = 0
    w[0] = q / m
    w[255] = de / m
    f[0] = 1.0
    f[255] = math.exp(-de)
    for i in range(254, 0, -1):
        de = -math.log(ve / de + math.exp(-de))
        k[i + 1] = np.uint64(int((de / te) * m))
        te = de
        f[i] = math.exp(-de)
        w[i] = de / m
    return k, w, f


ZIG_K, ZIG_W, ZIG_F = _ziggurat_tables()
ZIG_R = 7.697117470131487


@nb.njit(inline="always", cache=True)
def _rotl(x, k):
    return (x << U64(k)) | (x >> U64(64 - k))


@nb.njit(inline="always", cache=True)
def next_u64(s):
    """xoshiro256++ (Blackman & Vigna): advances ``s`` (uint64[4]) in place."""
    result = _rotl(s[0] + s[3], 23) + s[0]
    t = s[1] << U64(17)
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = _rotl(s[3], 45)
    return result


@nb.njit(inline="always", cache=True)
def next_double(s):
    """Uniform on [0, 1) with 53 random bits."""
    return float(next_u64(s) >> U64(11)) * (1.0 / 9007199254740992.0)


@nb.njit(inline="always", cache=True)
def next_exponential(s, zk, zw, zf):
    """Standard exponential by the ziggurat (98.9% of draws: one integer, one multiply)."""
    while True:
        ri = next_u64(s) >> U64(3)
        idx = np.intp(ri & U64(0xFF))
        ri >>= U64(8)
        x = float(ri) * zw[idx]
        if ri < zk[idx]:
            return x
        if idx == 0:
            return 7.697117470131487 - math.log1p(-next_double(s))
        if (zf[idx - 1] - zf[idx]) * next_double(s) + zf[idx] < math.exp(-x):
            return x
