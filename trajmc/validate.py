"""Named statistical checks of a Monte Carlo run against exact results (``python -m trajmc validate``).

Every check is built from the combinators :func:`z_verdict` and :func:`g_verdict`, in which NaN, an
infinite z, a zero standard error with a non-zero difference and an empty sample each have a defined
verdict: FAIL, or "not checkable" (shown as such); never a pass.  Statistical checks carry a p-value;
the family is Holm-adjusted and compared with ``alpha`` (default 1e-3).  Exact checks must hold outright.
"Not applicable" (e.g. Jarzynski for an undriven model) and "not checkable" (e.g. the joint G-test
of a run that kept only marginals) are listed, and never count as passes.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import norm

from . import engine, references
from . import fluctuations as fl
from .progress import Progress, use_progress
from .references import pauli_marginal, work_beta
from .rundir import atomic_text, load_run, locked
from .stats import g_test, holm, z_pvalue

__all__ = ["CHECKS", "CheckResult", "run_checks", "validate_run", "z_verdict", "g_verdict", "combine", "context",
           "family", "verdict"]

Z_EXACT_TOL = 1e-10
#: an estimate with zero standard error must equal the exact value to this
ZERO_SE_TOL = 1e-9
#: standard errors below this (relative to the values) are rounding noise of quantities without spread
ROUNDING = 1e-13
#: exact probabilities down to minus this are rounding of the solver (read as 0)
EXACT_ROUNDING = 1e-12
NA, NC = "not applicable", "not checkable"


@dataclass
class CheckResult:
    name: str
    kind: str  # "statistical" | "exact" | "not applicable" | "not checkable"
    statistic: float = float("nan")
    pvalue: float = float("nan")
    max_error: float = float("nan")
    passed: bool = False
    detail: str = ""
    adjusted_pvalue: float = float("nan")
    extra: dict = field(default_factory=dict)

    @property
    def counted(self) -> bool:
        """Whether the check enters the verdict (not applicable / not checkable ones do not)."""
        return self.kind in ("statistical", "exact")

    @property
    def mark(self) -> str:
        if self.kind == NA:
            return "n/a"
        if self.kind == NC:
            return "n/c"
        return "pass" if self.passed else "FAIL"


def skip(name, kind, why) -> CheckResult:
    return CheckResult(name, kind, passed=False, detail=why)


def fail(name, detail, max_error=float("nan")) -> CheckResult:
    return CheckResult(name, "exact", max_error=max_error, passed=False, detail=detail)


CHECKS = {}


def check(fn):
    CHECKS[fn.__name__] = fn
    return fn


def _min_holm(pvals):
    p = np.asarray(pvals, dtype=float)
    return float(holm(p).min()) if len(p) else 1.0


def z_verdict(name, est, se, exact, what, alternative="two-sided", tol=ZERO_SE_TOL) -> CheckResult:
    """z-scores of estimates against exact values (or bounds), Holm-combined over the entries.

    ``alternative="less"`` tests only for estimates significantly *below* ``exact`` (a lower bound, one-sided
    p-values).  Exact values that are all NaN (a quantity the model does not define) are not checkable, and so
    is an empty sample.  FAIL: an exact value that is NaN at some entries only or infinite; an estimate or SE
    that is NaN or infinite, or a negative SE; an infinite z; a zero SE (at most ``ROUNDING`` relative) with a
    difference beyond ``tol`` (relative for values above 1, in the tested direction).  Entries that all have
    zero SE and agree make an exact pass.
    """
    est, se, exact = (np.atleast_1d(np.asarray(x, dtype=float)) for x in (est, se, exact))
    est, se, exact = np.broadcast_arrays(est, se, exact)
    defined = ~np.isnan(exact)
    if not defined.any():
        return skip(name, NC, f"{what}: no exact value to compare with")
    if not defined.all():  # a quantity the model defines has an exact value at every entry
        return fail(name, f"{what}: the exact value is NaN at {np.count_nonzero(~defined)} of {len(exact)} entries")
    e, s, x = est, se, exact
    if not np.all(np.isfinite(x)):
        i = int(np.flatnonzero(~np.isfinite(x))[0])
        return fail(name, f"{what}: the exact value is {x[i]:.6g}")
    bad = ~np.isfinite(e) | ~np.isfinite(s) | (s < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        return fail(name, f"{what}: estimate {e[i]:.6g} ± {s[i]:.3g} where the exact value is {x[i]:.6g}")
    diff = e - x
    off = np.maximum(-diff, 0.0) if alternative == "less" else np.abs(diff)
    scale = np.maximum(1.0, np.maximum(np.abs(x), np.abs(e)))
    # a spread at the level of double rounding is no spread (a stationary Gibbs start: Delta s_obs = 0 +- 1e-16)
    sure = s <= ROUNDING * scale
    if np.any(off[sure] > tol * scale[sure]):
        i = np.flatnonzero(sure)[np.argmax(off[sure])]
        return fail(name, f"{what}: estimate {e[i]:.6g} with zero standard error but exact {x[i]:.6g}", float(off[i]))
    live = ~sure
    if not live.any():
        return CheckResult(name, "exact", max_error=float(off.max()), passed=True,
                           detail=f"{what}: all {len(e)} values have zero spread and agree (largest error "
                                  f"{off.max():.2e})")
    with np.errstate(over="ignore"):
        z = diff[live] / s[live]
    if not np.all(np.isfinite(z)):
        return fail(name, f"{what}: infinite z-score")
    if alternative == "less":
        k = int(np.argmin(z))
        return CheckResult(name, "statistical", statistic=float(z[k]), pvalue=_min_holm(norm.cdf(z)), passed=True,
                           detail=f"{what}: lowest z = {z[k]:.2f} over {live.sum()} values (one-sided)")
    k = int(np.argmax(np.abs(z)))
    return CheckResult(name, "statistical", statistic=float(z[k]), pvalue=_min_holm(z_pvalue(z)), passed=True,
                       detail=f"{what}: largest |z| = {abs(z[k]):.2f} over {live.sum()} values")


def g_verdict(name, labels, observed, exact, what="states") -> CheckResult:
    """G-tests of count rows against exact probability rows (one per label), Holm-combined.

    Counts that are NaN, infinite or negative and exact rows that are not probabilities FAIL; no observation
    at all is not checkable; an observation where the exact probability is 0 gives p = 0.
    """
    observed = np.asarray(observed, dtype=float)
    exact = np.asarray(exact, dtype=float)
    if observed.size == 0 or observed.ndim < 2 or observed.shape[0] == 0:
        return skip(name, NC, f"no observations of the {what}")
    if not np.all(np.isfinite(observed)) or np.any(observed < 0):
        return fail(name, f"the counts of the {what} are not non-negative finite numbers")
    if observed.sum() == 0:
        return skip(name, NC, f"no observations of the {what}")
    if exact.shape != observed.shape:
        return fail(name, f"the exact distribution of the {what} has shape {exact.shape}, the counts {observed.shape}")
    if not np.all(np.isfinite(exact)) or np.any(exact < -EXACT_ROUNDING):
        return fail(name, f"the exact distribution of the {what} is not a probability distribution")
    exact = np.maximum(exact, 0.0)
    res = [g_test(o, q) for o, q in zip(observed, exact, strict=True)]
    p = [r.pvalue for r in res]
    if not np.all(np.isfinite(p)):
        return fail(name, f"G-test of the {what} without a p-value")
    k = int(np.argmin(p))
    imp = sum(r.impossible for r in res)
    return CheckResult(name, "statistical", statistic=res[k].statistic, pvalue=_min_holm(p), passed=True,
                       detail=f"worst at t = {labels[k]:g}: G = {res[k].statistic:.1f}, df = {res[k].df}"
                              + (f"; {imp} observations in {what} of exact probability 0" if imp else ""))


def combine(name, parts) -> CheckResult:
    """One verdict from several: a failed part (or a statistical part without a p-value) fails; else the
    statistical parts are Holm-combined (the largest exact error is kept); exact parts alone make an exact
    pass; nothing counted is not checkable."""
    for r in parts:
        if (r.kind == "exact" and not r.passed) or (r.kind == "statistical" and not np.isfinite(r.pvalue)):
            return CheckResult(name, "exact", r.statistic, r.pvalue, r.max_error, False, r.detail)
    done = [r for r in parts if r.kind == "exact"]
    err = float(max(r.max_error for r in done)) if done else float("nan")
    detail = "; ".join(r.detail for r in parts)
    stat = [r for r in parts if r.kind == "statistical"]
    if not stat:
        if done:
            return CheckResult(name, "exact", max_error=err, passed=True, detail=detail)
        return skip(name, NC, detail)
    worst = max(stat, key=lambda r: abs(r.statistic))
    return CheckResult(name, "statistical", statistic=worst.statistic, pvalue=_min_holm([r.pvalue for r in stat]),
                       max_error=err, passed=True, detail=detail)


def _needs(ctx, name, what="sol"):
    if what == "sol" and ctx.get("sol") is None:
        return skip(name, NC, "no exact solution (the network is too large to enumerate)")
    if what == "joint" and not ctx["ens"].joint:
        return skip(name, NC, "the run kept marginals only (implicit path): no joint distribution")
    return None


# --------------------------------------------------------------------------- checks


@check
def GillespieVsExact(ctx):
    """Joint p_x(t) at every sample time: G-test with pooled sparse bins."""
    r = _needs(ctx, "GillespieVsExact") or _needs(ctx, "GillespieVsExact", "joint")
    if r:
        return r
    ens, sol = ctx["ens"], ctx["sol"]
    return g_verdict("GillespieVsExact", ens.times, ens.counts, sol.p)


@check
def SystemMarginalVsExact(ctx):
    """p_s(t) at every sample time: G-test."""
    r = _needs(ctx, "SystemMarginalVsExact")
    if r:
        return r
    ens, sol = ctx["ens"], ctx["sol"]
    return g_verdict("SystemMarginalVsExact", ens.times, ens.acc.sys2.sum(axis=1), sol.p_system(), "levels")


@check
def HeatMeanVsExact(ctx):
    """Mean heat from each bath: z-scores at every time after 0."""
    r = _needs(ctx, "HeatMeanVsExact")
    if r:
        return r
    th, ex = ctx["th"], ctx["ex"]
    return combine("HeatMeanVsExact", [z_verdict("HeatMeanVsExact", th[f"Q_{b}"][1:], th[f"Q_{b}_se"][1:],
                                                 ex[f"Q_{b}"][1:], f"Q_{b}") for b in ctx["ens"].model.bath_names])


def z_normal(name, th, ex, col, what=None, start=0):
    """:func:`z_verdict` of column ``col`` from ``start`` on, leaving out the entries where the estimate's error
    is second order (``th.attrs['second_order']``): there it is not normal and a z-score would false-alarm."""
    second = np.asarray(th.attrs.get("second_order", {}).get(col, [False] * len(th)), dtype=bool)[start:]
    keep = ~second
    what = what or col
    if not keep.any():
        return skip(name, NC, f"{what}: every value's error is second order (not normal): not z-tested")
    r = z_verdict(name, th[col].to_numpy()[start:][keep], th[f"{col}_se"].to_numpy()[start:][keep],
                  ex[col].to_numpy()[start:][keep], what)
    if second.any():
        r.detail += f" ({second.sum()} with a second-order error not z-tested)"
    return r


@check
def ObservationalEntropyVsExact(ctx):
    """Bias-corrected S_obs(t) and Sigma(t): z-scores (needs the joint, or one bath)."""
    r = _needs(ctx, "ObservationalEntropyVsExact")
    if r:
        return r
    th, ex = ctx["th"], ctx["ex"]
    if not th.attrs.get("joint"):
        return skip("ObservationalEntropyVsExact", NC, "S_obs needs the joint distribution (marginals only: see "
                                                       "S_obs_upper)")
    return combine("ObservationalEntropyVsExact", [
        z_normal("ObservationalEntropyVsExact", th, ex, "S_obs"),
        z_normal("ObservationalEntropyVsExact", th, ex, "Sigma", start=1)])


@check
def MarginalEntropiesVsExact(ctx):
    """Every marginal quantity (S_sh, Sigma_tilde, each bath's S_B, D, I(s; E), E): z-scores."""
    r = _needs(ctx, "MarginalEntropiesVsExact")
    if r:
        return r
    th, ex = ctx["th"], ctx["ex"]
    cols = ["S_sh", "E_S"] + [f"{c}_{b}" for b in ctx["ens"].model.bath_names for c in ("S_B", "D", "I", "E")]
    parts = [z_normal("MarginalEntropiesVsExact", th, ex, c) for c in cols]
    parts.append(z_normal("MarginalEntropiesVsExact", th, ex, "Sigma_tilde", start=1))
    out = combine("MarginalEntropiesVsExact", [p for p in parts if p.kind != NC])
    if out.kind == "statistical":
        worst = max((p for p in parts if p.kind == "statistical"), key=lambda p: abs(p.statistic))
        out.detail = f"{sum(p.kind == 'statistical' for p in parts)} quantities; worst {worst.detail}"
        flags = th.attrs.get("second_order", {})
        n2 = sum(int(np.sum(flags.get(c, []))) for c in cols) + int(np.sum(flags.get("Sigma_tilde", [])[1:]))
        if n2:
            out.detail += f"; in all {n2} values with a second-order error not z-tested"
    return out


@check
def EnergyConservation(ctx):
    """Every (trajectory, sample time) obeys Delta E_S + sum Delta E_b = W exactly (counted in the kernel);
    the mean estimates obey it too: Delta E_S - sum Q_b - W = 0 and Q_b = -(E_b - E_b(0)) (the heat histograms
    and the bath marginals are separate accumulators)."""
    name = "EnergyConservation"
    ens, th = ctx["ens"], ctx["th"]
    bad, n = ens.first_law
    if n == 0:
        return skip(name, NC, "no samples were checked")
    names = ens.model.bath_names
    law = (th["E_S"] - th["E_S"].iloc[0]) - sum(th[f"Q_{b}"] for b in names) - th["W"]
    # the means are sums of integers divided by N: rounding grows with the energies (baths of 10^6 quanta)
    scale = max([1.0] + [float(np.nanmax(np.abs(th[c]))) for c in ["E_S"] + [f"E_{b}" for b in names]
                         if np.isfinite(th[c]).any()])
    parts = [z_verdict(name, bad, 0, 0, f"{bad} of {n} (trajectory, time) samples violate the first law", tol=0),
             z_verdict(name, law, 0, 0, "mean Delta E_S - sum Q - W", tol=ZERO_SE_TOL * scale)]
    parts += [z_verdict(name, th[f"Q_{b}"] + th[f"E_{b}"] - th[f"E_{b}"].iloc[0], 0, 0,
                        f"mean Q_{b} + Delta E_{b}", tol=ZERO_SE_TOL * scale) for b in names]
    r = combine(name, parts)
    r.statistic = bad
    if r.passed:
        r.detail = (f"0 of {n} (trajectory, time) samples violate the first law; mean first law and mean heat vs "
                    f"bath energy change: largest error {r.max_error:.2e}")
    return r


@check
def ObservationalEntropyNonDecreasing(ctx):
    """Exact S_obs(t) never decreases; the Monte Carlo Sigma(t) (or its upper bound) is never significantly
    negative (one-sided z-scores)."""
    name = "ObservationalEntropyNonDecreasing"
    ex, th = ctx.get("ex"), ctx["th"]
    parts = []
    if ex is not None:
        step = np.diff(ex["S_obs"].to_numpy())
        parts.append(z_verdict(name, step, 0, 0, "exact S_obs(t_k) - S_obs(t_k-1)", alternative="less",
                               tol=Z_EXACT_TOL))
    col = "Sigma" if th.attrs.get("joint") else "Sigma_upper"
    if col in th:
        parts.append(z_verdict(name, th[col].to_numpy()[1:], th[f"{col}_se"].to_numpy()[1:], 0,
                               f"Monte Carlo {col}", alternative="less"))
    else:
        parts.append(skip(name, NC, f"no Monte Carlo {col}"))
    return combine(name, parts)


@check
def Eq60Decomposition(ctx):
    """Sigma - Sigma_tilde = -I - D + D(0) (exact; Eq. 60 when D(0) = 0) and the Monte Carlo gap against it."""
    name = "Eq60Decomposition"
    m = ctx["ens"].model
    if m.bath_states is None or any(m.canonical_pi(nu) is None for nu in range(m.n_baths)):
        return skip(name, NA, "needs a product start with a reference beta for every bath (canonical, or given "
                              "with a microcanonical or table state)")
    r = _needs(ctx, name)
    if r:
        return r
    ex, th = ctx["ex"], ctx["th"]
    D0 = ex["D"].iloc[0]
    resid = (ex["Sigma"] - ex["Sigma_tilde"] + ex["I"] + ex["D"] - D0).to_numpy()
    exact = z_verdict(name, resid, 0, 0, "exact Sigma - Sigma_tilde + I + D - D(0)", tol=Z_EXACT_TOL)
    if exact.kind != "exact" or not exact.passed:
        return combine(name, [exact])
    if not th.attrs.get("joint"):  # the identity of the solver alone says nothing about the run
        return skip(name, NC, f"{exact.detail}; the Monte Carlo gap needs the joint distribution (marginals only)")
    gap = th["Sigma_tilde"] - th["Sigma"]
    se = np.sqrt(th["Sigma_se"] ** 2 + th["Sigma_tilde_se"] ** 2)  # conservative: correlation ignored
    mc = z_verdict(name, gap[1:], se[1:], (ex["I"] + ex["D"] - D0)[1:], "Sigma_tilde - Sigma vs I + D - D(0)")
    return combine(name, [exact, mc])


@check
def SteadyStateInShells(ctx):
    """Where the exact solution has relaxed by the last time, the Monte Carlo matches p ∝ V in each shell
    (the shells of the levels in force then, each with its exact weight)."""
    r = _needs(ctx, "SteadyStateInShells") or _needs(ctx, "SteadyStateInShells", "joint")
    if r:
        return r
    ens, sol = ctx["ens"], ctx["sol"]
    starts = np.array([t0 for t0, _ in sol.segments])
    net = sol.segments[int(np.searchsorted(starts, ens.times[-1], side="right")) - 1][1]
    w = np.bincount(net.block, weights=sol.p[-1], minlength=net.n_blocks)
    top = np.full(net.n_blocks, -np.inf)
    np.maximum.at(top, net.block, net.lnV)
    v = np.exp(net.lnV - top[net.block])
    ss = w[net.block] * v / np.bincount(net.block, weights=v)[net.block]
    tv = 0.5 * float(np.abs(sol.p[-1] - ss).sum())
    if not np.isfinite(tv):
        return fail("SteadyStateInShells", "the exact solution at the last time is not finite")
    if tv > 1e-4:
        return skip("SteadyStateInShells", NA, f"not relaxed by the last time (total variation {tv:.1e} from the "
                                               "steady state)")
    r = g_verdict("SteadyStateInShells", ens.times[-1:], ens.counts[-1:], ss[None, :])
    r.detail += f"; exact distance {tv:.1e}"
    return r


@check
def PauliMarginalVsExact(ctx):
    """sqrt kernel + exponential baths: p_s(t) and each Q_b(t) against the ordinary Pauli master equation
    (exact while no trajectory reaches a grid edge), G-tests and z-scores."""
    ens = ctx["ens"]
    ref = pauli_marginal(ens.model, ens.times)
    if isinstance(ref, str):
        return skip("PauliMarginalVsExact", NA, ref)
    ps, Q = ref
    edge = _edge_reached(ens)
    if edge:
        return skip("PauliMarginalVsExact", NC, edge)
    th = ctx["th"]
    parts = [g_verdict("PauliMarginalVsExact", ens.times, ens.acc.sys2.sum(axis=1), ps, "levels")]
    for nu, b in enumerate(ens.model.bath_names):
        parts.append(z_verdict("PauliMarginalVsExact", th[f"Q_{b}"][1:], th[f"Q_{b}_se"][1:], Q[1:, nu], f"Q_{b}"))
    return combine("PauliMarginalVsExact", parts)


@check
def TrajectoryEntropyVsExact(ctx):
    """Streamed <Delta s_obs> against Delta S_obs and <exp(-Delta s_obs)> against its exact value
    (1 without absolute irreversibility): z-scores."""
    ens = ctx["ens"]
    te = ens.trajectory_entropy()
    if te is None:
        return skip("TrajectoryEntropyVsExact", NC, "the run did not stream Delta s_obs")
    r = _needs(ctx, "TrajectoryEntropyVsExact")
    if r:
        return r
    ex, sol = ctx["ex"], ctx["sol"]
    ift = fl.ift_prediction(sol.segments, ens.times, sol.p)
    name = "TrajectoryEntropyVsExact"
    return combine(name, [
        z_verdict(name, te["mean_ds"][1:], te["mean_ds_se"][1:], ex["Sigma"][1:], "<Delta s_obs>"),
        z_verdict(name, te["exp_mds"][1:], te["exp_mds_se"][1:], ift[1:], "<exp(-Delta s_obs)>")])


@check
def JarzynskiVsExact(ctx):
    """<exp(-beta W)> at the last time against the exact tilted value (= Z_final/Z_0 from a Gibbs start)."""
    name = "JarzynskiVsExact"
    ens = ctx["ens"]
    if not ens.plan.driven:
        return skip(name, NA, "undriven model (no protocol)")
    r = _needs(ctx, name)
    if r:
        return r
    sol = ctx["sol"]
    beta, gibbs = work_beta(ens.model, sol.network)
    if beta is None:
        return skip(name, NA, "no inverse temperature in the model")
    mean, se = ens.jarzynski(beta)
    exact = float(fl.tilted_work_average(sol.segments, ens.times[-1:], beta)[0])
    parts = [z_verdict(name, mean[-1], se[-1], exact, f"<exp(-{beta:g} W)>")]
    if gibbs:
        ratio = fl.gibbs_ratio(sol.segments, beta)
        parts.append(z_verdict(name, exact, 0, ratio, "Gibbs start: exact <exp(-beta W)> vs Z_final/Z_0",
                               tol=Z_EXACT_TOL))
    return combine(name, parts)


@check
def WorkDistributionVsExact(ctx):
    """Distribution of the work done so far at every sample time: G-test (a work value the exact distribution
    does not have is an impossible observation)."""
    name = "WorkDistributionVsExact"
    ens = ctx["ens"]
    if not ens.plan.driven:
        return skip(name, NA, "undriven model (no protocol)")
    r = _needs(ctx, name)
    if r:
        return r
    w, P = fl.work_distribution(ctx["sol"].segments, ens.times)
    woff = ens.plan.woff
    if len(w) and (w.min() < -woff or w.max() > woff):
        return fail(name, f"exact work values {w.min()}..{w.max()} outside the accumulated range ±{woff}")
    exact = np.zeros(ens.acc.work.shape)
    exact[:, w + woff] = P
    return g_verdict(name, ens.times, ens.acc.work, exact, "work values")


@check
def ReproduceChunks(ctx):
    """Re-simulates the first and last chunk run from the recorded seed: jump counts and the fingerprint of
    the random stream (the generator's end state) must match exactly."""
    ens = ctx["ens"]
    plan = ens.plan
    done = ens.acc.chunks_done
    if done == 0:
        return skip("ReproduceChunks", NC, "no chunk was run")
    bad = []
    idx = sorted({0, done - 1})
    bare = plan_without_records(plan)
    for c in idx:
        acc = engine.new_accumulators(bare)
        engine.grow_accumulators(bare, acc, ens.acc.windows)
        acc.chunks_done = c
        engine.run_plan(bare, acc, threads=1, stop_after=c + 1)
        if acc.jumps[c] != ens.acc.jumps[c] or acc.fingerprint[c] != ens.acc.fingerprint[c]:
            bad.append(f"chunk {c}: stored {int(ens.acc.jumps[c])} jumps / stream fingerprint "
                       f"{int(ens.acc.fingerprint[c]):#x}, re-simulated {int(acc.jumps[c])} / "
                       f"{int(acc.fingerprint[c]):#x}")
    r = z_verdict("ReproduceChunks", len(bad), 0, 0, f"{len(bad)} of chunks {idx} differ from the recorded seed's",
                  tol=0)
    r.statistic = len(bad)
    r.detail = "; ".join(bad) if bad else f"chunks {idx} reproduce exactly from the recorded seed" if r.passed \
        else r.detail
    return r


def plan_without_records(plan):
    p = copy.copy(plan)
    p.record = False
    p.paths = 0
    return p


def _edge_reached(ens):
    """Why the Pauli equation may not hold for this run (a grid edge reached, or possibly reached), or ''.

    The implicit path streams the lowest and highest energy of every bath over every state visited; the
    enumerated path does not, so there the states of the occupied shells bound what can be visited.
    """
    m = ens.model
    v = ens.acc.visited
    where = "trajectories visited"
    if v is None:
        net = ens.network
        occ = np.isin(net.block, np.unique(net.block[net.p0 > 0]))
        E = net.states[occ, 1:]
        v = np.stack([E.min(axis=0), E.max(axis=0)], axis=1)
        where = "the occupied shells reach (the enumerated path does not stream the energies visited)"
    for nu, b in enumerate(m.baths):
        c = m.coupling_weight(nu)
        d = max([abs(int(m.energies[s]) - int(m.energies[s2])) for s in range(m.n_levels) for s2 in range(m.n_levels)
                 if c[s, s2] > 0] + [0])
        if v[nu, 0] < d or v[nu, 1] > b.emax - d:
            return (f"bath {b.name!r}: {where} E = {v[nu, 0]}..{v[nu, 1]}, within {d} of the grid edge "
                    f"0..{b.emax}, where jumps are cut off")
    return ""


def context(ens, sol):
    """What every check reads: the ensemble, the exact solution (or None) and both thermodynamic tables."""
    return {"ens": ens, "sol": sol, "th": ens.thermo(), "ex": sol.thermo() if sol is not None else None}


def family(results, alpha=1e-3):
    """Judge the statistical results as one Holm-corrected family at ``alpha`` (in place); returns them.

    A statistical result without a finite p-value fails (Holm would read NaN as 1).
    """
    for r in results:
        if r.kind == "statistical" and not np.isfinite(r.pvalue):
            r.kind, r.passed = "exact", False
    stat = [r for r in results if r.kind == "statistical"]
    if stat:
        adj = holm([r.pvalue for r in stat])
        for r, a in zip(stat, adj, strict=True):
            r.adjusted_pvalue = float(a)
            r.passed = r.passed and bool(a > alpha)
    return results


def run_checks(ens, sol, alpha=1e-3, names=None, progress=False):
    """Run the registry (or ``names``) and apply the Holm correction to the statistical family.

    Parameters
    ----------
    ens : Ensemble
    sol : Solution or None
    alpha : float
        Family-wise false-alarm rate.
    names : list of str, optional
        Checks to run (default: all of :data:`CHECKS`).
    progress : bool or str, optional
        Report the checks done (see :mod:`trajmc.progress`; default: nothing).

    Returns
    -------
    list of CheckResult
    """
    ctx = context(ens, sol)
    results = []
    names = list(names or CHECKS)
    with Progress(len(names), desc="validate", unit="checks", enabled=progress) as bar:
        for n in names:
            bar.set_description(f"validate ({n})")
            results.append(CHECKS[n](ctx))
            bar.update(1)
    return family(results, alpha)


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


def verdict(results) -> bool:
    """PASS when every counted check passes (and at least one was counted)."""
    counted = [r for r in results if r.counted]
    return bool(counted) and all(r.passed for r in counted)


def _md(text):
    return str(text).replace("|", "\\|")


def validate_run(run_dir, alpha=1e-3, progress=None):
    """Validate a finished run directory; writes validation.json and validation.md.

    Parameters
    ----------
    run_dir : str or Path
    alpha : float
        Family-wise false-alarm rate of the statistical checks (Holm).
    progress : bool or str, optional
        Report the exact solution and the checks on stderr: None, True or ``"auto"`` (default) a bar on a
        terminal and a status line every ~10 s otherwise; ``"tqdm"``, ``"text"``; False or ``""`` nothing
        (see :mod:`trajmc.progress`).

    Returns
    -------
    tuple
        (passed : bool, results : list of CheckResult, ensemble : Ensemble, exact solution : Solution or None).
    """
    with use_progress(progress), locked(run_dir):  # (a bad progress value is refused first); one writer
        return _validate_run(Path(run_dir), alpha, progress)


def _validate_run(run_dir, alpha, progress):

    ens = load_run(run_dir)
    sol = references.exact_reference(ens.model, ens.plan, progress=progress)
    results = run_checks(ens, sol, alpha, progress=progress)
    ok = verdict(results)
    out = {"run": str(run_dir), "alpha": alpha, "passed": ok, "correction": "Holm", "path": ens.plan.path,
           "checks": [dict(asdict(r), verdict=r.mark) for r in results]}
    atomic_text(run_dir / "validation.json", json.dumps(_finite(out), indent=2, allow_nan=False))
    lines = [f"# Validation of `{_md(run_dir.name)}`", "",
             f"Model `{_md(ens.model.name)}`, {ens.trajectories} trajectories ({ens.plan.path} path), seed entropy "
             f"{ens.plan.entropy}. Statistical checks Holm-corrected at alpha = {alpha:g}.", "",
             f"**Verdict: {'PASS' if ok else 'FAIL'}**", "",
             "| check | kind | statistic | p (adjusted) | max error | verdict | detail |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {r.kind} | {r.statistic:.4g} | {r.adjusted_pvalue:.3g} | {r.max_error:.3g} | "
                     f"{r.mark} | {_md(r.detail)} |")
    atomic_text(run_dir / "validation.md", "\n".join(lines) + "\n")
    return ok, results, ens, sol
