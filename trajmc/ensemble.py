"""The Monte Carlo result: :class:`Ensemble`, rebuilt from the streaming accumulators of a run."""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import _kernel as K
from .estimate import marginals, thermo_estimates
from .results import ResultMixin, positive_series, times_text

__all__ = ["Ensemble"]


class Ensemble(ResultMixin):
    """Monte Carlo estimates of a model, rebuilt from the streaming accumulators of a run.

    Shares its methods and their return types with :class:`trajmc.Solution`: :meth:`p_system` (standard
    errors: :meth:`p_system_se`), :meth:`thermo` (with a ``<col>_se`` column each),
    :meth:`heat_distribution`, :meth:`bath_distribution`, :meth:`work_distribution` and the long-format
    tables :meth:`p_system_table` and :meth:`heat_table`.  :meth:`save` writes a run directory that
    :func:`trajmc.load_run` reloads identically; :meth:`extend` adds trajectories (bit-identical to a longer
    run with the same seed).

    The full joint distribution (:attr:`p`, :attr:`p_se`, :attr:`counts`, :attr:`states`) exists on the
    enumerated path only (:attr:`joint`); everything else exists on both paths.

    Parameters
    ----------
    plan : trajmc.engine.Plan
        The run's plan (made by :func:`trajmc.simulate` or rebuilt by :func:`trajmc.load_run`; an Ensemble
        is not meant to be built by hand).
    acc : trajmc.engine.Accumulators
        Its accumulators after the last chunk.
    stats : dict
        Run statistics (see :attr:`stats`).

    Attributes
    ----------
    model : Model
        The model simulated (with the sample times used).
    times : ndarray of float64, shape (n_t,)
        Sample times (units of 1/gamma).
    stats : dict
        ``trajectories``, ``jumps`` (total jumps simulated), ``wall_s``, ``compile_s``, ``threads``,
        ``chunks``, ``chunk_size``, ``seed_entropy`` (the seed every chunk is derived from), ``path``
        (``"enumerated"`` or ``"implicit"``) and ``path_reason``, ``states``, ``ns_per_jump``, ``records``,
        ``trajectory_entropy``, ``memory_estimate``, ``bias_correction``, ``se_method``, ``run_dir``
        (when the run has a directory), backend details.
    plan : trajmc.engine.Plan
        Everything fixed before the first trajectory (path, tables, chunking, seed).
    acc : trajmc.engine.Accumulators
        The streaming sums the estimates are computed from.
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
    def bath_names(self) -> list[str]:
        """The model's bath names, in order (the ``<bath>`` of the ``E_<bath>``, ``Q_<bath>`` columns)."""
        return self.model.bath_names

    @property
    def network(self):
        """The enumerated network of joint states and jumps (:class:`trajmc.Network`; None on the implicit
        path)."""
        return self.plan.network

    @property
    def joint(self) -> bool:
        """True when the full joint ``p_x(t)`` was accumulated (enumerated path)."""
        return self.acc.counts is not None

    @property
    def trajectories(self) -> int:
        """The number of trajectories simulated (int)."""
        return int(self.acc.sys2[0].sum())

    @property
    def counts(self):
        """Occupation counts of every joint state at every sample time (ndarray of int64, shape
        (n_t, n_states), columns in the row order of :attr:`states`); None without the joint."""
        return self.acc.counts

    @property
    def states(self):
        """One row per joint state, in the column order of :attr:`p`: ``s`` (level index) and one integer
        column ``E_<bath>`` (bath energy, grid steps) per bath (pandas DataFrame); None without the joint."""
        if self.network is None:
            return None
        if self._states is None:
            self._states = self.network.frame()
        return self._states

    @property
    def p(self):
        """Relative frequencies of the joint states, ``counts / trajectories`` (ndarray of float64, shape
        (n_t, n_states)); None without the joint."""
        return None if self.acc.counts is None else self.acc.counts / self.trajectories

    @property
    def p_se(self):
        """Multinomial standard errors of :attr:`p`, ``sqrt(p (1 - p) / trajectories)`` (ndarray of float64,
        shape (n_t, n_states)); None without the joint."""
        p = self.p
        return None if p is None else np.sqrt(p * (1.0 - p) / self.trajectories)

    # ------------------------------------------------------------------ marginals
    def p_system(self) -> np.ndarray:
        """System marginal ``p_s(t)`` (relative frequencies; the same type as ``Solution.p_system()``).

        Returns
        -------
        ndarray of float64, shape (n_t, n_levels)
            Standard errors: :meth:`p_system_se`; both in long format: :meth:`p_system_table`.
        """
        return self.acc.sys2.sum(axis=1) / self.trajectories

    def p_system_se(self) -> np.ndarray:
        """Multinomial standard errors of :meth:`p_system`, ``sqrt(p (1 - p) / trajectories)``.

        Returns
        -------
        ndarray of float64, shape (n_t, n_levels)
        """
        p = self.p_system()
        return np.sqrt(p * (1.0 - p) / self.trajectories)

    def _heat_matrix(self, nu):
        w = self.acc.windows
        h = self.acc.heat[:, w.qoff[nu]: w.qoff[nu] + w.qwid[nu]]
        q = np.arange(w.qlo[nu], w.qlo[nu] + w.qwid[nu], dtype=np.int64)
        N = self.trajectories
        P = h / N
        return q, P, np.sqrt(P * (1.0 - P) / N)

    def bath_distribution(self, bath=0, t_index=-1) -> pd.Series:
        """``p(E)`` of one bath at ``times[t_index]`` (relative frequencies).

        Parameters
        ----------
        bath : str or int
            Bath name (one of :attr:`bath_names`) or index.
        t_index : int
            Index into :attr:`times` (default: the last time).

        Returns
        -------
        pandas.Series
            Probabilities (float64) indexed by ``E`` (int64, grid steps), occupied energies only; named
            ``p(E_<bath>)``.
        """
        nu = self._bath(bath)
        k = self._t_index(t_index)
        M = marginals(self.plan, self.acc)
        c = M.sE[nu][k].sum(axis=1)
        return positive_series(M.lo[nu] + np.arange(len(c)), c / self.trajectories, "E",
                               f"p(E_{self.bath_names[nu]})")

    def work_distribution(self, t_index=-1) -> pd.Series:
        """Histogram of the work done on the system up to ``times[t_index]``.

        Parameters
        ----------
        t_index : int
            Index into :attr:`times` (default: the last time).

        Returns
        -------
        pandas.Series
            Probabilities (float64) indexed by ``W`` (int64, grid steps), values with ``P > 0`` only; named
            ``P(W)``.  An undriven model has ``P(W = 0) = 1``.
        """
        k = self._t_index(t_index)
        h = self.acc.work[k]
        w = np.arange(-self.plan.woff, self.plan.woff + 1, dtype=np.int64) if self.plan.driven \
            else np.zeros(1, np.int64)
        return positive_series(w, h / self.trajectories, "W", "P(W)")

    # ------------------------------------------------------------------ estimates
    def thermo(self) -> pd.DataFrame:
        """Thermodynamic estimates at every sample time, each with its standard error.

        Entropies are plug-in estimates bias-corrected by the delete-one jackknife over trajectories (exact
        from the counts; ``attrs['bias_correction']``).  Standard errors (``attrs['se_method']``): the
        delta method (each trajectory's influence, time correlations included), plus the second-order
        chi-square term of a plug-in entropy, plus the disagreement between the jackknife and Miller-Madow
        corrections (large where the run is too sparse to trust either).  Linear quantities (energies,
        heat, work) are plain means.

        Returns
        -------
        pandas.DataFrame
            Indexed by ``t``; the columns of :meth:`trajmc.Solution.thermo` and a ``<col>_se`` column for
            each.  ``attrs`` says which columns are estimates, which are bounds and which are missing
            (NaN: without the full joint, e.g. ``S_obs`` on the implicit path with several baths).
        """
        if self._thermo is None:
            self._thermo = thermo_estimates(self.plan, self.acc)
        return self._thermo.copy()

    def jarzynski(self, beta):
        """Monte Carlo ``<exp(-beta W)>`` at every sample time, from the work histogram.

        Parameters
        ----------
        beta : float
            Inverse temperature (1 / grid step).

        Returns
        -------
        mean : ndarray of float64, shape (n_t,)
        se : ndarray of float64, shape (n_t,)
            Its standard error.
        """
        w = np.arange(-self.plan.woff, self.plan.woff + 1) if self.plan.driven else np.zeros(1)
        h = self.acc.work / self.trajectories
        e = np.exp(-beta * w)
        mean = h @ e
        return mean, np.sqrt(np.maximum(h @ e**2 - mean**2, 0.0) / max(self.trajectories - 1, 1))

    def activity(self) -> pd.DataFrame:
        """Mean and variance of the number of jumps up to each sample time (streamed sums).

        Returns
        -------
        pandas.DataFrame
            Indexed by ``t``; columns ``mean``, ``mean_se``, ``var``, ``var_se`` (float64).
        """
        N = self.trajectories
        m = self.acc.mom[:, K.M_ACT:K.M_ACT + 4] / N
        m1, m2, m3, m4 = m.T
        var = np.maximum(m2 - m1**2, 0.0)
        mu4 = m4 - 4 * m3 * m1 + 6 * m2 * m1**2 - 3 * m1**4
        return pd.DataFrame({"mean": m1, "mean_se": np.sqrt(var / max(N - 1, 1)), "var": var,
                             "var_se": np.sqrt(np.maximum(mu4 - var**2, 0.0) / max(N - 1, 1))},
                            index=pd.Index(self.times, name="t"))

    def trajectory_entropy(self):
        """Streamed ``<Delta s_obs>`` and ``<exp(-Delta s_obs)>`` at every sample time (``Delta s_obs``
        measured against the exact ``p_x(t)``).

        Returns
        -------
        pandas.DataFrame or None
            Indexed by ``t``; columns ``mean_ds``, ``mean_ds_se``, ``exp_mds``, ``exp_mds_se`` (float64);
            None when the run did not stream them.
        """
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
        """Histogram of the trajectories' ``Delta s_obs`` at ``times[t_index]``.

        Parameters
        ----------
        t_index : int
            Index into :attr:`times` (default: the last time).

        Returns
        -------
        tuple of (ndarray, ndarray) or None
            ``(edges, counts)``: bin edges (float64, shape (B + 1,)) and counts (int64, shape (B + 2,), the
            underflow first and the overflow last); None when the run did not stream ``Delta s_obs``.
        """
        if self.acc.dsh is None:
            return None
        lo, inv = self.plan.tables.dsbin
        B = self.acc.dsh.shape[1] - 2
        return lo + np.arange(B + 1) / inv, self.acc.dsh[t_index]

    @property
    def first_law(self):
        """``(violations, samples)`` (two ints): how many (trajectory, time) samples broke
        ``Delta E_S + sum Delta E_b = W`` (exact integers: 0 unless something is wrong) out of those checked."""
        return int(self.acc.viol[0]), int(self.acc.viol[1])

    @property
    def records(self):
        """Per-trajectory records, if the run kept them (``records=True``); else None.

        A dict of ndarrays with one row per trajectory and one column per sample time: ``x`` (int32,
        (trajectories, n_t): joint-state index, enumerated path) or ``s`` (int32: level, implicit path) with
        ``E`` (int32, (trajectories, n_t, n_baths): bath energies); ``jumps`` (int32: jumps so far);
        ``work`` (int32: work so far, driven models only).
        """
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
        """Full jump paths of the first ``paths`` trajectories (the ``paths=`` of :func:`trajmc.simulate`).

        A list of ``(times, states)``: ``times`` ndarray of float64 (n_jumps + 1,) and ``states`` the state
        after each jump: joint-state indices (int64, (n_jumps + 1,)) on the enumerated path, or level and bath
        energies (int64, (n_jumps + 1, 1 + n_baths)) on the implicit path.
        """
        a = self.acc
        if self.joint:
            return [(a.path_t[i, :a.path_len[i]], a.path_x[i, :a.path_len[i]]) for i in range(len(a.path_len))]
        return [(a.path_t[i, :a.path_len[i]],
                 np.column_stack([a.path_x[i, :a.path_len[i]], a.path_E[i, :a.path_len[i]]]))
                for i in range(len(a.path_len))]

    # ------------------------------------------------------------------ saving, extending
    def save(self, run_dir, overwrite=False):
        """Write this result as a run directory that :func:`trajmc.load_run` reloads identically.

        The same writer as ``simulate(..., out=run_dir)`` (resolved model, provenance, accumulators,
        estimates).  Figures are not drawn here.

        Parameters
        ----------
        run_dir : str or os.PathLike
            A new or empty directory.
        overwrite : bool
            Replace a run directory that holds only trajmc's files.

        Returns
        -------
        pathlib.Path
            The run directory.
        """
        from .rundir import save_new_run  # cycle: the run-directory layer above builds Ensembles (load_run)

        return save_new_run(self, run_dir, overwrite=overwrite)

    def extend(self, trajectories, threads=None, progress=None):
        """The same run with more trajectories: bit-identical to ``simulate(model, trajectories, seed)``.

        Chunks are seeded independently (``SeedSequence(seed, spawn_key=(chunk,))``), so extending runs the
        chunks the longer run has beyond this one's and adds them, in order, to a copy of the sums.

        Parameters
        ----------
        trajectories : int
            The total wanted (more than :attr:`trajectories`).
        threads : int, optional
            Numba threads (default: all cores); never changes the result.
        progress : bool, optional
            Report progress (default: no).

        Returns
        -------
        Ensemble
            A new result; this one is unchanged.  To extend a run directory in place: :func:`trajmc.extend_run`.

        Raises
        ------
        trajmc.ModelError
            ``trajectories`` not above the current number, or this run's last chunk is partial (its number of
            trajectories is not a multiple of the chunk size), or the longer run would sum at another
            fixed-point scale (the message gives the largest number that can be reached).
        """
        from .simulation import extend  # cycle: the run layer above builds Ensembles

        return extend(self, trajectories, threads, progress)

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

    def summary(self) -> dict:
        """What :func:`repr` and the notebook summary show.

        Returns
        -------
        dict
            ``kind``, ``name``, ``levels``, ``baths``, ``times``, ``trajectories``, ``seed``, ``path``, and
            ``run_dir`` when the result has a run directory.
        """
        st = self.stats
        what = f"{self.plan.n_states} states" if self.joint else "marginals only"
        d = {"kind": "Ensemble", "name": self.model.name, "levels": [int(e) for e in self.model.energies],
             "baths": self.bath_names, "times": times_text(self.times), "trajectories": self.trajectories,
             "seed": self.plan.entropy, "path": f"{self.plan.path} ({what})"}
        if st.get("run_dir"):
            d["run_dir"] = st["run_dir"]
        return d
