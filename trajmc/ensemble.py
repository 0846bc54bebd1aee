"""The Monte Carlo result: :class:`Ensemble`, rebuilt from the streaming accumulators of a run."""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import _kernel as K
from .errors import ModelError
from .estimate import marginals, thermo_estimates

__all__ = ["Ensemble"]


class Ensemble:
    """Monte Carlo estimates of a model.

    Attributes
    ----------
    times : ndarray (n_t,)
    stats : dict  trajectories, jumps, wall_s, compile_s, threads, chunks, chunk_size, seed_entropy, path, ...
    plan, acc : the run's plan and accumulators (:mod:`trajmc.engine`)

    The full joint distribution (``p``, ``p_se``, ``counts``, ``states``) exists on the enumerated path
    only (``ens.joint``); everything else exists on both.
    """

    def __init__(self, plan, acc, stats: dict):
        self.plan = plan
        self.model = plan.model
        self.times = plan.times
        self.acc = acc
        self.stats = stats
        self._states = None
        self._thermo = None

    # ------------------------------------------------------------------ joint distribution
    @property
    def network(self):
        """The enumerated network (None on the implicit path)."""
        return self.plan.network

    @property
    def joint(self) -> bool:
        """True when the full joint ``p_x(t)`` was accumulated (enumerated path)."""
        return self.acc.counts is not None

    @property
    def trajectories(self) -> int:
        return int(self.acc.sys2[0].sum())

    @property
    def counts(self):
        """Occupation counts of every joint state, (n_t, n_states) int64; None without the joint."""
        return self.acc.counts

    @property
    def states(self):
        """One row per joint state: ``s``, ``E_<bath>`` (DataFrame); None without the joint."""
        if self.network is None:
            return None
        if self._states is None:
            self._states = self.network.frame()
        return self._states

    @property
    def p(self):
        """Relative frequencies of the joint states, (n_t, n_states) float; None without the joint."""
        return None if self.acc.counts is None else self.acc.counts / self.trajectories

    @property
    def p_se(self):
        """Multinomial standard errors of :attr:`p`; None without the joint."""
        p = self.p
        return None if p is None else np.sqrt(p * (1.0 - p) / self.trajectories)

    # ------------------------------------------------------------------ marginals
    def p_system(self) -> np.ndarray:
        """System marginal ``p_s(t)``: (n_t, n_levels) (the same type as ``Solution.p_system()``)."""
        return self.acc.sys2.sum(axis=1) / self.trajectories

    def p_system_se(self) -> np.ndarray:
        """Standard errors of :meth:`p_system` (multinomial), (n_t, n_levels)."""
        p = self.p_system()
        return np.sqrt(p * (1.0 - p) / self.trajectories)

    def _bath(self, bath) -> int:
        names = self.model.bath_names
        if isinstance(bath, str):
            if bath not in names:
                raise ModelError("bath", f"unknown bath {bath!r} (this model's baths: {', '.join(names)})")
            return names.index(bath)
        if isinstance(bath, bool) or not isinstance(bath, (int, np.integer)) or not 0 <= bath < len(names):
            raise ModelError("bath", f"must be a bath name ({', '.join(names)}) or index 0..{len(names) - 1}, got "
                                     f"{bath!r}")
        return int(bath)

    def heat_distribution(self, bath=0, t_index=-1) -> pd.Series:
        """Histogram of the heat ``Q`` into the system from ``bath`` up to ``times[t_index]``
        (``Q = -(E_bath(t) - E_bath(0))``, integer grid steps) as probabilities indexed by Q."""
        nu = self._bath(bath)
        w = self.acc.windows
        h = self.acc.heat[t_index, w.qoff[nu]: w.qoff[nu] + w.qwid[nu]]
        q = np.arange(w.qlo[nu], w.qlo[nu] + w.qwid[nu])
        keep = h > 0
        return pd.Series(h[keep] / self.trajectories, index=pd.Index(q[keep], name="Q"),
                         name=f"P(Q_{self.model.bath_names[nu]})")

    def bath_distribution(self, bath=0, t_index=-1) -> pd.Series:
        """``p(E)`` of one bath at ``times[t_index]`` (probabilities indexed by E, occupied energies only)."""

        nu = self._bath(bath)
        M = marginals(self.plan, self.acc)
        c = M.sE[nu][t_index].sum(axis=1)
        E = M.lo[nu] + np.arange(len(c))
        keep = c > 0
        return pd.Series(c[keep] / self.trajectories, index=pd.Index(E[keep], name="E"),
                         name=f"p(E_{self.model.bath_names[nu]})")

    def work_distribution(self, t_index=-1) -> pd.Series:
        """Histogram of the work done on the system up to ``times[t_index]`` (integer energies)."""
        h = self.acc.work[t_index]
        w = np.arange(-self.plan.woff, self.plan.woff + 1) if self.plan.driven else np.zeros(1, np.int64)
        keep = h > 0
        return pd.Series(h[keep] / self.trajectories, index=pd.Index(w[keep], name="W"), name="P(W)")

    # ------------------------------------------------------------------ estimates
    def thermo(self) -> pd.DataFrame:
        """Thermodynamic estimates with a ``<col>_se`` column each; entropies bias-corrected by the delete-one
        jackknife (``attrs['bias_correction']``), error bars by the delta method (``attrs['se_method']``).
        ``attrs`` also say which columns are estimates, which are bounds and which are missing."""
        if self._thermo is None:
            self._thermo = thermo_estimates(self.plan, self.acc)
        return self._thermo.copy()

    def jarzynski(self, beta):
        """Monte Carlo ``<exp(-beta W)>`` at every time and its standard error (from the work histogram)."""
        w = np.arange(-self.plan.woff, self.plan.woff + 1) if self.plan.driven else np.zeros(1)
        h = self.acc.work / self.trajectories
        e = np.exp(-beta * w)
        mean = h @ e
        return mean, np.sqrt(np.maximum(h @ e**2 - mean**2, 0.0) / max(self.trajectories - 1, 1))

    def activity(self) -> pd.DataFrame:
        """Mean and variance of the number of jumps up to each time, with standard errors (streamed sums)."""
        N = self.trajectories
        m = self.acc.mom[:, K.M_ACT:K.M_ACT + 4] / N
        m1, m2, m3, m4 = m.T
        var = np.maximum(m2 - m1**2, 0.0)
        mu4 = m4 - 4 * m3 * m1 + 6 * m2 * m1**2 - 3 * m1**4
        return pd.DataFrame({"mean": m1, "mean_se": np.sqrt(var / max(N - 1, 1)), "var": var,
                             "var_se": np.sqrt(np.maximum(mu4 - var**2, 0.0) / max(N - 1, 1))},
                            index=pd.Index(self.times, name="t"))

    def trajectory_entropy(self):
        """Streamed ``<Delta s_obs>`` and ``<exp(-Delta s_obs)>`` at every time with standard errors
        (``Delta s_obs`` against the exact ``p_x(t)``); None when the run did not stream them."""
        if not self.plan.trajectory_entropy:
            return None
        N = self.trajectories
        s = self.acc.mom[:, K.M_DS:K.M_DS + 4] / N
        d1, d2, e1, e2 = s.T
        with np.errstate(invalid="ignore"):
            return pd.DataFrame({"mean_ds": d1, "mean_ds_se": np.sqrt(np.maximum(d2 - d1**2, 0.0) / max(N - 1, 1)),
                                 "exp_mds": e1, "exp_mds_se": np.sqrt(np.maximum(e2 - e1**2, 0.0) / max(N - 1, 1))},
                                index=pd.Index(self.times, name="t"))

    def delta_s_histogram(self, t_index=-1):
        """(bin edges (B+1,), counts (B+2,) with under- and overflow first and last) of ``Delta s_obs``."""
        if self.acc.dsh is None:
            return None
        lo, inv = self.plan.tables.dsbin
        B = self.acc.dsh.shape[1] - 2
        return lo + np.arange(B + 1) / inv, self.acc.dsh[t_index]

    @property
    def first_law(self):
        """(violations, (trajectory, time) samples checked) of ``Delta E_S + sum Delta E_b = W``, exact integers."""
        return int(self.acc.viol[0]), int(self.acc.viol[1])

    @property
    def records(self):
        """Per-trajectory state (enumerated) or level and bath energies (implicit), jumps and work at each
        sample time, if the run kept them (``records=True``); else None."""
        a = self.acc
        if a.rec_x is None:
            return None
        rec = {"x" if self.joint else "s": a.rec_x, "jumps": a.rec_n}
        if a.rec_w is not None:
            rec["work"] = a.rec_w
        if a.rec_E is not None:
            rec["E"] = a.rec_E
        return rec

    @property
    def paths(self):
        """Full jump paths of the first trajectories: list of (times, states) (enumerated: state indices;
        implicit: (len, 1 + N) arrays of level and bath energies)."""
        a = self.acc
        if self.joint:
            return [(a.path_t[i, :a.path_len[i]], a.path_x[i, :a.path_len[i]]) for i in range(len(a.path_len))]
        return [(a.path_t[i, :a.path_len[i]],
                 np.column_stack([a.path_x[i, :a.path_len[i]], a.path_E[i, :a.path_len[i]]]))
                for i in range(len(a.path_len))]

    def plot(self, what="thermo", ax=None, exact=None, **kwargs):
        """Draw one quantity (Monte Carlo markers with 95% error bars) and return the matplotlib axes.

        Parameters
        ----------
        what : {"thermo", "p_system", "S_obs", "energy", "heat", "work", "bath", "activity"}, optional
            The quantity (see :func:`trajmc.plotting.plot`); default ``"thermo"`` (``Sigma``, ``Sigma_tilde``).
        ax : matplotlib.axes.Axes, optional
            Axes to draw into (default: a new figure).
        exact : Solution, optional
            Exact lines (stems for distributions) under the Monte Carlo points.
        **kwargs
            E.g. ``bath``, ``t_index``, ``log``, ``title``; see :func:`trajmc.plotting.plot`.

        Returns
        -------
        matplotlib.axes.Axes
        """
        from . import plotting  # layering: keeps matplotlib out of the core import

        return plotting.plot(self, what=what, ax=ax, exact=exact, **kwargs)

    def __repr__(self):
        what = f"{self.plan.n_states} states" if self.joint else "marginals only"
        return (f"<Ensemble {self.model.name!r}: {self.trajectories} trajectories, {self.stats.get('jumps')} jumps, "
                f"{self.plan.path} path ({what}), {len(self.times)} times>")
