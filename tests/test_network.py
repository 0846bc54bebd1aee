"""The joint (s, E_1..E_N) network: reachable states, rates, shells (docs/physics.md §1, §2, §5.1).

The oracles here are written independently of trajmc: the density of states
with ``math.lgamma``, the rate of every kernel from the docs/physics.md §2 table,
and the reachable set by a plain breadth-first search.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np
import pandas as pd
import pytest
from conftest import ALL_MODELS, MODELS, ONE_BATH, TWO_BATHS, get_model_dict

import trajmc
from trajmc.errors import UnsupportedError
from trajmc.network import build_network

# --------------------------------------------------------------------------- independent physics


def lnv_point(dos: dict, E: float) -> float:
    """ln V at energy E (continuous in E for oscillators/spins/exponential; -inf off the support)."""
    model = dos["model"]
    w = dos.get("quantum", 1)
    if model == "table":
        vals = np.asarray(dos["lnV"], dtype=float)
        fin = np.flatnonzero(np.isfinite(vals))
        if E < fin[0] or E > fin[-1]:
            return -math.inf
        return float(np.interp(E, fin, vals[fin]))
    if E < 0:
        return -math.inf
    k = E / w
    if model == "oscillators":
        n = dos["n"]
        return math.lgamma(k + n) - math.lgamma(k + 1) - math.lgamma(n)
    if model == "spins":
        n = dos["n"]
        if k > n:
            return -math.inf
        return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
    if model == "exponential":
        return dos["beta"] * E
    raise AssertionError(model)


def lnv_grid(bath: dict) -> np.ndarray:
    """ln V on the grid 0..emax (-inf where the bath has no microstates)."""
    dos = bath["dos"]
    w = dos.get("quantum", 1)
    out = np.full(bath["emax"] + 1, -np.inf)
    for E in range(bath["emax"] + 1):
        if dos["model"] == "table":
            out[E] = float(dos["lnV"][E])
        elif E % w == 0:
            out[E] = lnv_point(dos, E)
    return out


def matrices(raw) -> list[np.ndarray]:
    def num(z):
        return complex(z.replace(" ", "")) if isinstance(z, str) else complex(z)
    if all(isinstance(x, (list, tuple)) for r in raw for x in r):
        mats = raw
    else:
        mats = [raw]
    return [np.array([[num(z) for z in row] for row in m]) for m in mats]


def coupling_weight(d: dict, nu: int) -> np.ndarray:
    raw = d["baths"][nu].get("coupling", d["system"]["coupling"])
    c = sum(np.abs(M) ** 2 for M in matrices(raw))
    np.fill_diagonal(c, 0.0)
    return c


def log_j(kernel: dict, omega: float) -> float:
    sp = kernel.get("spectral", {"shape": "flat"})
    if sp["shape"] == "gaussian":
        return -omega**2 / (2 * sp["width"] ** 2)
    if sp["shape"] == "exponential":
        return -abs(omega) / sp["cutoff"]
    return 0.0


def canonical(bath: dict, beta: float) -> np.ndarray:
    x = lnv_grid(bath) - beta * np.arange(bath["emax"] + 1)
    x = x - np.max(x)
    p = np.exp(x)
    return p / p.sum()


def initial_bath_distribution(d: dict, nu: int) -> np.ndarray:
    st = d["initial"]["baths"][nu]
    bath = d["baths"][nu]
    if st["state"] == "canonical":
        return canonical(bath, st["beta"])
    if st["state"] == "microcanonical":
        p = np.zeros(bath["emax"] + 1)
        p[st["energy"]] = 1.0
        return p
    return np.asarray(st["p"], dtype=float)


def golden_eref(d: dict, nu: int) -> float:
    k = d["baths"][nu]["kernel"]
    if "E_ref" in k:
        return k["E_ref"]
    if "joint" in d["initial"]:
        j = d["initial"]["joint"]
        return float(sum(p * s[1 + nu] for s, p in zip(j["states"], j["p"], strict=True)))
    p = initial_bath_distribution(d, nu)
    return float(np.dot(p, np.arange(len(p))))


def expected_log_rate(d: dict, nu: int, s: int, s2: int, E: int, E2: int) -> float:
    """ln k((s, E) -> (s2, E2)) through bath nu, straight from the docs/physics.md §2 table (-inf: no jump)."""
    bath = d["baths"][nu]
    dos, kern = bath["dos"], bath["kernel"]
    c = coupling_weight(d, nu)[s, s2]
    if c == 0:
        return -math.inf
    gamma = kern.get("gamma", 1.0)
    lnv = lnv_grid(bath)
    omega = E2 - E
    model = kern["model"]
    if model == "table":  # k = gamma c f(E, E2) / V_E, the table as given
        return math.log(gamma) + math.log(c) + float(kern["lnf"][E][E2]) - lnv[E]
    base = math.log(gamma) + math.log(c) + log_j(kern, omega)
    if model == "sqrt":
        return base + 0.5 * (lnv[E2] - lnv[E])
    if model == "eth":
        return base + lnv[E2] - lnv_point(dos, 0.5 * (E + E2))
    if model == "golden":
        return base + lnv[E2] - lnv_point(dos, golden_eref(d, nu))
    assert model == "linear"
    w = dos.get("quantum", 1)
    if abs(omega) != w:
        return -math.inf
    N = dos["n"]
    if omega > 0:  # the bath absorbs one quantum: n-1 -> n
        n = E2 // w
        factor = (n + N - 1) if dos["model"] == "oscillators" else (N - n + 1)
    else:  # the bath emits one quantum: n -> n-1
        factor = E // w
    return base + math.log(factor)


def expected_edges(d: dict, state: tuple) -> dict:
    """{(target, bath): log rate} of every jump out of ``state``."""
    eps = d["system"]["energies"]
    s, Es = state[0], state[1:]
    out = {}
    for nu, bath in enumerate(d["baths"]):
        lnv = lnv_grid(bath)
        for s2 in range(len(eps)):
            if s2 == s:
                continue
            E2 = Es[nu] + eps[s] - eps[s2]
            if not 0 <= E2 <= bath["emax"] or not np.isfinite(lnv[E2]):
                continue
            lr = expected_log_rate(d, nu, s, s2, Es[nu], E2)
            if np.isfinite(lr):
                tgt = list(state)
                tgt[0] = s2
                tgt[1 + nu] = E2
                out[(tuple(tgt), nu)] = lr
    return out


def initial_support(d: dict) -> set:
    ini = d["initial"]
    if "joint" in ini:
        return {tuple(s) for s, p in zip(ini["joint"]["states"], ini["joint"]["p"], strict=True) if p > 0}
    if isinstance(ini["system"], dict):
        levels = range(len(d["system"]["energies"]))
    else:
        levels = [s for s, p in enumerate(ini["system"]) if p > 0]
    axes = [list(levels)]
    for nu in range(len(d["baths"])):
        axes.append([int(E) for E in np.flatnonzero(initial_bath_distribution(d, nu) > 0)])
    out = {()}
    for ax in axes:
        out = {t + (v,) for t in out for v in ax}
    return out


def reachable(d: dict) -> set:
    seen = set(initial_support(d))
    todo = deque(seen)
    while todo:
        x = todo.popleft()
        for (y, _nu) in expected_edges(d, x):
            if y not in seen:
                seen.add(y)
                todo.append(y)
    return seen


def net_of(d):
    return build_network(trajmc.load_model(d))


def reverse_index(net) -> np.ndarray:
    """For every edge x -> y (bath nu) the index of the edge y -> x through the same bath (-1 if none)."""
    src = net.source
    key = {(int(a), int(b), int(nu)): i for i, (a, b, nu) in enumerate(zip(src, net.target, net.bath, strict=True))}
    return np.array([key.get((int(b), int(a), int(nu)), -1)
                     for a, b, nu in zip(src, net.target, net.bath, strict=True)])


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", ALL_MODELS)
def test_states_are_exactly_the_reachable_set(name):
    d = get_model_dict(name)
    net = net_of(d)
    got = {tuple(int(v) for v in row) for row in net.states}
    assert len(got) == net.n_states  # no duplicates
    assert got == reachable(d)
    # sorted lexicographically in (s, E_1, .., E_N)
    order = np.lexsort(net.states.T[::-1])
    assert np.array_equal(order, np.arange(net.n_states))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_edges_and_rates_follow_the_kernel_table(name):
    """Every allowed jump is an edge, no other edge exists, and each log rate is the §2 formula."""
    d = get_model_dict(name)
    net = net_of(d)
    src = net.source
    got = {}
    for e in range(net.n_edges):
        x = tuple(int(v) for v in net.states[src[e]])
        y = tuple(int(v) for v in net.states[net.target[e]])
        got[(x, y, int(net.bath[e]))] = float(net.log_rate[e])
        # the edge records its bath and that bath's energy change; other baths do not move
        nu = int(net.bath[e])
        assert net.dE[e] == y[1 + nu] - x[1 + nu]
        assert all(y[1 + m] == x[1 + m] for m in range(len(d["baths"])) if m != nu)
    want = {}
    for row in net.states:
        x = tuple(int(v) for v in row)
        for (y, nu), lr in expected_edges(d, x).items():
            want[(x, y, nu)] = lr
    assert set(got) == set(want)
    keys = sorted(want)
    a = np.array([got[k] for k in keys])
    b = np.array([want[k] for k in keys])
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)
    np.testing.assert_allclose(net.rate, np.exp(net.log_rate), rtol=1e-14, atol=0)
    np.testing.assert_allclose(net.exit_rate, np.bincount(src, weights=net.rate, minlength=net.n_states),
                               rtol=1e-13, atol=0)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_detailed_balance_every_edge(name):
    """k(x->y) / k(y->x) = V_y / V_x for every edge (docs/physics.md §2), checked in log space."""
    net = net_of(get_model_dict(name))
    rev = reverse_index(net)
    assert np.all(rev >= 0), "every jump must have its reverse jump through the same bath"
    x, y = net.source, net.target
    lhs = net.log_rate - net.log_rate[rev]
    rhs = net.lnV[y] - net.lnV[x]
    np.testing.assert_allclose(lhs, rhs, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_generator_annihilates_V(name):
    """docs/physics.md §5.1: W V = 0 (V scaled per closed block so nothing underflows), relative to scale."""
    net = net_of(get_model_dict(name))
    W = net.generator()
    top = np.full(net.n_blocks, -np.inf)
    np.maximum.at(top, net.block, net.lnV)
    V = np.exp(net.lnV - top[net.block])
    resid = W @ V
    scale = abs(W) @ V
    assert np.all(np.abs(resid) <= 1e-12 * scale + 1e-300)
    # columns of W sum to zero (probability is conserved)
    colsum = np.asarray(W.sum(axis=0)).ravel()
    assert np.all(np.abs(colsum) <= 1e-12 * net.exit_rate + 1e-300)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_generator_layout(name):
    net = net_of(get_model_dict(name))
    W = net.generator().toarray()
    src = net.source
    assert np.all(net.rate > 0)
    assert np.all(src != net.target)
    dense = np.zeros_like(W)
    np.add.at(dense, (net.target, src), net.rate)
    np.fill_diagonal(dense, -net.exit_rate)
    np.testing.assert_array_equal(W, dense)
    assert np.all(np.diff(net.indptr) >= 0) and net.indptr[-1] == net.n_edges


@pytest.mark.parametrize("name", ALL_MODELS)
def test_shells_and_blocks(name):
    d = get_model_dict(name)
    net = net_of(d)
    eps = np.array(d["system"]["energies"])
    np.testing.assert_array_equal(net.shell, eps[net.states[:, 0]] + net.states[:, 1:].sum(axis=1))
    src = net.source
    # every jump conserves the total energy, hence stays in its shell and block
    np.testing.assert_array_equal(net.shell[src], net.shell[net.target])
    np.testing.assert_array_equal(net.block[src], net.block[net.target])
    # a block never straddles two shells
    for b in range(net.n_blocks):
        assert len(np.unique(net.shell[net.block == b])) == 1
    # one bath: a shell has at most n_s states
    if len(d["baths"]) == 1:
        assert np.bincount(net.shell - net.shell.min()).max() <= len(eps)
    # lnV_x = sum_nu lnV_nu(E_nu)
    want = sum(lnv_grid(b)[net.states[:, 1 + nu]] for nu, b in enumerate(d["baths"]))
    np.testing.assert_allclose(net.lnV, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_initial_distribution(name):
    d = get_model_dict(name)
    net = net_of(d)
    ps = np.asarray(d["initial"]["system"], dtype=float)
    want = ps[net.states[:, 0]].copy()
    for nu in range(len(d["baths"])):
        want *= initial_bath_distribution(d, nu)[net.states[:, 1 + nu]]
    np.testing.assert_allclose(net.p0, want, rtol=0, atol=1e-14)
    assert abs(net.p0.sum() - 1) <= 1e-14


@pytest.mark.parametrize("name", ALL_MODELS)
def test_frame_columns(name):
    d = get_model_dict(name)
    net = net_of(d)
    df = net.frame()
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["s"] + [f"E_{b['name']}" for b in d["baths"]]
    assert len(df) == net.n_states
    for c in df.columns:
        assert pd.api.types.is_integer_dtype(df[c])
    np.testing.assert_array_equal(df.to_numpy(), net.states)


def test_index_of():
    net = net_of(get_model_dict("two_baths"))
    np.testing.assert_array_equal(net.index_of(net.states), np.arange(net.n_states))
    rng = np.random.default_rng(0)
    pick = rng.choice(net.n_states, 10, replace=False)
    np.testing.assert_array_equal(net.index_of(net.states[pick]), pick)
    d = get_model_dict("two_baths")
    d["initial"] = {"system": [1.0, 0.0, 0.0],
                    "baths": [{"state": "microcanonical", "energy": 5}, {"state": "microcanonical", "energy": 3}]}
    net = net_of(d)  # only the shell of total energy 8
    np.testing.assert_array_equal(net.index_of([[0, 0, 0], [2, 24, 8], [0, 5, 3]]),
                                  [-1, -1, net.index_of([0, 5, 3])[0]])
    assert net.index_of([0, 5, 3])[0] >= 0


def test_microcanonical_one_bath_builds_one_shell():
    d = get_model_dict("three_spins_eth")
    d["initial"] = {"system": [0.0, 0.0, 1.0], "baths": [{"state": "microcanonical", "energy": 10}]}
    net = net_of(d)
    # eps = (0, 1, 3), total energy 13: (0, 13), (1, 12), (2, 10)
    np.testing.assert_array_equal(net.states, [[0, 13], [1, 12], [2, 10]])
    assert net.n_blocks == 1 and len(np.unique(net.shell)) == 1 and net.shell[0] == 13
    np.testing.assert_array_equal(net.p0, [0, 0, 1])
    assert list(net.frame().columns) == ["s", "E_spin"]


@pytest.mark.parametrize("name", ONE_BATH)
def test_microcanonical_one_bath_has_at_most_n_s_states(name):
    d = get_model_dict(name)
    w = d["baths"][0]["dos"].get("quantum", 1)
    E0 = 6 * w
    d["initial"]["baths"] = [{"state": "microcanonical", "energy": E0}]
    net = net_of(d)
    n_s = len(d["system"]["energies"])
    # only the shells the initial state occupies, each with at most n_s states
    assert set(np.unique(net.shell)) == set(np.unique(net.shell[net.p0 > 0]))
    assert np.bincount(net.shell - net.shell.min()).max() <= n_s
    assert {tuple(int(v) for v in r) for r in net.states} == reachable(d)


def test_microcanonical_two_baths_builds_the_shell():
    d = get_model_dict("two_baths")
    d["initial"] = {"system": [1.0, 0.0, 0.0],
                    "baths": [{"state": "microcanonical", "energy": 5}, {"state": "microcanonical", "energy": 3}]}
    net = net_of(d)
    eps = [0, 1, 2]
    K = 8
    want = {(s, a, K - eps[s] - a) for s in range(3) for a in range(0, 25) if 0 <= K - eps[s] - a <= 8}
    got = {tuple(int(v) for v in r) for r in net.states}
    assert got == want
    assert net.n_states == 9 + 8 + 7
    assert np.all(net.shell == K) and net.n_blocks == 1
    assert list(net.frame().columns) == ["s", "E_A", "E_C"]


def test_only_reachable_states_are_built_when_gaps_do_not_fit_the_quantum():
    """Spins of quantum 2 and a level gap of 2: odd bath energies never appear."""
    d = get_model_dict("qubit_spins_linear")
    d["initial"] = {"system": [1.0, 0.0], "baths": [{"state": "microcanonical", "energy": 10}]}
    net = net_of(d)
    np.testing.assert_array_equal(net.states, [[0, 10], [1, 8]])
    # a gap the bath cannot take (3 with quantum 2) leaves the initial state isolated
    d["system"]["energies"] = [0, 3]
    d["baths"][0]["kernel"] = {"model": "sqrt", "gamma": 1.0}
    net = net_of(d)
    np.testing.assert_array_equal(net.states, [[0, 10]])
    assert net.n_edges == 0


def test_joint_initial_support():
    d = get_model_dict("qubit_osc_sqrt")
    d["initial"] = {"joint": {"states": [[0, 3], [1, 2], [1, 7], [0, 30]], "p": [0.2, 0.3, 0.5, 0.0]}}
    net = net_of(d)
    got = {tuple(int(v) for v in r) for r in net.states}
    assert got == {(0, 3), (1, 2), (0, 8), (1, 7)}  # p = 0 rows are not part of the support
    assert got == reachable(d)
    np.testing.assert_allclose(net.p0[net.index_of([[0, 3], [1, 2], [1, 7], [0, 8]])], [0.2, 0.3, 0.5, 0.0])


def test_edges_that_would_leave_the_grid_are_absent():
    d = get_model_dict("qubit_osc_sqrt")
    d["initial"] = {"system": [1.0, 0.0], "baths": [{"state": "microcanonical", "energy": 0}]}
    net = net_of(d)  # (0, 0) cannot go up: the bath would need E = -1
    np.testing.assert_array_equal(net.states, [[0, 0]])
    assert net.n_edges == 0
    d["initial"] = {"system": [0.0, 1.0], "baths": [{"state": "microcanonical", "energy": 60}]}
    net = net_of(d)  # (1, 60) cannot go down: E = 61 is off the grid
    np.testing.assert_array_equal(net.states, [[1, 60]])


def test_huge_joint_space_is_unsupported():
    bath = {"dos": {"model": "oscillators", "n": 3}, "emax": 1000, "kernel": {"model": "sqrt"}}
    d = {"system": {"energies": [0, 1], "coupling": [[0, 1], [1, 0]]},
         "baths": [dict(bath, name=f"b{i}") for i in range(3)],
         "initial": {"system": [1.0, 0.0], "baths": [{"state": "microcanonical", "energy": 10}] * 3}}
    m = trajmc.load_model(d)
    with pytest.raises(UnsupportedError):
        build_network(m)
    with pytest.raises(trajmc.TrajmcError):
        trajmc.solve(m)


def test_models_cover_every_kernel_and_dos():
    """The shared models exercise every kernel, density of states, spectral shape, one and two baths."""
    kernels = {b["kernel"]["model"] for m in MODELS.values() for b in m["baths"]}
    dos = {b["dos"]["model"] for m in MODELS.values() for b in m["baths"]}
    shapes = {b["kernel"].get("spectral", {"shape": "flat"})["shape"] for m in MODELS.values() for b in m["baths"]}
    assert kernels == {"sqrt", "eth", "golden", "linear", "table"}
    assert dos == {"oscillators", "spins", "exponential", "table"}
    assert shapes == {"flat", "gaussian", "exponential"}
    assert ONE_BATH and TWO_BATHS
