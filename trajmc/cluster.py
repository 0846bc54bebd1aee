"""Dask backend: chunks become Dask tasks on a LocalCluster or an existing scheduler.

* The plan (its kernel tables, without the networks) is scattered to every worker once (``broadcast=True``);
  tasks carry only the chunk index.  Each worker process compiles (or loads from numba's cache) the kernel once.
* A task returns its chunk's integer accumulators; results are added in chunk order as they
  complete, so the accumulators always hold a prefix of chunks (checkpoints, ``--resume``) and
  the totals are bit-identical to the threaded backend (integer sums).
* A worker that dies costs only its in-flight tasks: the scheduler reruns them elsewhere, and a
  rerun chunk draws the same random numbers (its seed is ``SeedSequence(entropy, spawn_key=(i,))``).
* SIGINT/SIGTERM on the client are noticed while it waits (it polls), cancel the tasks and checkpoint the
  chunks added so far.  A task already running on a worker is not stopped by the cancellation: the worker
  finishes (or is killed with) that chunk.
"""
from __future__ import annotations

import time
import uuid

from . import engine
from .errors import TrajmcError

__all__ = ["run_plan_dask", "DaskSession"]


class DaskSession:
    """A client to ``scheduler`` (an address), or to a LocalCluster of ``workers`` processes that it owns."""

    def __init__(self, scheduler=None, workers=None):
        try:
            from distributed import Client, LocalCluster
        except ImportError:  # pragma: no cover - dask is a dependency
            raise TrajmcError("the dask backend needs the 'distributed' package") from None
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


def run_plan_dask(plan, acc, session: DaskSession, progress=None, checkpoint=None, checkpoint_every=2.0,
                  stop_after=None, max_inflight=None):
    """Run the remaining chunks of ``plan`` as Dask tasks; same contract as :func:`engine.run_plan`."""
    from distributed import as_completed

    client = session.client
    t_start = time.perf_counter()
    wall0 = acc.wall_s
    compile_s = client.run(engine.compile_kernel)  # once per worker process; numba's cache makes it cheap
    plan_f = client.scatter([engine.worker_plan(plan)], broadcast=True, hash=False)[0]  # fresh key: no release race
    end = plan.n_chunks if stop_after is None else min(plan.n_chunks, stop_after)
    workers = max(session.n_workers(), 1)
    max_inflight = max_inflight or 4 * workers
    token = uuid.uuid4().hex[:8]
    ac = as_completed()
    nxt = acc.chunks_done
    pending = {}

    def submit(c):
        size = int(plan.chunk_sizes(c, c + 1)[0])
        ac.add(client.submit(engine.simulate_chunk, plan_f, c, size, acc.windows, key=f"trajmc-{token}-chunk-{c}",
                             pure=False))

    last_ck = time.perf_counter()
    stop = engine.StopFlag()
    try:
        with stop:
            while nxt < end and nxt < acc.chunks_done + max_inflight:
                submit(nxt)
                nxt += 1
            while acc.chunks_done < end:
                while not ac.has_ready():  # poll: a stop request is noticed while a chunk runs for hours
                    if stop.set:
                        raise KeyboardInterrupt
                    time.sleep(engine.POLL_SECONDS)
                if stop.set:
                    raise KeyboardInterrupt
                fut = next(ac)
                res = fut.result()
                fut.release()
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
    except KeyboardInterrupt:
        for f in list(ac.futures):
            f.cancel()
        acc.wall_s = wall0 + time.perf_counter() - t_start
        if checkpoint is not None:
            with engine.StopFlag():
                checkpoint(acc)
        raise engine.Interrupted(f"interrupted after {acc.chunks_done} of {plan.n_chunks} chunks") from None
    return {"backend": "dask", "scheduler": session.address, "workers": workers,
            "worker_compile_s": {k: float(v) for k, v in compile_s.items()}}
