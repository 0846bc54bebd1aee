"""Claim 3 (paper Secs. III-IV, Eq. 46 and Eq. 60): in the large-bath limit at fixed temperature the
MME reduces to the ordinary Pauli master equation and Sigma -> Sigma_tilde.

3-level system (0, 1, 3), all-ones coupling, starting in its top level; n oscillators (quantum 1)
canonical at fixed beta = 0.5 (mean energy n / (e^0.5 - 1) grows with n), sqrt kernel, flat J, gamma = 1;
n = 5, 10, 20, 50, 100, 200, 400.  Two gaps, maximised over t in [0, 3]:
  (a) max_t |Sigma_tilde - Sigma| = max_t (I + D)                       (Eq. 60)
  (b) max_{t,s} |p_s^MME(t) - p_s^Pauli(t)|, where the Pauli ME has rates
      k(s->s') = gamma |S_ss'|^2 J(eps_s - eps_s') exp(beta (eps_s - eps_s')/2) (docs/physics.md §5.5),
      solved with scipy.linalg.expm.
Both are fitted by a power law a n^b for n >= 20.  Sanity check of the Pauli solution: with an
ideal exponential(beta) bath the MME's p_s(t) must equal it to rounding (docs/physics.md §5.5).

Criteria (all must hold for CONFIRMED; otherwise NOT CONFIRMED and exit code 1):
  sanity: ideal bath max |p_s^MME - p_s^Pauli| < 1e-10;
  per size n > 5: both gaps smaller than at the previous size;
  fit: both exponents b within 0.1 of -1 (the gaps fall as 1/n);
  Monte Carlo, per size in MC_SIZES: p_s(t), Sigma, Sigma_tilde (t > 0) agree with the exact MME: max |z| < z*,
  z* from a family-wise false alarm of 1e-3 over all z-tests of the script (Bonferroni; second-order entries
  left out).

Run:  python analysis/claim3_weak_coupling_limit.py
Out:  runs/analysis/claim3/claim3_weak_coupling.png, claim3_gaps.csv, claim3_ps.csv
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

import trajmc  # noqa: E402

BETA = 0.5
SIZES = [5, 10, 20, 50, 100, 200, 400]
MC_SIZES = [5, 20, 100]
FIT_MIN = 20
P0 = [0.0, 0.0, 1.0]
T_FINE = np.linspace(0.0, 3.0, 301)
T_MC = np.linspace(0.0, 3.0, 16)
TRAJ = 100_000
SEED = 46


def main():
    timer = C.Timer()
    C.style()
    out = C.out_dir("claim3")
    pauli = C.pauli_solution(C.ENERGIES3, C.COUPLING3, BETA, P0, T_FINE)
    pauli_mc = C.pauli_solution(C.ENERGIES3, C.COUPLING3, BETA, P0, T_MC)

    # sanity check: ideal exponential bath => the MME's p_s(t) is exactly the Pauli ME
    ideal = {"name": "claim3-ideal", "system": {"energies": C.ENERGIES3, "coupling": C.COUPLING3},
             "baths": [{"name": "B", "dos": {"model": "exponential", "beta": BETA}, "emax": 400,
                        "kernel": C.sqrt_flat_kernel()}],
             "initial": {"system": P0, "baths": [{"state": "microcanonical", "energy": 200}]},
             "times": {"values": T_FINE.tolist()}}
    ideal_gap = np.abs(trajmc.solve(ideal).p_system() - pauli).max()

    gaps, ps_rows, curves, mcs, zt = [], [], {}, {}, {}
    for n in SIZES:
        model = trajmc.load_model(C.canonical_product(n, BETA, P0, name=f"claim3-n{n}"))
        sol = trajmc.solve(model, times=T_FINE)
        th = sol.thermo()
        ps = sol.p_system()
        dev = ps - pauli
        i_t, i_s = np.unravel_index(np.argmax(np.abs(dev)), dev.shape)
        sig_gap = (th["Sigma_tilde"] - th["Sigma"]).to_numpy()
        curves[n] = (ps, dev, th)
        gaps.append({"n": n, "emax": model.baths[0].emax, "mean_E_bath": C.energy_of_beta(n, BETA),
                     "max_Sigma_tilde_minus_Sigma": np.abs(sig_gap).max(),
                     "max_ps_gap": np.abs(dev).max(), "t_at_max_ps_gap": T_FINE[i_t], "level_at_max_ps_gap": i_s,
                     "Sigma_end": th["Sigma"].iloc[-1], "Sigma_tilde_end": th["Sigma_tilde"].iloc[-1]})
        if n in MC_SIZES:
            ens = trajmc.simulate(model, trajectories=TRAJ, seed=SEED + n, threads=None, times=T_MC)
            pm, pse = ens.p_system(), ens.p_system_se()
            tm = ens.thermo()
            ex = trajmc.solve(model, times=T_MC)
            pex, thx = ex.p_system(), ex.thermo()
            mcs[n] = (pm, pse, tm)
            k = slice(1, None)
            tested = [C.checked_z(pm[k], pse[k], pex[k])]
            tested += [C.checked_z(tm[c].to_numpy()[k], tm[f"{c}_se"].to_numpy()[k], thx[c].to_numpy()[k],
                                   C.flags(tm, c, k)) for c in ("Sigma", "Sigma_tilde")]
            zt[n] = (np.concatenate([t[0] for t in tested]), sum(t[1] for t in tested))
            for i, t in enumerate(T_MC):
                for s in range(3):
                    ps_rows.append({"n": n, "t": t, "s": s, "p_mme_exact": pex[i, s], "p_pauli": pauli_mc[i, s],
                                    "p_mc": pm[i, s], "p_mc_se": pse[i, s],
                                    "z_vs_exact": C.zscores(pm[i, s], pse[i, s], pex[i, s]),
                                    "Sigma_exact": thx["Sigma"].iloc[i], "Sigma_mc": tm["Sigma"].iloc[i],
                                    "Sigma_mc_se": tm["Sigma_se"].iloc[i],
                                    "Sigma_tilde_exact": thx["Sigma_tilde"].iloc[i],
                                    "Sigma_tilde_mc": tm["Sigma_tilde"].iloc[i],
                                    "Sigma_tilde_mc_se": tm["Sigma_tilde_se"].iloc[i]})
    g = pd.DataFrame(gaps)
    pr = pd.DataFrame(ps_rows)
    fit = g[g.n >= FIT_MIN]
    a1, b1, e1 = C.power_law_fit(fit.n, fit.max_Sigma_tilde_minus_Sigma)
    a2, b2, e2 = C.power_law_fit(fit.n, fit.max_ps_gap)
    g["fit_Sigma_gap"] = a1 * g.n ** b1
    g["fit_ps_gap"] = a2 * g.n ** b2
    g.to_csv(out / "claim3_gaps.csv", index=False)
    pr.to_csv(out / "claim3_ps.csv", index=False)

    # ---------------------------------------------------------------- figure
    import matplotlib.pyplot as plt
    from matplotlib import cm

    fig, axes = plt.subplots(2, 2, figsize=(11.5, 8.6))
    (ax_p, ax_d), (ax_s, ax_g) = axes
    cmap = cm.viridis(np.linspace(0.0, 0.9, len(SIZES)))
    colors = dict(zip(SIZES, cmap, strict=True))
    lev_ls = ["-", "--", ":"]
    # (a) p_s(t): Pauli ME vs MME at the MC sizes
    for s in range(3):
        ax_p.plot(T_FINE, pauli[:, s], color="k", lw=2.6, alpha=0.35, ls=lev_ls[s])
        for n in MC_SIZES:
            ax_p.plot(T_FINE, curves[n][0][:, s], color=colors[n], ls=lev_ls[s], lw=1.2)
            pm, pse, _ = mcs[n]
            C.mc_errorbar(ax_p, T_MC, pm[:, s], pse[:, s], colors[n], ms=3)
    from matplotlib.lines import Line2D

    hs = [Line2D([], [], color="k", lw=2.6, alpha=0.35, label=r"Pauli ME ($n\to\infty$)")]
    hs += [Line2D([], [], color=colors[n], label=f"MME n = {n}") for n in MC_SIZES]
    hs += [Line2D([], [], color="0.3", ls=lev_ls[s],
                  label=rf"level $s = {s}$ ($\epsilon_s = {C.ENERGIES3[s]}\,\delta$)") for s in range(3)]
    hs += [Line2D([], [], color="0.3", marker="o", mfc="white", ls="none", label=f"MC ± {C.Z95} SE")]
    ax_p.legend(handles=hs, loc="upper right", ncol=1)
    ax_p.set_xlabel(C.T_LABEL)
    ax_p.set_ylabel(r"$p_s(t)$")
    ax_p.set_title(r"(a) system populations, $\beta = 0.5$, system starts in $s = 2$")
    # (b) deviation from the Pauli ME of the level with the largest deviation
    s_dev = int(g.level_at_max_ps_gap.mode()[0])
    for n in SIZES:
        ax_d.plot(T_FINE, curves[n][1][:, s_dev], color=colors[n], label=f"n = {n}")
    for n in MC_SIZES:
        pm, pse, _ = mcs[n]
        C.mc_errorbar(ax_d, T_MC, pm[:, s_dev] - pauli_mc[:, s_dev], pse[:, s_dev], colors[n], ms=3)
    ax_d.axhline(0, color="k", lw=0.7)
    ax_d.set_xlabel(C.T_LABEL)
    ax_d.set_ylabel(rf"$p_{s_dev}^{{\rm MME}}(t) - p_{s_dev}^{{\rm Pauli}}(t)$")
    ax_d.set_title(f"(b) deviation from the Pauli ME (level $s = {s_dev}$); "
                   f"MC for $n$ = {', '.join(map(str, MC_SIZES))}")
    lo = min(curves[n][1][:, s_dev].min() for n in SIZES)
    hi = max(curves[n][1][:, s_dev].max() for n in SIZES)
    ax_d.set_ylim(lo - 0.5 * (hi - lo), hi + 0.08 * (hi - lo))
    ax_d.legend(loc="lower right", ncol=4, title="oscillators", title_fontsize=7.5)
    # (c) Sigma and Sigma_tilde
    for n in MC_SIZES:
        th = curves[n][2]
        ax_s.plot(T_FINE, th["Sigma_tilde"], color=colors[n], ls="--")
        ax_s.plot(T_FINE, th["Sigma"], color=colors[n], label=f"n = {n}")
        tm = mcs[n][2]
        C.mc_errorbar(ax_s, T_MC, tm["Sigma"], tm["Sigma_se"], colors[n], ms=3)
        C.mc_errorbar(ax_s, T_MC, tm["Sigma_tilde"], tm["Sigma_tilde_se"], colors[n], marker="s", ms=3)
    hs = [Line2D([], [], color=colors[n], label=f"n = {n}") for n in MC_SIZES]
    hs += [Line2D([], [], color="0.3", marker="o", mfc="white",
                  label=r"$\Sigma = \Delta S_{\rm obs}$ (solid: exact, o: MC)"),
           Line2D([], [], color="0.3", ls="--", marker="s", mfc="white",
                  label=r"$\tilde\Sigma$ (dashed: exact, s: MC)")]
    ax_s.legend(handles=hs, loc="lower right")
    ax_s.set_xlabel(C.T_LABEL)
    ax_s.set_ylabel(C.ENTROPY_LABEL)
    ax_s.set_title(r"(c) $\Sigma$ vs $\tilde\Sigma$")
    # (d) gaps vs n
    nn = np.array(SIZES, dtype=float)
    ax_g.loglog(g.n, g.max_Sigma_tilde_minus_Sigma, "o", color=C.COLORS[3],
                label=r"$\max_t\,|\tilde\Sigma - \Sigma|$ (exact)")
    ax_g.loglog(nn, a1 * nn ** b1, color=C.COLORS[3], lw=1, label=rf"fit $n\geq{FIT_MIN}$: ${a1:.2f}\,n^{{{b1:.3f}}}$")
    ax_g.loglog(g.n, g.max_ps_gap, "s", color=C.COLORS[0],
                label=r"$\max_{t,s}\,|p_s^{\rm MME} - p_s^{\rm Pauli}|$ (exact)")
    ax_g.loglog(nn, a2 * nn ** b2, color=C.COLORS[0], lw=1, label=rf"fit $n\geq{FIT_MIN}$: ${a2:.3f}\,n^{{{b2:.3f}}}$")
    ax_g.set_xlabel(r"bath size $n$ (oscillators)")
    ax_g.set_ylabel(r"gap (exact; $\Sigma$ in $k_B$)")
    ax_g.set_title(r"(d) gaps vs bath size at fixed $\beta = 0.5$")
    ax_g.legend(loc="lower left")
    fig.suptitle("Claim 3: large-bath limit — the MME becomes the Pauli master equation and "
                 r"$\Sigma \to \tilde\Sigma$ (3-level system 0,1,3, sqrt kernel, flat $J$)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "claim3_weak_coupling.png")
    plt.close(fig)

    # ---------------------------------------------------------------- verdict
    z = pr.loc[pr.t > 0, "z_vs_exact"].to_numpy()
    print("Claim 3: large bath at fixed beta = 0.5 -> Pauli ME and Sigma -> Sigma_tilde (t in [0, 3])")
    with pd.option_context("display.width", 180, "display.float_format", "{:.4g}".format):
        print(g[["n", "emax", "max_Sigma_tilde_minus_Sigma", "max_ps_gap", "t_at_max_ps_gap", "level_at_max_ps_gap",
                 "Sigma_end", "Sigma_tilde_end"]].to_string(index=False))
    print(f"  power law (n >= {FIT_MIN}): max_t|Sigma_tilde - Sigma| ~ {a1:.3g} n^({b1:.3f} ± {e1:.3f})")
    print(f"  power law (n >= {FIT_MIN}): max|p_s^MME - p_s^Pauli| ~ {a2:.3g} n^({b2:.3f} ± {e2:.3f})")
    print(f"  Monte Carlo ({TRAJ} trajectories, n = {MC_SIZES}): {np.mean(np.abs(z) < C.Z95):.1%} of p_s(t) "
          "estimates cover the exact MME at 95% (not a criterion: the times of one run are correlated)")
    v = C.Verdict("claim 3")
    v.check("ideal bath", "max |p_s^MME - p_s^Pauli|", float(ideal_gap), ideal_gap < 1e-10, "< 1e-10")
    for prev, r in zip(g.iloc[:-1].itertuples(), g.iloc[1:].itertuples(), strict=True):
        for col, label in (("max_Sigma_tilde_minus_Sigma", "max_t |Sigma_tilde - Sigma|"),
                           ("max_ps_gap", "max |p_s^MME - p_s^Pauli|")):
            v.check(f"n={r.n}", label, float(getattr(r, col)), getattr(r, col) < getattr(prev, col),
                    f"< {getattr(prev, col):.4g} (n={prev.n})")
    for b, e, label in ((b1, e1, "Sigma gap"), (b2, e2, "p_s gap")):
        v.check(f"fit n>={FIT_MIN}", f"exponent b of the {label} (± {e:.3f})", float(b), abs(b + 1.0) < 0.1,
                "within 0.1 of -1")
    n_z = sum(len(zz) for zz, _ in zt.values())
    zstar = C.z_threshold(n_z)
    for n, (zz, out_) in zt.items():
        v.check(f"MC n={n}", f"max|z| p_s, Sigma, Sigma_tilde ({len(zz)} values, {out_} second order left out)",
                C.max_abs(zz), C.max_abs(zz) < zstar,
                f"< {zstar:.2f} (alpha {C.ALPHA_MC:g} over {n_z} z-tests)")
    code = v.report(f"  (runtime {timer():.1f} s)")
    print(f"outputs: {out}")
    return code

if __name__ == "__main__":
    sys.exit(main())
