"""Figures (matplotlib, Agg).  Only the command line imports this module; nothing below it does."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import io
from pathlib import Path

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .rundir import atomic_write


def _text(s) -> str:
    """Text from the model (names) for matplotlib: ``$`` would start mathtext, so escape it."""
    return str(s).replace("$", r"\$")


def _save(fig, path):
    """Render to memory, then write atomically: a figure on disk is never half written."""


    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))
    return path


def _mc_vs_exact(ax, t, curves, xlabel="t", ylabel="", title=""):
    """Monte Carlo points with 1.96 SE bars, each over its exact line (black) when one is given.

    ``curves``: iterable of (label, estimate, standard error, exact or None).
    """
    for label, est, se, exact in curves:
        if np.all(np.isnan(est)):
            continue
        ax.errorbar(t, est, yerr=1.96 * np.asarray(se), fmt="o", ms=3, label=f"{label} (MC)")
        if exact is not None:
            ax.plot(t, exact, "k-", lw=1)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)


def summary_figure(ens, path, exact=None):
    """p_s(t) and the entropy productions of a Monte Carlo run (error bars: 1.96 SE); exact curves if given."""
    ps, pse = ens.p_system(), ens.p_system_se()
    th = ens.thermo()
    pex = exact.p_system() if exact is not None else None
    ex = exact.thermo() if exact is not None else None
    fig, ax = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    _mc_vs_exact(ax[0], ens.times, [(f"s={s}", ps[:, s], pse[:, s], None if pex is None else pex[:, s])
                                    for s in range(ps.shape[1])],
                 ylabel="p_s(t)", title=f"{_text(ens.model.name)}: system populations")
    _mc_vs_exact(ax[1], ens.times, [(c, th[c], th[f"{c}_se"], None if ex is None else ex[c])
                                    for c in ("Sigma", "Sigma_tilde", "Sigma_upper") if c in th],
                 ylabel="entropy production", title=f"{ens.trajectories} trajectories")
    return _save(fig, path)


def validation_figures(ens, sol, outdir):
    """Monte Carlo (1.96 SE bars) over the exact solution: p_s(t), S_obs(t), Sigma vs Sigma_tilde, mean heat."""

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    t = ens.times
    th = ens.thermo()
    ex = sol.thermo() if sol is not None else None
    ps, pse = ens.p_system(), ens.p_system_se()
    pex = sol.p_system() if sol is not None else None

    def x(c):
        return None if ex is None or c not in ex else ex[c]

    fig, ax = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    _mc_vs_exact(ax[0, 0], t, [(f"s={s}", ps[:, s], pse[:, s], None if pex is None else pex[:, s])
                               for s in range(ps.shape[1])], ylabel="p_s(t)", title="system populations (lines: exact)")
    sc = "S_obs" if th.attrs.get("joint") else "S_obs_upper"
    _mc_vs_exact(ax[0, 1], t, [(sc, th[sc], th[f"{sc}_se"], x("S_obs"))],
                 ylabel="S_obs", title="observational entropy (line: exact)")
    _mc_vs_exact(ax[1, 0], t, [(c, th[c], th[f"{c}_se"], x(c)) for c in ("Sigma", "Sigma_tilde", "Sigma_upper")
                               if c in th], ylabel="entropy production", title="Sigma vs Sigma_tilde (lines: exact)")
    _mc_vs_exact(ax[1, 1], t, [(f"Q_{b}", th[f"Q_{b}"], th[f"Q_{b}_se"], x(f"Q_{b}")) for b in ens.model.bath_names],
                 ylabel="heat into the system", title="mean heat per bath (lines: exact)")
    fig.suptitle(f"{_text(ens.model.name)}: {ens.trajectories} trajectories vs exact solver")
    path = outdir / "validation.png"
    return _save(fig, path)


def _slope_one(x, y, se, label, xlabel, ylabel, line_label, title, path):
    """A fluctuation-theorem figure: log ratios with 1.96 SE bars against the predicted line y = x."""
    fig, ax = plt.subplots(figsize=(5.5, 4), constrained_layout=True)
    ax.errorbar(x, y, yerr=1.96 * np.asarray(se), fmt="o", ms=4, label=label)
    s = np.linspace(min(0.0, float(np.min(x))), float(np.max(x)), 2)
    ax.plot(s, s, "k-", lw=1, label=line_label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def analysis_figures(ens, res, outdir):
    """Heat distributions, trajectory entropy production and IFT, exchange FT, activity."""

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    hd = res["heat_distribution"]
    baths = list(dict.fromkeys(hd["bath"]))
    if not baths:  # sampled at t = 0 only: no heat yet
        baths = list(ens.model.bath_names)
    fig, axes = plt.subplots(1, len(baths), figsize=(5.5 * len(baths), 4), constrained_layout=True, squeeze=False)
    for ax, b in zip(axes[0], baths, strict=True):
        for t, g in hd[hd["bath"] == b].groupby("t"):
            ok = g["P_mc"] > 0
            lo = np.minimum(1.96 * g["P_mc_se"][ok], 0.95 * g["P_mc"][ok])  # keep bars on the log axis
            line = ax.errorbar(g["Q"][ok], g["P_mc"][ok], yerr=[lo, 1.96 * g["P_mc_se"][ok]], fmt="o", ms=3,
                               label=f"t={t:g}")
            if "P_exact" in g:
                ax.plot(g["Q"], g["P_exact"], "-", color=line[0].get_color(), lw=1)
        ax.set_yscale("log")
        ax.set(xlabel=f"heat Q from bath {_text(b)}", ylabel="P(Q)",
               title=f"heat distribution, bath {_text(b)} (lines: exact)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    paths.append(outdir / "heat_distribution.png")
    _save(fig, paths[-1])
    if "entropy_production" in res:
        ep = res["entropy_production"]
        fig, ax = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
        h = res["delta_s_histogram"]
        ax[0].stairs(h["density"], np.append(h["ds_lo"].to_numpy(), h["ds_hi"].iloc[-1]), fill=True, color="C0",
                     alpha=0.7)
        ax[0].axvline(ep["Sigma_exact"].iloc[-1], color="k", lw=1, label="exact Delta S_obs")
        ax[0].axvline(ep["mean_ds"].iloc[-1], color="C1", ls="--", label="MC mean")
        ax[0].set(xlabel="Delta s_obs", ylabel="density",
                  title=f"trajectory entropy production, t={ep['t'].iloc[-1]:g}")
        ax[0].legend(fontsize=8)
        _mc_vs_exact(ax[1], ep["t"], [("<exp(-Delta s_obs)>", ep["ift_mc"], ep["ift_se"], ep["ift_exact"])],
                     ylabel="<exp(-Delta s_obs)>", title="integral fluctuation theorem (line: exact)")
        paths.append(outdir / "entropy_production.png")
        _save(fig, paths[-1])
    if "exchange_ft" in res and len(res["exchange_ft"]):
        ft = res["exchange_ft"]
        paths.append(_slope_one(ft["sigma"], ft["log_ratio"], ft["log_ratio_se"], "MC", "sigma",
                                "ln P(sigma)/P(-sigma)", "theorem: slope 1",
                                f"exchange FT: slope {res['ft_slope']:.3f} ± {res['ft_slope_se']:.3f}",
                                outdir / "exchange_ft.png"))
    if "work_distribution" in res:
        wd = res["work_distribution"]
        fig, ax = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
        if "P_exact" in wd:  # (absent without an exact solution)
            ax[0].bar(wd["W"], wd["P_exact"], width=0.8, color="0.8", label="exact")
        ax[0].errorbar(wd["W"], wd["P_mc"], yerr=1.96 * wd["P_mc_se"], fmt="o", ms=4, label="MC")
        ax[0].set(xlabel="work W", ylabel="P(W)", title=f"work distribution, t={ens.times[-1]:g}")
        ax[0].legend(fontsize=8)
        if "jarzynski" in res:
            j = res["jarzynski"]
            if res.get("gibbs_start") and "Z_ratio" in j:
                ax[1].axhline(j["Z_ratio"].iloc[0], color="C3", ls="--", lw=1, label="Z_final / Z_0")
            _mc_vs_exact(ax[1], j["t"], [("<exp(-beta W)>", j["exp_mbW_mc"], j["exp_mbW_se"], j.get("exp_mbW_exact"))],
                         ylabel="<exp(-beta W)>", title="Jarzynski equality (line: exact)")
        paths.append(outdir / "work.png")
        _save(fig, paths[-1])
    if "crooks" in res and len(res["crooks"]):
        c = res["crooks"]
        paths.append(_slope_one(c["beta_W_minus_dF"], c["log_ratio_mc"], c["log_ratio_se"],
                                "forward MC / exact reversed", "beta (W - Delta F)", "ln P_F(W) / P_R(-W)",
                                "Crooks: slope 1", "Crooks relation", outdir / "crooks.png"))
    act = res["activity"]
    fig, ax = plt.subplots(figsize=(5.5, 4), constrained_layout=True)
    _mc_vs_exact(ax, act["t"], [("mean jumps", act["mean_mc"], act["mean_se"], act.get("mean_exact"))],
                 ylabel="number of jumps", title="activity (line: exact)")
    paths.append(outdir / "activity.png")
    _save(fig, paths[-1])
    return paths
