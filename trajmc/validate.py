"""Named statistical checks of a Monte Carlo run against exact results (``python -m trajmc validate``).

Every check is built from the combinators :func:`z_verdict` and :func:`g_verdict`, in which NaN, an
infinite z, a zero standard error with a non-zero difference and an empty sample each have a defined
verdict: FAIL, or "not checkable" (shown as such); never a pass.  Statistical checks carry a p-value;
the family is Holm-adjusted and compared with ``alpha`` (default 1e-3).  Exact checks must hold outright.
"Not applicable" (e.g. Jarzynski for an undriven model) and "not checkable" (e.g. the joint G-test
of a run that kept only marginals) are listed, and never count as passes.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.linalg
from scipy.stats import norm

from . import engine
from . import fluctuations as fl
from .dos import Exponential
from .network import log_rates
from .stats import g_test, holm, z_pvalue

__all__ = ["CHECKS", "CheckResult", "run_checks", "validate_run", "z_verdict", "g_verdict", "pauli_marginal",
           "work_beta", "exact_reference"]

Z_EXACT_TOL = 1e-10
#: an estimate with zero standard error must equal the exact value to this
ZERO_SE_TOL = 1e-9
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


def z_verdict(name, est, se, exact, what) -> CheckResult:
    """z-scores of estimates against exact values, Holm-combined over the entries.

    Entries where the exact value is NaN (a quantity the model does not define) are ignored; an estimate
    or standard error that is NaN or infinite where the exact value is finite, an infinite z, and a zero
    standard error with a difference above ``ZERO_SE_TOL`` FAIL; no entry at all is not checkable.
    """
    est, se, exact = (np.atleast_1d(np.asarray(x, dtype=float)) for x in (est, se, exact))
    defined = np.isfinite(exact)
    if not defined.any():
        return skip(name, NC, f"{what}: no exact value to compare with")
    e, s, x = est[defined], se[defined], exact[defined]
    bad = ~np.isfinite(e) | ~np.isfinite(s) | (s < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        return fail(name, f"{what}: estimate {e[i]:.6g} ± {s[i]:.3g} where the exact value is {x[i]:.6g}")
    diff = np.abs(e - x)
    sure = s == 0
    if np.any(diff[sure] > ZERO_SE_TOL):
        i = np.flatnonzero(sure)[np.argmax(diff[sure])]
        return fail(name, f"{what}: estimate {e[i]:.6g} with zero standard error but exact {x[i]:.6g}", float(diff[i]))
    live = ~sure
    if not live.any():
        return CheckResult(name, "exact", max_error=float(diff.max()), passed=True,
                           detail=f"{what}: every estimate has zero spread and equals the exact value")
    z = (e[live] - x[live]) / s[live]
    if not np.all(np.isfinite(z)):
        return fail(name, f"{what}: infinite z-score")
    k = int(np.argmax(np.abs(z)))
    return CheckResult(name, "statistical", statistic=float(z[k]), pvalue=_min_holm(z_pvalue(z)), passed=True,
                       detail=f"{what}: largest |z| = {abs(z[k]):.2f} over {live.sum()} values")


def g_verdict(name, labels, observed, exact, what="states") -> CheckResult:
    """G-tests of count rows against exact probability rows (one per label), Holm-combined."""
    observed = np.asarray(observed, dtype=float)
    exact = np.asarray(exact, dtype=float)
    if observed.size == 0 or observed.shape[0] == 0 or observed.sum() == 0:
        return skip(name, NC, f"no observations of the {what}")
    if not np.all(np.isfinite(exact)) or np.any(exact < 0):
        return fail(name, f"the exact distribution of the {what} is not a probability distribution")
    res = [g_test(o, q) for o, q in zip(observed, exact, strict=True)]
    p = [r.pvalue for r in res]
    k = int(np.argmin(p))
    imp = sum(r.impossible for r in res)
    return CheckResult(name, "statistical", statistic=res[k].statistic, pvalue=_min_holm(p), passed=True,
                       detail=f"worst at t = {labels[k]:g}: G = {res[k].statistic:.1f}, df = {res[k].df}"
                              + (f"; {imp} observations in {what} of exact probability 0" if imp else ""))


def combine(name, parts) -> CheckResult:
    """One verdict from several: a failed part fails; else the statistical parts are Holm-combined."""
    for r in parts:
        if r.kind == "exact" and not r.passed:
            r.name = name
            return r
    stat = [r for r in parts if r.kind == "statistical"]
    if not stat:
        done = [r for r in parts if r.kind == "exact"]
        if done:
            return CheckResult(name, "exact", max_error=max(r.max_error for r in done), passed=True,
                               detail="; ".join(r.detail for r in parts))
        return skip(name, NC, "; ".join(r.detail for r in parts))
    worst = max(stat, key=lambda r: abs(r.statistic))
    return CheckResult(name, "statistical", statistic=worst.statistic, pvalue=_min_holm([r.pvalue for r in stat]),
                       passed=True, detail="; ".join(r.detail for r in parts))


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
        z_verdict("ObservationalEntropyVsExact", th["S_obs"], th["S_obs_se"], ex["S_obs"], "S_obs"),
        z_verdict("ObservationalEntropyVsExact", th["Sigma"][1:], th["Sigma_se"][1:], ex["Sigma"][1:], "Sigma")])


@check
def MarginalEntropiesVsExact(ctx):
    """Every marginal quantity (S_sh, Sigma_tilde, each bath's S_B, D, I(s; E), E): z-scores."""
    r = _needs(ctx, "MarginalEntropiesVsExact")
    if r:
        return r
    th, ex = ctx["th"], ctx["ex"]
    cols = ["S_sh", "E_S"] + [f"{c}_{b}" for b in ctx["ens"].model.bath_names for c in ("S_B", "D", "I", "E")]
    parts = [z_verdict("MarginalEntropiesVsExact", th[c], th[f"{c}_se"], ex[c], c) for c in cols]
    parts.append(z_verdict("MarginalEntropiesVsExact", th["Sigma_tilde"][1:], th["Sigma_tilde_se"][1:],
                           ex["Sigma_tilde"][1:], "Sigma_tilde"))
    out = combine("MarginalEntropiesVsExact", [p for p in parts if p.kind != NC])
    if out.kind == "statistical":
        worst = max((p for p in parts if p.kind == "statistical"), key=lambda p: abs(p.statistic))
        out.detail = f"{sum(p.kind == 'statistical' for p in parts)} quantities; worst {worst.detail}"
    return out


@check
def EnergyConservation(ctx):
    """Every (trajectory, sample time) obeys Delta E_S + sum Delta E_b = W exactly (counted in the kernel);
    the mean heats obey the first law of the means."""
    ens, th = ctx["ens"], ctx["th"]
    bad, n = ens.first_law
    if n == 0:
        return skip("EnergyConservation", NC, "no samples were checked")
    err = float(np.nanmax(np.abs(th["first_law"].to_numpy())))
    ok = bad == 0 and err < 1e-9
    return CheckResult("EnergyConservation", "exact", statistic=bad, max_error=err, passed=ok,
                       detail=f"{bad} of {n} (trajectory, time) samples violate the first law; "
                              f"mean heats: max error {err:.2e}")


@check
def ObservationalEntropyNonDecreasing(ctx):
    """Exact S_obs(t) never decreases; the Monte Carlo Sigma(t) (or its upper bound) is never significantly negative."""
    ex, th = ctx.get("ex"), ctx["th"]
    drop = float(max(0.0, -np.min(np.diff(ex["S_obs"].values)))) if ex is not None and len(ex) > 1 else 0.0
    col = "Sigma" if th.attrs.get("joint") else "Sigma_upper"
    if col not in th or not np.isfinite(th[col].values[1:]).any():
        if ex is None:
            return skip("ObservationalEntropyNonDecreasing", NC, "neither Sigma nor an exact solution")
        return CheckResult("ObservationalEntropyNonDecreasing", "exact", max_error=drop, passed=drop <= Z_EXACT_TOL,
                           detail=f"exact largest decrease {drop:.2e}")
    v, se = th[col].values[1:], th[f"{col}_se"].values[1:]
    if np.any(~np.isfinite(v) | ~np.isfinite(se)):
        return fail("ObservationalEntropyNonDecreasing", f"{col} or its SE is not finite")
    neg = (se == 0) & (v < -ZERO_SE_TOL)
    if neg.any():
        return fail("ObservationalEntropyNonDecreasing", f"{col} < 0 with zero standard error")
    z = np.where(se > 0, v / np.where(se > 0, se, 1), 0.0)
    res = CheckResult("ObservationalEntropyNonDecreasing", "statistical", statistic=float(z.min()),
                      pvalue=_min_holm(norm.cdf(z)), max_error=drop, passed=True,
                      detail=f"exact largest decrease {drop:.2e}; Monte Carlo min {col}/SE = {z.min():.2f}")
    if drop > Z_EXACT_TOL:
        res.passed, res.kind = False, "exact"
    return res


@check
def Eq60Decomposition(ctx):
    """Sigma - Sigma_tilde = -I - D + D(0) (exact; Eq. 60 when D(0) = 0) and the Monte Carlo gap against it."""
    m = ctx["ens"].model
    if m.bath_states is None or any(st.state != "canonical" for st in m.bath_states):
        return skip("Eq60Decomposition", NA, "needs a product start with canonical baths")
    r = _needs(ctx, "Eq60Decomposition")
    if r:
        return r
    ex, th = ctx["ex"], ctx["th"]
    D0 = ex["D"].iloc[0]
    err = float(np.max(np.abs(ex["Sigma"] - ex["Sigma_tilde"] + ex["I"] + ex["D"] - D0)))
    if not np.isfinite(err) or err > Z_EXACT_TOL:
        return fail("Eq60Decomposition", f"exact identity error {err:.2e}", err)
    if not th.attrs.get("joint"):
        return CheckResult("Eq60Decomposition", "exact", max_error=err, passed=True,
                           detail=f"exact identity error {err:.2e} (the Monte Carlo gap needs the joint: not checked)")
    gap = th["Sigma_tilde"] - th["Sigma"]
    se = np.sqrt(th["Sigma_se"] ** 2 + th["Sigma_tilde_se"] ** 2)  # conservative: correlation ignored
    r = z_verdict("Eq60Decomposition", gap[1:], se[1:], (ex["I"] + ex["D"] - D0)[1:], "Sigma_tilde - Sigma vs I + D - D(0)")
    r.max_error = err
    r.detail = f"exact identity error {err:.2e}; " + r.detail
    return r


@check
def SteadyStateInShells(ctx):
    """Where the exact solution has relaxed by the last time, the Monte Carlo matches p ∝ V in each shell."""
    r = _needs(ctx, "SteadyStateInShells") or _needs(ctx, "SteadyStateInShells", "joint")
    if r:
        return r
    ens, sol = ctx["ens"], ctx["sol"]
    net = sol.network
    w = np.bincount(net.block, weights=net.p0)
    top = np.full(net.n_blocks, -np.inf)
    np.maximum.at(top, net.block, net.lnV)
    v = np.exp(net.lnV - top[net.block])
    ss = w[net.block] * v / np.bincount(net.block, weights=v)[net.block]
    tv = 0.5 * float(np.abs(sol.p[-1] - ss).sum())
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
    return combine("TrajectoryEntropyVsExact", [
        z_verdict("TrajectoryEntropyVsExact", te["mean_ds"][1:], te["mean_ds_se"][1:], ex["Sigma"][1:], "<Delta s_obs>"),
        z_verdict("TrajectoryEntropyVsExact", te["exp_mds"][1:], te["exp_mds_se"][1:], ift[1:], "<exp(-Delta s_obs)>")])


def work_beta(model, net):
    """(beta of the work statistics, True if the start is the global Gibbs state at it) or (None, False)."""
    beta = fl.global_gibbs_beta(model, net) if net is not None else None
    if beta is not None:
        return beta, True
    for nu in range(model.n_baths):
        if np.isfinite(model.beta_ref(nu)):
            return model.beta_ref(nu), False
    return None, False


def jarzynski_estimate(ens, beta):
    """Monte Carlo ``<exp(-beta W)>`` at every time and its standard error, from the work histogram."""
    wv = np.arange(-ens.plan.woff, ens.plan.woff + 1)
    h = ens.acc.work / ens.trajectories
    e = np.exp(-beta * wv)
    mean = h @ e
    return mean, np.sqrt(np.maximum(h @ e**2 - mean**2, 0.0) / max(ens.trajectories - 1, 1))


@check
def JarzynskiVsExact(ctx):
    """<exp(-beta W)> at the last time against the exact tilted value (= Z_final/Z_0 from a Gibbs start)."""
    ens = ctx["ens"]
    if not ens.plan.driven:
        return skip("JarzynskiVsExact", NA, "undriven model (no protocol)")
    r = _needs(ctx, "JarzynskiVsExact")
    if r:
        return r
    sol = ctx["sol"]
    beta, gibbs = work_beta(ens.model, sol.network)
    if beta is None:
        return skip("JarzynskiVsExact", NA, "no inverse temperature in the model")
    mean, se = jarzynski_estimate(ens, beta)
    exact = float(fl.tilted_work_average(sol.segments, ens.times[-1:], beta)[0])
    parts = [z_verdict("JarzynskiVsExact", mean[-1], se[-1], exact, f"<exp(-{beta:g} W)>")]
    if gibbs:
        ratio = fl.gibbs_ratio(sol.segments, beta)
        if abs(exact - ratio) > Z_EXACT_TOL:
            return fail("JarzynskiVsExact", f"exact <exp(-beta W)> = {exact:.6g} but Z_final/Z_0 = {ratio:.6g}",
                        abs(exact - ratio))
        parts[0].detail += f"; Gibbs start: exact equals Z_final/Z_0 = {ratio:.6g} (error {abs(exact - ratio):.1e})"
    return combine("JarzynskiVsExact", parts)


@check
def WorkDistributionVsExact(ctx):
    """Distribution of the work done so far at every sample time: G-test."""
    ens = ctx["ens"]
    if not ens.plan.driven:
        return skip("WorkDistributionVsExact", NA, "undriven model (no protocol)")
    r = _needs(ctx, "WorkDistributionVsExact")
    if r:
        return r
    w, P = fl.work_distribution(ctx["sol"].segments, ens.times)
    woff = ens.plan.woff
    idx = np.arange(-woff, woff + 1)
    m = np.isin(idx, w)
    if ens.acc.work[:, ~m].sum():
        return fail("WorkDistributionVsExact", "work values the exact distribution does not have were observed")
    obs = np.zeros((len(ens.times), len(w)))
    obs[:, np.searchsorted(w, idx[m])] = ens.acc.work[:, m]
    return g_verdict("WorkDistributionVsExact", ens.times, obs, P, "work values")


@check
def ReproduceChunks(ctx):
    """Re-simulates the first and last chunk from the recorded seed: jump counts and the fingerprint of the
    random stream (the generator's end state) must match exactly."""
    ens = ctx["ens"]
    plan = ens.plan
    bad = []
    idx = sorted({0, plan.n_chunks - 1})
    bare = plan_without_records(plan)
    for c in idx:
        acc = engine.new_accumulators(bare)
        engine.grow_accumulators(bare, acc, ens.acc.windows)
        acc.chunks_done = c
        engine.run_plan(bare, acc, threads=1, stop_after=c + 1)
        if acc.jumps[c] != ens.acc.jumps[c] or acc.fingerprint[c] != ens.acc.fingerprint[c]:
            bad.append(f"chunk {c}: stored {int(ens.acc.jumps[c])} jumps / stream fingerprint "
                       f"{int(ens.acc.fingerprint[c]):#x}, re-simulated {int(acc.jumps[c])} / {int(acc.fingerprint[c]):#x}")
    return CheckResult("ReproduceChunks", "exact", statistic=len(bad), passed=not bad,
                       detail="; ".join(bad) if bad else f"chunks {idx} reproduce exactly from the recorded seed")


def plan_without_records(plan):
    import copy

    p = copy.copy(plan)
    p.record = False
    p.paths = 0
    return p


# --------------------------------------------------------------------------- exact references


def pauli_marginal(model, times):
    """The ordinary Pauli master equation of ``p_s(t)`` and the mean heats, valid when every bath is
    ``exponential`` with the ``sqrt`` kernel, the model is undriven and no grid edge is reached.

    Returns (p_s (n_t, n_s), Q (n_t, N)) or a string saying why it does not apply.
    """
    if model.protocol:
        return "driven model"
    for nu, b in enumerate(model.baths):
        if b.kernel.model != "sqrt" or not isinstance(b.dos, Exponential):
            return f"bath {b.name!r} is not an exponential bath with the sqrt kernel"
    n_s, N = model.n_levels, model.n_baths
    eps = model.energies
    L = np.zeros((n_s + N, n_s + N))
    for nu, b in enumerate(model.baths):
        E = (b.emax // 2) // b.quantum * b.quantum  # rates do not depend on E away from the edges
        for s in range(n_s):
            for s2 in range(n_s):
                if s2 == s:
                    continue
                E2 = E + int(eps[s]) - int(eps[s2])
                if not 0 <= E2 <= b.emax or not np.isfinite(b.lnV[E2]):
                    continue
                lr = log_rates(model, nu, np.array([s]), np.array([s2]), np.array([E]), np.array([E2]))[0]
                if not np.isfinite(lr):
                    continue
                k = np.exp(lr)
                L[s2, s] += k
                L[s, s] -= k
                L[n_s + nu, s] += k * (eps[s2] - eps[s])  # heat into the system: dQ = eps_s' - eps_s
    if model.joint is not None:
        st, p = model.joint
        p0 = np.bincount(st[:, 0], weights=p, minlength=n_s)
    else:
        p0 = model.p_system
    y0 = np.concatenate([p0, np.zeros(N)])
    out = np.array([scipy.linalg.expm(L * t) @ y0 for t in times])
    return np.maximum(out[:, :n_s], 0.0), out[:, n_s:]


def _edge_reached(ens):
    """Why the Pauli equation may not hold for this run (a grid edge reached), or ''."""
    v = ens.acc.visited
    if v is None:
        return "the run did not track the bath energies it visited (enumerated path)"
    m = ens.model
    for nu, b in enumerate(m.baths):
        c = m.coupling_weight(nu)
        d = max([abs(int(m.energies[s]) - int(m.energies[s2])) for s in range(m.n_levels) for s2 in range(m.n_levels)
                 if c[s, s2] > 0] + [0])
        if v[nu, 0] < d or v[nu, 1] > b.emax - d:
            return (f"bath {b.name!r}: trajectories visited E = {v[nu, 0]}..{v[nu, 1]}, within {d} of the grid edge "
                    f"0..{b.emax}, where jumps are cut off")
    return ""


def exact_reference(model, plan=None):
    """The exact solution when the network can be enumerated (None otherwise)."""
    from .solver import solve
    from .tables import ENUM_SEARCH_MAX, _radix_space

    if plan is not None and plan.network is None and _radix_space(model) > ENUM_SEARCH_MAX:
        return None
    return solve(model)


def run_checks(ens, sol, alpha=1e-3, names=None):
    """Run the registry (or ``names``) and apply the Holm correction to the statistical family."""
    ctx = {"ens": ens, "sol": sol, "th": ens.thermo(), "ex": sol.thermo() if sol is not None else None}
    results = [CHECKS[n](ctx) for n in (names or CHECKS)]
    stat = [r for r in results if r.kind == "statistical"]
    if stat:
        adj = holm([r.pvalue for r in stat])
        for r, a in zip(stat, adj, strict=True):
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


def verdict(results) -> bool:
    """PASS when every counted check passes (and at least one was counted)."""
    counted = [r for r in results if r.counted]
    return bool(counted) and all(r.passed for r in counted)


def _md(text):
    return str(text).replace("|", "\\|")


def validate_run(run_dir, alpha=1e-3):
    """Validate a finished run directory; writes validation.json and validation.md.

    Returns (passed, results, ensemble, exact solution or None).
    """
    from .rundir import atomic_text, load_run

    run_dir = Path(run_dir)
    ens = load_run(run_dir)
    sol = exact_reference(ens.model, ens.plan)
    results = run_checks(ens, sol, alpha)
    ok = verdict(results)
    out = {"run": str(run_dir), "alpha": alpha, "passed": ok, "correction": "Holm", "path": ens.plan.path,
           "checks": [dict(asdict(r), verdict=r.mark) for r in results]}
    atomic_text(run_dir / "validation.json", json.dumps(_finite(out), indent=2, allow_nan=False))
    lines = [f"# Validation of `{_md(run_dir.name)}`", "",
             f"Model `{_md(ens.model.name)}`, {ens.trajectories} trajectories ({ens.plan.path} path), seed entropy "
             f"{ens.plan.entropy}. Statistical checks Holm-corrected at alpha = {alpha:g}.", "",
             f"**Verdict: {'PASS' if ok else 'FAIL'}**", "",
             "| check | kind | statistic | p (adjusted) | max error | verdict | detail |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {r.kind} | {r.statistic:.4g} | {r.adjusted_pvalue:.3g} | {r.max_error:.3g} | "
                     f"{r.mark} | {_md(r.detail)} |")
    atomic_text(run_dir / "validation.md", "\n".join(lines) + "\n")
    return ok, results, ens, sol
