"""Driving (docs/physics.md §5.7): work and entropy production for slow against fast driving of one protocol.

A qubit coupled to n = 40 oscillators (sqrt kernel, flat J, gamma = 1) starts in the global Gibbs state at
beta = 0.5 (Gibbs system x canonical bath at the same beta).  Its gap is raised from 1 to 6 in K equal steps,
the k-th step (k = 1..K) at time tau k / K, then held for T_RELAX = 3 (>= 6 relaxation times) until
tau + T_RELAX, where everything is evaluated.  Energies live on a grid of step delta = 1/GRID (GRID = 5), so the
gap is 5 -> 30 grid units and K = 1 (a single quench), 5 and 25 are all integer steps of the *same* model
(same bath, same Delta F); only the protocol differs.  Energies, work and Delta F are reported in physical
units (gap 1 -> 6); entropies are dimensionless.

For each (tau, K):
* <W> against Delta F = -ln(Z_f / Z_0) / beta (Z over the grid, trajmc.fluctuations.gibbs_ratio);
  W_diss = <W> - Delta F >= 0, non-increasing in tau, -> 0 only when tau -> inf AND K -> inf;
* exact identity beta W_diss = Sigma_tilde + D[p_S(t) || gamma_S(lambda_f)] (first law + definitions), so
  beta W_diss >= Sigma_tilde >= Sigma >= 0 (Eq. 60 gives the second inequality);
* Jarzynski <exp(-beta W)> = Z_f / Z_0 for every tau: exact two ways (tilted propagation and the exact work
  distribution) at 1e-10, Monte Carlo within its error bar;
* the work distribution, exact (bars) against Monte Carlo (markers), fast against slow;
* Sigma and Sigma_tilde at the end.
Exact curves on a fine log grid of tau; Monte Carlo (trajmc.simulate, fixed seeds, TRAJ trajectories) at a
few tau, drawn as markers with 1.96 SE error bars.

Run:  python analysis/driving_slow_fast.py
Out:  runs/analysis/driving_slow_fast/driving_work.png, driving_work_distributions.png, driving_entropy.png,
      driving_summary.csv (exact + MC at the MC taus), driving_curves.csv (exact, fine tau grid),
      driving_work_distributions.csv
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

import trajmc  # noqa: E402
from trajmc import fluctuations as F  # noqa: E402

N_OSC = 40
BETA = 0.5  # physical inverse temperature (gap 1 -> 6 in physical units)
GRID = 5  # grid steps per physical energy unit
BETA_G = BETA / GRID  # inverse temperature per grid unit (what trajmc sees)
GAP0, GAP1 = 1, 6
KS = [1, 5, 25]
T_RELAX = 3.0
TAU_FINE = np.logspace(-2, 2.5, 19)
TAU_MC = [0.1, 0.3, 1.0, 3.0, 10.0]
TAU_FAST, TAU_SLOW = 0.1, 10.0
TRAJ = 100_000
SEED = 57
TOL = 1e-10
#: relaxation time of the qubit at the initial gap (ordinary Pauli ME rates of the sqrt kernel, flat J):
#: 1 / (k_up + k_down) = 1 / (2 cosh(beta gap / 2)); the slowest along the protocol
TAU_REL = 1.0 / (2.0 * math.cosh(BETA * GAP0 / 2.0))
EMAX = C.canonical_emax(N_OSC, BETA_G, headroom=GAP1 * GRID)


def build(tau, K, times=None):
    """Driven-qubit model dict: gap GAP0 -> GAP1 in K equal grid steps at tau k / K, held until tau + T_RELAX."""
    g0, g1 = GAP0 * GRID, GAP1 * GRID
    if (g1 - g0) % K:
        raise ValueError(f"K = {K} does not divide the gap change {g1 - g0} (grid units)")
    prot = [{"time": float(tau * k / K), "energies": [0, g0 + (g1 - g0) * k // K]} for k in range(1, K + 1)]
    if times is None:
        times = [0.0, tau, tau + T_RELAX]
    return {"name": f"drive-K{K}-tau{tau:g}",
            "system": {"energies": [0, g0], "coupling": [[0, 1], [1, 0]]},
            "baths": [C.osc_bath(N_OSC, EMAX)],
            "initial": {"system": {"gibbs": True, "beta": BETA_G},
                        "baths": [{"state": "canonical", "beta": BETA_G}]},
            "times": {"values": [float(t) for t in times]},
            "protocol": prot}


def kl(p, q):
    p, q = np.asarray(p, float), np.asarray(q, float)
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def exact(tau, K, with_pw=False):
    """Exact quantities at tau + T_RELAX (physical units for energies).  Jarzynski by tilted propagation;
    with ``with_pw`` also the exact work distribution and Jarzynski from it (a second, independent way)."""
    model = trajmc.load_model(build(tau, K))
    sol = trajmc.solve(model)
    if F.global_gibbs_beta(model, sol.network) != BETA_G:
        raise RuntimeError("initial state is not the global Gibbs state at beta")
    thall = sol.thermo()
    th = thall.iloc[-1]
    segs = sol.segments
    zr = F.gibbs_ratio(segs, BETA_G)
    jar_tilt = F.tilted_work_average(segs, sol.times[-1:], BETA_G)[-1]
    dF = -math.log(zr) / BETA
    W = th["W"] / GRID
    D_S = kl(sol.p_system()[-1], C.gibbs(sol.levels()[-1], BETA_G))
    r = {"K": K, "tau": tau, "tau_over_tau_rel": tau / TAU_REL, "W": W, "dF": dF, "W_diss": W - dF,
         "beta_W_diss": BETA * (W - dF), "Sigma": th["Sigma"], "Sigma_tilde": th["Sigma_tilde"], "I": th["I"],
         "D_B": th["D"], "D_S": D_S,
         "identity_err": abs(BETA * (W - dF) - th["Sigma_tilde"] - D_S),
         "first_law_err": abs(th["W"] - (th["E_S"] - thall["E_S"].iloc[0]) + th["Q_B"]),
         "Zf_over_Z0": zr, "jarzynski_tilted": jar_tilt, "jarzynski_err": abs(jar_tilt / zr - 1)}
    if not with_pw:
        return r
    w, P = F.work_distribution(segs, sol.times[-1:])
    pw = P[-1]
    r["jarzynski_from_PW"] = float(np.sum(pw * np.exp(-BETA_G * w)))
    r["jarzynski_err"] = max(r["jarzynski_err"], abs(r["jarzynski_from_PW"] / zr - 1))
    r["W_from_PW_err"] = abs(float(np.sum(pw * w)) / GRID - W)
    return r, (w / GRID, pw)


def monte_carlo(tau, K, seed):
    model = trajmc.load_model(build(tau, K))
    ens = trajmc.simulate(model, trajectories=TRAJ, seed=seed, threads=None, records=False)
    th = ens.thermo().iloc[-1]
    h = ens.work_distribution(-1)
    w, p = h.index.to_numpy() / GRID, h.to_numpy()
    x = np.exp(-BETA * w)
    jar = float(np.sum(p * x))
    jar_se = math.sqrt(max(float(np.sum(p * x * x)) - jar**2, 0.0) / ens.trajectories)
    r = {"mc_W": th["W"] / GRID, "mc_W_se": th["W_se"] / GRID, "mc_Sigma": th["Sigma"], "mc_Sigma_se": th["Sigma_se"],
         "mc_Sigma_tilde": th["Sigma_tilde"], "mc_Sigma_tilde_se": th["Sigma_tilde_se"],
         "mc_jarzynski": jar, "mc_jarzynski_se": jar_se}
    return r, (w, p, np.sqrt(p * (1 - p) / ens.trajectories))


def main():
    timer = C.Timer()
    C.style()
    out = C.out_dir("driving_slow_fast")

    # ---------------------------------------------------------------- exact on the fine tau grid
    curves = pd.DataFrame([exact(tau, K) for K in KS for tau in TAU_FINE])
    curves.to_csv(out / "driving_curves.csv", index=False)
    t_exact = timer()

    # ---------------------------------------------------------------- exact + MC at the MC taus
    rows, dists = [], []
    pw_ex, pw_mc = {}, {}
    for i, K in enumerate(KS):
        for j, tau in enumerate(TAU_MC):
            r, pwe = exact(tau, K, with_pw=True)
            m, pwm = monte_carlo(tau, K, SEED + 100 * i + j)
            r.update(m)
            for q in ["W", "Sigma", "Sigma_tilde"]:
                r[f"z_{q}"] = (r[f"mc_{q}"] - r[q]) / r[f"mc_{q}_se"]
            r["z_jarzynski"] = (r["mc_jarzynski"] - r["Zf_over_Z0"]) / r["mc_jarzynski_se"]
            pw_ex[K, tau], pw_mc[K, tau] = pwe, pwm
            # work distribution: exact vs MC on the exact support
            mc_map = dict(zip(np.round(pwm[0] * GRID).astype(int), zip(pwm[1], pwm[2], strict=True), strict=True))
            zs = []
            for w, p in zip(*pwe, strict=True):
                if p < 1e-300 and round(w * GRID) not in mc_map:
                    continue
                pm, se = mc_map.get(int(round(w * GRID)), (0.0, 0.0))
                se_ex = math.sqrt(p * (1 - p) / TRAJ)  # SE under the exact p (defined also when MC count is 0)
                z = (pm - p) / se_ex if se_ex > 0 else np.nan
                if p * TRAJ >= 5:
                    zs.append(z)
                dists.append({"K": K, "tau": tau, "W": w, "P_exact": p, "P_mc": pm, "P_mc_se": se, "z": z})
            r["pw_bins"] = len(zs)
            r["pw_max_abs_z"] = float(np.nanmax(np.abs(zs)))
            r["pw_cover95"] = float(np.mean(np.abs(zs) < C.Z95))
            rows.append(r)
    sm = pd.DataFrame(rows)
    t_mc = timer() - t_exact
    sm.to_csv(out / "driving_summary.csv", index=False)
    pd.DataFrame(dists).to_csv(out / "driving_work_distributions.csv", index=False)

    dF = curves["dF"].iloc[0]
    figures(out, curves, sm, pw_ex, pw_mc, dF)

    # ---------------------------------------------------------------- verdict
    ok_pos = bool((curves["W_diss"] >= -TOL).all())
    mono = {}
    for K in KS:
        c = curves[curves.K == K].sort_values("tau")
        mono[K] = float(np.diff(c["W_diss"].to_numpy()).max())
    ok_mono = all(v <= TOL for v in mono.values())
    spread_K1 = float(np.ptp(curves.loc[curves.K == 1, "W_diss"]))
    jar_err = float(curves["jarzynski_err"].max())
    jar_err2 = float(sm["jarzynski_err"].max())
    ok_jar = max(jar_err, jar_err2) <= TOL
    id_err = float(curves["identity_err"].max())
    ok_chain = bool(((curves["beta_W_diss"] - curves["Sigma_tilde"] >= -TOL)
                     & (curves["Sigma_tilde"] - curves["Sigma"] >= -TOL) & (curves["Sigma"] >= -TOL)).all())
    ok_wpw = float(sm["W_from_PW_err"].max())
    z_cols = ["z_W", "z_Sigma", "z_Sigma_tilde", "z_jarzynski"]
    z_all = sm[z_cols].to_numpy().ravel()
    cover = float(np.mean(np.abs(z_all) < C.Z95))
    zj = sm["z_jarzynski"].abs()

    print(f"Driving slow vs fast: qubit gap {GAP0} -> {GAP1} in K steps over tau, + {N_OSC} oscillators, "
          f"global Gibbs start at beta = {BETA}; evaluated at tau + {T_RELAX:g}")
    print(f"  Delta F = -ln(Z_f/Z_0)/beta = {dF:.6f}   (system only: "
          f"{-math.log((1 + math.exp(-BETA * GAP1)) / (1 + math.exp(-BETA * GAP0))) / BETA:.6f});  "
          f"relaxation time tau_rel = 1/(2 cosh(beta/2)) = {TAU_REL:.3f}")
    cols = ["K", "tau", "W", "mc_W", "mc_W_se", "W_diss", "beta_W_diss", "Sigma_tilde", "Sigma", "mc_Sigma",
            "mc_Sigma_se", "Zf_over_Z0", "mc_jarzynski", "mc_jarzynski_se", "pw_max_abs_z"]
    with pd.option_context("display.width", 200, "display.float_format", "{:.4g}".format):
        print(sm[cols].to_string(index=False))
    lim = curves[curves.tau == curves.tau.max()][["K", "W_diss"]]
    print(f"  W_diss at tau = {curves.tau.max():g} (the K-step floor): "
          + ", ".join(f"K={int(k)}: {w:.4f}" for k, w in lim.to_numpy()))
    print(f"  W_diss >= 0 on all {len(curves)} exact (tau, K) points: {ok_pos} (min {curves['W_diss'].min():.4f})")
    print("  W_diss non-increasing in tau (largest step up over the fine grid): "
          + ", ".join(f"K={K}: {v:.1e}" for K, v in mono.items())
          + f"  -> {ok_mono};  K=1 (a single quench) is tau-independent: spread {spread_K1:.1e}")
    print(f"  Jarzynski <exp(-beta W)> = Z_f/Z_0 = {curves['Zf_over_Z0'].iloc[0]:.10f}: max relative error over all "
          f"{len(curves)} protocols (tilted propagation) = {jar_err:.1e}, and over the {len(sm)} MC protocols "
          f"(tilted and from the exact P(W)) = {jar_err2:.1e}  (<= 1e-10: {ok_jar})")
    print(f"  Monte Carlo Jarzynski: max |z| = {zj.max():.2f} over {len(zj)} runs ({TRAJ} trajectories each)")
    print(f"  beta W_diss = Sigma_tilde + D[p_S || gamma_f]: max error {id_err:.1e};  "
          f"beta W_diss >= Sigma_tilde >= Sigma >= 0 everywhere: {ok_chain};  "
          f"first law max error {curves['first_law_err'].max():.1e};  <W> from exact P(W) matches: {ok_wpw:.1e}")
    print(f"  Monte Carlo: {cover:.1%} of {len(z_all)} estimates (<W>, Sigma, Sigma_tilde, Jarzynski) within 1.96 SE, "
          f"max |z| = {np.nanmax(np.abs(z_all)):.2f};  P(W) bins with >= 5 expected counts: "
          f"{int(sm['pw_bins'].sum())}, max |z| = {sm['pw_max_abs_z'].max():.2f}")
    ok = ok_pos and ok_mono and ok_jar and ok_chain and id_err <= TOL
    print(f"VERDICT: {'CONFIRMED' if ok else 'VIOLATED'}  (runtime {timer():.1f} s: exact fine grid {t_exact:.1f} s, "
          f"exact + MC at the MC taus {t_mc:.1f} s)")
    print(f"outputs: {out}")


def figures(out, curves, sm, pw_ex, pw_mc, dF):
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    col = {K: C.COLORS[i] for i, K in enumerate(KS)}
    mk = {1: "s", 5: "o", 25: "^"}

    # ---------------------------------------------------------------- (1) work vs tau
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.2))
    ax, ax2, ax3 = axes
    for K in KS:
        c = curves[curves.K == K]
        s = sm[sm.K == K]
        ax.semilogx(c.tau, c.W, color=col[K], label=f"$K = {K}$")
        C.mc_errorbar(ax, s.tau, s.mc_W, s.mc_W_se, col[K], marker=mk[K])
        ax2.loglog(c.tau, c.W_diss, color=col[K], label=f"$K = {K}$")
        C.mc_errorbar(ax2, s.tau, s.mc_W - s.dF, s.mc_W_se, col[K], marker=mk[K])
        C.mc_errorbar(ax3, s.tau * (1 + 0.06 * (KS.index(K) - 1)), s.mc_jarzynski, s.mc_jarzynski_se, col[K],
                      marker=mk[K], label=f"MC, $K = {K}$")
    ax.axhline(dF, color="k", ls="--", lw=1.2, label=r"$\Delta F$")
    ax.set_ylim(dF - 0.12, None)
    ax.set_xlabel(C.TAU_LABEL)
    ax.set_ylabel(r"mean work $\langle W\rangle$ " + C.E_UNIT)
    ax.set_title(r"$\langle W\rangle \to \Delta F$ only for slow driving and fine steps")
    ax.legend(loc="upper right", title="steps", title_fontsize=7.5)
    ax2.set_xlabel(C.TAU_LABEL)
    ax2.set_ylabel(r"$W_{\rm diss} = \langle W\rangle - \Delta F$ " + C.E_UNIT)
    ax2.set_title(r"dissipated work $\geq 0$, decreasing in $\tau$")
    ax2.axvline(TAU_REL, color="0.5", ls=":", lw=1)
    ax2.text(TAU_REL * 1.1, 1.25, r"$\tau_{\rm rel}$", color="0.4", fontsize=8)
    ax2.set_ylim(top=1.6)
    ax2.legend(loc="lower left")
    zr = curves["Zf_over_Z0"].iloc[0]
    # the exact <exp(-beta W)> of every protocol is Z_f / Z_0 (to rounding): one line, not one per K on top of it
    same = np.allclose(curves.jarzynski_tilted, zr, rtol=1e-9, atol=0)
    ax3.axhline(zr, color="k", ls="--", lw=1.2,
                label=r"exact $\langle e^{-\beta W}\rangle = Z_f/Z_0$ (every $K$, $\tau$)" if same else r"$Z_f/Z_0$")
    if not same:
        for K in KS:
            c = curves[curves.K == K]
            ax3.semilogx(c.tau, c.jarzynski_tilted, color=col[K], lw=1.0, label=f"exact, $K = {K}$")
    ax3.set_xscale("log")
    ax3.set_xlabel(C.TAU_LABEL)
    ax3.set_ylabel(r"$\langle e^{-\beta W}\rangle$")
    err = curves["jarzynski_err"].max()
    ax3.set_title(f"Jarzynski: exact rel. error {err:.0e}")
    ax3.legend(loc="lower right")
    for a in (ax, ax2):
        a.add_artist(a.get_legend())
        C.exact_mc_legend_note(a, loc="center left" if a is ax else "lower center")
    fig.suptitle(rf"Qubit gap {GAP0}$\,\delta\to${GAP1}$\,\delta$ in $K$ equal steps over $\tau$, {N_OSC} oscillators, "
                 rf"global Gibbs start "
                 rf"$\beta$ = {BETA}; evaluated after a hold of {T_RELAX:g}$/\gamma$", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "driving_work.png")
    plt.close(fig)

    # ---------------------------------------------------------------- (2) work distributions
    Kd = [5, 25]
    fig, axes = plt.subplots(2, len(Kd), figsize=(12, 6.8), sharex=True)
    for j, K in enumerate(Kd):
        for row, logy in enumerate([False, True]):
            ax = axes[row, j]
            bw = 0.8 * (GAP1 - GAP0) / K / 2 if K > 1 else 0.4
            bw = min(bw, 0.09)
            for q, (tau, c, lab) in enumerate([(TAU_FAST, C.COLORS[3], "fast"), (TAU_SLOW, C.COLORS[0], "slow")]):
                w, p = pw_ex[K, tau]
                off = (q - 0.5) * bw  # the two protocols side by side at each work value
                exact_lab = rf"{lab} $\tau$ = {tau:g}: exact" if row == 0 else None
                if logy:  # a stem from 0 has no place on a log axis: the exact value as a tick mark
                    keep = p > 1e-12
                    ax.plot(w[keep] + off, p[keep], ls="none", marker="_", ms=9, mew=1.5, color=c, label=exact_lab)
                else:
                    C.exact_stems(ax, w + off, p, c, label=exact_lab, min_p=1e-3 * p.max(), ms=4)
                wm, pm, se = pw_mc[K, tau]
                lo = np.minimum(C.Z95 * np.asarray(se), 0.95 * np.asarray(pm)) if logy else C.Z95 * np.asarray(se)
                ax.errorbar(wm + off, pm, yerr=[lo, C.Z95 * np.asarray(se)], fmt="o", ms=2.5, color=c, ecolor=c,
                            elinewidth=0.8, ls="none", zorder=3, label=rf"{lab}: MC" if row == 0 else None)
                r = sm[(sm.K == K) & (sm.tau == tau)].iloc[0]
                ax.axvline(r["W"], color=c, ls="-.", lw=1.0)
            ax.axvline(dF, color="k", ls="--", lw=1.2, label=r"$\Delta F$" if row == 0 else None)
            if logy:
                ax.set_yscale("log")
                ax.set_ylim(1e-6, 1.5)
                ax.set_xlabel(r"work $W$ done on the qubit " + C.E_UNIT)
            else:
                ax.set_ylim(bottom=0.0)
            ax.set_ylabel(r"probability $P(W)$" + (" (log)" if logy else ""))
            if row == 0:
                rf_ = sm[(sm.K == K) & (sm.tau == TAU_FAST)].iloc[0]
                rs_ = sm[(sm.K == K) & (sm.tau == TAU_SLOW)].iloc[0]
                ax.set_title(rf"$K = {K}$ steps of {(GAP1 - GAP0) / K:g}$\,\delta$:  "
                             rf"$\langle e^{{-\beta W}}\rangle_{{\rm MC}}$ = "
                             rf"{rf_.mc_jarzynski:.4f}$\pm${C.Z95 * rf_.mc_jarzynski_se:.4f} (fast), "
                             rf"{rs_.mc_jarzynski:.4f}$\pm${C.Z95 * rs_.mc_jarzynski_se:.4f} (slow); "
                             rf"$Z_f/Z_0$ = {rs_.Zf_over_Z0:.4f}", fontsize=8)
                h, l = ax.get_legend_handles_labels()
                h.append(Line2D([], [], color="0.3", ls="-.", lw=1))
                l.append(r"$\langle W\rangle$ (colour of $\tau$)")
                ax.legend(h, l, loc="upper center")
    fig.suptitle(rf"Work distributions, fast ($\tau$ = {TAU_FAST:g}) vs slow ($\tau$ = {TAU_SLOW:g} "
                 rf"$\approx$ {TAU_SLOW / TAU_REL:.0f} $\tau_{{\rm rel}}$): exact stems, MC markers $\pm$ 1.96 SE",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "driving_work_distributions.png")
    plt.close(fig)

    # ---------------------------------------------------------------- (3) entropy production vs tau
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.2))
    ax, ax2 = axes
    for K in KS:
        c = curves[curves.K == K]
        s = sm[sm.K == K]
        ax.loglog(c.tau, c.Sigma_tilde, color=col[K], ls="-")
        ax.loglog(c.tau, c.Sigma, color=col[K], ls="--")
        ax.loglog(c.tau, c.beta_W_diss, color=col[K], ls=":", lw=2.2)
        C.mc_errorbar(ax, s.tau, s.mc_Sigma_tilde, s.mc_Sigma_tilde_se, col[K], marker=mk[K])
        C.mc_errorbar(ax, s.tau, s.mc_Sigma, s.mc_Sigma_se, col[K], marker=mk[K], ms=3, mfc=col[K])
        ax2.loglog(c.tau, c.Sigma_tilde - c.Sigma, color=col[K], ls="-")
        ax2.loglog(c.tau, c.beta_W_diss - c.Sigma_tilde, color=col[K], ls=":", lw=2.2)
    h = [Line2D([], [], color=col[K], marker=mk[K], mfc="white", label=f"$K = {K}$") for K in KS]
    h += [Line2D([], [], color="0.3", ls=":", lw=2.2, label=r"$\beta W_{\rm diss}$ (exact)"),
          Line2D([], [], color="0.3", ls="-", marker="o", mfc="white",
                 label=r"$\tilde\Sigma$ (conventional; solid: exact, open: MC)"),
          Line2D([], [], color="0.3", ls="--", marker="o", mfc="0.3", ms=3,
                 label=r"$\Sigma = \Delta S_{\rm obs}$ (dashed: exact, filled: MC)"),
          Line2D([], [], color="0.3", marker="o", mfc="white", ls="none", label=f"MC ± {C.Z95} SE")]
    ax.legend(handles=h, loc="lower left")
    ax.set_xlabel(C.TAU_LABEL)
    ax.set_ylabel(r"entropy production at $t = \tau + $" + f"{T_RELAX:g}" + r"$/\gamma$ " + C.S_UNIT)
    ax.set_title(r"$\beta W_{\rm diss} \geq \tilde\Sigma \geq \Sigma \geq 0$, all decreasing in $\tau$")
    h2 = [Line2D([], [], color="0.3", ls="-", label=r"$\tilde\Sigma - \Sigma = I + D[p_E\|\pi_E]$"),
          Line2D([], [], color="0.3", ls=":", lw=2.2,
                 label=r"$\beta W_{\rm diss} - \tilde\Sigma = D[p_S\|\gamma_S(\lambda_f)]$")]
    h2 += [Line2D([], [], color=col[K], label=f"$K = {K}$") for K in KS]
    ax2.legend(handles=h2, loc="center left")
    ax2.set_xlabel(C.TAU_LABEL)
    ax2.set_ylabel("gap (exact) " + C.S_UNIT)
    ax2.set_title("gaps between them (finite bath: it heats up, the system relaxes to it, not to $\\beta$)", fontsize=9)
    fig.suptitle(rf"Entropy production after the protocol (qubit gap {GAP0}$\to${GAP1}, {N_OSC} oscillators, "
                 rf"$\beta$ = {BETA})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "driving_entropy.png")
    plt.close(fig)


if __name__ == "__main__":
    main()
