"""The compiled kernels' inputs: which path, its tables, the accumulator windows, and what it all costs.

* :func:`choose_path` decides between the **enumerated** network (the full joint ``p_x(t)`` is
  accumulated; needs the reachable states to fit) and the **implicit** per-bath rate tables (marginals
  only; memory ``O(N n_s^2 (emax+1))``, any number of baths and grid points).
* :func:`enumerated_tables` / :func:`implicit_tables` build the named tuples of :mod:`trajmc._kernel`.
  Both use the rates of :func:`trajmc.network.log_rates`, so both paths simulate the same dynamics.
* :func:`initial_windows` sizes the energy windows of the windowed accumulators; the engine grows them
  when a sample falls outside (and runs the affected chunks again: the result never depends on them).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from . import _kernel as K
from . import _rng
from .errors import ModelError
from .network import MAX_SPACE, _check_exit, bath_rates, build_segments, reachable, segment_energies

__all__ = ["choose_path", "enumerated_tables", "implicit_tables", "make_clock", "initial_windows",
           "fixed_point_scale", "DS_BINS"]

#: Delta s_obs histogram bins (between the under- and overflow bins)
DS_BINS = 200
#: joint grids (levels x grid points of every bath) up to this size are searched for reachable states
ENUM_SEARCH_MAX = 20_000_000
#: the enumerated path keeps at most this many joint states
ENUM_STATES_MAX = 4_000_000


def _radix_space(model):
    return float(model.n_levels) * math.prod(float(b.emax + 1) for b in model.baths)


def choose_path(model, engine, enum_bytes_per_state, budget):
    """``("enumerated" | "implicit", segments or None, reason)``.

    ``engine``: "auto", "enumerated" or "implicit".  Auto takes the enumerated network when its reachable
    states can be found and its accumulators (``enum_bytes_per_state`` per state) fit a quarter of the
    memory budget, else the implicit tables.
    """
    if engine not in ("auto", "enumerated", "implicit"):
        raise ModelError("engine", f"must be 'auto', 'enumerated' or 'implicit', got {engine!r}")
    if engine == "implicit":
        return "implicit", None, "requested"
    space = _radix_space(model)
    if engine == "enumerated":
        if space > MAX_SPACE:
            raise ModelError("engine", f"the joint grid has {space:.3g} points, too many to enumerate "
                                       f"(> {MAX_SPACE:.0e}); use engine = 'implicit' (or 'auto')")
        return "enumerated", build_segments(model), "requested"
    if space > ENUM_SEARCH_MAX:
        return "implicit", None, f"joint grid of {space:.3g} points is too large to enumerate"
    reach = reachable(model, [e for _, e in segment_energies(model)])
    n = len(reach[0])
    if n > ENUM_STATES_MAX:
        return "implicit", None, f"{n} reachable joint states (> {ENUM_STATES_MAX})"
    if n * enum_bytes_per_state > budget / 4:
        return "implicit", None, f"the joint accumulators of {n} states would take more than a quarter of the budget"
    return "enumerated", build_segments(model, reach), f"{n} reachable joint states"


def make_clock(model, times, segments_levels):
    """:class:`~trajmc._kernel.Clock` for sample ``times`` and the protocol ``[(start, levels)]``."""
    starts = np.array([t0 for t0, _ in segments_levels])
    levels = np.stack([np.asarray(e, dtype=np.int64) for _, e in segments_levels]).astype(np.int64)
    seg_of = (np.searchsorted(starts, np.asarray(times, dtype=float), side="right") - 1).astype(np.int64)
    dlev = np.abs(np.diff(levels, axis=0))
    woff = int(dlev.max(axis=1).sum()) if len(dlev) else 0
    return K.Clock(times=np.append(np.asarray(times, dtype=np.float64), np.inf),
                   seg_t=np.append(starts[1:], np.inf).astype(np.float64), seg_of=seg_of, levels=levels,
                   woff=np.array([woff], np.int64), zk=_rng.ZIG_K, zw=_rng.ZIG_W, zf=_rng.ZIG_F)


#: the fixed-point scale is chosen for at least this many trajectories, so every run up to it sums at one scale
#: and adding trajectories to a run stays bit-identical to one longer run (the ``cross`` sums it scales enter
#: standard errors only; relative resolution ~2^-32)
SCALE_TRAJECTORIES = 2**30


def fixed_point_scale(gmax, trajectories):
    """Largest power of two such that ``max(trajectories, SCALE_TRAJECTORIES)`` values of magnitude ``gmax`` sum
    in int64."""
    n = max(int(trajectories), SCALE_TRAJECTORIES)
    return 2.0 ** min(40, np.floor(np.log2(2.0**62 / ((gmax + 1.0) * (n + 1)))))


# --------------------------------------------------------------------------- enumerated


def _edge_alias(net):
    """Per-row alias tables and inverse exit rates of one segment network."""
    m = net.n_edges
    aprob = np.ones(m)
    aalt = net.target.copy()
    if m:
        K.alias_csr(net.indptr, net.rate, net.target, aprob, aalt)
    with np.errstate(divide="ignore"):
        inv_exit = np.where(net.exit_rate > 0, 1.0 / np.where(net.exit_rate > 0, net.exit_rate, 1.0), 0.0)
    return aprob, aalt, inv_exit


def enumerated_tables(segments, trajectories, exact_p=None):
    """(:class:`~trajmc._kernel.Enumerated`, float g0, fixed-point scale) for the segment networks.

    ``exact_p`` (n_t, n): the exact ``p_x(t)`` at the sample times; when given, every trajectory's
    ``Delta s_obs`` is streamed (the kernel reads ``-ln(p_t(x)/V_x)``, shifted per closed class of the
    whole protocol so that only differences inside a class are ever formed).
    """
    net = segments[0][1]
    parts = [_edge_alias(nt) for _, nt in segments]
    offs = np.concatenate([[0], np.cumsum([nt.n_edges for _, nt in segments])])
    indptr = np.stack([nt.indptr + o for (_, nt), o in zip(segments, offs[:-1], strict=True)]).astype(np.int64)
    target = np.concatenate([nt.target for _, nt in segments]).astype(np.int64)
    support = np.flatnonzero(net.p0 > 0).astype(np.int64)
    cum0 = np.cumsum(net.p0[support])
    cum0 /= cum0[-1]
    cum0[-1] = 1.0
    g0f = np.zeros(net.n_states)
    pos = net.p0 > 0
    g0f[pos] = np.log(net.p0[pos]) - net.lnV[pos]
    scale = fixed_point_scale(float(np.abs(g0f).max()), trajectories)
    lnq = np.zeros((0, 0))
    dsbin = np.array([0.0, 1.0])
    if exact_p is not None:
        lnq, dsbin = _entropy_tables(segments, exact_p)
    tab = K.Enumerated(cum0=cum0, support=support, indptr=indptr, target=target,
                       aprob=np.concatenate([p[0] for p in parts]), aalt=np.concatenate([p[1] for p in parts]),
                       inv_exit=np.stack([p[2] for p in parts]), s_of=net.states[:, 0].copy(),
                       E=np.ascontiguousarray(net.states[:, 1:]), g0=np.round(g0f * scale).astype(np.int64),
                       lnq=lnq, dsbin=dsbin)
    return tab, g0f, scale


def _classes(segments):

    n = segments[0][1].n_states
    src = np.concatenate([nt.source for _, nt in segments])
    tgt = np.concatenate([nt.target for _, nt in segments])
    g = coo_matrix((np.ones(len(src)), (src, tgt)), shape=(n, n))
    return connected_components(g, directed=True, connection="weak")[1]


def _entropy_tables(segments, p):
    """``lnq[x, k] = -ln p_k(x) + ln V_x - max_class ln V`` and the Delta s_obs histogram bins."""
    net = segments[0][1]
    comp = _classes(segments)
    top = np.full(int(comp.max()) + 1, -np.inf)
    np.maximum.at(top, comp, net.lnV)
    shift = net.lnV - top[comp]
    with np.errstate(divide="ignore"):
        lnq = np.ascontiguousarray((-np.log(p) + shift[None, :]).T)  # (n, n_t)
    # bins: from the 1e-9 quantiles of s_t under p_t and of s_0 under p_0, over every time
    lo0, hi0 = _wquantiles(lnq[:, 0], p[0])
    los, his = [], []
    for k in range(p.shape[0]):
        lo, hi = _wquantiles(lnq[:, k], p[k])
        los.append(lo - hi0)
        his.append(hi - lo0)
    lo, hi = min(los), max(his)
    if not hi > lo:
        lo, hi = lo - 0.5, lo + 0.5
    return lnq, np.array([lo, DS_BINS / (hi - lo)])


def _wquantiles(v, w, tail=1e-9):
    ok = (w > 0) & np.isfinite(v)
    v, w = v[ok], w[ok]
    o = np.argsort(v)
    c = np.cumsum(w[o])
    c /= c[-1]
    return float(v[o][np.searchsorted(c, tail)]), float(v[o][min(np.searchsorted(c, 1 - tail), len(c) - 1)])


# --------------------------------------------------------------------------- implicit


def implicit_tables(model, trajectories):
    """(:class:`~trajmc._kernel.Implicit`, fixed-point scale of its ``g_*`` arrays).

    Rows of bath ``nu``: ``toff[seg, nu] + s * G[nu] + E``; each row's alias table picks the target
    among the levels coupled to ``s`` through that bath.
    """
    N, n_s = model.n_baths, model.n_levels
    segs = segment_energies(model)
    G = np.array([b.emax + 1 for b in model.baths], dtype=np.int64)
    targets = []
    for nu in range(N):
        c = model.coupling_weight(nu)
        targets.append([[s2 for s2 in range(n_s) if s2 != s and c[s, s2] > 0] for s in range(n_s)])
    Kc = max(1, max(len(t) for tb in targets for t in tb))
    tgl = np.full((N, n_s, Kc), -1, dtype=np.int64)
    for nu in range(N):
        for s in range(n_s):
            tgl[nu, s, :len(targets[nu][s])] = targets[nu][s]
    rows_per_seg = n_s * int(G.sum())
    R = len(segs) * rows_per_seg
    toff = np.zeros((len(segs), N), dtype=np.int64)
    exit_ = np.zeros(R)
    aprob = np.ones(R * Kc)
    aidx = np.zeros(R * Kc, dtype=np.int16)
    for k, (_, lev) in enumerate(segs):
        base = k * rows_per_seg
        for nu in range(N):
            toff[k, nu] = base
            for s in range(n_s):
                rates = bath_rates(model, nu, lev, s)  # (n_s, G): rates to every level
                w = np.zeros((G[nu], Kc))
                for j, s2 in enumerate(targets[nu][s]):
                    w[:, j] = rates[s2]
                r0 = base + s * G[nu]
                ex = w.sum(axis=1)
                _check_exit(ex, lambda i, s=s, nu=nu: f"level {s} at E_{model.baths[nu].name} = {i}")
                exit_[r0:r0 + G[nu]] = ex
                p = aprob[r0 * Kc:(r0 + G[nu]) * Kc].reshape(G[nu], Kc)
                a = np.zeros((G[nu], Kc), np.int64)
                K.alias_rows(w, p, a)
                aidx[r0 * Kc:(r0 + G[nu]) * Kc] = a.ravel()
            base += n_s * G[nu]
    # initial state: a product (system x each bath) or a joint table
    z_i, z_f = np.zeros(0, np.int64), np.zeros(0)
    if model.joint is not None:
        st, p = model.joint
        keep = p > 0
        rows, pr = st[keep].astype(np.int64), p[keep]
        cum = np.cumsum(pr)
        cum /= cum[-1]
        cum[-1] = 1.0
        cum_s, cum_E, eoff = np.ones(n_s), np.ones(int(G.sum())), np.concatenate([[0], np.cumsum(G)[:-1]])
        lnV0 = sum(model.baths[nu].lnV[rows[:, 1 + nu]] for nu in range(N))
        g_rows_f = np.log(pr) - lnV0
        g_s_f, g_E_f = np.zeros(n_s), np.zeros(int(G[0]))
    else:
        rows, cum = np.zeros((0, 1 + N), np.int64), z_f
        cum_s = _cum(model.p_system)
        cum_E = np.concatenate([_cum(st.p * np.isfinite(b.lnV)) for b, st in zip(model.baths, model.bath_states,
                                                                                   strict=True)])
        eoff = np.concatenate([[0], np.cumsum(G)[:-1]]).astype(np.int64)
        g_rows_f = z_f
        with np.errstate(divide="ignore"):
            g_s_f = np.where(model.p_system > 0, np.log(np.where(model.p_system > 0, model.p_system, 1)), 0.0)
            p0E, lv = model.bath_states[0].p, model.baths[0].lnV
            g_E_f = np.where((p0E > 0) & np.isfinite(lv), np.log(np.where(p0E > 0, p0E, 1)) - np.where(
                np.isfinite(lv), lv, 0.0), 0.0)
    gmax = max([float(np.abs(a).max()) for a in (g_s_f, g_E_f, g_rows_f) if len(a)] + [0.0])
    scale = fixed_point_scale(2 * gmax, trajectories)
    if N == 1:  # one bath: the kernel multiplies by the inverse exit rate instead of dividing
        with np.errstate(divide="ignore"):
            inv1 = np.where(exit_ > 0, 1.0 / np.where(exit_ > 0, exit_, 1.0), 0.0)
    else:
        inv1 = np.zeros(0)
    tab = K.Implicit(cum_s=cum_s, cum_E=cum_E, eoff=eoff.astype(np.int64), init_rows=rows, init_cum=cum, G=G,
                     toff=toff, exit=exit_, aprob=aprob, aidx=aidx, inv1=inv1, tgl=tgl,
                     g_s=np.round(g_s_f * scale).astype(np.int64), g_E=np.round(g_E_f * scale).astype(np.int64),
                     g_rows=np.round(g_rows_f * scale).astype(np.int64) if len(g_rows_f) else z_i)
    return tab, scale


def _cum(p):
    c = np.cumsum(np.asarray(p, dtype=float))
    c /= c[-1]
    c[-1] = 1.0
    return c


def initial_exit_rates(path, tab, model):
    """Mean and largest exit rate over the initial distribution, for every protocol segment: (n_seg,), float."""
    if path == "enumerated":
        p0 = np.zeros(tab.inv_exit.shape[1])
        p0[tab.support] = np.diff(np.concatenate([[0.0], tab.cum0]))
        with np.errstate(divide="ignore"):
            ex = np.where(tab.inv_exit > 0, 1.0 / np.where(tab.inv_exit > 0, tab.inv_exit, 1.0), 0.0)
        return ex @ p0, float(ex[:, tab.support].max()) if len(tab.support) else 0.0
    N = len(tab.G)
    n_seg = tab.toff.shape[0]
    means, top = np.zeros(n_seg), 0.0
    for k in range(n_seg):
        if tab.init_rows.shape[0]:
            p = np.diff(np.concatenate([[0.0], tab.init_cum]))
            s = tab.init_rows[:, 0]
            tot = sum(tab.exit[tab.toff[k, nu] + s * tab.G[nu] + tab.init_rows[:, 1 + nu]] for nu in range(N))
            means[k] = float(p @ tot)
            top = max(top, float(tot[p > 0].max()))
            continue
        ps = np.diff(np.concatenate([[0.0], tab.cum_s]))
        for nu in range(N):
            lo = tab.eoff[nu]
            pE = np.diff(np.concatenate([[0.0], tab.cum_E[lo:lo + tab.G[nu]]]))
            ex = tab.exit[tab.toff[k, nu]: tab.toff[k, nu] + len(ps) * tab.G[nu]].reshape(len(ps), tab.G[nu])
            means[k] += float(ps @ ex @ pE)
            top += float(ex[np.ix_(ps > 0, pE > 0)].max()) if (ps > 0).any() and (pE > 0).any() else 0.0
    return means, top


def initial_windows(model, path, jumps_per_trajectory, n_s):
    """:class:`~trajmc._kernel.Windows` of the windowed accumulators.

    Enumerated: the heat windows cover every possible heat (``-emax..emax``); there is no marginal window.
    Implicit: the bulk of the initial energy distribution (1e-12 tails cut) widened by a margin for the
    dynamics, ``8 sqrt(J + 1) max|eps_s - eps_s'| + 16`` with ``J`` the expected jumps per trajectory.
    """
    N = model.n_baths
    lo = np.zeros(N, np.int64)
    wid = np.zeros(N, np.int64)
    qlo = np.zeros(N, np.int64)
    qwid = np.zeros(N, np.int64)
    levels = np.stack([e for _, e in segment_energies(model)])
    dmax = int(levels.max(axis=1).max() - levels.min(axis=1).min()) if len(levels) else 1
    for nu, b in enumerate(model.baths):
        if path == "enumerated":
            qlo[nu], qwid[nu] = -b.emax, 2 * b.emax + 1
            continue
        if model.joint is not None:
            E = model.joint[0][:, 1 + nu]
            a, z = int(E.min()), int(E.max())
        else:
            p = model.bath_states[nu].p
            c = np.cumsum(p)
            c /= c[-1]
            a = int(np.searchsorted(c, 1e-12))
            z = int(min(np.searchsorted(c, 1 - 1e-12), b.emax))
        m = int(min(b.emax + 1, 8 * math.sqrt(jumps_per_trajectory + 1.0) * max(dmax, 1) + 16))
        lo[nu] = max(0, a - m)
        wid[nu] = min(b.emax, z + m) - lo[nu] + 1
        mq = min(b.emax, m + (z - a) // 4)
        qlo[nu], qwid[nu] = -mq, 2 * mq + 1
    return windows_from(lo, wid, qlo, qwid, n_s)


def windows_from(lo, wid, qlo, qwid, n_s):
    lo, wid, qlo, qwid = (np.asarray(a, dtype=np.int64) for a in (lo, wid, qlo, qwid))
    moff = np.concatenate([[0], np.cumsum(wid * n_s)[:-1]]).astype(np.int64)
    qoff = np.concatenate([[0], np.cumsum(qwid)[:-1]]).astype(np.int64)
    return K.Windows(lo=lo, wid=wid, moff=moff, qlo=qlo, qwid=qwid, qoff=qoff)


def grown_windows(win, ext, model, n_s):
    """Windows that also cover the out-of-window extremes ``ext`` (N, 4), doubled for headroom."""
    lo, wid, qlo, qwid = win.lo.copy(), win.wid.copy(), win.qlo.copy(), win.qwid.copy()
    for nu, b in enumerate(model.baths):
        emin, emax_, qmin, qmax = (int(v) for v in ext[nu])
        if emin <= emax_:  # something fell outside the energy window
            a, z = min(lo[nu], emin), max(lo[nu] + wid[nu] - 1, emax_)
            pad = (z - a + 1) // 2
            lo[nu] = max(0, a - pad)
            wid[nu] = min(b.emax, z + pad) - lo[nu] + 1
        if qmin <= qmax:
            m = max(-qmin, qmax, -qlo[nu])
            m = min(b.emax, 2 * m)
            qlo[nu], qwid[nu] = -m, 2 * m + 1
    return windows_from(lo, wid, qlo, qwid, n_s)
