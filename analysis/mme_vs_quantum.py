"""The MME against the exact quantum dynamics of the Hamiltonian it is derived from (issue 11 item 4).

A qubit ``H_S = diag(0, 1)`` (delta = 1, so the levels sit on the grid exactly) coupled through
``lambda sigma_x (x) B`` to a random-matrix bath (``trajmc.microscopic.random_matrix_bath``): 2,976 levels in
8 windows of width delta with counts growing geometrically, ``round(150 * 1.25^k)`` (a bath at the
microcanonical inverse temperature ln 1.25 = 0.223 per delta), evenly placed inside each window, banded GOE
coupling of width 2.5.  Hilbert-space dimension 5,952: one dense ``eigh`` per coupling.

Two product starts, both uniform inside the bath windows (so the seed's Sec. II applies, Delta S_obs >= 0):
  * microcanonical: system excited, bath in window E0 = 3 (reference beta for Sigma_tilde: the bath's own
    ln(V_4 / V_3), i.e. the temperature of the shell);
  * canonical: system excited, bath canonical over windows at beta = 0.2.
Four couplings with the relaxation rate Gamma halving each time.  Gamma is the MME's rate of the
microcanonical shell {(1, 3), (0, 4)}, ``Gamma = k_down + k_up`` with the bath's own f (it is proportional
to lambda^2); sample times 0 .. 5 / Gamma.

The MME is solved with three kernels, all with gamma = 2 pi lambda^2 / delta:
  (a) ``table``: the bath's own f(E, E') = tr{Pi_E B Pi_E' B} (Microscopic.mme's default);
  (b) ``golden`` with a gaussian J of the bath's width 2.5 and E_ref = the middle window: the NEAREST
      closed form.  The bath is drawn with E|B_ij|^2 = J(e_i - e_j) / V_mid, independent of the energy,
      so its ensemble-mean f is V_E V_E' J(omega) / V_mid (up to averaging J over the window pair) --
      exactly the golden form with V_ref = V_mid.  Nothing is fitted: every parameter is one of the bath's.
      What separates (b) from (a) is this realisation's fluctuation of f around its mean and the
      window-pair average of J.
  (c) ``sqrt``, same J and gamma (its f agrees with the bath's on the middle window's diagonal): a closed
      form whose energy dependence, f ∝ sqrt(V_E V_E'), does not describe this bath; for contrast.  (``eth``
      is the same kernel here: the qubit only makes |omega| = 1 jumps, for which the eth midpoint ln V is
      interpolated linearly between E and E' themselves, so V_E V_E' / V_mid = sqrt(V_E V_E') exactly.)
Reported: the largest |p_s^MME - p_s^exact| and |p_E^MME - p_E^exact| over the sample times, per
coupling, start and kernel; power-law exponents of those errors against Gamma; Sigma(t) from both sides;
the Sec. II check min_t Delta S_obs(t) of the exact dynamics; energy conservation and norm of the exact
dynamics.

Run:  python analysis/mme_vs_quantum.py            (several minutes: four dense eigh of D = 5952)
      python analysis/mme_vs_quantum.py --quick    (a bath of a fifth the size: checks the script only)
Out:  runs/analysis/mme_vs_quantum/mme_vs_quantum.png, mme_vs_quantum_errors.csv,
      mme_vs_quantum_exponents.csv, mme_vs_quantum_curves.csv, mme_vs_quantum_sec2.csv
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

import trajmc  # noqa: E402
from trajmc import microscopic as mic  # noqa: E402

COUNTS = [int(round(150 * 1.25**k)) for k in range(8)]
DELTA = 1.0
WIDTH = 2.5
SEED = 7
PLACEMENT = "even"
E0 = 3
BETA_CANONICAL = 0.2
GAMMAS = [0.4, 0.2, 0.1, 0.05]
N_TIMES = 51
T_STOP = 5.0  # in units of 1 / Gamma
KERNELS = ["table", "golden", "sqrt"]
SEC2_TOL = 1e-12


def kernel_dict(name):
    if name == "table":
        return None  # the bath's own f
    spec = {"shape": "gaussian", "width": WIDTH / DELTA}
    if name == "golden":
        return {"model": "golden", "E_ref": len(COUNTS) // 2, "spectral": spec}
    return {"model": name, "spectral": spec}


def starts(micro):
    beta_shell = float(micro.lnV[E0 + 1] - micro.lnV[E0]) / DELTA
    return {"microcanonical": {"system": [0.0, 1.0],
                               "bath": {"state": "microcanonical", "energy": E0, "beta": beta_shell}},
            "canonical": {"system": [0.0, 1.0], "bath": {"state": "canonical", "beta": BETA_CANONICAL}}}


def gamma_per_lambda2(micro):
    """The shell's relaxation rate Gamma = k_down + k_up divided by lambda^2 (exact: rates ∝ lambda^2)."""
    r = micro.rates(1.0)
    return r[(1, E0, 0, E0 + 1)] + r[(0, E0 + 1, 1, E0)]


def exact_dynamics(micro, lambdas, inis):
    """Exact dynamics for every coupling and start: {(coupling index, start): QuantumSolution}."""
    res = {}
    for i, (lam, G) in enumerate(zip(lambdas, GAMMAS, strict=True)):
        t = np.linspace(0.0, T_STOP / G, N_TIMES)
        qs = micro.evolve(lam, list(inis.values()), t)  # one diagonalisation for both starts
        for name, q in zip(inis, qs, strict=True):
            res[(i, name)] = q
        print(f"  exact dynamics Gamma = {G:g} (lambda = {lam:.4f}): eigh {qs[0].info['seconds_eigh']:.0f} s, "
              f"propagation {sum(q.info['seconds'] for q in qs):.0f} s", flush=True)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="a bath of one fifth the size (D ~ 1200, seconds): checks the script, not the physics")
    args = ap.parse_args(argv)
    global COUNTS
    if args.quick:
        COUNTS = [max(1, c // 5) for c in COUNTS]
    timer = C.Timer()
    C.style()
    out = C.out_dir("mme_vs_quantum")
    E_b, B = mic.random_matrix_bath(COUNTS, DELTA, WIDTH, SEED, placement=PLACEMENT)
    micro = mic.Microscopic(np.diag([0.0, 1.0]), [[0.0, 1.0], [1.0, 0.0]], E_b, B, DELTA)
    inis = starts(micro)
    g2 = gamma_per_lambda2(micro)
    lambdas = [math.sqrt(G / g2) for G in GAMMAS]
    print(f"MME vs exact quantum dynamics: qubit + random-matrix bath of {micro.n_bath} levels in "
          f"{len(COUNTS)} windows {COUNTS}, D = {micro.dimension}")
    exact = exact_dynamics(micro, lambdas, inis)

    rows, curves, sec2, diag = [], [], [], []
    ps_curves, sig_curves = {}, {}
    for i, (lam, G) in enumerate(zip(lambdas, GAMMAS, strict=True)):
        for name, ini in inis.items():
            q = exact[(i, name)]
            t = q.times
            thq = q.thermo()
            dS = thq["Sigma"].to_numpy()
            low = float(dS[1:].min())  # t > 0 (Delta S_obs(0) = 0 by definition)
            sec2.append({"Gamma": G, "start": name, "min_Delta_S_obs_t_gt_0": low, "holds": bool(low >= -SEC2_TOL),
                         "max_Sigma_exact": float(dS.max())})
            diag.append({"Gamma": G, "start": name, **{k: q.info[k] for k in (
                "energy_drift", "norm_error", "eigh_residual", "p_min", "route", "seconds_eigh", "seconds")}})
            ps_curves[(i, name, "exact")] = q.p_system()[:, 1]
            sig_curves[(i, name, "exact")] = dS
            for kern in KERNELS:
                sol = trajmc.solve(micro.mme(lam, ini, t, kernel=kernel_dict(kern)))
                d = mic.deviation(q, sol)
                ths = sol.thermo()
                sig = ths["Sigma"].to_numpy()
                rows.append({"Gamma": G, "lambda": lam, "gamma": micro.gamma(lam), "start": name, "kernel": kern,
                             "max_dp_s": d["p_s"], "t_max_dp_s": t[int(np.argmax(d["p_s_t"]))],
                             "max_dp_E": d["p_E"], "t_max_dp_E": t[int(np.argmax(d["p_E_t"]))],
                             "max_dSigma": float(np.abs(sig - dS).max()),
                             "Sigma_end_exact": dS[-1], "Sigma_end_mme": sig[-1]})
                ps_curves[(i, name, kern)] = sol.p_system()[:, 1]
                sig_curves[(i, name, kern)] = sig
                for k in range(len(t)):
                    curves.append({"Gamma": G, "start": name, "kernel": kern, "t": t[k], "Gamma_t": G * t[k],
                                   "p1_exact": ps_curves[(i, name, "exact")][k],
                                   "p1_mme": ps_curves[(i, name, kern)][k],
                                   "Sigma_exact": dS[k], "Sigma_mme": sig[k],
                                   "Sigma_tilde_exact": thq["Sigma_tilde"].iloc[k],
                                   "Sigma_tilde_mme": ths["Sigma_tilde"].iloc[k]})
    err = pd.DataFrame(rows)
    sec2 = pd.DataFrame(sec2)
    diag = pd.DataFrame(diag)
    fits = []
    for (name, kern), g in err.groupby(["start", "kernel"], sort=False):
        for col in ("max_dp_s", "max_dp_E"):
            a, b, se = C.power_law_fit(g.Gamma, g[col])
            last = g.sort_values("Gamma")[col].to_numpy()
            fits.append({"start": name, "kernel": kern, "error": col, "exponent": b, "exponent_se": se,
                         "prefactor": a, "last_halving_ratio": last[1] / last[0],
                         "last_halving_exponent": math.log2(last[1] / last[0])})
    fits = pd.DataFrame(fits)
    err.to_csv(out / "mme_vs_quantum_errors.csv", index=False)
    fits.to_csv(out / "mme_vs_quantum_exponents.csv", index=False)
    pd.DataFrame(curves).to_csv(out / "mme_vs_quantum_curves.csv", index=False)
    sec2.to_csv(out / "mme_vs_quantum_sec2.csv", index=False)

    figure(err, fits, ps_curves, sig_curves, exact, out)

    # ---------------------------------------------------------------- tables
    wide = err.pivot_table(index=["start", "Gamma"], columns="kernel", values=["max_dp_s", "max_dp_E"])
    wide = wide.reindex(columns=pd.MultiIndex.from_product([["max_dp_s", "max_dp_E"], KERNELS]))
    wide.columns = [f"{'p_s' if a == 'max_dp_s' else 'p_E'}:{k}" for a, k in wide.columns]
    wide = wide.sort_index(level=["start", "Gamma"], ascending=[False, False])
    lam_of = dict(zip(GAMMAS, lambdas, strict=True))
    wide.insert(0, "lambda", [lam_of[G] for _, G in wide.index])
    with pd.option_context("display.width", 200, "display.float_format", "{:.4g}".format):
        print("max over t of |MME - exact| (p_s: system populations, p_E: bath window distribution)")
        print(wide.to_string())
        print("power law max|dp| ~ a Gamma^b fitted over the four couplings (exponent); the local exponent of "
              "the last halving, log2(error(2 Gamma_min) / error(Gamma_min)) (last_halving_exponent)")
        print(fits.pivot_table(index=["start", "kernel"], columns="error",
                               values=["exponent", "last_halving_exponent"]).reindex(
            [(s, k) for s in inis for k in KERNELS]).to_string())
        print("Sigma(t): max |Sigma^MME - Sigma^exact| (table kernel):",
              ", ".join(f"{r.start} Gamma={r.Gamma:g}: {r.max_dSigma:.3g}"
                        for r in err[err.kernel == "table"].itertuples()))
    ok2 = bool(sec2.holds.all())
    print(f"Sec. II check (exact dynamics, product starts uniform in windows): Delta S_obs(t) >= -{SEC2_TOL:g} at "
          f"every sampled time for every coupling and start: {ok2} (lowest value at t > 0: "
          f"{sec2.min_Delta_S_obs_t_gt_0.min():.3g})")
    print(f"exact dynamics: |<H>(t) - <H>(0)| <= {diag.energy_drift.max():.2e}, |sum p - 1| <= "
          f"{diag.norm_error.max():.2e}, eigh residual <= {diag.eigh_residual.max():.2e}, "
          f"most negative p (rounding) {diag.p_min.min():.1e}")
    print("not criteria (findings): the golden kernel's errors and exponents above; sqrt's p_s error levels off")

    v = C.Verdict("mme_vs_quantum")
    for name in inis:
        g = err[(err.kernel == "table") & (err.start == name)].sort_values("Gamma", ascending=False)
        for col, label in (("max_dp_s", "max |p_s^MME - p_s^exact|"), ("max_dp_E", "max |p_E^MME - p_E^exact|")):
            for prev, r in zip(g.iloc[:-1].itertuples(), g.iloc[1:].itertuples(), strict=True):
                v.check(f"{name} table Gamma={r.Gamma:g}", label, float(getattr(r, col)),
                        getattr(r, col) < getattr(prev, col), f"< {getattr(prev, col):.4g} (Gamma={prev.Gamma:g})")
        f = fits[(fits.kernel == "table") & (fits.start == name) & (fits.error == "max_dp_s")].iloc[0]
        # first-order corrections give an exponent of 1; 2/3 is the threshold of the slow test (a 2.5x smaller
        # error for a coupling half as strong, Gamma / 4): tests/test_microscopic.py
        v.check(f"{name} table fit", f"exponent b of the p_s error (± {f.exponent_se:.3f})", float(f.exponent),
                f.exponent > 2 / 3, "> 2/3")
    for r in sec2.itertuples():
        v.check(f"{r.start} Gamma={r.Gamma:g}", "min_{t>0} Delta S_obs (exact, Sec. II)",
                float(r.min_Delta_S_obs_t_gt_0), r.holds, f">= -{SEC2_TOL:g}")
    v.check("exact dynamics", "max |<H>(t) - tr{H rho(0)}|", float(diag.energy_drift.max()),
            diag.energy_drift.max() <= 1e-10, "<= 1e-10")
    v.check("exact dynamics", "max |sum p - 1|", float(diag.norm_error.max()), diag.norm_error.max() <= 1e-10,
            "<= 1e-10")
    code = v.report(f"  (runtime {timer():.0f} s)")
    print(f"outputs: {out}")
    return code


def figure(err, fits, ps_curves, sig_curves, exact, out):
    import matplotlib.pyplot as plt
    from matplotlib import cm

    fig, axes = plt.subplots(2, 3, figsize=(15.5, 8.8))
    colors = cm.viridis(np.linspace(0.0, 0.85, len(GAMMAS)))
    names = ["microcanonical", "canonical"]
    for col, name in enumerate(names):
        # in units of Gamma t the MME is one curve per kernel: all its rates are proportional to lambda^2
        ax = axes[0, col]
        for i, G in enumerate(GAMMAS):
            t = exact[(i, name)].times
            ax.plot(G * t, ps_curves[(i, name, "exact")], color=colors[i], lw=1.6, label=rf"exact, $\Gamma$ = {G:g}")
        t = exact[(0, name)].times
        ax.plot(GAMMAS[0] * t, ps_curves[(0, name, "table")], color="k", ls="--", lw=1.2, label="MME, table kernel")
        ax.plot(GAMMAS[0] * t, ps_curves[(0, name, "golden")], color="0.45", ls="-.", lw=1.0,
                label="MME, golden (nearest)")
        ax.plot(GAMMAS[0] * t, ps_curves[(0, name, "sqrt")], color="k", ls=":", lw=1.2, label="MME, sqrt")
        ax.set_xlabel(r"$\Gamma t$")
        ax.set_ylabel(r"$p_1(t)$ (excited level)")
        ax.set_title(f"({'ab'[col]}) {name} start: system population")
        ax.legend(loc="upper right")
        ax = axes[1, col]
        for i, G in enumerate(GAMMAS):
            t = exact[(i, name)].times
            ax.plot(G * t, sig_curves[(i, name, "exact")], color=colors[i], lw=1.6, label=rf"exact, $\Gamma$ = {G:g}")
        t = exact[(0, name)].times
        ax.plot(GAMMAS[0] * t, sig_curves[(0, name, "table")], color="k", ls="--", lw=1.2, label="MME, table kernel")
        ax.plot(GAMMAS[0] * t, sig_curves[(0, name, "golden")], color="0.45", ls="-.", lw=1.0,
                label="MME, golden (nearest)")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel(r"$\Gamma t$")
        ax.set_ylabel(r"$\Sigma(t) = \Delta S_{\rm obs}$ [$k_B$]")
        ax.set_title(f"({'de'[col]}) {name} start: entropy production (exact: " + r"$\Delta S_{\rm obs} \geq 0$)")
        ax.legend(loc="lower right")
    ax = axes[0, 2]
    mk = {"table": "o", "golden": "s", "sqrt": "v"}
    for k, kern in enumerate(KERNELS):
        for name, fill in (("microcanonical", True), ("canonical", False)):
            g = err[(err.kernel == kern) & (err.start == name)].sort_values("Gamma")
            f = fits[(fits.kernel == kern) & (fits.start == name) & (fits.error == "max_dp_s")].iloc[0]
            ax.loglog(g.Gamma, g.max_dp_s, marker=mk[kern], color=C.COLORS[k], mfc=C.COLORS[k] if fill else "white",
                      ls="-" if fill else "--", lw=0.9, label=f"{kern}, {name[:5]}.: $\\Gamma^{{{f.exponent:.2f}}}$")
    ax.set_xlabel(r"relaxation rate $\Gamma$")
    ax.set_ylabel(r"$\max_{t,s} |p_s^{\rm MME} - p_s^{\rm exact}|$")
    ax.set_title(r"(c) system populations: error vs $\Gamma$")
    ax.legend(loc="lower right", ncol=2, fontsize=6.5)
    ax = axes[1, 2]
    for k, kern in enumerate(["table", "golden"]):
        for name, fill in (("microcanonical", True), ("canonical", False)):
            g = err[(err.kernel == kern) & (err.start == name)].sort_values("Gamma")
            f = fits[(fits.kernel == kern) & (fits.start == name) & (fits.error == "max_dp_E")].iloc[0]
            ax.loglog(g.Gamma, g.max_dp_E, marker=mk[kern], color=C.COLORS[k], mfc=C.COLORS[k] if fill else "white",
                      ls="-" if fill else "--", lw=0.9, label=f"{kern}, {name[:5]}.: $\\Gamma^{{{f.exponent:.2f}}}$")
    ax.set_xlabel(r"relaxation rate $\Gamma$")
    ax.set_ylabel(r"$\max_{t,E} |p_E^{\rm MME} - p_E^{\rm exact}|$")
    ax.set_title(r"(f) bath window distribution: error vs $\Gamma$")
    ax.legend(loc="lower right", fontsize=7)
    fig.suptitle(f"MME vs exact dynamics: qubit + random-matrix bath ({sum(COUNTS)} levels, {len(COUNTS)} windows, "
                 f"band width {WIDTH}), $H = H_S + H_B + \\lambda\\,\\sigma_x \\otimes B$", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "mme_vs_quantum.png")
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
