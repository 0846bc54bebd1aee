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
