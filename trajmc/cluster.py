"""Dask backend: chunks become Dask tasks on a LocalCluster or an existing scheduler.

The backend is the optional extra ``trajmc[cluster]`` (the packages ``dask`` and ``distributed``): this
module imports them only when a Dask session is opened, so ``import trajmc`` and every other command work
without them, and :func:`require_dask` turns their absence into one line naming ``pip install
'trajmc[cluster]'``.

* The plan (its kernel tables, without the networks) is scattered to every worker once (``broadcast=True``);
  tasks carry only the chunk index.  Each worker process compiles (or loads from numba's cache) the kernel once.
* A task returns its chunk's integer accumulators; results are added in chunk order as they
  complete, so the accumulators always hold a prefix of chunks (checkpoints, ``--resume``) and
  the totals are bit-identical to the threaded backend (integer sums).
* A worker that dies costs only its in-flight tasks: the scheduler reruns them elsewhere, and a
  rerun chunk draws the same random numbers (its seed is ``SeedSequence(entropy, spawn_key=(i,))``).
  If it held the only copy of the plan (one worker, or the last one that had it), the plan is scattered
  again and the lost chunks resubmitted; a cluster that cannot get going again ends the run with
  :class:`WorkerLost` and a checkpoint of the chunks finished (``--resume`` continues it).
* SIGINT/SIGTERM on the client are noticed while it waits (it polls), cancel the tasks and checkpoint the
  chunks added so far.  A task already running on a worker is not stopped by the cancellation: the worker
  finishes (or is killed with) that chunk.
"""
from __future__ import annotations

import time
import uuid
from concurrent.futures import CancelledError

from . import engine
from .errors import TrajmcError

__all__ = ["run_plan_dask", "DaskSession", "WorkerLost", "require_dask", "INSTALL_HINT"]

#: how to get the optional dependencies of the Dask backend
INSTALL_HINT = "pip install 'trajmc[cluster]'"


def require_dask():
    """The ``distributed`` module, or a one-line error saying how to install the ``cluster`` extra.

    Returns
    -------
    module
        ``distributed`` (``dask`` is imported too).

    Raises
    ------
    TrajmcError
        When ``dask`` or ``distributed`` cannot be imported.
    """
    try:
        import dask  # noqa: F401  (optional dependency, trajmc[cluster]: imported only for the Dask backend)
        import distributed  # (optional dependency, trajmc[cluster]: imported only for the Dask backend)
    except ImportError as exc:
        missing = exc.name or "dask"
        raise TrajmcError(f"backend: the Dask backend (backend='dask'; --backend dask, --workers or --scheduler) "
                          f"needs the optional packages dask and distributed ({missing!r} is not installed): "
                          f"{INSTALL_HINT}") from None
    return distributed


class DaskSession:
    """A client to ``scheduler`` (an address), or to a LocalCluster of ``workers`` processes that it owns.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running Dask scheduler; None starts a LocalCluster.
    workers : int, optional
        LocalCluster size (default 2), or the number of workers to wait for at ``scheduler``.
    """

    def __init__(self, scheduler=None, workers=None):
        distributed = require_dask()
        Client, LocalCluster = distributed.Client, distributed.LocalCluster
        self.cluster = None
        if scheduler is None:
            try:
                self.cluster = LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True,
                                            dashboard_address=None)
            except RuntimeError as exc:
                raise TrajmcError(f"workers: could not start a Dask LocalCluster ({exc}); scripts that start one "
                                  "need an `if __name__ == '__main__':` guard") from None
            self.client = Client(self.cluster)
        else:
            try:
                self.client = Client(scheduler, timeout="20s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise TrajmcError(f"scheduler: cannot connect to {scheduler!r} ({exc})") from None
            if workers:
                try:
                    self.client.wait_for_workers(workers, timeout=120)
                except TimeoutError:
                    self.client.close()
                    raise TrajmcError(f"workers: {workers} workers did not join {scheduler!r} within 120 s") from None

    @property
    def address(self):
        return self.client.scheduler.address

    def n_workers(self):
        return len(self.client.scheduler_info()["workers"])

    def close(self):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


class WorkerLost(TrajmcError):
    """The Dask cluster lost its workers (or the plan's data) beyond recovery; the checkpoint holds every chunk
    finished before, so the run can be resumed."""

    resumable = True


#: times the plan may be lost and scattered again without a chunk finishing in between
MAX_RECOVERIES = 5
#: seconds the client waits for a worker to (re)join when the cluster has none (the nanny restarts a killed one)
WORKER_WAIT_S = 120.0


def run_plan_dask(plan, acc, session: DaskSession, progress=None, checkpoint=None, checkpoint_every=2.0,
                  stop_after=None, max_inflight=None, max_recoveries=MAX_RECOVERIES, worker_wait=WORKER_WAIT_S):
    """Run the remaining chunks of ``plan`` as Dask tasks; same contract as :func:`engine.run_plan`.

    The plan is scattered once to every worker.  A worker that dies holding the only copy (``--workers 1``, or
    the last worker that had it) takes the plan with it: its chunks come back cancelled, and the plan is
    scattered again (to the workers there are, or to the first that joins within ``worker_wait`` seconds) and
    the unfinished chunks resubmitted.  After ``max_recoveries`` such losses in a row without a finished chunk,
    or a chunk whose workers keep dying (``KilledWorker``), the run stops with :class:`WorkerLost` and a
    checkpoint of the chunks finished.
    """
    distributed = require_dask()
    KilledWorker, as_completed = distributed.KilledWorker, distributed.as_completed

    client = session.client
    t_start = time.perf_counter()
    wall0 = acc.wall_s
    try:  # once per worker process (numba's cache makes it cheap); a worker that dies meanwhile compiles in its task
        compile_s = client.run(engine.compile_kernel)
    except Exception:  # noqa: BLE001 - only the timing is lost; the loss itself is handled below
        compile_s = {}
    wplan = engine.worker_plan(plan)
    end = plan.n_chunks if stop_after is None else min(plan.n_chunks, stop_after)
    workers = max(session.n_workers(), 1)
    max_inflight = max_inflight or 4 * workers
    token = uuid.uuid4().hex[:8]
    st = {"ac": as_completed(), "plan": None, "gen": 0, "lost": 0}
    inflight = {}  # chunk -> its future (current generation)
    pending = {}  # results that arrived ahead of the chunks before them
    stop = engine.StopFlag()

    def scatter():
        deadline = time.monotonic() + worker_wait
        while session.n_workers() < 1:  # the last worker died: wait for the nanny (or a new worker) to join
            if stop.set:
                raise KeyboardInterrupt
            if time.monotonic() > deadline:
                raise WorkerLost(f"dask: no worker left at {session.address} (waited {worker_wait:g} s for one to "
                                 f"join); {acc.chunks_done} of {plan.n_chunks} chunks are in the checkpoint")
            time.sleep(engine.POLL_SECONDS)
        # a fresh key each time: no release race with the copy that was lost
        st["plan"] = client.scatter([wplan], broadcast=True, hash=False)[0]

    def submit(c):
        size = int(plan.chunk_sizes(c, c + 1)[0])
        fut = client.submit(engine.simulate_chunk, st["plan"], c, size, acc.windows,
                            key=f"trajmc-{token}-{st['gen']}-chunk-{c}", pure=False)
        inflight[c] = fut
        st["ac"].add(fut)

    def recover(what):
        st["lost"] += 1
        if st["lost"] > max_recoveries:
            raise WorkerLost(f"dask: {what}, {st['lost']} times in a row without a chunk finishing; "
                             f"{acc.chunks_done} of {plan.n_chunks} chunks are in the checkpoint")
        for f in inflight.values():
            f.cancel()
        st["ac"] = as_completed()  # the old generation's futures are dropped with it
        st["gen"] += 1
        try:
            scatter()
            for c in sorted(inflight):
                submit(c)
        except (WorkerLost, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - a scheduler that went away, a refused connection, ...
            raise WorkerLost(f"dask: {what}, and the plan could not be sent again ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}); {acc.chunks_done} of "
                             f"{plan.n_chunks} chunks are in the checkpoint") from None

    last_ck = time.perf_counter()
    nxt = acc.chunks_done
    try:
        with stop:
            scatter()
            while nxt < end and nxt < acc.chunks_done + max_inflight:
                submit(nxt)
                nxt += 1
            while acc.chunks_done < end:
                while not st["ac"].has_ready():  # poll: a stop request is noticed while a chunk runs for hours
                    if stop.set:
                        raise KeyboardInterrupt
                    time.sleep(engine.POLL_SECONDS)
                if stop.set:
                    raise KeyboardInterrupt
                fut = next(st["ac"])
                c = next((k for k, f in inflight.items() if f is fut), None)
                if c is None:  # a future of an earlier generation
                    continue
                try:
                    res = fut.result()
                except CancelledError:  # its worker died with the only copy of the plan
                    recover(f"a worker died with the only copy of the plan (chunk {c} was lost)")
                    continue
                except KilledWorker as exc:
                    raise WorkerLost(f"dask: chunk {c} was running on workers that died repeatedly (KilledWorker: "
                                     f"{str(exc).splitlines()[0][:160] if str(exc) else ''}; out of memory?); "
                                     f"{acc.chunks_done} of {plan.n_chunks} chunks are in the checkpoint") from None
                fut.release()
                del inflight[c]
                st["lost"] = 0
                pending[res["chunk"]] = res
                while acc.chunks_done in pending:  # chunk order: the accumulators stay a prefix
                    engine.add_chunk(plan, acc, pending.pop(acc.chunks_done))
                acc.wall_s = wall0 + time.perf_counter() - t_start
                if progress is not None:
                    progress(acc.chunks_done)
                while nxt < end and nxt < acc.chunks_done + max_inflight:
                    submit(nxt)
                    nxt += 1
                if checkpoint is not None and time.perf_counter() - last_ck >= checkpoint_every:
                    checkpoint(acc)
                    last_ck = time.perf_counter()
    except (KeyboardInterrupt, WorkerLost) as exc:
        for f in list(inflight.values()):
            f.cancel()
        acc.wall_s = wall0 + time.perf_counter() - t_start
        if checkpoint is not None:
            with engine.StopFlag():
                checkpoint(acc)
        if isinstance(exc, WorkerLost):
            raise
        raise engine.Interrupted(f"interrupted after {acc.chunks_done} of {plan.n_chunks} chunks") from None
    return {"backend": "dask", "scheduler": session.address, "workers": workers,
            "worker_compile_s": {k: float(v) for k, v in compile_s.items()}}
