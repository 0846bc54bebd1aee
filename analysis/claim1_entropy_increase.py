"""Claim 1 (paper Sec. III, Eqs. 56-58): the observational entropy never decreases,
Delta S_obs(t) = Sigma(t) >= 0 and non-decreasing, for any initial state of the undriven MME.

3-level system (energies 0, 1, 3; all-ones off-diagonal coupling) + n oscillators (n = 5, 20, 80),
sqrt kernel, flat J, gamma = 1.  Four initial states:
  A  product, system in its top level, canonical bath at beta = 0.5
  B  product, system in its top level, microcanonical bath at E0 = round(n / (e^0.5 - 1))
  C  a correlated joint table p(s, E) over two energy shells (initial.joint)
  D  Gibbs system at beta_S = 2 with a hotter canonical bath at beta_B = 0.25

Criteria, per case and bath size (all must hold for CONFIRMED; otherwise NOT CONFIRMED and exit code 1):
  exact Sigma(t) >= -1e-12 and every increment Sigma(t_k+1) - Sigma(t_k) >= -1e-12 (601 times);
  Monte Carlo Sigma(t > 0) agrees with the exact value: max |z| < z*, z* from a family-wise false alarm of
  1e-3 over all z-tests of the script (Bonferroni; entries whose error is second order are left out).
The fraction of times whose 95% interval covers the exact value is shown, not tested: the times of one run
share its trajectories, so their z-scores are nearly equal and the fraction is not binomial.

Run:  python analysis/claim1_entropy_increase.py
Out:  runs/analysis/claim1/claim1_sigma.png, claim1_sigma.csv, claim1_summary.csv
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

import trajmc  # noqa: E402

SIZES = [5, 20, 80]
BETA = 0.5
T_FINE = np.linspace(0.0, 3.0, 601)
T_MC = np.linspace(0.0, 3.0, 21)
TRAJ = 100_000
SEED = 20190623
TOL = 1e-12

CASES = {
    "A": "excited system, canonical bath (beta 0.5)",
    "B": "excited system, microcanonical bath",
    "C": "correlated joint table (2 shells)",
    "D": "Gibbs system (beta 2), bath beta 0.25",
}


def build(case, n):
    E0 = int(round(C.energy_of_beta(n, BETA)))
    name = f"claim1-{case}-n{n}"
    if case == "A":
        return C.canonical_product(n, BETA, [0.0, 0.0, 1.0], name=name)
    if case == "B":
        return C.microcanonical_product(n, E0, [0.0, 0.0, 1.0], name=name)
    if case == "C":
        # two shells of total energy E0+3 and E0-1, with the system level tied to the bath energy
        states = [[2, E0], [1, E0 + 2], [0, E0 + 3], [2, E0 - 4], [0, E0 - 1]]
        p = [0.30, 0.20, 0.10, 0.25, 0.15]
        return C.three_level_model(n, {"joint": {"states": states, "p": p}}, E0 + 8, [0.0, 1.0], name=name)
    if case == "D":
        return C.canonical_product(n, 0.25, {"gibbs": True, "beta": 2.0}, name=name)
    raise ValueError(case)


def main():
    timer = C.Timer()
    C.style()
    out = C.out_dir("claim1")
    rows, summary = [], []
    curves, zt = {}, {}
    for case in CASES:
        for k, n in enumerate(SIZES):
            model = trajmc.load_model(build(case, n))
            fine = trajmc.solve(model, times=T_FINE).thermo()["Sigma"].to_numpy()
            ex = trajmc.solve(model, times=T_MC).thermo()["Sigma"].to_numpy()
            ens = trajmc.simulate(model, trajectories=TRAJ, seed=SEED + 100 * k + ord(case), threads=None, times=T_MC)
            th = ens.thermo()
            mc, se = th["Sigma"].to_numpy(), th["Sigma_se"].to_numpy()
            z = C.zscores(mc, se, ex)
            zt[case, n] = C.checked_z(mc[1:], se[1:], ex[1:], C.flags(th, "Sigma", slice(1, None)))
            curves[case, n] = (fine, mc, se)
            for t, a, b, c, zz in zip(T_MC, ex, mc, se, z, strict=True):
                rows.append({"case": case, "n": n, "t": t, "Sigma_exact": a, "Sigma_mc": b, "Sigma_mc_se": c, "z": zz})
            inc = np.diff(fine)
            zz = z[1:]
            summary.append({"case": case, "description": CASES[case], "n": n,
                            "S_obs0": trajmc.solve(model, times=[0.0]).thermo()["S_obs"].iloc[0],
                            "min_Sigma": fine.min(), "min_increment": inc.min(), "Sigma_end": fine[-1],
                            "mc_Sigma_end": mc[-1], "mc_Sigma_end_se": se[-1],
                            "mc_max_abs_z": np.nanmax(np.abs(zz)), "mc_cover95": np.mean(np.abs(zz) < C.Z95)})
    df = pd.DataFrame(rows)
    sm = pd.DataFrame(summary)
    df.to_csv(out / "claim1_sigma.csv", index=False)
    sm.to_csv(out / "claim1_summary.csv", index=False)

    # ---------------------------------------------------------------- figure
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(13, 6.2), sharex=True)
    for j, case in enumerate(CASES):
        ax, axr = axes[0, j], axes[1, j]
        for k, n in enumerate(SIZES):
            fine, mc, se = curves[case, n]
            col = C.COLORS[k]
            ax.plot(T_FINE, fine, color=col, label=f"n = {n}")
            C.mc_errorbar(ax, T_MC, mc, se, col)
            rate = np.gradient(fine, T_FINE)
            axr.semilogy(T_FINE[1:], rate[1:], color=col, label=f"n = {n}")
        ax.axhline(0.0, color="k", lw=0.7)
        ax.set_title(f"{case}: " + re.sub(r"beta ([0-9.]+)", r"$\\beta = \1$", CASES[case]), fontsize=8.5)
        ax.set_ylabel(r"$\Sigma(t) = \Delta S_{\rm obs}(t)$ " + C.S_UNIT)
        axr.set_ylabel(r"$d\Sigma/dt$ [$k_B\,\gamma$] (exact, finite diff.)")
        axr.set_xlabel(C.T_LABEL)
        leg = ax.legend(loc="center right", title="oscillators", title_fontsize=7.5)
        ax.add_artist(leg)
        C.exact_mc_legend_note(ax, loc="lower right")
    fig.suptitle(r"Claim 1: $\Sigma(t) = S_{\rm obs}(t) - S_{\rm obs}(0) \geq 0$ and non-decreasing "
                 r"(3-level system 0,1,3 + n oscillators, sqrt kernel, flat $J$)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "claim1_sigma.png")
    plt.close(fig)

    # ---------------------------------------------------------------- verdict
    print("Claim 1: Delta S_obs = Sigma(t) >= 0, non-decreasing (exact solver on 601 times in [0, 3])")
    with pd.option_context("display.width", 160, "display.float_format", "{:.3g}".format):
        print(sm.drop(columns=["description", "S_obs0"]).to_string(index=False))
    n_z = sum(len(z) for z, _ in zt.values())
    zstar = C.z_threshold(n_z)
    v = C.Verdict("claim 1")
    for r in sm.itertuples():
        case = f"{r.case} n={r.n}"
        v.check(case, "exact min_t Sigma", float(r.min_Sigma), r.min_Sigma >= -C.EXACT_TOL, f">= -{C.EXACT_TOL:g}")
        v.check(case, "exact min increment", float(r.min_increment), r.min_increment >= -C.EXACT_TOL,
                f">= -{C.EXACT_TOL:g}")
        z, out_ = zt[r.case, r.n]
        v.check(case, f"MC max|z| Sigma ({len(z)} times{f', {out_} second order' if out_ else ''})",
                C.max_abs(z), C.max_abs(z) < zstar,
                f"< {zstar:.2f} (alpha {C.ALPHA_MC:g} over {n_z} z-tests)")
    cover = np.mean(np.abs(df.loc[df.t > 0, "z"]) < C.Z95)
    print(f"  Monte Carlo ({TRAJ} trajectories each): {cover:.1%} of the {int((df.t > 0).sum())} Sigma estimates "
          "cover the exact value at 95% (not a criterion: the times of one run are correlated)")
    code = v.report(f"  (runtime {timer():.1f} s)")
    print(f"outputs: {out}")
    return code

if __name__ == "__main__":
    sys.exit(main())
