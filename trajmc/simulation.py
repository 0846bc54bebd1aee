"""Public Monte Carlo API: :func:`simulate` (plan, run on threads or Dask, write a run directory)."""
from __future__ import annotations

import functools
import time

import numpy as np

from . import engine as eng
from .cluster import DaskSession, run_plan_dask
from .ensemble import Ensemble
from .errors import ModelError
from .estimate import BIAS_CORRECTION, SE_METHOD
from .progress import Progress, progress_mode
from .solver import propagate_segments
from .tables import fixed_point_scale

__all__ = ["simulate", "plan_run", "execute", "make_stats", "check_backend", "backend_kwargs"]


def exact_p(segments, times, progress=False):
    """The exact ``p_x(t)`` on the plan's network (the reference of the streamed ``Delta s_obs``)."""
    p, _, _ = propagate_segments(segments, segments[0][1].p0, times, progress=progress,
                                 desc="exact p_x(t) (entropy reference)")
    return p


def plan_run(model, trajectories=None, seed=None, times=None, chunk_size=None, records=None, paths=0, engine_=None,
             threads=None, memory_budget=None, max_jumps=None, trajectory_entropy=None, progress=False) -> eng.Plan:
    """:func:`trajmc.eng.make_plan` with the exact solver as the entropy reference (``progress``: its report)."""
    return eng.make_plan(model, trajectories, seed, times, chunk_size, records, paths, engine=engine_,
                            memory_budget=memory_budget, max_jumps=max_jumps,
                            threads=eng.resolve_threads(threads), trajectory_entropy=trajectory_entropy,
                            exact=functools.partial(exact_p, progress=progress))


def simulate(model, trajectories=None, seed=None, threads=None, times=None, chunk_size=None, records=None,
             paths=0, out=None, progress=None, quiet=None, backend="threads", scheduler=None, workers=None,
             engine=None, memory_budget=None, max_jumps=None, trajectory_entropy=None, overwrite=False) -> Ensemble:
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
    records : bool, optional   keep each trajectory's state, jumps and work at every sample time
        (default: the model's ``simulation.records``, else off: every statistic is streamed)
    paths : int   keep the full jump paths of the first ``paths`` trajectories
    out : path, optional   run directory: written as the run goes, so an interrupted run can be resumed; locked
        while it is written (a second writer is refused).  An existing directory is used only if it is empty
    overwrite : bool   replace an existing run directory ``out`` (only one that holds nothing but trajmc's files)
    progress : bool or str, optional   report progress on stderr: None, True or "auto" (default) a bar on a
        terminal and a status line every ~10 s otherwise (batch jobs); "tqdm" always a bar, "text" always status
        lines; False or "" nothing (see :mod:`trajmc.progress`)
    quiet : bool, optional   True: no progress report (the same as ``progress=False``)
    backend : "threads" | "dask"   where chunks run; the result is bit-identical either way
    scheduler : str, optional   address of a running Dask scheduler (dask backend); None starts a
        LocalCluster of ``workers`` processes (default 2) and closes it afterwards
    workers : int, optional   LocalCluster size, or workers to wait for on an existing scheduler
    engine : "auto" | "enumerated" | "implicit", optional   how the state is held (default: the model's
        ``simulation.engine``, else auto: enumerated when the reachable network and its joint accumulators
        fit, implicit per-bath rate tables otherwise); the choice and its reason are in ``stats``
    memory_budget : int or str, optional   refuse runs estimated to need more (e.g. ``"4GiB"``; default
        ``TRAJMC_MEMORY_BUDGET`` or half the RAM)
    max_jumps : float, optional   refuse runs expected to make more jumps (default 1e13)
    trajectory_entropy : bool, optional   stream each trajectory's ``Delta s_obs`` against the exact
        ``p_x(t)`` (default: when the path is enumerated and the exact solution is small)

    Returns
    -------
    Ensemble
    """
    progress = _progress_flag(progress, quiet)
    plan = plan_run(model, trajectories, seed, times, chunk_size, records, paths, engine, threads, memory_budget,
                    max_jumps, trajectory_entropy, progress=progress)
    threads = eng.resolve_threads(threads)
    backend = check_backend(backend, scheduler, workers)
    session = None
    if backend == "dask":  # connect (or start the cluster) before anything is written
        session = DaskSession(scheduler, workers)
    try:
        if out is not None:
            from .rundir import RunWriter  # circular: rundir imports this module

            writer = RunWriter.create(out, plan, overwrite=overwrite)
            return writer.run(threads, progress=progress, backend=backend,
                              scheduler=session)
        acc = eng.new_accumulators(plan)
        return execute(plan, acc, threads, progress, backend=backend, scheduler=session)
    finally:
        if session is not None:
            session.close()


def backend_kwargs(scheduler=None, workers=None) -> dict:
    """The keyword arguments that select the Dask backend when a scheduler or a worker count is given."""
    if scheduler is None and workers is None:
        return {}
    return {"backend": "dask", "scheduler": scheduler, "workers": workers}


def check_backend(backend, scheduler=None, workers=None):
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
    """The ``progress=`` value to use: ``progress`` itself, or off when it is not given and ``quiet`` is."""
    if progress is None and quiet:
        return False
    progress_mode(progress)  # a bad value is refused before any work
    return progress


def execute(plan, acc, threads, show_progress=False, checkpoint=None, backend="threads", scheduler=None,
            workers=None) -> Ensemble:
    """Run the remaining chunks of ``plan`` into ``acc`` and wrap the result."""
    compile_s = eng.compile_kernel()
    t0 = time.perf_counter()
    info = {"backend": "threads"}
    with Progress(plan.n_chunks, desc=f"simulate {plan.model.name} ({plan.path})", unit="chunks",
                  enabled=show_progress, initial=acc.chunks_done) as bar:

        def cb(k):
            bar.update(k - bar.done)
        if backend == "dask":
            own = not isinstance(scheduler, DaskSession)  # a session passed in stays open for its owner
            session = DaskSession(scheduler, workers) if own else scheduler
            try:
                info = run_plan_dask(plan, acc, session, progress=cb, checkpoint=checkpoint)
            finally:
                if own:
                    session.close()
            threads = info["workers"]
        else:
            eng.run_plan(plan, acc, threads, progress=cb, checkpoint=checkpoint)
    stats = make_stats(plan, acc, threads, compile_s, time.perf_counter() - t0)
    stats.update(info)
    return Ensemble(plan, acc, stats)


def make_stats(plan, acc, threads, compile_s, run_s):
    jumps = int(acc.jumps.sum())
    return {"trajectories": plan.trajectories, "jumps": jumps, "wall_s": float(acc.wall_s),
            "compile_s": float(compile_s), "threads": int(threads), "chunks": plan.n_chunks,
            "chunk_size": plan.chunk_size, "seed_entropy": plan.entropy, "path": plan.path,
            "path_reason": plan.reason, "states": plan.n_states,
            "ns_per_jump": 1e9 * acc.wall_s * threads / max(jumps, 1), "records": plan.record,
            "trajectory_entropy": plan.trajectory_entropy, "memory_estimate": plan.memory.get("total"),
            "bias_correction": BIAS_CORRECTION, "se_method": SE_METHOD, "last_session_s": float(run_s)}


def extend(ens, trajectories, threads=None, progress=None):
    """:meth:`trajmc.Ensemble.extend`: the longer run of ``trajectories``, bit-identical to running it at once."""
    threads = eng.resolve_threads(threads)
    plan, acc = extended(ens.plan, ens.acc, trajectories, threads)
    return execute(plan, acc, threads, bool(progress))


def extended(plan, acc, trajectories, threads=1):
    """(plan, accumulators) of the longer run of ``trajectories`` with ``plan``'s seed and chunking, holding
    ``acc``'s finished chunks (copied) and ready to run the rest.  Refuses what would not be bit-identical."""
    n = eng._count(trajectories, "trajectories")
    if acc.chunks_done != plan.n_chunks:
        raise ModelError("trajectories", f"the run is unfinished ({acc.chunks_done} of {plan.n_chunks} chunks): "
                                         "finish it (resume) before extending it")
    if n <= plan.trajectories:
        raise ModelError("trajectories", f"must exceed the {plan.trajectories} trajectories already run, got {n}")
    if plan.trajectories % plan.chunk_size:
        raise ModelError("trajectories", f"this run's last chunk is partial ({plan.trajectories} trajectories in "
                                         f"chunks of {plan.chunk_size}): a longer run draws that chunk in full, so "
                                         "it cannot be extended bit-identically (extend runs whose trajectories "
                                         "are a multiple of chunk_size)")
    # the longer run's plan, built as simulate builds it (the exact entropy reference is the same: reused)
    new = plan_run(plan.model, n, plan.entropy, None, plan.chunk_size, plan.record, plan.paths, plan.path, threads,
                   trajectory_entropy=False)
    if plan.trajectory_entropy:
        new.tables = new.tables._replace(lnq=plan.tables.lnq, dsbin=plan.tables.dsbin)
        new.trajectory_entropy = True
    if new.g_scale != plan.g_scale:  # the entropy sums are fixed-point integers at a scale set by the run size
        gmax = float(np.abs(plan.g0).max()) if plan.g0 is not None else None
        top = ""
        if gmax is not None:
            lo, hi = plan.trajectories, n
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if fixed_point_scale(gmax, mid) == plan.g_scale else (lo, mid)
            top = f"; it extends bit-identically to at most {lo} trajectories"
        raise ModelError("trajectories", f"a run of {n} trajectories sums the streamed entropy terms at a coarser "
                                         f"fixed-point scale than this run of {plan.trajectories}, so extending it "
                                         f"could not be bit-identical to that run{top}")
    out = eng.new_accumulators(new)
    for k, a in acc.arrays().items():
        if k.startswith("rec_"):
            continue
        if k in ("jumps", "fingerprint"):
            getattr(out, k)[:len(a)] = a
        else:
            setattr(out, k, a.copy())
    out.windows = acc.windows
    for k in ("rec_x", "rec_n", "rec_w", "rec_E"):
        a = getattr(acc, k)
        if a is not None:
            getattr(out, k)[:len(a)] = a
    out.chunks_done = acc.chunks_done
    out.wall_s = acc.wall_s
    return new, out
