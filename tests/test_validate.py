"""``trajmc.validate`` and ``python -m trajmc validate``: every named check accepts a correct run
and rejects a deliberately wrong one.

Statistical thresholds.  A correct run is judged by :func:`trajmc.validate.run_checks` itself at
its default ``alpha = 1e-3``: the statistical checks are Holm-corrected as one family, so a correct
run fails with probability at most 1e-3 (the stated false-alarm rate of each "passes" test below;
every run is seeded, so the outcome is reproducible).  The wrong comparisons are built so that the
expected deviation is many standard errors (|z| >~ 8 or G-test p-values far below 1e-6), i.e. their
failure does not hinge on the seed.  Exact checks must hold outright and fail on any violation.

A run whose stored data do not belong to its model (edited ``model.toml``, altered counts, another
seed claimed in the provenance) must end as an error (exit 2) or a disagreement (exit 1), never 0.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import shutil
import subprocess
import sys
import tomllib

import numpy as np
import pytest
import tomli_w

import trajmc
from trajmc import engine, runio
from trajmc.cli import main
from trajmc.ensemble import Ensemble
from trajmc.validate import CHECKS, run_checks, validate_run

from conftest import get_model_dict

ALPHA = 1e-3  # run_checks' default family-wise false-alarm rate
N_TRAJ = 20_000
SEEDS = {"one": 7, "two": 7, "driven": 7}
FOUR = ("GillespieVsExact", "SystemMarginalVsExact", "HeatMeanVsExact", "ObservationalEntropyVsExact")


# --------------------------------------------------------------------------- models and runs


def one_bath():
    """qubit + 6 oscillators, run long enough to relax: SteadyStateInShells applies."""
    md = get_model_dict("qubit_osc_sqrt")
    md["times"] = {"stop": 10.0, "num": 21}
    return md


def two_baths():
    return get_model_dict("two_baths")


def driven():
    """qubit + 6 oscillators from the global Gibbs state, gap raised 1 -> 2 -> 3 (Jarzynski applies)."""
    return {"name": "driven_small", "system": {"energies": [0, 1], "coupling": [[0, 1], [1, 0]]},
            "baths": [{"name": "B", "dos": {"model": "oscillators", "n": 6, "quantum": 1}, "emax": 60,
                       "kernel": {"model": "sqrt", "gamma": 1.0}}],
            "initial": {"system": {"gibbs": True, "beta": 0.8}, "baths": [{"state": "canonical", "beta": 0.8}]},
            "times": {"stop": 3.0, "num": 13},
            "protocol": [{"time": 1.0, "energies": [0, 2]}, {"time": 2.0, "energies": [0, 3]}]}


MAKERS = {"one": one_bath, "two": two_baths, "driven": driven}

# checks that do not apply (kind "skipped") on each correct run, and why
SKIPPED = {
    "one": {"JarzynskiVsExact", "WorkDistributionVsExact"},  # undriven
    "two": {"SteadyStateInShells", "JarzynskiVsExact", "WorkDistributionVsExact"},  # not relaxed; undriven
    "driven": {"SteadyStateInShells"},  # not relaxed by t = 3
}


@functools.lru_cache(maxsize=None)
def built(key):
    """(model dict, Ensemble, Solution) of a correct run; built once per module."""
    md = MAKERS[key]()
    ens = trajmc.simulate(md, trajectories=N_TRAJ, seed=SEEDS[key])
    return md, ens, trajmc.solve(md)


@functools.lru_cache(maxsize=None)
def correct_results(key):
    _, ens, sol = built(key)
    return {r.name: r for r in run_checks(ens, sol)}


def clone(ens, plan=None):
    """An independent copy of an Ensemble (tamper with it freely)."""
    return Ensemble(plan or ens.plan, copy.deepcopy(ens.acc), dict(ens.stats))


def ctx_of(ens, sol):
    """The context run_checks hands to each check (build it by hand to fake parts of it)."""
    return {"ens": ens, "sol": sol, "th": ens.thermo(), "ex": sol.thermo()}


def perturbed_solution(key, edit):
    md = MAKERS[key]()
    edit(md)
    sol = trajmc.solve(md)
    # same joint states in the same order: the comparison is of numbers, not of bookkeeping
    np.testing.assert_array_equal(sol.network.states, built(key)[1].network.states)
    return sol


# --------------------------------------------------------------------------- correct runs pass


@pytest.mark.parametrize("key", list(MAKERS))
def test_every_check_passes_on_a_correct_run(key):
    res = correct_results(key)
    assert list(res) == list(CHECKS), "run_checks must run the whole registry, in order"
    skipped = {n for n, r in res.items() if r.kind == "skipped"}
    assert skipped == SKIPPED[key], {n: res[n].detail for n in skipped ^ SKIPPED[key]}
    for name, r in res.items():
        assert r.passed, (name, r)
        if r.kind == "statistical":
            assert np.isfinite(r.pvalue) and r.adjusted_pvalue > ALPHA, (name, r)
            assert r.adjusted_pvalue >= r.pvalue
        elif r.kind == "exact":
            assert not (r.max_error > 1e-10), (name, r)


def test_exact_parts_of_statistical_checks_are_reported(key="two"):
    res = correct_results(key)
    # identities checked on the exact solution along the way: machine precision
    assert res["Eq60Decomposition"].max_error < 1e-12
    assert res["ObservationalEntropyNonDecreasing"].max_error == 0.0
    assert res["EnergyConservation"].statistic == 0 and res["EnergyConservation"].max_error < 1e-12
    assert res["FirstLawPerTrajectory"].statistic == 0


def test_holm_adjustment_is_applied_across_the_family():
    res = correct_results("one")
    stat = [r for r in res.values() if r.kind == "statistical"]
    m = len(stat)
    p_min = min(r.pvalue for r in stat)
    adj_min = min(r.adjusted_pvalue for r in stat)
    assert adj_min == pytest.approx(min(1.0, m * p_min))


def test_run_checks_subset_by_name():
    _, ens, sol = built("one")
    res = run_checks(ens, sol, names=["GillespieVsExact", "ReproduceChunks"])
    assert [r.name for r in res] == ["GillespieVsExact", "ReproduceChunks"]
    assert all(r.passed for r in res)


# --------------------------------------------------------------------------- power: wrong exact solution

def _mul_gamma(f):
    def edit(md):
        for b in md["baths"]:
            b["kernel"]["gamma"] *= f
    return edit


def _beta(i, value):
    def edit(md):
        md["initial"]["baths"][i]["beta"] = value
    return edit


def _coupling(c):
    def edit(md):
        md["system"]["coupling"] = c
    return edit


def _switch_time(t):
    def edit(md):
        md["protocol"][0]["time"] = t
    return edit


POWER_CASES = [
    # (run, perturbation of the model whose exact solution is compared, checks that must fail)
    ("one", "gamma x 1.3", _mul_gamma(1.3), set(FOUR) - {"ObservationalEntropyVsExact"}),
    ("one", "bath beta 0.8 -> 1.04", _beta(0, 1.04), set(FOUR) | {"SteadyStateInShells"}),
    ("one", "coupling 1 -> 0.8", _coupling([[0, 0.8], [0.8, 0]]), set(FOUR)),
    ("two", "coupling S_02 1 -> 0.5", _coupling([[0, 1, 0.5], [1, 0, 1], [0.5, 1, 0]]), set(FOUR)),
    ("two", "bath C beta 0.4 -> 0.52", _beta(1, 0.52),
     {"GillespieVsExact", "HeatMeanVsExact", "ObservationalEntropyVsExact"}),
    ("driven", "bath beta 0.8 -> 1.04", _beta(0, 1.04),
     set(FOUR) | {"JarzynskiVsExact", "WorkDistributionVsExact"}),
    ("driven", "first switch at 0.5", _switch_time(0.5), set(FOUR) | {"WorkDistributionVsExact"}),
]


@pytest.mark.parametrize("key, what, edit, must_fail", POWER_CASES, ids=[f"{c[0]}: {c[1]}" for c in POWER_CASES])
def test_wrong_exact_solution_is_rejected(key, what, edit, must_fail):
    _, ens, _ = built(key)
    res = {r.name: r for r in run_checks(ens, perturbed_solution(key, edit))}
    for name in must_fail:
        r = res[name]
        assert r.kind == "statistical" and not r.passed, (name, r)
        assert r.adjusted_pvalue < ALPHA / 100, (name, r)  # far beyond the threshold, not a coin flip
    assert not all(r.passed for r in res.values())


def test_jarzynski_is_blind_to_the_dynamics_but_not_to_the_start():
    """From a global Gibbs start <exp(-beta W)> = Z_final/Z_0 whatever the rates: JarzynskiVsExact
    must keep passing against a solution with other rates (it tests the start and the protocol)."""
    _, ens, _ = built("driven")
    res = {r.name: r for r in run_checks(ens, perturbed_solution("driven", _mul_gamma(1.3)))}
    assert res["JarzynskiVsExact"].passed
    assert "Z_final/Z_0" in res["JarzynskiVsExact"].detail


# --------------------------------------------------------------------------- power: tampered data


def _move_counts(counts, k, frac, same_shell_net=None):
    """Move ``frac`` of the trajectories at time index k from the most to the least populated
    occupied state (row sum kept)."""
    row = counts[k]
    occ = np.flatnonzero(row > 0)
    src = occ[np.argmax(row[occ])]
    cand = occ if same_shell_net is None else occ[same_shell_net.block[occ] == same_shell_net.block[src]]
    dst = cand[np.argmin(row[cand])]
    assert dst != src
    m = int(frac * row.sum())
    row[src] -= m
    row[dst] += m


def test_tampered_counts_fail_gillespie():
    _, ens, sol = built("two")
    bad = clone(ens)
    _move_counts(bad.acc.counts, len(ens.times) // 2, 0.01)
    np.testing.assert_array_equal(bad.counts.sum(axis=1), ens.counts.sum(axis=1))
    r = CHECKS["GillespieVsExact"](ctx_of(bad, sol))
    assert r.pvalue < ALPHA / 100, r
    res = {r.name: r for r in run_checks(bad, sol)}
    assert not res["GillespieVsExact"].passed


def test_tampered_last_counts_fail_steady_state():
    _, ens, sol = built("one")
    bad = clone(ens)
    _move_counts(bad.acc.counts, -1, 0.02, same_shell_net=ens.network)
    res = {r.name: r for r in run_checks(bad, sol)}
    assert res["SteadyStateInShells"].kind == "statistical" and not res["SteadyStateInShells"].passed
    assert not res["GillespieVsExact"].passed


def _leave_shell(ens, i=3, k=-1):
    """Put trajectory i at time k into a state of another energy shell."""
    net = ens.network
    x = ens.acc.rec_x[i, k]
    other = np.flatnonzero(net.shell != net.shell[x])
    ens.acc.rec_x[i, k] = other[0]


def test_record_leaving_its_shell_fails_energy_conservation_and_first_law():
    _, ens, sol = built("one")
    bad = clone(ens)
    _leave_shell(bad)
    ctx = ctx_of(bad, sol)
    r = CHECKS["EnergyConservation"](ctx)
    assert r.kind == "exact" and not r.passed and r.statistic == 1, r
    r = CHECKS["FirstLawPerTrajectory"](ctx)
    assert r.kind == "exact" and not r.passed and r.statistic == 1, r
    res = {r.name: r for r in run_checks(bad, sol)}
    assert not res["EnergyConservation"].passed and not res["FirstLawPerTrajectory"].passed


def test_mean_heat_first_law_violation_fails_energy_conservation():
    _, ens, sol = built("two")
    ctx = ctx_of(ens, sol)
    assert CHECKS["EnergyConservation"](ctx).passed
    ctx["th"] = ctx["th"].copy()
    ctx["th"]["Q_A"] += 1e-6  # mean heats no longer add up to the system energy change
    r = CHECKS["EnergyConservation"](ctx)
    assert not r.passed and r.max_error == pytest.approx(1e-6, rel=1e-3)


def test_work_record_tampering_fails_first_law():
    _, ens, sol = built("driven")
    bad = clone(ens)
    bad.acc.rec_w[5, -1] += 1
    r = CHECKS["FirstLawPerTrajectory"](ctx_of(bad, sol))
    assert not r.passed and r.statistic == 1


def test_fake_non_monotone_exact_solution_fails_h_theorem_and_eq60():
    _, ens, sol = built("two")
    ctx = ctx_of(ens, sol)
    ex = ctx["ex"].copy()
    k = len(ex) // 2
    # S_obs dips 1e-3 below its previous value: not a solution of the MME
    dip = ex["S_obs"].iloc[k] - ex["S_obs"].iloc[k - 1] + 1e-3
    assert dip > 0
    ex.iloc[k, ex.columns.get_loc("S_obs")] -= dip
    ex.iloc[k, ex.columns.get_loc("Sigma")] -= dip
    ctx["ex"] = ex
    r = CHECKS["ObservationalEntropyNonDecreasing"](ctx)
    assert r.kind == "exact" and not r.passed and r.max_error == pytest.approx(1e-3, rel=1e-6), r
    r = CHECKS["Eq60Decomposition"](ctx)
    assert r.kind == "exact" and not r.passed and r.max_error == pytest.approx(dip, rel=1e-6), r


def test_fake_mutual_information_fails_eq60():
    _, ens, sol = built("one")
    ctx = ctx_of(ens, sol)
    ex = ctx["ex"].copy()
    ex["I"] = ex["I"] * 1.01
    ctx["ex"] = ex
    r = CHECKS["Eq60Decomposition"](ctx)
    assert r.kind == "exact" and not r.passed and r.max_error > 1e-6


def test_negative_monte_carlo_entropy_production_fails():
    """The Monte Carlo side of the H-theorem check: Sigma significantly below 0 is rejected."""
    _, ens, sol = built("one")
    ctx = ctx_of(ens, sol)
    th = ctx["th"].copy()
    th.iloc[3, th.columns.get_loc("Sigma")] = -8 * th["Sigma_se"].iloc[3]
    ctx["th"] = th
    r = CHECKS["ObservationalEntropyNonDecreasing"](ctx)
    assert r.kind == "statistical" and r.statistic == pytest.approx(-8)
    assert r.pvalue * len(CHECKS) < ALPHA  # fails under Holm whatever the other p-values


def test_monte_carlo_gap_off_eq60_fails():
    _, ens, sol = built("two")
    ctx = ctx_of(ens, sol)
    th = ctx["th"].copy()
    se = np.sqrt(th["Sigma_se"] ** 2 + th["Sigma_tilde_se"] ** 2)
    th["Sigma_tilde"] = th["Sigma_tilde"] + 8 * se
    ctx["th"] = th
    r = CHECKS["Eq60Decomposition"](ctx)
    assert r.kind == "statistical" and abs(r.statistic) > 7  # 8 SE shift plus the run's own scatter
    assert r.max_error < 1e-12  # the exact identity itself still holds
    assert r.pvalue * len(CHECKS) < ALPHA


def test_other_seed_fails_reproduce_chunks():
    _, ens, sol = built("one")
    liar = Ensemble(dataclasses.replace(ens.plan, entropy=ens.plan.entropy + 1), ens.acc, ens.stats)
    r = CHECKS["ReproduceChunks"]({"ens": liar})
    assert r.kind == "exact" and not r.passed and r.statistic >= 1, r


def test_altered_jump_count_fails_reproduce_chunks():
    _, ens, sol = built("two")
    bad = clone(ens)
    bad.acc.jumps[-1] += 1
    r = CHECKS["ReproduceChunks"]({"ens": bad})
    assert not r.passed and r.statistic == 1 and f"chunk {ens.plan.n_chunks - 1}" in r.detail


def test_every_check_has_a_power_test():
    """Keep this list in step with the registry: a new check needs a test that it can fail."""
    covered = set().union(*(c[3] for c in POWER_CASES)) | {
        "EnergyConservation", "FirstLawPerTrajectory", "ObservationalEntropyNonDecreasing",
        "Eq60Decomposition", "ReproduceChunks", "SteadyStateInShells", "GillespieVsExact"}
    assert set(CHECKS) <= covered, set(CHECKS) - covered


# --------------------------------------------------------------------------- run directories and the CLI


def cli(argv):
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code


RUN_N, RUN_SEED, RUN_CHUNK = 8000, 5, 2000


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("validate") / "run"
    trajmc.simulate(get_model_dict("qubit_osc_sqrt"), trajectories=RUN_N, seed=RUN_SEED, chunk_size=RUN_CHUNK,
                    out=d)
    return d


@pytest.fixture
def run_copy(run_dir, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    for f in ("validation.json", "validation.md"):
        (d / f).unlink(missing_ok=True)
    return d


def _verdict(d):
    v = json.loads((d / "validation.json").read_text())
    return v, {c["name"]: c for c in v["checks"]}


def _edit_toml(d, edit):
    p = d / "model.toml"
    m = tomllib.loads(p.read_text())
    edit(m)
    p.write_text(tomli_w.dumps(m))


def _edit_json(path, edit):
    p = json.loads(path.read_text())
    edit(p)
    path.write_text(json.dumps(p, indent=2))


def _one_line_error(capsys):
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trajmc: error:"), err
    return lines[0]


def test_validate_run_directory_in_process(run_copy, capsys):
    assert cli(["validate", run_copy]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("PASS")
    for name in CHECKS:
        assert name in out
    v, checks = _verdict(run_copy)
    assert v["passed"] is True and v["alpha"] == ALPHA and v["correction"] == "Holm"
    assert list(checks) == list(CHECKS)
    assert "**Verdict: PASS**" in (run_copy / "validation.md").read_text()
    png = run_copy / "figures" / "validation.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_validate_run_directory_subprocess(run_copy):
    """The literal command line: ``python -m trajmc validate RUN_DIR``."""
    p = subprocess.run([sys.executable, "-m", "trajmc", "validate", str(run_copy), "--alpha", "0.001"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PASS" in p.stdout
    for f in ("validation.json", "validation.md", "figures/validation.png"):
        assert (run_copy / f).is_file(), f


def test_validation_json_is_standard_json(run_copy):
    """Regression: validation.json used to carry the literal NaN / Infinity (json.dumps' allow_nan), which
    is not JSON (RFC 8259) and is refused by jq, JavaScript and serde."""
    validate_run(run_copy, figures=False)

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    json.loads((run_copy / "validation.json").read_text(), parse_constant=refuse)


def test_validate_model_file_simulates_then_validates(tmp_path, capsys):
    f = tmp_path / "m.toml"
    f.write_text(tomli_w.dumps(get_model_dict("three_spins_eth")))
    d = tmp_path / "fresh"
    assert cli(["validate", f, "--trajectories", 3000, "--seed", 12, "--out", d, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    v, checks = _verdict(d)
    assert v["passed"] and list(checks) == list(CHECKS)
    assert (d / "validation.md").is_file() and (d / "figures" / "validation.png").is_file()
    prov = json.loads((d / "provenance.json").read_text())
    assert prov["seed"]["entropy"] == "12" and prov["chunking"]["trajectories"] == 3000
    run = trajmc.load_run(d)
    assert run.trajectories == 3000 and run.plan.entropy == 12


def test_validate_non_run_directory_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli(["validate", tmp_path / "empty"]) == 2
    assert "not a trajmc run directory" in _one_line_error(capsys)
    assert cli(["validate", tmp_path / "missing.toml"]) == 2
    _one_line_error(capsys)


def test_edited_model_toml_is_an_error(run_copy, capsys):
    _edit_toml(run_copy, lambda m: m["baths"][0]["kernel"].__setitem__("gamma", 1.3))
    assert cli(["validate", run_copy]) == 2
    assert "model.toml" in _one_line_error(capsys)
    assert not (run_copy / "validation.json").exists()


def _counts_tamper(d, move, recompute_checksum):
    p = d / "accumulators.npz"
    with np.load(p) as z:
        arr = {k: z[k] for k in z.files}
    counts = arr["counts"].copy()
    move(counts)
    arr["counts"] = counts
    if recompute_checksum:  # a careful forger: every stored checksum matches the altered data
        fields = {f.name for f in dataclasses.fields(engine.Accumulators)}
        kw = {k: v for k, v in arr.items() if k in fields}
        kw.update(chunks_done=int(arr["chunks_done"]), wall_s=float(arr["wall_s"]))
        probe = engine.Accumulators(**kw)
        forged = runio.accumulator_checksum(probe)
        if "checksum" in arr:
            arr["checksum"] = np.array(forged)
        _edit_json(d / "provenance.json", lambda pr: pr["checksums"].__setitem__("accumulators_sha256", forged))
    np.savez(p, **arr)


def test_altered_counts_are_an_error(run_copy, capsys):
    def move_one(c):
        k = 3
        i, j = np.argsort(c[k])[-2:]
        c[k, i] -= 1
        c[k, j] += 1
    _counts_tamper(run_copy, move_one, recompute_checksum=False)
    assert cli(["validate", run_copy]) == 2
    assert "checksum" in _one_line_error(capsys)


def test_altered_counts_with_forged_checksum_disagree(run_copy, capsys):
    def move_many(c):
        _move_counts(c, 4, 0.03)
    _counts_tamper(run_copy, move_many, recompute_checksum=True)
    trajmc.load_run(run_copy)  # the forgery gets past the checksum ...
    assert cli(["validate", run_copy, "--quiet"]) == 1  # ... but not past the statistics
    v, checks = _verdict(run_copy)
    assert not v["passed"] and not checks["GillespieVsExact"]["passed"]


def _claim_seed(d, seed):
    _edit_toml(d, lambda m: m["simulation"].__setitem__("seed", seed))
    _edit_json(d / "provenance.json", lambda p: p["seed"].__setitem__("entropy", str(seed)))


def test_other_seed_claimed_in_run_directory_disagrees(run_copy, capsys):
    _claim_seed(run_copy, RUN_SEED + 1)
    assert trajmc.load_run(run_copy).plan.entropy == RUN_SEED + 1  # consistent files load ...
    rc = cli(["validate", run_copy])
    assert rc == 1  # ... and ReproduceChunks catches the lie
    v, checks = _verdict(run_copy)
    assert not v["passed"] and not checks["ReproduceChunks"]["passed"]
    assert "re-simulated" in checks["ReproduceChunks"]["detail"]
    assert "FAIL" in capsys.readouterr().out


def _seed_pair_with_equal_jumps(md, n):
    """Two seeds whose single-chunk runs of n trajectories make the same total number of jumps."""
    seen = {}
    for s in range(500):
        j = int(trajmc.simulate(md, trajectories=n, seed=s, threads=1).acc.jumps.sum())
        if j in seen:
            return seen[j], s
        seen[j] = s
    pytest.fail("no collision found")  # pragma: no cover


def test_other_seed_with_equal_jump_count_is_not_a_pass(tmp_path, capsys):
    """Regression: ReproduceChunks used to compare only the jump total of the first and last chunk; two
    seeds often make the same total (one chunk of 30 trajectories: seeds 0 and 3 both make 82 jumps), so a
    run claiming the other seed passed and `validate` exited 0."""
    md = get_model_dict("qubit_osc_sqrt")
    s_true, s_claimed = _seed_pair_with_equal_jumps(md, 30)
    d = tmp_path / "small"
    trajmc.simulate(md, trajectories=30, seed=s_true, out=d)
    _claim_seed(d, s_claimed)
    rc = cli(["validate", d, "--quiet"])
    v, checks = _verdict(d) if (d / "validation.json").exists() else (None, {})
    assert not checks.get("ReproduceChunks", {"passed": False})["passed"]
    assert rc != 0
