"""Crooks relation for driven models (docs/physics.md §5.7 extended): P_F(W) / P_R(-W) = exp(beta (W - Delta F)).

Exact side at 1e-10 against an independent dense computation written here (segment by segment expm
with the work tracked as an extra index); Monte Carlo side, on both paths, by z-scores, |z| < 5 (two-sided
false-alarm rate 5.7e-7 per work value) and a G-test of the forward work histogram (p > 1e-6).
"""
import functools

import numpy as np
import pytest
import scipy.linalg as sla
from conftest import THREADS
from scipy.special import logsumexp

import trajmc
from trajmc import analyze as an
from trajmc import fluctuations as fl
from trajmc.network import build_segments
from trajmc.stats import g_test

BETA = 0.5
PROTOCOLS = {
    "raise": ([{"time": 1.0, "energies": [0, 3]}, {"time": 2.0, "energies": [0, 5]}], 4.0),
    "up-down": ([{"time": 0.3, "energies": [0, 4]}, {"time": 0.9, "energies": [0, 2]},
                 {"time": 1.5, "energies": [0, 6]}], 2.0),
}


def _model(name, emax=120):
    prot, T = PROTOCOLS[name]
    d = trajmc.get_example("driven-qubit")
    d["baths"][0]["dos"]["n"] = 10
    d["baths"][0]["emax"] = emax
    d["protocol"] = prot
    d["times"] = {"stop": T, "num": 9}
    return d


def _dense_work_distribution(model):
    """P(W) at the last time: dense expm per segment, one column per work value."""
    segs = build_segments(model)
    net = segs[0][1]
    s = net.states[:, 0]
    T = float(model.times[-1])
    ends = [t for t, _ in segs[1:]] + [T]
    P = {0: net.p0.copy()}
    for k, (t0, nk) in enumerate(segs):
        if k > 0:
            d = (nk.energies - segs[k - 1][1].energies)[s]
            newP = {}
            for w, v in P.items():
                for dw in np.unique(d):
                    part = np.where(d == dw, v, 0.0)
                    newP[w + int(dw)] = newP.get(w + int(dw), 0.0) + part
            P = newP
        U = sla.expm(nk.generator().toarray() * (ends[k] - t0))
        P = {w: U @ v for w, v in P.items()}
    return {w: float(v.sum()) for w, v in P.items()}


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_crooks_exact_against_dense(name):
    m = trajmc.load_model(_model(name))
    w, PF, PRn, dF = fl.crooks_exact(m, BETA)
    fwd = _dense_work_distribution(m)
    rev = _dense_work_distribution(fl.reversed_model(m, BETA))
    net = build_segments(m)[0][1]
    Etot = net.states[:, 1:].sum(axis=1)
    lz = [logsumexp(net.lnV - BETA * (np.asarray(e)[net.states[:, 0]] + Etot))
          for e in (m.energies, m.protocol[-1].energies)]
    dF_dense = -(lz[1] - lz[0]) / BETA
    assert abs(dF - dF_dense) <= 1e-10
    for wi, pf, pr in zip(w, PF, PRn, strict=True):
        assert abs(pf - fwd.get(int(wi), 0.0)) <= 1e-10
        assert abs(pr - rev.get(-int(wi), 0.0)) <= 1e-10
        assert abs(pf * np.exp(-BETA * (wi - dF)) - pr) <= 1e-10  # Crooks
    assert sum(fwd.values()) == pytest.approx(1.0, abs=1e-12)


def test_reversed_protocol_is_the_mirror_image():
    m = trajmc.load_model(_model("up-down"))
    r = fl.reversed_model(m, BETA)
    assert list(r.energies) == [0, 6]
    assert [s.time for s in r.protocol] == pytest.approx([2.0 - 1.5, 2.0 - 0.9, 2.0 - 0.3])
    assert [list(s.energies) for s in r.protocol] == [[0, 2], [0, 4], [0, 1]]


def test_crooks_is_refused_where_it_cannot_be_built():
    d = _model("raise")
    d["times"] = {"stop": 2.0, "num": 5}  # a switch at the last time: no reversed first segment
    assert fl.reversed_model(trajmc.load_model(d), BETA) is None
    d = trajmc.get_example("two-baths")
    assert fl.reversed_model(trajmc.load_model(d), BETA) is None  # undriven


N_MC = 40_000


@functools.cache
def crooks_run(path):
    """Forward Monte Carlo of the up-down protocol from the Gibbs state (records off: the work histogram is
    streamed) and its analysis against the exact solution."""
    ens = trajmc.simulate(_model("up-down"), trajectories=N_MC, seed=21, engine=path, threads=THREADS)
    assert ens.plan.path == path and ens.plan.driven
    sol = trajmc.solve(ens.model)
    return ens, sol, an.analyze(ens, sol)


@pytest.mark.parametrize("path", ["enumerated", "implicit"])
def test_crooks_monte_carlo(path):
    """ln P_F(W)/P_R(-W) = beta (W - Delta F): the forward Monte Carlo against the exact reversed protocol,
    |z| < 5 per work value; the forward histogram itself against the exact P_F (G-test, p > 1e-6)."""
    ens, _, res = crooks_run(path)
    assert res["gibbs_start"]
    c = res["crooks"]
    assert len(c) >= 3 and np.all(np.abs(c["z"]) < 5), c["z"].values
    assert np.all(c["beta"] == BETA)
    w, PF, _, _ = fl.crooks_exact(ens.model, BETA)
    wv = np.arange(-ens.plan.woff, ens.plan.woff + 1)
    obs = np.interp(w, wv, ens.acc.work[-1].astype(float), left=0.0, right=0.0)
    assert obs.sum() == ens.trajectories  # every trajectory's work is a value of the exact distribution
    r = g_test(obs, PF)
    assert r.impossible == 0 and r.pvalue > 1e-6, r


def test_crooks_monte_carlo_rejects_a_wrong_temperature():
    """Power: the same forward run against the reversed protocol started at another beta (so another P_R and
    Delta F) is many standard errors off."""
    ens, _, _ = crooks_run("enumerated")
    c = an.crooks_table(ens, 0.7)
    assert c is not None and np.max(np.abs(c["z"])) > 10, c["z"].values
