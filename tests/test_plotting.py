"""Figures: the plotting helpers (``ens.plot``, ``sol.plot``) and the figures of simulate / validate / analyze.

What a referee would check: mathtext labels with units, each exact quantity drawn once (coinciding exact
curves as one line whose legend names both), Sigma and Sigma_tilde in distinct styles, discrete
distributions as stems and markers on a linear axis, and no warnings while drawing the built-in examples.
"""
from __future__ import annotations

import subprocess
import sys
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import THREADS  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.container import StemContainer  # noqa: E402

import trajmc  # noqa: E402
from trajmc import analyze as an  # noqa: E402
from trajmc import plotting as P  # noqa: E402

N = 400  # trajectories: these tests look at artists, not at statistics


@pytest.fixture(scope="module")
def runs():
    """(ensemble, solution) of a few built-in examples, computed once."""
    out = {}
    for name in ("qubit-oscillators", "three-level-ideal", "driven-qubit"):
        md = trajmc.get_example(name)
        out[name] = (trajmc.simulate(md, trajectories=N, seed=3, threads=THREADS), trajmc.solve(md))
    return out


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def exact_lines(ax):
    return [ln for ln in ax.lines if ln.get_gid() == P.EXACT_GID]


def draw(ax):
    """Render (mathtext is parsed at draw time: a bad label fails here)."""
    ax.figure.canvas.draw()


# --------------------------------------------------------------------------- helpers return axes


@pytest.mark.parametrize("what", P.PLOTS)
def test_helpers_return_the_axes_they_drew_into(runs, what):
    ens, sol = runs["driven-qubit"]
    ax = ens.plot(what, exact=sol)
    assert isinstance(ax, Axes) and ax.has_data()
    fig, own = plt.subplots()
    assert ens.plot(what, ax=own) is own and own.has_data()
    ax2 = sol.plot(what)
    assert isinstance(ax2, Axes) and ax2.has_data() and ax2 is not ax
    for a in (ax, own, ax2):
        draw(a)


def test_monte_carlo_alone_draws_no_exact_line_and_a_solution_only_exact_ones(runs):
    ens, sol = runs["qubit-oscillators"]
    mc = ens.plot("thermo")
    assert not exact_lines(mc) and mc.containers  # error bars only
    ex = sol.plot("thermo")
    assert exact_lines(ex) and not ex.containers


def test_bad_requests_say_what_is_allowed(runs):
    ens, sol = runs["qubit-oscillators"]
    with pytest.raises(ValueError, match="choose one of: thermo, p_system"):
        ens.plot("entropy")
    with pytest.raises(TypeError, match="exact must be a Solution"):
        ens.plot("thermo", exact=ens.thermo())
    with pytest.raises(trajmc.ModelError, match="unknown bath 'hot' .*baths: B"):
        ens.plot("heat", bath="hot")
    with pytest.raises(trajmc.ModelError, match="t_index"):
        sol.plot("heat", t_index=len(sol.times))


# --------------------------------------------------------------------------- labels


UNIT = {"thermo": r"[$k_B$]", "S_obs": r"[$k_B$]", "energy": r"[$\delta$]", "heat": r"[$\delta$]",
        "work": r"[$\delta$]", "bath": r"[$\delta$]"}


@pytest.mark.parametrize("what", P.PLOTS)
def test_labels_are_mathtext_with_units(runs, what):
    ens, sol = runs["driven-qubit"]
    ax = ens.plot(what, exact=sol)
    draw(ax)
    x, y = ax.get_xlabel(), ax.get_ylabel()
    assert "$" in x and "$" in y, (x, y)
    if what in ("heat", "work", "bath"):  # distributions: energy on x, a probability on y
        assert UNIT[what] in x and y.startswith("probability $"), (x, y)
    else:  # time series: time in 1/gamma on x
        assert x == r"time $t$ [$1/\gamma$]"
        if what in UNIT:
            assert UNIT[what] in y, y
    title = ax.get_title()
    assert title.startswith("driven-qubit: ")  # which model
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend and all("$" in t for t in legend), legend
    assert all(t.endswith(("(exact)", "(MC)")) for t in legend), legend


def test_plain_text_is_never_parsed_as_mathtext(runs):
    """Model and bath names with ``$``, ``^`` or ``_`` draw (escaped, or outside the formula)."""
    md = trajmc.get_example("qubit-oscillators")
    md["name"] = "$x^$ a_b"
    md["baths"][0]["name"] = "my_bath"
    md["baths"][0]["dos"]["n"] = 5
    md["baths"][0]["emax"] = 90
    md["times"] = {"stop": 1.0, "num": 5}
    ens, sol = trajmc.simulate(md, trajectories=200, seed=1, threads=THREADS), trajmc.solve(md)
    for what in ("energy", "heat", "bath"):
        ax = ens.plot(what, exact=sol)
        draw(ax)
        assert ax.get_title().startswith(r"\$x^\$ a_b: ")
        text = ax.get_xlabel() if what != "energy" else ax.get_legend().get_texts()[0].get_text()
        assert "(b = my_bath)" in text  # not a mathtext subscript


# --------------------------------------------------------------------------- exact lines


def distinct(curves):
    """How many of the curves differ from every earlier one (numpy, independent of the plotting code)."""
    kept = []
    for c in curves:
        c = np.asarray(c, dtype=float)
        if np.isfinite(c).any() and not any(np.allclose(c, k, rtol=0, atol=1e-9) for k in kept):
            kept.append(c)
    return len(kept)


@pytest.mark.parametrize("name", ["qubit-oscillators", "three-level-ideal", "driven-qubit"])
def test_one_exact_line_per_distinct_quantity(runs, name):
    ens, sol = runs[name]
    th = sol.thermo()
    ax = ens.plot("thermo", exact=sol)
    lines = exact_lines(ax)
    assert len(lines) == distinct([th["Sigma"], th["Sigma_tilde"]])
    if len(lines) == 2:  # Sigma and Sigma_tilde differ: distinct colour and line style
        a, b = lines
        assert a.get_color() != b.get_color() and a.get_linestyle() != b.get_linestyle()
    else:  # they coincide (each shell's bath energy is fixed by the level): one line, its legend names both
        assert name == "three-level-ideal"
        label = lines[0].get_label()
        assert r"\Sigma" in label and r"\tilde\Sigma" in label
    ax = ens.plot("p_system", exact=sol)
    assert len(exact_lines(ax)) == distinct(sol.p_system().T)


def test_a_gap_too_small_to_see_gets_an_inset(runs):
    """qubit-oscillators: Sigma_tilde - Sigma is ~1e-3 of Sigma (one curve to the eye): the inset draws the
    exact difference; for the ideal bath (identical curves) there is none."""
    ens, sol = runs["qubit-oscillators"]
    th = sol.thermo()
    gap = (th["Sigma_tilde"] - th["Sigma"]).to_numpy()
    assert 0 < np.max(np.abs(gap)) < 0.05 * th["Sigma"].abs().max()
    ax = ens.plot("thermo", exact=sol)
    (ins,) = ax.child_axes
    (line,) = exact_lines(ins)
    np.testing.assert_allclose(line.get_ydata(), gap, rtol=0, atol=1e-15)
    assert r"\tilde\Sigma - \Sigma" in ins.get_title() and "[$k_B$]" in ins.get_title()
    assert not ens.plot("thermo", exact=sol, inset=False).child_axes
    ens3, sol3 = runs["three-level-ideal"]
    assert not ens3.plot("thermo", exact=sol3).child_axes


def test_sigma_and_sigma_tilde_markers_differ(runs):
    ens, sol = runs["qubit-oscillators"]
    ax = ens.plot("thermo", exact=sol)
    markers = {c.lines[0].get_marker() for c in ax.containers}
    colors = {c.lines[0].get_markeredgecolor() for c in ax.containers}
    assert len(ax.containers) == 2 and len(markers) == 2 and len(colors) == 2


def test_identical_exact_curves_are_drawn_once_in_the_work_figure(runs, tmp_path, monkeypatch):
    """Jarzynski from a Gibbs start: <exp(-beta W)> at the end equals Z_f / Z_0, but not before the last switch
    (two lines); a single-time run makes them identical (one line)."""
    ens, sol = runs["driven-qubit"]
    res = an.analyze(ens, sol)
    drawn = []
    monkeypatch.setattr(P, "_save", lambda fig, path: drawn.append(fig) or path)
    P.analysis_figures(ens, res, tmp_path)
    work = [f for f in drawn if "work" in f.get_suptitle()][0]
    jar = work.axes[1]
    j = res["jarzynski"]
    z = np.full(len(j), j["Z_ratio"].iloc[0])
    assert len(exact_lines(jar)) == distinct([j["exp_mbW_exact"], z]) == 2
    last = j.iloc[[-1]]
    res["jarzynski"] = last
    drawn.clear()
    P.analysis_figures(ens, res, tmp_path)
    jar = [f for f in drawn if "work" in f.get_suptitle()][0].axes[1]
    assert len(exact_lines(jar)) == distinct([last["exp_mbW_exact"], last["Z_ratio"]]) == 1


# --------------------------------------------------------------------------- discrete distributions


@pytest.mark.parametrize("what", ["heat", "work", "bath"])
def test_discrete_distributions_are_stems_and_markers(runs, what):
    ens, sol = runs["driven-qubit"]
    ax = ens.plot(what, exact=sol, t_index=[-1, len(ens.times) // 2])
    stems = [c for c in ax.containers if isinstance(c, StemContainer)]
    assert len(stems) == 2  # one exact distribution per time
    for ln in ax.lines:  # no line joins the points of a distribution
        assert ln.get_linestyle() == "None" or ln in [s.baseline for s in stems], ln
    assert ax.get_yscale() == "linear"
    mc = [c for c in ax.containers if not isinstance(c, StemContainer)]
    assert len(mc) == 2 and all(c.lines[0].get_linestyle() == "None" for c in mc)
    log = ens.plot(what, exact=sol, log=True)
    assert log.get_yscale() == "log" and not any(isinstance(c, StemContainer) for c in log.containers)
    assert all(ln.get_linestyle() == "None" for ln in log.lines)
    draw(ax)
    draw(log)


def test_heat_stems_are_the_exact_distribution(runs):
    """The stems hold the exact P(Q) of trajmc.fluctuations (every visible value), at integer heats."""
    from trajmc import fluctuations as fl

    ens, sol = runs["qubit-oscillators"]
    ax = sol.plot("heat", t_index=-1)
    (st,) = [c for c in ax.containers if isinstance(c, StemContainer)]
    x, y = st.markerline.get_data()
    q, Pq = fl.heat_distribution(sol.segments, 0, sol.times[[-1]])
    keep = Pq[0] >= P.VISIBLE * Pq[0].max()
    np.testing.assert_allclose(x, q[keep])
    np.testing.assert_allclose(y, Pq[0][keep], rtol=1e-12)


# --------------------------------------------------------------------------- the built-in examples


#: examples drawn in every run; the others in the slow tier (CI time)
FAST_EXAMPLES = ("qubit-oscillators", "driven-qubit")


@pytest.mark.parametrize("name", [n if n in FAST_EXAMPLES else pytest.param(n, marks=pytest.mark.slow)
                                  for n in trajmc.list_examples()])
def test_built_in_examples_draw_every_figure_without_warnings(tmp_path, name):
    """The figures of simulate, validate and analyze (with and without the exact reference) and the one
    helper they do not use, for every built-in example: rendered, and no warning on the way."""
    md = trajmc.get_example(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ens = trajmc.simulate(md, trajectories=300, seed=2, threads=THREADS)
        sol = trajmc.solve(md)
        files = [P.summary_figure(ens, tmp_path / "summary.png"), P.validation_figures(ens, sol, tmp_path)]
        files += P.analysis_figures(ens, an.analyze(ens, sol), tmp_path)
        if name == "two-baths":  # exchange FT; without exact references (as for a network too large)
            files += P.analysis_figures(ens, an.analyze(ens, None), tmp_path / "mc-only")
        draw(ens.plot("bath", exact=sol, t_index=[0, -1]))
    for f in files:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f


def test_import_trajmc_does_not_import_matplotlib():
    code = "import sys, trajmc; trajmc.Ensemble.plot; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_file_figures_leave_pyplot_alone(runs, tmp_path):
    """The command line's figures never open pyplot figures (no display, nothing left open in a notebook)."""
    ens, sol = runs["qubit-oscillators"]
    before = plt.get_fignums()
    P.validation_figures(ens, sol, tmp_path)
    P.summary_figure(ens, tmp_path / "s.png", sol)
    assert plt.get_fignums() == before
