"""Figures: plotting helpers for notebooks and the figures the command line writes.

Two layers:

* :func:`plot` (and ``Ensemble.plot`` / ``Solution.plot``, which delegate to it) draws one quantity of a
  result into a matplotlib ``Axes`` and returns it, in the style of QuTiP and ArviZ: pass ``ax`` to draw
  into your own figure, or leave it out for a new one.  A Monte Carlo :class:`~trajmc.Ensemble` is drawn
  as open markers with 95% error bars (1.96 standard errors), an exact :class:`~trajmc.Solution` as lines;
  ``ens.plot(..., exact=sol)`` draws both on one axes.
* :func:`summary_figure`, :func:`validation_figures` and :func:`analysis_figures` write the PNG files of
  ``simulate``, ``validate`` and ``analyze``.  They draw on a :class:`matplotlib.figure.Figure` with the
  Agg canvas and never touch pyplot's state, so they work without a display and do not change the backend
  of a notebook.

Conventions of every figure (docs/physics.md, "Conventions"): energies (heat, work, bath energies) in grid
steps :math:`\\delta`, time in units of :math:`1/\\gamma`, entropies in units of :math:`k_B` (nats); heat
is the heat *into* the system.  Labels are mathtext.  Each exact quantity is drawn once: where two exact
curves coincide (e.g. :math:`\\Sigma = \\tilde\\Sigma` in the example ``three-level-ideal``) one line is
drawn and the legend names both.  Discrete distributions (heat, work, bath energy) are drawn as stems
(exact; on a linear axis those below 1e-3 of the largest are left out) and markers with error bars (Monte
Carlo).  Exact lines carry the artist gid ``"exact"``.

Only the command line and the ``plot`` methods import this module (inside a function), so ``import trajmc``
does not import matplotlib.
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from . import fluctuations as fl
from .analyze import COUNTING_LIMIT
from .errors import ModelError
from .rundir import atomic_write

__all__ = ["PLOTS", "analysis_figures", "plot", "plot_activity", "plot_bath", "plot_energy", "plot_heat",
           "plot_p_system", "plot_s_obs", "plot_thermo", "plot_work", "summary_figure", "validation_figures"]

#: half-width of the Monte Carlo error bars, in standard errors (95%)
Z95 = 1.96
#: two exact curves closer than this (relative to their size) are one curve
SAME_TOL = 1e-9
#: exact probabilities below this are not drawn (they would be invisible stems)
P_MIN = 1e-12
#: on a linear axis, exact probabilities below this fraction of the largest are not drawn
VISIBLE = 1e-3
#: the quantities :func:`plot` draws
PLOTS = ("thermo", "p_system", "S_obs", "energy", "heat", "work", "bath", "activity")

TIME = r"time $t$ [$1/\gamma$]"
ENTROPY = r"entropy production [$k_B$]"
EXACT_GID = "exact"

#: Monte Carlo marker and exact line style of each quantity (distinct colour, marker and line style)
STYLE = {
    "Sigma": dict(color="C0", marker="o", ls="-", ms=3.5, label=r"$\Sigma = \Delta S_{\rm obs}$"),
    "Sigma_tilde": dict(color="C3", marker="s", ls="--", ms=6, label=r"$\tilde\Sigma$"),
    "Sigma_upper": dict(color="C2", marker="^", ls=":", label=r"$\Sigma_{\rm upper}$ (bound on $\Sigma$)"),
    "S_obs": dict(color="C0", marker="o", ls="-", label=r"$S_{\rm obs}$"),
    "S_obs_upper": dict(color="C2", marker="^", ls=":", label=r"$S_{\rm obs}^{\rm upper}$ (bound on $S_{\rm obs}$)"),
    "W": dict(color="k", marker="D", ls="-.", label=r"$\langle W\rangle$"),
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
LINES = ("-", "--", "-.", ":")


# --------------------------------------------------------------------------- text


def _text(s) -> str:
    """Text from the model (names) for matplotlib: ``$`` would start mathtext, so escape it."""
    return str(s).replace("$", r"\$")


def _sym(symbol: str, name) -> tuple[str, str]:
    """``symbol`` with a bath name as subscript: (mathtext body, plain-text suffix).

    A name that is not plain ASCII letters and digits would not survive mathtext; it gets the generic
    subscript ``b`` and the (escaped) name in plain text after the formula.
    """
    name = str(name)
    if re.fullmatch(r"[A-Za-z0-9]{1,24}", name):
        return rf"{symbol}_{{\rm {name}}}", ""
    return rf"{symbol}_b", f" (b = {_text(name)})"


def _sub(symbol: str, name) -> str:
    r"""``$Q_{\rm hot}$``: a symbol with a bath name as subscript, as a label."""
    m, suffix = _sym(symbol, name)
    return f"${m}${suffix}"


def _mean(symbol: str, name) -> str:
    r"""``$\langle Q_{\rm hot}\rangle$``: the mean of a symbol with a bath subscript, as a label."""
    m, suffix = _sym(symbol, name)
    return rf"$\langle {m}\rangle${suffix}"


def _title(result, what: str) -> str:
    return f"{_text(result.model.name)}: {what}"


# --------------------------------------------------------------------------- primitives


def _is_mc(result) -> bool:
    """An Ensemble (Monte Carlo, with standard errors) rather than an exact Solution."""
    return hasattr(result, "acc")


def _new_ax(ax, figsize=(5.5, 4.0)):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt  # only when the caller gave no axes (a notebook): pyplot's backend

    return plt.subplots(figsize=figsize, layout="constrained")[1]


def _mc(ax, x, y, se, *, color, marker, label, ms=4):
    """Monte Carlo points: open markers with 95% error bars; NaN points are left out, all-NaN draws nothing."""
    x, y, se = (np.asarray(a, dtype=float) for a in (x, y, se))
    ok = np.isfinite(y)
    if not ok.any():
        return None
    se = np.where(np.isfinite(se), se, 0.0)
    return ax.errorbar(x[ok], y[ok], yerr=Z95 * se[ok], fmt=marker, ms=ms, mfc="white", mec=color, ecolor=color,
                       elinewidth=1.0, capsize=2, ls="none", label=None if label is None else f"{label} (MC)",
                       zorder=3)


def _same(a, b) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or not np.array_equal(np.isfinite(a), np.isfinite(b)):
        return False
    f = np.isfinite(a)
    scale = 1.0 + max(float(np.max(np.abs(a[f]), initial=0.0)), float(np.max(np.abs(b[f]), initial=0.0)))
    return bool(np.all(np.abs(a[f] - b[f]) <= SAME_TOL * scale))


def _exact_lines(ax, x, curves, lw=1.3):
    """Exact curves, each distinct one once.

    ``curves``: list of (label, y, style dict with ``color`` and ``ls``).  Curves that coincide to
    :data:`SAME_TOL` are drawn as one black line whose label names all of them (``Sigma = Sigma_tilde``).
    All-NaN curves are skipped.  Returns the drawn lines (gid ``"exact"``).
    """
    groups = []
    for label, y, style in curves:
        y = np.asarray(y, dtype=float)
        if not np.isfinite(y).any():
            continue
        for g in groups:
            if _same(g[0][1], y):
                g.append((label, y, style))
                break
        else:
            groups.append([(label, y, style)])
    lines = []
    for g in groups:
        if len(g) == 1:
            label, y, style = g[0]
            color, ls = style["color"], style.get("ls", "-")
        else:
            label = " = ".join(lab for lab, _, _ in g)
            y, color, ls = g[0][1], "k", "-"
        (line,) = ax.plot(x, y, color=color, ls=ls, lw=lw, label=f"{label} (exact)", zorder=2)
        line.set_gid(EXACT_GID)
        lines.append(line)
    return lines


def _stems(ax, x, P, *, color, label, marker="o"):
    """An exact discrete distribution: thin stems from 0 with open markers (gid ``"exact"``)."""
    x, P = np.asarray(x, dtype=float), np.asarray(P, dtype=float)
    keep = P > P_MIN
    if not keep.any():
        return None
    st = ax.stem(x[keep], P[keep], linefmt="-", markerfmt=marker, basefmt=" ", label=f"{label} (exact)")
    st.markerline.set(color=color, mfc="none", ms=6 if keep.sum() <= 30 else 3, zorder=2)
    st.stemlines.set(color=color, lw=1.2, alpha=0.6)
    st.markerline.set_gid(EXACT_GID)
    st.stemlines.set_gid(EXACT_GID)
    return st


def _legend(ax, **kw):
    """A legend only when something is labelled (an empty legend is a matplotlib warning)."""
    if any(not lab.startswith("_") for lab in ax.get_legend_handles_labels()[1]):
        ax.legend(fontsize=7.5, **kw)


def _offsets(n, x):
    """Small x offsets that separate ``n`` series drawn at the same integer values."""
    x = np.unique(np.asarray(x, dtype=float))
    step = float(np.min(np.diff(x))) if len(x) > 1 else 1.0
    w = 0.5 * step / max(n, 1)
    return [(j - (n - 1) / 2) * w for j in range(n)]


def _check_exact(exact):
    if exact is not None and not hasattr(exact, "segments"):
        raise TypeError(f"exact must be a Solution (from trajmc.solve) or None, got {type(exact).__name__}")


# --------------------------------------------------------------------------- one quantity


def _p_system(result):
    p = result.p_system()
    if isinstance(p, tuple):
        p = p[0]
    return np.asarray(p, dtype=float)


def plot_p_system(result, ax=None, exact=None, levels=None, title=None):
    """System populations ``p_s(t)``.

    Parameters
    ----------
    result : Ensemble or Solution
        Monte Carlo points with 95% error bars, or exact lines.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into (default: a new figure).
    exact : Solution, optional
        Exact lines drawn under the Monte Carlo points of an Ensemble.
    levels : sequence of int, optional
        The levels to draw (default: all).
    title : str, optional
        Axes title (default: the model's name and what is shown).

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _new_ax(ax)
    t = result.times
    p = _p_system(result)
    levels = range(p.shape[1]) if levels is None else levels
    mc = _is_mc(result)
    pex = _p_system(exact) if exact is not None else (None if mc else p)
    eps = result.model.energies
    curves = []
    for k, s in enumerate(levels):
        style = dict(color=f"C{k % 10}", ls="-", marker=MARKERS[k % len(MARKERS)])
        lab = rf"$p_{{{s}}}$ ($\epsilon_{{{s}}} = {int(eps[s])}\,\delta$)"
        if mc:
            _mc(ax, t, p[:, s], result.p_system_se()[:, s], color=style["color"], marker=style["marker"], label=lab)
        if pex is not None:
            curves.append((lab, pex[:, s], style))
    _exact_lines(ax, t, curves)
    ax.set(xlabel=TIME, ylabel=r"population $p_s(t)$",
           title=_title(result, "system populations") if title is None else title)
    _legend(ax)
    return ax


def _thermo_curves(result, exact, columns, ax):
    """Monte Carlo markers of ``columns`` (from an Ensemble), then each distinct exact curve once; returns the
    exact table (or None)."""
    t = result.times
    th = result.thermo()
    mc = _is_mc(result)
    ex = exact.thermo() if exact is not None else (None if mc else th)
    for c in columns:
        if mc and c in th:
            st = STYLE.get(c, dict(color="C0", marker="o", ls="-", label=_text(c)))
            _mc(ax, t, th[c], th[f"{c}_se"], color=st["color"], marker=st["marker"], label=st["label"],
                ms=st.get("ms", 4))
    if ex is not None:
        _exact_lines(ax, t, [(STYLE[c]["label"], ex[c], STYLE[c]) for c in columns if c in ex and c in STYLE])
    return ex


def _gap_inset(ax, t, ex):
    """Where exact ``Sigma`` and ``Sigma_tilde`` differ by less than 5% of their size (one curve to the eye)
    but are not equal, an inset shows the exact gap ``Sigma_tilde - Sigma`` (= I + D - D(0), docs/physics.md §4)."""
    gap = np.asarray(ex["Sigma_tilde"], dtype=float) - np.asarray(ex["Sigma"], dtype=float)
    size = float(np.nanmax(np.abs(ex["Sigma"]), initial=0.0))
    if not np.isfinite(gap).any() or _same(ex["Sigma"], ex["Sigma_tilde"]) or np.nanmax(np.abs(gap)) > 0.05 * size:
        return None
    ins = ax.inset_axes([0.5, 0.3, 0.46, 0.3])
    (line,) = ins.plot(t, gap, color="k", lw=1.0)
    line.set_gid(EXACT_GID)
    ins.axhline(0.0, color="0.6", lw=0.6)
    ins.set_title(r"exact $\tilde\Sigma - \Sigma$ [$k_B$]", fontsize=7.5)
    ins.tick_params(labelsize=6.5)
    ins.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ins.yaxis.get_offset_text().set_fontsize(6.5)
    return ins


def plot_thermo(result, ax=None, exact=None, columns=("Sigma", "Sigma_tilde", "Sigma_upper"), title=None,
                inset=True):
    """Entropy production: the paper's ``Sigma = S_obs(t) - S_obs(0)`` against the conventional
    ``Sigma_tilde`` (and the bound ``Sigma_upper`` of a run without the joint distribution).

    Parameters
    ----------
    result : Ensemble or Solution
    ax : matplotlib.axes.Axes, optional
        Axes to draw into (default: a new figure).
    exact : Solution, optional
        Exact lines under the Monte Carlo points of an Ensemble.  Exact curves that coincide are drawn once.
    columns : sequence of str, optional
        Columns of ``thermo()`` to draw (those a result does not have are skipped).
    title : str, optional
        Axes title (default: the model's name and what is shown).
    inset : bool, optional
        Where the exact ``Sigma`` and ``Sigma_tilde`` differ, but by less than 5% (one curve to the eye), an
        inset shows the exact difference ``Sigma_tilde - Sigma`` (default True).

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _new_ax(ax)
    ex = _thermo_curves(result, exact, columns, ax)
    ins = None
    if inset and ex is not None and {"Sigma", "Sigma_tilde"} <= set(columns):
        ins = _gap_inset(ax, result.times, ex)
    ax.set(xlabel=TIME, ylabel=ENTROPY,
           title=_title(result, r"$\Sigma$ vs $\tilde\Sigma$") if title is None else title)
    _legend(ax, **({} if ins is None else {"loc": "lower right"}))
    return ax


def plot_s_obs(result, ax=None, exact=None, title=None):
    """Observational entropy ``S_obs(t)`` (or its upper bound, for a run without the joint distribution).

    Parameters
    ----------
    result : Ensemble or Solution
    ax : matplotlib.axes.Axes, optional
        Axes to draw into (default: a new figure).
    exact : Solution, optional
        The exact line under the Monte Carlo points of an Ensemble.
    title : str, optional
        Axes title (default: the model's name and what is shown).

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _new_ax(ax)
    cols = ("S_obs",)
    if _is_mc(result) and not result.joint:
        cols = ("S_obs", "S_obs_upper")
    _thermo_curves(result, exact, cols, ax)
    ax.set(xlabel=TIME, ylabel=r"observational entropy $S_{\rm obs}$ [$k_B$]",
           title=_title(result, "observational entropy") if title is None else title)
    _legend(ax)
    return ax


def plot_energy(result, ax=None, exact=None, title=None):
    """Mean heat into the system from each bath, ``<Q_b>(t)``, and the mean work ``<W>(t)`` of a driven model.

    Parameters
    ----------
    result : Ensemble or Solution
    ax : matplotlib.axes.Axes, optional
        Axes to draw into (default: a new figure).
    exact : Solution, optional
        Exact lines under the Monte Carlo points of an Ensemble.
    title : str, optional
        Axes title (default: the model's name and what is shown).

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _new_ax(ax)
    t = result.times
    th = result.thermo()
    mc = _is_mc(result)
    ex = exact.thermo() if exact is not None else (None if mc else th)
    cols = [f"Q_{b}" for b in result.model.bath_names]
    styles = {c: dict(color=f"C{k % 10}", marker=MARKERS[k % len(MARKERS)], ls=LINES[k % len(LINES)],
                      label=_mean("Q", b))
              for k, (c, b) in enumerate(zip(cols, result.model.bath_names, strict=True))}
    driven = bool(getattr(result.model, "protocol", None))
    if driven and "W" in th:
        cols.append("W")
        styles["W"] = STYLE["W"]
    for c in cols:
        if mc and c in th:
            _mc(ax, t, th[c], th[f"{c}_se"], color=styles[c]["color"], marker=styles[c]["marker"],
                label=styles[c]["label"])
    if ex is not None:
        _exact_lines(ax, t, [(styles[c]["label"], ex[c], styles[c]) for c in cols if c in ex])
    ax.axhline(0.0, color="0.6", lw=0.6, zorder=0)
    ax.set(xlabel=TIME, ylabel=r"energy into the system [$\delta$]",
           title=_title(result, "mean heat" + (" and work" if "W" in cols else "")) if title is None else title)
    _legend(ax)
    return ax


def _bath_index(model, bath) -> int:
    names = list(model.bath_names)
    if isinstance(bath, str):
        if bath not in names:
            raise ModelError("bath", f"unknown bath {bath!r} (this model's baths: {', '.join(names)})")
        return names.index(bath)
    if isinstance(bath, bool) or not isinstance(bath, (int, np.integer)) or not 0 <= bath < len(names):
        raise ModelError("bath", f"must be a bath name ({', '.join(names)}) or index 0..{len(names) - 1}, "
                                 f"got {bath!r}")
    return int(bath)


def _time_indices(times, t_index):
    n = len(times)
    idx = [t_index] if np.ndim(t_index) == 0 else list(t_index)
    out = []
    for i in idx:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not -n <= i < n:
            raise ModelError("t_index", f"must be an index into the {n} sample times (or a list of them), got {i!r}")
        out.append(int(i) % n)
    return out


def _discrete(ax, series, *, xlabel, ylabel, title, log=False):
    """Shared drawing of discrete distributions at one or more times.

    ``series``: list of (time label, MC (x, P, se) or None, exact (x, P) or None).  Exact: stems (markers
    only on a log axis), Monte Carlo: filled markers with 95% error bars; series at the same x are offset
    slightly so that none hides another.
    """
    xs = np.concatenate([np.asarray(s[k][0], dtype=float) for s in series for k in (1, 2) if s[k] is not None]
                        or [np.zeros(1)])
    offs = _offsets(len(series), xs)
    for j, (tlab, mc, ex) in enumerate(series):
        color, off = f"C{j % 10}", offs[j]
        if ex is not None:
            x, P = ex
            if log:
                keep = np.asarray(P) > P_MIN
                (line,) = ax.plot(np.asarray(x)[keep] + off, np.asarray(P)[keep], ls="none", marker="_", ms=12,
                                  mew=1.6, color=color, label=f"{tlab} (exact)")
                line.set_gid(EXACT_GID)
            else:  # a stem below 1e-3 of the largest is invisible on a linear axis, only clutter
                P = np.where(np.asarray(P) >= VISIBLE * np.max(P, initial=0.0), P, 0.0)
                _stems(ax, np.asarray(x) + off, P, color=color, label=tlab)
        if mc is not None:
            x, P, se = (np.asarray(a, dtype=float) for a in mc)
            keep = P > 0
            lo = np.minimum(Z95 * se, 0.95 * P) if log else Z95 * se  # keep bars on a log axis
            ax.errorbar(x[keep] + off, P[keep], yerr=[lo[keep], Z95 * se[keep]], fmt="o",
                        ms=3.5 if keep.sum() <= 30 else 2, color=color,
                        ecolor=color, elinewidth=1.0, capsize=2, ls="none", label=f"{tlab} (MC)", zorder=3)
    if log:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0.0)
    if np.all(xs == np.round(xs)):  # integer energies: integer ticks, each at the centre of its group
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    _legend(ax)
    return ax


def plot_heat(result, bath=0, t_index=-1, ax=None, exact=None, log=False, title=None):
    """Distribution of the heat ``Q_b`` into the system from one bath up to one or more sample times.

    Heat is an integer number of grid steps, so the distribution is discrete: exact values as stems,
    Monte Carlo frequencies as markers with 95% error bars (multinomial standard errors).

    Parameters
    ----------
    result : Ensemble or Solution
    bath : str or int, optional
        Bath name or index (default: the first bath).
    t_index : int or sequence of int, optional
        Index (or indices) into ``result.times`` (default: the last time).
    ax : matplotlib.axes.Axes, optional
        Axes to draw into (default: a new figure).
    exact : Solution, optional
        The exact distribution drawn under the Monte Carlo points of an Ensemble.
    log : bool, optional
        Logarithmic probability axis (markers, no stems).  Default: linear.
    title : str, optional
        Axes title (default: the model's name and what is shown).

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _new_ax(ax)
    nu = _bath_index(result.model, bath)
    name = result.model.bath_names[nu]
    idx = _time_indices(result.times, t_index)
    mc = _is_mc(result)
    sol = exact if mc else result
    exd = fl.heat_distribution(sol.segments, nu, result.times[idx]) if sol is not None else None
    series = []
    for j, k in enumerate(idx):
        m = None
        if mc:
            h = result.heat_distribution(nu, k)
            P = h.to_numpy()
            m = (h.index.to_numpy(), P, np.sqrt(P * (1 - P) / result.trajectories))
        e = None if exd is None else (exd[0], exd[1][j])
        series.append((f"$t = {result.times[k]:g}$", m, e))
    return _discrete(ax, series, xlabel=f"heat {_sub('Q', name)} into the system [$\\delta$]",
                     ylabel=f"probability $P({_sym('Q', name)[0]})$",
                     title=_title(result, f"heat from bath {_text(name)}") if title is None else title, log=log)


def plot_work(result, t_index=-1, ax=None, exact=None, log=False, title=None):
    """Distribution of the work ``W`` done on the system (a driven model) up to one or more sample times.

    Parameters
    ----------
    result : Ensemble or Solution
    t_index : int or sequence of int, optional
        Index (or indices) into ``result.times`` (default: the last time).
    ax : matplotlib.axes.Axes, optional
        Axes to draw into (default: a new figure).
    exact : Solution, optional
        The exact distribution (stems) drawn under the Monte Carlo points of an Ensemble.
    log : bool, optional
        Logarithmic probability axis (markers, no stems).  Default: linear.
    title : str, optional
        Axes title (default: the model's name and what is shown).

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _new_ax(ax)
    idx = _time_indices(result.times, t_index)
    mc = _is_mc(result)
    sol = exact if mc else result
    exd = fl.work_distribution(sol.segments, result.times) if sol is not None else None
    series = []
    for k in idx:
        m = None
        if mc:
            h = result.work_distribution(k)
            P = h.to_numpy()
            m = (h.index.to_numpy(), P, np.sqrt(P * (1 - P) / result.trajectories))
        series.append((f"$t = {result.times[k]:g}$", m, None if exd is None else (exd[0], exd[1][k])))
    return _discrete(ax, series, xlabel=r"work $W$ done on the system [$\delta$]", ylabel=r"probability $P(W)$",
                     title=_title(result, "work distribution") if title is None else title, log=log)


def plot_bath(result, bath=0, t_index=-1, ax=None, exact=None, log=False, title=None):
    """Distribution ``p(E_b)`` of one bath's energy at one or more sample times.

    Parameters
    ----------
    result : Ensemble or Solution
    bath : str or int, optional
        Bath name or index (default: the first bath).
    t_index : int or sequence of int, optional
        Index (or indices) into ``result.times`` (default: the last time).
    ax : matplotlib.axes.Axes, optional
        Axes to draw into (default: a new figure).
    exact : Solution, optional
        The exact distribution (stems) drawn under the Monte Carlo points of an Ensemble.
    log : bool, optional
        Logarithmic probability axis (markers, no stems).  Default: linear.
    title : str, optional
        Axes title (default: the model's name and what is shown).

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _new_ax(ax)
    nu = _bath_index(result.model, bath)
    name = result.model.bath_names[nu]
    idx = _time_indices(result.times, t_index)
    mc = _is_mc(result)
    sol = exact if mc else result
    series = []
    for k in idx:
        m = e = None
        if mc:
            h = result.bath_distribution(nu, k)
            P = h.to_numpy()
            m = (h.index.to_numpy(), P, np.sqrt(P * (1 - P) / result.trajectories))
        if sol is not None:
            E = sol.states[f"E_{name}"].to_numpy()
            P = np.bincount(E, weights=sol.p[k], minlength=int(E.max()) + 1)
            e = (np.arange(len(P)), P)
        series.append((f"$t = {result.times[k]:g}$", m, e))
    return _discrete(ax, series, xlabel=f"bath energy {_sub('E', name)} [$\\delta$]",
                     ylabel=f"probability $p({_sym('E', name)[0]})$",
                     title=_title(result, f"energy of bath {_text(name)}") if title is None else title, log=log)


def _exact_activity(sol, times):
    """Exact mean and variance of the number of jumps (counting field), or None for a network too large."""
    if 4 * sol.network.n_states > COUNTING_LIMIT:
        return None
    k = fl.cumulants_from_moments(fl.counting_moments(sol.segments, lambda nk: np.ones(nk.n_edges), times))
    return k[:, 0], k[:, 1]


def plot_activity(result, ax=None, exact=None, moment="mean", title=None):
    """Activity: mean (or variance) of the number of jumps ``N`` up to each sample time.

    The exact values come from the counting-field moments of the rate equation; trajmc has no exact
    distribution of ``N`` (only its moments), so there is no exact histogram to draw.

    Parameters
    ----------
    result : Ensemble or Solution
    ax : matplotlib.axes.Axes, optional
        Axes to draw into (default: a new figure).
    exact : Solution, optional
        The exact line under the Monte Carlo points of an Ensemble.
    moment : {"mean", "var"}, optional
        Which moment to draw.
    title : str, optional
        Axes title (default: the model's name and what is shown).

    Returns
    -------
    matplotlib.axes.Axes
    """
    if moment not in ("mean", "var"):
        raise ValueError(f"moment: must be 'mean' or 'var', got {moment!r}")
    ax = _new_ax(ax)
    t = result.times
    mc = _is_mc(result)
    sym = r"$\langle N\rangle$" if moment == "mean" else r"${\rm Var}\,N$"
    if mc:
        a = result.activity()
        _mc(ax, t, a[moment], a[f"{moment}_se"], color="C0", marker="o", label=sym)
    sol = exact if mc else result
    ex = _exact_activity(sol, t) if sol is not None else None
    if ex is not None:
        _exact_lines(ax, t, [(sym, ex[0] if moment == "mean" else ex[1], dict(color="C0", ls="-"))])
    ax.set(xlabel=TIME, ylabel=("mean" if moment == "mean" else "variance of the") + f" number of jumps {sym}",
           title=_title(result, "activity") if title is None else title)
    _legend(ax)
    return ax


_PLOTTERS = {"thermo": plot_thermo, "p_system": plot_p_system, "S_obs": plot_s_obs, "energy": plot_energy,
             "heat": plot_heat, "work": plot_work, "bath": plot_bath, "activity": plot_activity}


def plot(result, what="thermo", ax=None, exact=None, **kwargs):
    """Draw one quantity of a result into a matplotlib axes and return the axes.

    Parameters
    ----------
    result : Ensemble or Solution
        A Monte Carlo result (open markers with 95% error bars: 1.96 standard errors) or an exact solution
        (lines; stems for distributions).
    what : {"thermo", "p_system", "S_obs", "energy", "heat", "work", "bath", "activity"}, optional
        ``"thermo"``: entropy production ``Sigma`` and ``Sigma_tilde`` [k_B] over time (default);
        ``"p_system"``: system populations; ``"S_obs"``: observational entropy [k_B];
        ``"energy"``: mean heat from each bath (and work) [delta]; ``"heat"``: distribution of the heat from
        one bath (``bath=``, ``t_index=``); ``"work"``: work distribution (``t_index=``); ``"bath"``: a bath's
        energy distribution (``bath=``, ``t_index=``); ``"activity"``: mean (``moment="var"``: variance) of
        the number of jumps.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into.  Default: a new figure (pyplot, so a notebook shows it).
    exact : Solution, optional
        Exact reference drawn under a Monte Carlo result (ignored for a Solution, which is exact itself).
    **kwargs
        Passed to the function of ``what`` (:func:`plot_thermo`, :func:`plot_p_system`, :func:`plot_s_obs`,
        :func:`plot_energy`, :func:`plot_heat`, :func:`plot_work`, :func:`plot_bath`, :func:`plot_activity`),
        e.g. ``title``, ``bath``, ``t_index``, ``log``.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn into.  Exact lines and stems carry the gid ``"exact"``.

    Examples
    --------
    >>> sol = trajmc.solve(model)                                          # doctest: +SKIP
    >>> ens = trajmc.simulate(model, trajectories=10**5, seed=1)           # doctest: +SKIP
    >>> ax = ens.plot("thermo", exact=sol)                                 # doctest: +SKIP
    >>> ens.plot("heat", bath="B", t_index=[10, -1], exact=sol)            # doctest: +SKIP
    """
    if what not in _PLOTTERS:
        raise ValueError(f"what: unknown plot {what!r} (choose one of: {', '.join(PLOTS)})")
    _check_exact(exact)
    if not _is_mc(result):
        exact = None
    return _PLOTTERS[what](result, ax=ax, exact=exact, **kwargs)


# --------------------------------------------------------------------------- the command line's figures


def _figure(nrows=1, ncols=1, figsize=(5.5, 4.0)):
    """A figure outside pyplot (Agg canvas when saved): no display, no global state, the backend untouched."""
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig, path):
    """Render to memory, then write atomically: a figure on disk is never half written."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))
    return path


def _who(ens, exact):
    return (f"{_text(ens.model.name)}: {ens.trajectories:,} Monte Carlo trajectories"
            + (" (markers, 95% error bars) vs exact solution (lines)" if exact is not None else
               " (markers, 95% error bars)"))


def summary_figure(ens, path, exact=None):
    """``figures/summary.png`` of ``simulate``: system populations and entropy production.

    Parameters
    ----------
    ens : Ensemble
    path : str or pathlib.Path
        The PNG file to write (atomically).
    exact : Solution, optional
        Exact lines under the Monte Carlo points.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    fig, ax = _figure(1, 2, (10, 4))
    plot_p_system(ens, ax[0, 0], exact, title="system populations")
    plot_thermo(ens, ax[0, 1], exact, title=r"entropy production $\Sigma$ vs $\tilde\Sigma$")
    fig.suptitle(_who(ens, exact), fontsize=10)
    return _save(fig, Path(path))


def validation_figures(ens, sol, outdir):
    """``figures/validation.png`` of ``validate``: Monte Carlo (95% error bars) over the exact solution.

    Panels: ``p_s(t)``, ``S_obs(t)``, ``Sigma`` vs ``Sigma_tilde``, mean heat per bath (and work).

    Parameters
    ----------
    ens : Ensemble
    sol : Solution or None
        The exact reference (None: Monte Carlo only).
    outdir : str or pathlib.Path
        Folder of the figure (created if needed).

    Returns
    -------
    pathlib.Path
        The written file.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    fig, ax = _figure(2, 2, (11, 8))
    plot_p_system(ens, ax[0, 0], sol, title="system populations")
    plot_s_obs(ens, ax[0, 1], sol, title="observational entropy")
    plot_thermo(ens, ax[1, 0], sol, title=r"entropy production: $\Sigma$ (paper) vs $\tilde\Sigma$ (conventional)")
    plot_energy(ens, ax[1, 1], sol, title="mean heat into the system" + (" and work" if ens.model.protocol else ""))
    fig.suptitle(_who(ens, sol), fontsize=11)
    return _save(fig, outdir / "validation.png")


def _slope_one(x, y, se, label, xlabel, ylabel, line_label, title, path):
    """A fluctuation-theorem figure: log ratios with 95% error bars against the predicted line y = x."""
    fig, ax = _figure()
    ax = ax[0, 0]
    _mc(ax, x, y, se, color="C0", marker="o", label=label)
    s = np.linspace(min(0.0, float(np.min(x))), float(np.max(x)), 2)
    (line,) = ax.plot(s, s, "k-", lw=1, label=line_label, zorder=2)
    line.set_gid(EXACT_GID)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    _legend(ax)
    return _save(fig, path)


def _heat_figure(ens, res, path):
    hd = res["heat_distribution"]
    name = _text(ens.model.name)
    baths = list(dict.fromkeys(hd["bath"])) or list(ens.model.bath_names)  # sampled at t = 0 only: no heat yet
    fig, axes = _figure(1, len(baths), (5.5 * len(baths), 4.2))
    for ax, b in zip(axes[0], baths, strict=True):
        series = []
        for t, g in hd[hd["bath"] == b].groupby("t"):
            mc = (g["Q"].to_numpy(), g["P_mc"].to_numpy(), g["P_mc_se"].to_numpy())
            ex = (g["Q"].to_numpy(), g["P_exact"].to_numpy()) if "P_exact" in g else None
            series.append((f"$t = {t:g}$", mc, ex))
        _discrete(ax, series, xlabel=f"heat {_sub('Q', b)} into the system [$\\delta$]",
                  ylabel=f"probability $P({_sym('Q', b)[0]})$",
                  title=f"{name}: heat from bath {_text(b)}" + (" (stems: exact)" if "P_exact" in hd else ""))
    return _save(fig, path)


def _entropy_figure(ens, res, path):
    ep = res["entropy_production"]
    fig, ax = _figure(1, 3, (15, 4.2))
    a = ax[0, 0]
    h = res["delta_s_histogram"]
    edges = np.append(h["ds_lo"].to_numpy(), h["ds_hi"].iloc[-1])
    a.stairs(h["density"], edges, fill=True, color="C0", alpha=0.5, label=r"$\Delta s_{\rm obs}$ (MC histogram)")
    occ = np.flatnonzero(h["count"].to_numpy() > 0)
    if len(occ):  # the occupied bins (the streamed histogram spans a fixed, wide range)
        lo, hi = edges[occ[0]], edges[occ[-1] + 1]
        pad = max(0.1 * (hi - lo), 2 * (edges[1] - edges[0]))
        a.set_xlim(lo - pad, hi + pad)
    ln = a.axvline(ep["Sigma_exact"].iloc[-1], color="k", lw=1.2, label=r"$\Delta S_{\rm obs} = \Sigma$ (exact)")
    ln.set_gid(EXACT_GID)
    a.axvline(ep["mean_ds"].iloc[-1], color="C1", ls="--", lw=1.2, label=r"$\langle\Delta s_{\rm obs}\rangle$ (MC)")
    a.set(xlabel=r"trajectory entropy production $\Delta s_{\rm obs}$ [$k_B$]", ylabel=r"probability density [$1/k_B$]",
          title=rf"distribution of $\Delta s_{{\rm obs}}$ at $t = {ep['t'].iloc[-1]:g}$")
    _legend(a)
    a = ax[0, 1]
    lab = r"$\langle\Delta s_{\rm obs}\rangle$"
    _mc(a, ep["t"], ep["mean_ds"], ep["mean_ds_se"], color="C0", marker="o", label=lab)
    _exact_lines(a, ep["t"], [(r"$\Sigma = \Delta S_{\rm obs}$", ep["Sigma_exact"], STYLE["Sigma"])])
    a.set(xlabel=TIME, ylabel=ENTROPY, title=r"mean: $\langle\Delta s_{\rm obs}\rangle = \Sigma$")
    _legend(a)
    a = ax[0, 2]
    lab = r"$\langle e^{-\Delta s_{\rm obs}}\rangle$"
    _mc(a, ep["t"], ep["ift_mc"], ep["ift_se"], color="C0", marker="o", label=lab)
    _exact_lines(a, ep["t"], [(lab, ep["ift_exact"], dict(color="C0", ls="-"))])
    ai = bool(res.get("absolute_irreversibility"))
    a.set(xlabel=TIME, ylabel=lab,
          title="integral fluctuation theorem" + (" (absolutely irreversible start)" if ai else ""))
    _legend(a)
    fig.suptitle(f"{_text(ens.model.name)}: trajectory observational entropy production, "
                 f"{ens.trajectories:,} trajectories", fontsize=11)
    return _save(fig, path)


def _work_figure(ens, res, path):
    wd = res["work_distribution"]
    fig, ax = _figure(1, 2, (11, 4.2))
    ex = (wd["W"].to_numpy(), wd["P_exact"].to_numpy()) if "P_exact" in wd else None
    _discrete(ax[0, 0], [(f"$t = {ens.times[-1]:g}$", (wd["W"], wd["P_mc"], wd["P_mc_se"]), ex)],
              xlabel=r"work $W$ done on the system [$\delta$]", ylabel=r"probability $P(W)$",
              title="work distribution" + (" (stems: exact)" if ex is not None else ""))
    a = ax[0, 1]
    if "jarzynski" in res:
        j = res["jarzynski"]
        beta = float(j["beta"].iloc[0])
        lab = rf"$\langle e^{{-\beta W}}\rangle$, $\beta = {beta:g}/\delta$"
        _mc(a, j["t"], j["exp_mbW_mc"], j["exp_mbW_se"], color="C0", marker="o", label=lab)
        curves = []
        if "exp_mbW_exact" in j:
            curves.append((lab, j["exp_mbW_exact"], dict(color="C0", ls="-")))
        if res.get("gibbs_start") and "Z_ratio" in j:
            curves.append((r"$Z_{\rm final}/Z_0$", np.full(len(j), float(j["Z_ratio"].iloc[0])),
                           dict(color="C3", ls="--")))
        _exact_lines(a, j["t"], curves)
        a.set(xlabel=TIME, ylabel=r"$\langle e^{-\beta W}\rangle$",
              title="Jarzynski equality" if res.get("gibbs_start") else r"$\langle e^{-\beta W}\rangle$")
        _legend(a)
    else:
        a.set_axis_off()
        a.text(0.5, 0.5, "no reference temperature:\nno Jarzynski average", ha="center", va="center",
               transform=a.transAxes)
    fig.suptitle(f"{_text(ens.model.name)}: work, {ens.trajectories:,} trajectories", fontsize=11)
    return _save(fig, path)


def _activity_figure(ens, res, path):
    act = res["activity"]
    fig, ax = _figure(1, 2, (11, 4.2))
    for a, m, sym in ((ax[0, 0], "mean", r"$\langle N\rangle$"), (ax[0, 1], "var", r"${\rm Var}\,N$")):
        _mc(a, act["t"], act[f"{m}_mc"], act[f"{m}_se"], color="C0", marker="o", label=sym)
        if f"{m}_exact" in act:
            _exact_lines(a, act["t"], [(sym, act[f"{m}_exact"], dict(color="C0", ls="-"))])
        a.set(xlabel=TIME, ylabel=("mean" if m == "mean" else "variance of the") + f" number of jumps {sym}",
              title=("mean" if m == "mean" else "variance of the") + " number of jumps")
        _legend(a)
    fig.suptitle(f"{_text(ens.model.name)}: activity, {ens.trajectories:,} trajectories"
                 + (" (lines: exact, counting field)" if "mean_exact" in act else ""), fontsize=11)
    return _save(fig, path)


def analysis_figures(ens, res, outdir):
    """The figures of ``analyze``: heat distributions, trajectory entropy production and the integral
    fluctuation theorem, the exchange fluctuation theorem, work (Jarzynski, Crooks), activity.

    Parameters
    ----------
    ens : Ensemble
    res : dict
        The result of :func:`trajmc.analyze.analyze`.
    outdir : str or pathlib.Path
        Folder of the figures (created if needed).

    Returns
    -------
    list of pathlib.Path
        The written files.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    name = _text(ens.model.name)
    paths = [_heat_figure(ens, res, outdir / "heat_distribution.png")]
    if "entropy_production" in res:
        paths.append(_entropy_figure(ens, res, outdir / "entropy_production.png"))
    if "exchange_ft" in res and len(res["exchange_ft"]):
        ft = res["exchange_ft"]
        paths.append(_slope_one(ft["sigma"], ft["log_ratio"], ft["log_ratio_se"], r"$\ln[P(\sigma)/P(-\sigma)]$",
                                r"$\sigma$ [$k_B$]", r"$\ln[P(\sigma)/P(-\sigma)]$", "theorem: slope 1 (exact)",
                                f"{name}: exchange FT, slope {res['ft_slope']:.3f} ± {res['ft_slope_se']:.3f}",
                                outdir / "exchange_ft.png"))
    if "work_distribution" in res:
        paths.append(_work_figure(ens, res, outdir / "work.png"))
    if "crooks" in res and len(res["crooks"]):
        c = res["crooks"]
        paths.append(_slope_one(c["beta_W_minus_dF"], c["log_ratio_mc"], c["log_ratio_se"],
                                r"forward MC / exact reversed", r"$\beta\,(W - \Delta F)$",
                                r"$\ln[P_F(W)/P_R(-W)]$", "Crooks: slope 1 (exact)", f"{name}: Crooks relation",
                                outdir / "crooks.png"))
    paths.append(_activity_figure(ens, res, outdir / "activity.png"))
    return paths
