"""Figures (matplotlib, Agg).  Nothing in trajmc imports this module except the CLI and run writer."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def summary_figure(ens, path, exact=None):
    """p_s(t) and the entropies of a Monte Carlo run (error bars: 1.96 SE); exact curves if given."""
    ps, pse = ens.p_system()
    th = ens.thermo()
    t = ens.times
    fig, ax = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for s in range(ps.shape[1]):
        ax[0].errorbar(t, ps[:, s], yerr=1.96 * pse[:, s], fmt="o", ms=3, label=f"s={s} (MC)")
        if exact is not None:
            ax[0].plot(t, exact.p_system()[:, s], "k-", lw=1)
    ax[0].set(xlabel="t", ylabel="p_s(t)", title=f"{ens.model.name}: system populations")
    ax[0].legend(fontsize=8)
    for col in ("Sigma", "Sigma_tilde"):
        if np.all(np.isnan(th[col])):
            continue
        ax[1].errorbar(t, th[col], yerr=1.96 * th[f"{col}_se"], fmt="o", ms=3, label=f"{col} (MC)")
        if exact is not None:
            ax[1].plot(t, exact.thermo()[col], "k-", lw=1)
    ax[1].set(xlabel="t", ylabel="entropy production", title=f"{ens.trajectories} trajectories")
    ax[1].legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def validation_figures(ens, sol, outdir):
    """Monte Carlo (1.96 SE bars) over the exact solution: p_s(t), S_obs(t), Sigma vs Sigma_tilde, mean heat."""
    from pathlib import Path

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    t = ens.times
    th, ex = ens.thermo(), sol.thermo()
    ps, pse = ens.p_system()
    pex = sol.p_system()
    fig, ax = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    for s in range(ps.shape[1]):
        ax[0, 0].errorbar(t, ps[:, s], yerr=1.96 * pse[:, s], fmt="o", ms=3, label=f"s={s}")
        ax[0, 0].plot(t, pex[:, s], "k-", lw=1)
    ax[0, 0].set(xlabel="t", ylabel="p_s(t)", title="system populations (lines: exact)")
    ax[0, 0].legend(fontsize=8)
    ax[0, 1].errorbar(t, th["S_obs"], yerr=1.96 * th["S_obs_se"], fmt="o", ms=3, label="S_obs (MC)")
    ax[0, 1].plot(t, ex["S_obs"], "k-", lw=1, label="exact")
    ax[0, 1].set(xlabel="t", ylabel="S_obs", title="observational entropy")
    ax[0, 1].legend(fontsize=8)
    for col in ("Sigma", "Sigma_tilde"):
        if np.all(np.isnan(ex[col])):
            continue
        ax[1, 0].errorbar(t, th[col], yerr=1.96 * th[f"{col}_se"], fmt="o", ms=3, label=f"{col} (MC)")
        ax[1, 0].plot(t, ex[col], "k-", lw=1)
    ax[1, 0].set(xlabel="t", ylabel="entropy production", title="Sigma vs Sigma_tilde (lines: exact)")
    ax[1, 0].legend(fontsize=8)
    for b in ens.model.bath_names:
        ax[1, 1].errorbar(t, th[f"Q_{b}"], yerr=1.96 * th[f"Q_{b}_se"], fmt="o", ms=3, label=f"Q_{b} (MC)")
        ax[1, 1].plot(t, ex[f"Q_{b}"], "k-", lw=1)
    ax[1, 1].set(xlabel="t", ylabel="heat into the system", title="mean heat per bath (lines: exact)")
    ax[1, 1].legend(fontsize=8)
    fig.suptitle(f"{ens.model.name}: {ens.trajectories} trajectories vs exact solver")
    path = outdir / "validation.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
