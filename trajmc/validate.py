"""``python -m trajmc validate``: named statistical checks of a run against the exact solver.

Each check returns a verdict with its statistic and p-value (statistical checks)
or its maximum error (exact checks).  The p-values of the statistical family are
Holm-adjusted and compared with ``alpha`` (default 1e-3); exact checks must hold
outright.  A run whose stored data do not belong to its model is refused by
:func:`trajmc.load_run` (digest and checksum) or fails ``ReproduceChunks``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import engine
from . import fluctuations as fl
from .network import levels_at
from .stats import g_test, holm, z_pvalue

__all__ = ["CHECKS", "CheckResult", "run_checks", "validate_run", "validate_cli"]

Z_EXACT_TOL = 1e-10


@dataclass
class CheckResult:
    name: str
    kind: str  # "statistical" | "exact" | "skipped"
    statistic: float = float("nan")
    pvalue: float = float("nan")
    max_error: float = float("nan")
    passed: bool = True
    detail: str = ""
    adjusted_pvalue: float = float("nan")
    extra: dict = field(default_factory=dict)


CHECKS = {}


def check(fn):
    CHECKS[fn.__name__] = fn
    return fn


def _min_holm(pvals):
    pvals = np.asarray(pvals, dtype=float)
    pvals = pvals[np.isfinite(pvals)]
    return float(holm(pvals).min()) if len(pvals) else 1.0


def _z_family(name, est, se, exact, what):
    est, se, exact = (np.asarray(x, dtype=float) for x in (est, se, exact))
    sure = np.isfinite(est) & np.isfinite(exact) & (se == 0)  # no spread: the estimate must be exact
    if np.any(np.abs(est[sure] - exact[sure]) > 1e-9):
        k = np.flatnonzero(sure)[np.argmax(np.abs(est[sure] - exact[sure]))]
        return CheckResult(name, "exact", max_error=float(abs(est[k] - exact[k])), passed=False,
                           detail=f"{what}: estimate {est[k]:.6g} with zero standard error but exact {exact[k]:.6g}")
    ok = np.isfinite(est) & np.isfinite(exact) & (se > 0)
    if not ok.any():
        return CheckResult(name, "skipped", detail=f"{what}: no time with a positive standard error")
    z = (est[ok] - exact[ok]) / se[ok]
    k = int(np.argmax(np.abs(z)))
    return CheckResult(name, "statistical", statistic=float(z[k]), pvalue=_min_holm(z_pvalue(z)),
                       detail=f"{what}: largest |z| = {abs(z[k]):.2f} over {ok.sum()} times")


def _g_family(name, times, observed, exact, what="states"):
    """G-tests of count rows against exact probability rows, one per time; Holm-adjusted minimum p."""
    res = [g_test(o, q) for o, q in zip(observed, exact)]
    p = [r.pvalue for r in res]
    k = int(np.argmin(p))
    imp = sum(r.impossible for r in res)
    return CheckResult(name, "statistical", statistic=res[k].statistic, pvalue=_min_holm(p),
                       detail=f"worst time t = {times[k]:g}: G = {res[k].statistic:.1f}, df = {res[k].df}"
                              + (f"; {imp} observations in {what} of exact probability 0" if imp else ""))


@check
def GillespieVsExact(ctx):
    """Joint p_x(t) at every sample time: G-test with pooled sparse bins."""
    ens, sol = ctx["ens"], ctx["sol"]
    return _g_family("GillespieVsExact", ens.times, ens.counts, sol.p)


@check
def SystemMarginalVsExact(ctx):
    """p_s(t) at every sample time: G-test."""
    ens, sol = ctx["ens"], ctx["sol"]
    ps, _ = ens.p_system()
    return _g_family("SystemMarginalVsExact", ens.times, np.rint(ps * ens.trajectories), sol.p_system(), "levels")


@check
def HeatMeanVsExact(ctx):
    """Mean heat from each bath: z-scores at every time after 0."""
    th, ex, names = ctx["th"], ctx["ex"], ctx["ens"].model.bath_names
    z_all, worst = [], None
    for b in names:
        r = _z_family("HeatMeanVsExact", th[f"Q_{b}"][1:], th[f"Q_{b}_se"][1:], ex[f"Q_{b}"][1:], f"Q_{b}")
        if r.kind == "statistical":
            z_all.append(r.pvalue)
            if worst is None or abs(r.statistic) > abs(worst.statistic):
                worst = r
    if worst is None:
        return CheckResult("HeatMeanVsExact", "skipped", detail="no heat fluctuations")
    worst.pvalue = _min_holm(z_all)
    return worst


@check
def ObservationalEntropyVsExact(ctx):
    """Bias-corrected S_obs(t) and Sigma(t): z-scores."""
    th, ex = ctx["th"], ctx["ex"]
    a = _z_family("ObservationalEntropyVsExact", th["S_obs"], th["S_obs_se"], ex["S_obs"], "S_obs")
    b = _z_family("ObservationalEntropyVsExact", th["Sigma"][1:], th["Sigma_se"][1:], ex["Sigma"][1:], "Sigma")
    worst = a if abs(a.statistic) >= abs(b.statistic if b.kind == "statistical" else 0) else b
    worst.pvalue = _min_holm([a.pvalue, b.pvalue])
    worst.detail = f"{a.detail}; {b.detail}"
    return worst


@check
def EnergyConservation(ctx):
    """Every recorded trajectory stays in its energy shell; heat histograms agree with the system energy change."""
    ens = ctx["ens"]
    net = ens.network
    shell = net.shell
    bad = 0
    n = 0
    rec = ens.records
    if rec is not None and not ens.plan.driven:  # driven: shells move at the switches (FirstLawPerTrajectory)
        x = rec["x"]
        bad = int(np.count_nonzero(shell[x] != shell[x[:, :1]]))
        n = x.size
    # sum over baths of the mean heat equals the mean system energy change (one-line first law)
    th = ctx["th"]
    q = sum(th[f"Q_{b}"] for b in ens.model.bath_names)
    w = th["W"] if "W" in th else 0.0
    err = float(np.max(np.abs(q + w - (th["E_S"] - th["E_S"].iloc[0]))))
    passed = bad == 0 and err < 1e-9
    return CheckResult("EnergyConservation", "exact", statistic=bad, max_error=err, passed=passed,
                       detail=f"{bad} of {n} recorded samples left their shell; first law of mean heats: "
                              f"max error {err:.2e}" + ("" if rec is not None else " (no per-trajectory records)"))


@check
def ObservationalEntropyNonDecreasing(ctx):
    """Exact S_obs(t) never decreases; the Monte Carlo Sigma(t) is never significantly negative."""
    ex, th = ctx["ex"], ctx["th"]
    drop = float(max(0.0, -np.min(np.diff(ex["S_obs"].values)))) if len(ex) > 1 else 0.0
    se = th["Sigma_se"].values[1:]
    z = np.where(se > 0, th["Sigma"].values[1:] / np.where(se > 0, se, 1), 0.0)
    zmin = float(z.min()) if len(z) else 0.0
    from scipy.stats import norm

    p = _min_holm(norm.cdf(z)) if len(z) else 1.0
    res = CheckResult("ObservationalEntropyNonDecreasing", "statistical", statistic=zmin, pvalue=p,
                      max_error=drop, detail=f"exact largest decrease {drop:.2e}; Monte Carlo min Sigma/SE = {zmin:.2f}")
    if drop > Z_EXACT_TOL:
        res.passed = False
        res.kind = "exact"
    return res


@check
def Eq60Decomposition(ctx):
    """Sigma - Sigma_tilde = -I - D (exact, Eq. 60) and the Monte Carlo gap against it."""
    m = ctx["ens"].model
    if m.bath_states is None or any(st.state != "canonical" for st in m.bath_states):
        return CheckResult("Eq60Decomposition", "skipped", detail="needs a product start with canonical baths")
    ex, th = ctx["ex"], ctx["th"]
    err = float(np.max(np.abs(ex["Sigma"] - ex["Sigma_tilde"] + ex["I"] + ex["D"])))
    gap = th["Sigma_tilde"] - th["Sigma"]
    se = np.sqrt(th["Sigma_se"] ** 2 + th["Sigma_tilde_se"] ** 2)  # conservative: correlation ignored
    r = _z_family("Eq60Decomposition", gap[1:], se[1:], (ex["I"] + ex["D"])[1:], "Sigma_tilde - Sigma vs I + D")
    r.max_error = err
    if err > Z_EXACT_TOL:
        r.kind, r.passed = "exact", False
    r.detail = f"exact identity error {err:.2e}; " + r.detail
    return r


@check
def SteadyStateInShells(ctx):
    """Where the exact solution has relaxed by the last time, the Monte Carlo matches p ∝ V in each shell."""
    ens, sol = ctx["ens"], ctx["sol"]
    net = sol.network
    w = np.bincount(net.block, weights=net.p0)
    lv = net.lnV - np.array([net.lnV[net.block == b].max() for b in range(net.n_blocks)])[net.block]
    v = np.exp(lv)
    ss = w[net.block] * v / np.bincount(net.block, weights=v)[net.block]
    tv = 0.5 * float(np.abs(sol.p[-1] - ss).sum())
    if tv > 1e-4:
        return CheckResult("SteadyStateInShells", "skipped",
                           detail=f"not relaxed by the last time (total variation {tv:.1e} from the steady state)")
    r = g_test(ens.counts[-1], ss)
    return CheckResult("SteadyStateInShells", "statistical", statistic=r.statistic, pvalue=r.pvalue,
                       detail=f"G = {r.statistic:.1f}, df = {r.df}; exact distance {tv:.1e}")


@check
def FirstLawPerTrajectory(ctx):
    """Every recorded trajectory: Delta E_S + sum_nu Delta E_nu = W exactly (integers)."""
    ens = ctx["ens"]
    rec = ens.records
    if rec is None:
        return CheckResult("FirstLawPerTrajectory", "skipped", detail="the run kept no per-trajectory records")
    st = ens.network.states
    x = rec["x"]
    lev = levels_at(ens.plan.segments, ens.times).astype(np.int64)
    es = lev[np.arange(len(ens.times))[None, :], st[x, 0]]
    eb = st[x, 1:].sum(axis=-1)
    w = rec.get("work", 0)
    viol = (es - es[:, :1]) + (eb - eb[:, :1]) - w
    bad = int(np.count_nonzero(viol))
    return CheckResult("FirstLawPerTrajectory", "exact", statistic=bad, max_error=float(np.abs(viol).max()),
                       passed=bad == 0, detail=f"{bad} of {viol.size} (trajectory, time) pairs violate the first law")


def _work_beta(model, net):
    beta = fl.global_gibbs_beta(model, net)
    if beta is not None:
        return beta, True
    for nu in range(model.n_baths):
        if np.isfinite(model.beta_ref(nu)):
            return model.beta_ref(nu), False
    return None, False


@check
def JarzynskiVsExact(ctx):
    """<exp(-beta W)> at the last time against the exact tilted value (= Z_final/Z_0 from a Gibbs start)."""
    ens, sol = ctx["ens"], ctx["sol"]
    if not ens.plan.driven:
        return CheckResult("JarzynskiVsExact", "skipped", detail="undriven model (no protocol)")
    beta, gibbs = _work_beta(ens.model, sol.network)
    if beta is None:
        return CheckResult("JarzynskiVsExact", "skipped", detail="no inverse temperature in the model")
    a = ens.plan.arrays
    wv = np.arange(-a["woff"], a["woff"] + 1)
    h = ens.acc.work[-1] / ens.trajectories
    e = np.exp(-beta * wv)
    mean = float(h @ e)
    se = float(np.sqrt(max(h @ e**2 - mean**2, 0.0) / max(ens.trajectories - 1, 1)))
    exact = float(fl.tilted_work_average(sol.segments, ens.times[-1:], beta)[0])
    if se == 0 and abs(mean - exact) > 1e-9:
        return CheckResult("JarzynskiVsExact", "exact", max_error=abs(mean - exact), passed=False,
                           detail=f"<exp(-{beta:g} W)> = {mean:.6g} with zero spread but exact {exact:.6g}")
    z = (mean - exact) / se if se > 0 else 0.0
    extra = ""
    if gibbs:
        ratio = fl.gibbs_ratio(sol.segments, beta)
        extra = f"; Gibbs start: exact equals Z_final/Z_0 = {ratio:.6g} (error {abs(exact - ratio):.1e})"
    res = CheckResult("JarzynskiVsExact", "statistical", statistic=z, pvalue=float(z_pvalue(z)),
                      detail=f"<exp(-{beta:g} W)> = {mean:.5g} ± {se:.2g}, exact {exact:.6g}{extra}")
    if gibbs and abs(exact - fl.gibbs_ratio(sol.segments, beta)) > Z_EXACT_TOL:
        res.kind, res.passed = "exact", False
    return res


@check
def WorkDistributionVsExact(ctx):
    """Distribution of the work done so far at every sample time: G-test."""
    ens, sol = ctx["ens"], ctx["sol"]
    if not ens.plan.driven:
        return CheckResult("WorkDistributionVsExact", "skipped", detail="undriven model (no protocol)")
    w, P = fl.work_distribution(sol.segments, ens.times)
    woff = ens.plan.arrays["woff"]
    idx = np.arange(-woff, woff + 1)
    m = np.isin(idx, w)
    obs = np.zeros((len(ens.times), len(w)))
    obs[:, np.searchsorted(w, idx[m])] = ens.acc.work[:, m]
    return _g_family("WorkDistributionVsExact", ens.times, obs, P, "work values")


@check
def ReproduceChunks(ctx):
    """Re-simulates the first and last chunk from the recorded seed: jump counts and the fingerprint of the
    random stream (the generator's end state) must match exactly."""
    ens = ctx["ens"]
    plan = ens.plan
    n_t, n = len(plan.times), plan.network.n_states
    bad = []
    idx = sorted({0, plan.n_chunks - 1})
    for c in idx:
        acc = engine.Accumulators(counts=np.zeros((n_t, n), np.int64), cross=np.zeros((n_t, n, 2), np.int64),
                                  heat=np.zeros((n_t, plan.arrays["H"]), np.int64),
                                  jumps=np.zeros(plan.n_chunks, np.int64), chunks_done=c,
                                  fingerprint=np.zeros(plan.n_chunks, np.uint64),
                                  work=np.zeros((n_t, plan.arrays["HW"]), np.int64),
                                  path_t=np.zeros((plan.paths, engine.PATH_CAPACITY)),
                                  path_x=np.zeros((plan.paths, engine.PATH_CAPACITY), np.int64),
                                  path_len=np.zeros(plan.paths, np.int64))
        engine.run_plan(plan, acc, threads=1, stop_after=c + 1)
        if acc.jumps[c] != ens.acc.jumps[c] or acc.fingerprint[c] != ens.acc.fingerprint[c]:
            bad.append(f"chunk {c}: stored {int(ens.acc.jumps[c])} jumps / stream fingerprint "
                       f"{int(ens.acc.fingerprint[c]):#x}, re-simulated {int(acc.jumps[c])} / {int(acc.fingerprint[c]):#x}")
    return CheckResult("ReproduceChunks", "exact", statistic=len(bad), passed=not bad,
                       detail="; ".join(bad) if bad else f"chunks {idx} reproduce exactly from the recorded seed")


def run_checks(ens, sol, alpha=1e-3, names=None):
    """Run the registry (or ``names``) and apply the Holm correction to the statistical family."""
    ctx = {"ens": ens, "sol": sol, "th": ens.thermo(), "ex": sol.thermo()}
    results = [CHECKS[n](ctx) for n in (names or CHECKS)]
    stat = [r for r in results if r.kind == "statistical"]
    if stat:
        adj = holm([r.pvalue for r in stat])
        for r, a in zip(stat, adj):
            r.adjusted_pvalue = float(a)
            r.passed = r.passed and bool(a > alpha)
    return results


def _finite(obj):
    """Standard JSON: non-finite numbers (p-values of exact checks, an impossible G) become null."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


def validate_run(run_dir, alpha=1e-3, figures=True):
    """Validate a finished run directory; writes validation.json, validation.md and figures."""
    from .runio import atomic_text, load_run
    from .solver import solve

    run_dir = Path(run_dir)
    ens = load_run(run_dir)
    sol = solve(ens.model)
    results = run_checks(ens, sol, alpha)
    ok = all(r.passed for r in results)
    verdict = {"run": str(run_dir), "alpha": alpha, "passed": ok, "correction": "Holm",
               "checks": [asdict(r) for r in results]}
    atomic_text(run_dir / "validation.json", json.dumps(_finite(verdict), indent=2, allow_nan=False))
    lines = [f"# Validation of `{run_dir.name}`", "",
             f"Model `{ens.model.name}`, {ens.trajectories} trajectories, seed entropy {ens.plan.entropy}. "
             f"Statistical checks Holm-corrected at alpha = {alpha:g}.", "",
             f"**Verdict: {'PASS' if ok else 'FAIL'}**", "",
             "| check | kind | statistic | p (adjusted) | max error | verdict | detail |", "|---|---|---|---|---|---|---|"]
    for r in results:
        mark = "skipped" if r.kind == "skipped" else ("pass" if r.passed else "FAIL")
        lines.append(f"| {r.name} | {r.kind} | {r.statistic:.4g} | {r.adjusted_pvalue:.3g} | {r.max_error:.3g} | "
                     f"{mark} | {r.detail} |")
    atomic_text(run_dir / "validation.md", "\n".join(lines) + "\n")
    if figures:
        from .plotting import validation_figures

        validation_figures(ens, sol, run_dir / "figures")
    return ok, results


def validate_cli(args):
    from .runio import default_run_dir

    from .errors import TrajmcError

    target = Path(args.target)
    if args.example:
        raise TrajmcError("--example: validate takes a run directory or a model file (TARGET)")
    if target.is_dir():
        given = [f for f in ("trajectories", "seed", "chunk_size", "out", "scheduler", "workers")
                 if getattr(args, f) is not None]
        if given:
            raise TrajmcError(f"--{given[0].replace('_', '-')}: applies only when validating a model file "
                              f"(a run directory is validated as it was run)")
        run_dir = target
    else:
        from .ensemble import simulate
        from .model import load_model

        model = load_model(target)
        engine.make_plan(model, args.trajectories, args.seed, None, args.chunk_size, None, 0)
        run_dir = Path(args.out) if args.out else default_run_dir(model.name)
        from .ensemble import backend_kwargs

        simulate(model, trajectories=args.trajectories, seed=args.seed, threads=engine.resolve_threads(args.threads),
                 chunk_size=args.chunk_size, out=run_dir, quiet=args.quiet,
                 **backend_kwargs(args.scheduler, args.workers))
    ok, results = validate_run(run_dir, args.alpha)
    if not args.quiet:
        for r in results:
            p = f"p_adj={r.adjusted_pvalue:.3g}" if r.kind == "statistical" else r.kind
            mark = "skip" if r.kind == "skipped" else ("pass" if r.passed else "FAIL")
            print(f"{mark:4s}  {r.name:34s} {p:16s} {r.detail}")
        skipped = [r.name for r in results if r.kind == "skipped"]
        note = f" ({len(skipped)} not applicable or not checkable: {', '.join(skipped)})" if skipped else ""
        print(f"{'PASS' if ok else 'FAIL'}{note}: report in {run_dir / 'validation.md'}")
    return 0 if ok else 1
