"""Public Monte Carlo API: :func:`simulate` and the :class:`Ensemble` result."""
from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd

from . import engine
from .estimate import BIAS_CORRECTION, SE_METHOD, thermo_estimates
from .network import levels_at
from .thermo import marginal_system, space_of

__all__ = ["simulate", "Ensemble"]


class Ensemble:
    """Monte Carlo estimates of a model, rebuilt from streaming accumulators.

    Attributes
    ----------
    times : ndarray (n_t,)
    states : DataFrame (one row per joint state: ``s``, ``E_<bath>``)
    p, p_se : ndarray (n_t, n_states)  relative frequencies and multinomial standard errors
    counts : ndarray (n_t, n_states) int64
    stats : dict  trajectories, jumps, wall_s, compile_s, threads, chunks, chunk_size, seed_entropy, ...
    records : dict or None  per-trajectory ``x`` (state index) and ``jumps`` at each sample time
    paths : list of (times, state indices) for the first few trajectories
    """

    def __init__(self, plan: engine.Plan, acc: engine.Accumulators, stats: dict):
        self.plan = plan
        self.model = plan.model
        self.network = plan.network
        self.times = plan.times
        self.acc = acc
        self.stats = stats
        self._states = None

    @property
    def trajectories(self) -> int:
        return int(self.acc.counts[0].sum())

    @property
    def counts(self) -> np.ndarray:
        return self.acc.counts

    @property
    def states(self) -> pd.DataFrame:
        if self._states is None:
            self._states = self.network.frame()
        return self._states

    @property
    def p(self) -> np.ndarray:
        return self.acc.counts / self.trajectories

    @property
    def p_se(self) -> np.ndarray:
        p = self.p
        return np.sqrt(p * (1.0 - p) / self.trajectories)

    def p_system(self):
        """System marginal ``p_s(t)`` and its standard error: two (n_t, n_levels) arrays."""
        p = marginal_system(self.acc.counts, space_of(self.network)) / self.trajectories
        return p, np.sqrt(p * (1.0 - p) / self.trajectories)

    def heat_distribution(self, bath=0, t_index=-1) -> pd.Series:
        """Histogram of the heat ``Q`` into the system from ``bath`` up to ``times[t_index]``
        (``Q = -(E_bath(t) - E_bath(0))``, integer grid steps) as probabilities indexed by Q."""
        nu = self.model.bath_names.index(bath) if isinstance(bath, str) else int(bath)
        a = self.plan.arrays
        em, off = int(a["emax"][nu]), int(a["hoff"][nu])
        h = self.acc.heat[t_index, off - em: off + em + 1]
        d = np.arange(-em, em + 1)
        keep = h > 0
        return pd.Series(h[keep][::-1] / self.trajectories, index=pd.Index(-d[keep][::-1], name="Q"),
                         name=f"P(Q_{self.model.bath_names[nu]})")

    @property
    def records(self):
        if self.acc.rec_x is None:
            return None
        rec = {"x": self.acc.rec_x, "jumps": self.acc.rec_n}
        if self.acc.rec_w is not None:
            rec["work"] = self.acc.rec_w
        return rec

    @property
    def paths(self):
        a = self.acc
        return [(a.path_t[i, :a.path_len[i]], a.path_x[i, :a.path_len[i]]) for i in range(len(a.path_len))]

    def thermo(self) -> pd.DataFrame:
        """PHYSICS.md §4 estimates with a ``<col>_se`` column each; entropies Miller–Madow corrected
        (``df.attrs['bias_correction']``), error bars by the delta method (``df.attrs['se_method']``)."""
        a = self.plan.arrays
        scale = a["g_scale"]
        driven = self.plan.driven
        return thermo_estimates(self.times, self.acc.counts, self.acc.cross / scale, self.acc.heat, a["hoff"],
                                a["emax"], self.trajectories, space_of(self.network), a["g0"] / scale,
                                levels=levels_at(self.plan.segments, self.times) if driven else None,
                                work=self.acc.work if driven else None, woff=a["woff"])

    def work_distribution(self, t_index=-1) -> pd.Series:
        """Histogram of the work done on the system up to ``times[t_index]`` (integer energies)."""
        a = self.plan.arrays
        h = self.acc.work[t_index]
        w = np.arange(-a["woff"], a["woff"] + 1)
        keep = h > 0
        return pd.Series(h[keep] / self.trajectories, index=pd.Index(w[keep], name="W"), name="P(W)")

    def __repr__(self):
        return (f"<Ensemble {self.model.name!r}: {self.trajectories} trajectories, {self.stats.get('jumps')} jumps, "
                f"{self.network.n_states} states, {len(self.times)} times>")


def simulate(model, trajectories=None, seed=None, threads=None, times=None, chunk_size=None, records=None,
             paths=0, out=None, progress=None, quiet=True, backend="threads", scheduler=None, workers=None) -> Ensemble:
    """Sample trajectories of the Pauli MME by exact Gillespie simulation.

    Parameters
    ----------
    model : Model, dict or path
    trajectories : int, optional   (default: the model's ``simulation.trajectories``)
    seed : None | int | SeedSequence   (default: the model's ``simulation.seed``; None draws fresh entropy,
        which is recorded in ``stats['seed_entropy']``)
    threads : int, optional   numba threads (default: all cores); never changes the result
    times : array_like, optional   sample times overriding the model's
    chunk_size : int, optional   trajectories per chunk (default: the model's, 4096)
    records : bool, optional   keep each trajectory's state and jump count at every sample time
        (default: when trajectories x times <= 2e7)
    paths : int   keep the full jump paths of the first ``paths`` trajectories
    out : path, optional   run directory: written as the run goes, so an interrupted run can be resumed
    progress : bool, optional   tqdm bar (default: when not quiet and stderr is a terminal)
    backend : "threads" | "dask"   where chunks run; the result is bit-identical either way
    scheduler : str, optional   address of a running Dask scheduler (dask backend); None starts a
        LocalCluster of ``workers`` processes (default 2) and closes it afterwards
    workers : int, optional   LocalCluster size, or workers to wait for on an existing scheduler

    Returns
    -------
    Ensemble
    """
    plan = engine.make_plan(model, trajectories, seed, times, chunk_size, records, paths)
    threads = engine.resolve_threads(threads)
    backend = check_backend(backend, scheduler, workers)
    session = None
    if backend == "dask":  # connect (or start the cluster) before anything is written
        from .cluster import DaskSession

        session = DaskSession(scheduler, workers)
    try:
        if out is not None:
            from .runio import RunWriter

            writer = RunWriter.create(out, plan)
            return writer.run(threads, progress=_progress_flag(progress, quiet), backend=backend, scheduler=session)
        acc = engine.new_accumulators(plan)
        return execute(plan, acc, threads, _progress_flag(progress, quiet), backend=backend, scheduler=session)
    finally:
        if session is not None:
            session.close()


def backend_kwargs(scheduler=None, workers=None) -> dict:
    """The keyword arguments that select the Dask backend when a scheduler or a worker count is given."""
    if scheduler is None and workers is None:
        return {}
    return {"backend": "dask", "scheduler": scheduler, "workers": workers}


def check_backend(backend, scheduler=None, workers=None):
    from .errors import ModelError

    if backend not in ("threads", "dask"):
        raise ModelError("backend", f"must be 'threads' or 'dask', got {backend!r}")
    if backend == "threads" and (scheduler is not None or workers is not None):
        raise ModelError("backend", "scheduler/workers need backend='dask'")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ModelError("workers", f"must be a positive integer, got {workers!r}")
    if scheduler is not None and not isinstance(scheduler, str):
        raise ModelError("scheduler", f"must be an address string, got {scheduler!r}")
    return backend


def _progress_flag(progress, quiet):
    if progress is None:
        return (not quiet) and sys.stderr.isatty()
    return bool(progress)


def execute(plan, acc, threads, show_progress=False, checkpoint=None, backend="threads", scheduler=None,
            workers=None) -> Ensemble:
    """Run the remaining chunks of ``plan`` into ``acc`` and wrap the result."""
    compile_s = engine.compile_kernel()
    bar = None
    cb = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=plan.n_chunks, initial=acc.chunks_done, unit="chunk", desc=plan.model.name, file=sys.stderr)

        def cb(k):
            bar.update(k - bar.n)
    t0 = time.perf_counter()
    info = {"backend": "threads"}
    try:
        if backend == "dask":
            from .cluster import DaskSession, run_plan_dask

            own = not isinstance(scheduler, DaskSession)  # a session passed in stays open for its owner
            session = DaskSession(scheduler, workers) if own else scheduler
            try:
                info = run_plan_dask(plan, acc, session, progress=cb, checkpoint=checkpoint)
            finally:
                if own:
                    session.close()
            threads = info["workers"]
        else:
            engine.run_plan(plan, acc, threads, progress=cb, checkpoint=checkpoint)
    finally:
        if bar is not None:
            bar.close()
    stats = make_stats(plan, acc, threads, compile_s, time.perf_counter() - t0)
    stats.update(info)
    return Ensemble(plan, acc, stats)


def make_stats(plan, acc, threads, compile_s, run_s):
    return {"trajectories": plan.trajectories, "jumps": int(acc.jumps.sum()), "wall_s": float(acc.wall_s),
            "compile_s": float(compile_s), "threads": int(threads), "chunks": plan.n_chunks,
            "chunk_size": plan.chunk_size, "seed_entropy": plan.entropy, "states": plan.network.n_states,
            "edges": plan.network.n_edges, "ns_per_jump": 1e9 * acc.wall_s * threads / max(int(acc.jumps.sum()), 1),
            "bias_correction": BIAS_CORRECTION, "se_method": SE_METHOD, "last_session_s": float(run_s)}
