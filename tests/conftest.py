"""Shared small models and fixtures for the Foundation tests.

Every model here is small (a few hundred joint states at most) so that the
whole Foundation suite runs in seconds.  All of them start from a product
state with canonical baths, so every docs/physics.md §4 identity applies; tests
that need other initial states modify a copy.
"""
from __future__ import annotations

import os

# The suite works on many tiny matrices; multithreaded OpenBLAS only adds spin-waiting there
# (5x slower on a busy 2-core machine).  Must be set before numpy is first imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import copy  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402
from scipy.special import gammaln  # noqa: E402

import trajmc  # noqa: E402
from trajmc.cli import main  # noqa: E402

# CI runs property tests derandomised (the same examples every run: a red CI is reproducible); set CI=1
settings.register_profile("ci", derandomize=True, deadline=None, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

#: threads for tests that run on "several" threads: 2 where numba has them, else 1 (NUMBA_NUM_THREADS=1 in CI)
THREADS = min(2, numba.config.NUMBA_NUM_THREADS)

OFF3 = [[0, 1, 1], [1, 0, 1], [1, 1, 0]]
LADDER3 = [[0, 1, 0], [1, 0, 1], [0, 1, 0]]

# A table density of states: increasing, concave, one empty window (E = 5).
TABLE_LNV = [0.0, 1.1, 2.5, 3.2, 4.6, float("-inf"), 5.9, 6.8, 7.0, 7.9, 8.3, 9.1, 9.5, 9.9, 10.6, 10.9,
             11.5, 11.8, 12.2, 12.7, 13.0, 13.3, 13.9, 14.1, 14.6, 14.8, 15.2, 15.5, 15.9, 16.1, 16.4,
             16.8, 17.0, 17.3, 17.5, 17.8, 18.1, 18.3, 18.5, 18.8, 19.0]


def table_lnf(lnV, seed, holes=0.2, width=2.0):
    """A random symmetric ``ln f`` on a grid: sqrt-like scale, gaussian decay, lognormal noise and holes."""
    rng = np.random.default_rng(seed)
    lnV = np.asarray(lnV, dtype=float)
    G = len(lnV)
    E = np.arange(G)
    noise = rng.normal(0.0, 0.5, (G, G))
    out = 0.5 * (lnV[:, None] + lnV[None, :]) - (E[:, None] - E[None, :]) ** 2 / (2 * width**2) + noise + noise.T
    hole = rng.random((G, G)) < holes
    out[hole | hole.T] = -np.inf
    return [[float(x) for x in row] for row in out]


SPIN20_LNV = [float(x) for x in (gammaln(21) - gammaln(np.arange(21) + 1) - gammaln(21 - np.arange(21)))]


def _bath(name, dos, emax, kernel, **extra):
    return {"name": name, "dos": dos, "emax": emax, "kernel": kernel, **extra}


MODELS = {
    # one bath: oscillators, sqrt kernel, flat J
    "qubit_osc_sqrt": {
        "name": "qubit_osc_sqrt",
        "system": {"energies": [0, 1], "coupling": [[0, 1], [1, 0]]},
        "baths": [_bath("B", {"model": "oscillators", "n": 6, "quantum": 1}, 60,
                        {"model": "sqrt", "gamma": 1.0, "spectral": {"shape": "flat"}})],
        "initial": {"system": [0.2, 0.8], "baths": [{"state": "canonical", "beta": 0.8}]},
        "times": {"stop": 3.0, "num": 13},
    },
    # one bath: spins, eth kernel, gaussian J, three levels
    "three_spins_eth": {
        "name": "three_spins_eth",
        "system": {"energies": [0, 1, 3], "coupling": OFF3},
        "baths": [_bath("spin", {"model": "spins", "n": 30, "quantum": 1}, 30,
                        {"model": "eth", "gamma": 0.7, "spectral": {"shape": "gaussian", "width": 2.0}})],
        "initial": {"system": [0.1, 0.3, 0.6], "baths": [{"state": "canonical", "beta": 0.4}]},
        "times": {"stop": 4.0, "num": 9},
    },
    # one bath: ideal exponential bath, golden kernel, exponential cut-off, complex coupling
    "three_exp_golden": {
        "name": "three_exp_golden",
        "system": {"energies": [0, 2, 3],
                   "coupling": [[0, 1, 0.5], [1, 0, "0.3-0.4j"], [0.5, "0.3+0.4j", 0]]},
        "baths": [_bath("X", {"model": "exponential", "beta": 0.3}, 60,
                        {"model": "golden", "gamma": 1.3, "spectral": {"shape": "exponential", "cutoff": 3.0}})],
        "initial": {"system": [0.5, 0.25, 0.25], "baths": [{"state": "canonical", "beta": 1.0}]},
        "times": {"stop": 2.0, "num": 9},
    },
    # one bath: spins of quantum 2, linear kernel (jumps move one quantum)
    "qubit_spins_linear": {
        "name": "qubit_spins_linear",
        "system": {"energies": [0, 2], "coupling": [[0, 1], [1, 0]]},
        "baths": [_bath("L", {"model": "spins", "n": 25, "quantum": 2}, 50, {"model": "linear", "gamma": 0.2})],
        "initial": {"system": [0.0, 1.0], "baths": [{"state": "canonical", "beta": 0.3}]},
        "times": {"stop": 2.0, "num": 9},
    },
    # one bath: table lnV (with an empty window), sqrt kernel, gaussian J, diagonal coupling entries
    "qubit_table_sqrt": {
        "name": "qubit_table_sqrt",
        "system": {"energies": [0, 1], "coupling": [[0.2, 1], [1, -0.1]]},
        "baths": [_bath("T", {"model": "table", "lnV": TABLE_LNV}, 40,
                        {"model": "sqrt", "gamma": 2.0, "spectral": {"shape": "gaussian", "width": 1.5}})],
        "initial": {"system": [0.7, 0.3], "baths": [{"state": "canonical", "beta": 2.0}]},
        "times": {"stop": 3.0, "num": 7},
    },
    # two baths: oscillators/sqrt and spins/eth (675 joint states)
    "two_baths": {
        "name": "two_baths",
        "system": {"energies": [0, 1, 2], "coupling": OFF3},
        "baths": [_bath("A", {"model": "oscillators", "n": 3, "quantum": 1}, 24,
                        {"model": "sqrt", "gamma": 1.0}),
                  _bath("C", {"model": "spins", "n": 8, "quantum": 1}, 8,
                        {"model": "eth", "gamma": 0.5, "spectral": {"shape": "exponential", "cutoff": 2.0}})],
        "initial": {"system": [1 / 3, 1 / 3, 1 / 3],
                    "baths": [{"state": "canonical", "beta": 1.2}, {"state": "canonical", "beta": 0.4}]},
        "times": {"stop": 3.0, "num": 7},
    },
    # two baths: oscillators/linear with its own (ladder) coupling and an ideal bath/golden
    # with two coupling operators
    "two_baths_mixed": {
        "name": "two_baths_mixed",
        "system": {"energies": [0, 1, 2], "coupling": OFF3},
        "baths": [_bath("L", {"model": "oscillators", "n": 4, "quantum": 1}, 30,
                        {"model": "linear", "gamma": 0.5}, coupling=LADDER3),
                  _bath("G", {"model": "exponential", "beta": 0.2}, 36,
                        {"model": "golden", "gamma": 0.8, "spectral": {"shape": "gaussian", "width": 1.5}},
                        coupling=[OFF3, [[0, "1j", 0], ["-1j", 0, 0], [0, 0, 0]]])],
        "initial": {"system": [0.6, 0.3, 0.1],
                    "baths": [{"state": "canonical", "beta": 1.0}, {"state": "canonical", "beta": 0.8}]},
        "times": {"stop": 2.0, "num": 5},
    },
    # one bath: table kernel (random symmetric f with holes) on 20 spins, three levels
    "three_spins_table": {
        "name": "three_spins_table",
        "system": {"energies": [0, 1, 3], "coupling": OFF3},
        "baths": [_bath("F", {"model": "spins", "n": 20, "quantum": 1}, 20,
                        {"model": "table", "gamma": 0.6, "lnf": table_lnf(SPIN20_LNV, 11)})],
        "initial": {"system": [0.1, 0.3, 0.6], "baths": [{"state": "canonical", "beta": 0.5}]},
        "times": {"stop": 3.0, "num": 7},
    },
    # two baths: a table kernel on a table density of states beside a closed-form one
    "two_baths_table": {
        "name": "two_baths_table",
        "system": {"energies": [0, 1, 2], "coupling": OFF3},
        "baths": [_bath("T", {"model": "table", "lnV": TABLE_LNV[:21]}, 20,
                        {"model": "table", "gamma": 4.0, "lnf": table_lnf(TABLE_LNV[:21], 12, holes=0.1)}),
                  _bath("C", {"model": "spins", "n": 8, "quantum": 1}, 8,
                        {"model": "sqrt", "gamma": 2.0, "spectral": {"shape": "gaussian", "width": 1.5}})],
        "initial": {"system": [0.2, 0.3, 0.5],
                    "baths": [{"state": "canonical", "beta": 1.5}, {"state": "canonical", "beta": 0.4}]},
        "times": {"stop": 3.0, "num": 7},
    },
}

ONE_BATH = ["qubit_osc_sqrt", "three_spins_eth", "three_exp_golden", "qubit_spins_linear", "qubit_table_sqrt",
            "three_spins_table"]
TWO_BATHS = ["two_baths", "two_baths_mixed", "two_baths_table"]
ALL_MODELS = ONE_BATH + TWO_BATHS


def get_model_dict(name: str) -> dict:
    """A fresh deep copy of one of the shared model dicts."""
    return copy.deepcopy(MODELS[name])


@pytest.fixture
def model_dict():
    """``model_dict(name)`` -> a fresh copy of a shared model dict."""
    return get_model_dict


@pytest.fixture(params=ALL_MODELS)
def model_name(request):
    """Every shared model (product initial state, canonical baths); one and two baths."""
    return request.param


_SOLVED = {}


@pytest.fixture
def solved():
    """``solved(name)`` -> cached ``trajmc.solve`` of a shared model at its own times (read-only!)."""
    def get(name):
        if name not in _SOLVED:
            _SOLVED[name] = trajmc.solve(get_model_dict(name))
        return _SOLVED[name]
    return get


def block_members(net, b):
    return np.flatnonzero(net.block == b)


def signal_from_another_thread(sig=None):
    """Deliver ``sig`` (default SIGINT) to a thread other than the main one, as happens while numba
    workers exist; CPython runs the Python-level handler in the main thread at its next bytecode."""
    import signal
    import threading

    sig = signal.SIGINT if sig is None else sig

    def send():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        signal.pthread_kill(threading.get_ident(), sig)

    t = threading.Thread(target=send)
    t.start()
    t.join()


def pytest_terminal_summary(terminalreporter):
    """The fuzzer's table (tests/test_fuzz_inputs.py): inputs per class, outcomes per stage."""
    import sys

    mod = sys.modules.get("test_fuzz_inputs")
    if mod is None or not mod.TALLY:
        return
    tr = terminalreporter
    tr.section("fuzzer: inputs per class and outcomes")
    for cls, n in sorted(mod.INPUTS.items()):
        tr.write_line(f"{cls:22s} {n:6d} inputs")
    for (cls, stage, outcome), n in sorted(mod.TALLY.items()):
        tr.write_line(f"  {cls:12s} {stage:9s} {outcome:34s} {n:6d}")
    tr.write_line(f"broken contracts: {len(mod.FAILURES)}")
    path = os.environ.get("TRAJMC_FUZZ_REPORT")
    if path:
        import json

        with open(path, "w") as fh:
            json.dump({"inputs": dict(mod.INPUTS),
                       "outcomes": [[c, s, o, n] for (c, s, o), n in sorted(mod.TALLY.items())],
                       "samples": [[c, s, o, m] for (c, s, o), m in sorted(mod.SAMPLES.items())],
                       "failures": [list(f) for f in mod.FAILURES]}, fh, indent=1)


# --------------------------------------------------------------------------- the command line, in process

def cli(argv):
    """``main(argv)`` -> exit status (argparse errors exit through SystemExit)."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code


def assert_bad_input(argv, capsys, match=None):
    rc = cli(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    if match is not None:
        assert match in lines[0], lines[0]
    return lines[0]
