"""Monte Carlo where nothing can enumerate the network, and the guards that keep any input from hanging it.

* docs/physics.md §5.5 at scale: a 3-level system between three ideal (exponential) baths of 10^6 grid points
  each, sqrt kernel, microcanonical start in the middle of the grids.  The joint grid has 3e18 points; the
  implicit path simulates it from per-bath tables, and the system marginal and the mean heat of every bath
  are compared with the ordinary Pauli master equation (exact while no trajectory reaches a grid edge):
  G-tests on p_s(t) and z-scores on every Q_b(t), Holm-combined at alpha = 1e-6 (PauliMarginalVsExact).
* The finite-rate guard and the expected-work guard: inputs that used to make the kernel loop forever at
  a fixed time end quickly (run in a subprocess with a time limit, so a regression fails instead of hanging).
"""
from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
import tomli_w

import trajmc
from trajmc import engine
from trajmc.validate import run_checks

ALPHA = 1e-6
G = 10**6
BIG = {"name": "three-level-three-baths",
       "system": {"energies": [0, 1, 3], "coupling": [[0, 1, 1], [1, 0, 1], [1, 1, 0]]},
       "baths": [{"name": n, "dos": {"model": "exponential", "beta": b}, "emax": G - 1,
                  "kernel": {"model": "sqrt", "gamma": g, "spectral": {"shape": "gaussian", "width": 2.0}}}
                 for n, b, g in (("hot", 0.2, 1.0), ("warm", 0.6, 0.5), ("cold", 1.5, 0.8))],
       "initial": {"system": [0.0, 0.0, 1.0], "baths": [{"state": "microcanonical", "energy": G // 2}] * 3},
       "times": {"stop": 4.0, "num": 21}, "simulation": {"seed": 11}}


@pytest.fixture(scope="module")
def big_run():
    return trajmc.simulate(BIG, trajectories=40_000)


def test_three_baths_of_a_million_grid_points_agree_with_the_pauli_equation(big_run):
    ens = big_run
    assert ens.stats["path"] == "implicit" and "too large to enumerate" in ens.stats["path_reason"]
    assert ens.stats["memory_estimate"] < 2**30
    (r,) = run_checks(ens, None, alpha=ALPHA, names=["PauliMarginalVsExact"])
    assert r.kind == "statistical" and r.passed, r.detail
    assert r.adjusted_pvalue > ALPHA
    # the windows stayed small: the accumulators never grew with the grid
    assert np.all(ens.acc.windows.wid < 5000)
    bad, n = ens.first_law
    assert bad == 0 and n == ens.trajectories * len(ens.times)


def test_pauli_check_has_power(big_run):
    """The same run against the Pauli solution of a model whose hot bath couples 30% more strongly fails."""
    from trajmc.validate import CHECKS

    wrong = copy.deepcopy(BIG)
    wrong["baths"][0]["kernel"]["gamma"] = 1.3
    fake = copy.copy(big_run)
    fake.model = trajmc.load_model(wrong)
    r = CHECKS["PauliMarginalVsExact"]({"ens": fake, "sol": None, "th": big_run.thermo(), "ex": None})
    assert r.kind == "statistical" and r.pvalue < ALPHA * 1e-3, r.detail


def test_the_enumerated_path_is_refused_for_it():
    with pytest.raises(trajmc.ModelError, match="engine.*implicit"):
        engine.make_plan(BIG, trajectories=10, engine="enumerated")


def test_a_run_that_would_not_fit_is_refused_before_anything_is_allocated(tmp_path):
    with pytest.raises(trajmc.ModelError, match="memory_budget.*MiB"):
        trajmc.simulate(BIG, trajectories=10, memory_budget="64MiB", out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    md = trajmc.get_example("two-baths")
    with pytest.raises(trajmc.ModelError, match="records"):
        trajmc.simulate(md, trajectories=10**7, records=True, memory_budget="1GiB")


def test_expected_work_guard():
    md = trajmc.get_example("qubit-oscillators")
    md["baths"][0]["kernel"]["gamma"] = 1e9
    with pytest.raises(trajmc.ModelError, match="simulation.max_jumps"):
        engine.make_plan(md, trajectories=10**5)
    plan = engine.make_plan(md, trajectories=10, max_jumps=1e12)  # raising the limit lets it run
    assert plan.expected_jumps > 1e10


# inputs that made the kernel loop forever at a fixed time (or overflow) before the finite-rate guard
HANG_CASES = {
    "exponential cutoff 0.001 (rates underflow)": (
        lambda d: d["baths"][0]["kernel"].update(spectral={"shape": "exponential", "cutoff": 0.001}), (0,)),
    "lnV = [0, 1e5, 0, 1e5]": (lambda d: d["baths"][0].update(dos={"model": "table", "lnV": [0, 1e5, 0, 1e5]},
                                                               emax=3), (2,)),
    "lnV entries of +-1e300": (lambda d: d["baths"][0].update(dos={"model": "table", "lnV": [0, 1e300, -1e300, 5]},
                                                               emax=3), (0, 2)),
    "golden E_ref = 1e300": (lambda d: d["baths"][0].update(kernel={"model": "golden", "E_ref": 1e300}), (2,)),
    "exponential bath beta = 1e300": (lambda d: d["baths"][0].update(dos={"model": "exponential", "beta": 1e300}),
                                      (2,)),
    "gamma = 1e308": (lambda d: d["baths"][0]["kernel"].update(gamma=1e308), (2,)),
}


@pytest.mark.parametrize("case", list(HANG_CASES))
def test_inputs_that_used_to_hang_end_quickly(case, tmp_path):
    edit, codes = HANG_CASES[case]
    d = trajmc.get_example("qubit-oscillators")
    d["initial"]["baths"] = [{"state": "microcanonical", "energy": 2}]
    edit(d)
    (tmp_path / "m.toml").write_text(tomli_w.dumps(d))
    p = subprocess.run([sys.executable, "-m", "trajmc", "simulate", str(tmp_path / "m.toml"), "--trajectories",
                        "1000", "--out", str(tmp_path / "run"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert p.returncode in codes, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    if p.returncode == 2:
        assert len(p.stderr.strip().splitlines()) == 1 and "baths[0]." in p.stderr, p.stderr
        assert not (tmp_path / "run").exists()
