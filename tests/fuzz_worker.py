"""The fuzzer's worker process (tests/test_fuzz_inputs.py): imports trajmc once, then runs one case at a time.

Protocol on stdin/stdout: length-prefixed pickles.  A request is ``(op, payload, options)``; the reply is a
dict describing the outcome.  The parent enforces a time limit per case and kills this process on a hang.

A payload is ``{"model": dict}``, ``{"model": dict, "build": recipe}`` (a deep structure built here), or
``{"model": file name, "files": {name: bytes}}`` (written into a fresh directory first).  ops: ``load``,
``solve``, ``simulate`` (which writes a run directory ``out`` in the case's directory; it must not exist after
a rejection) and ``chain`` (load, then solve and simulate what loaded).
"""
from __future__ import annotations

import os
import pickle
import shutil
import struct
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path


def _read(stream, n):
    buf = b""
    while len(buf) < n:
        part = stream.read(n - len(buf))
        if not part:
            return None
        buf += part
    return buf


def apply_build(model, build):
    """Nest a structure ``depth`` deep at ``path`` of ``model`` (built here: pickling it would recurse)."""
    path, kind, depth, leaf = build
    x = leaf
    if kind == "cycle":
        x = []
        x.append(x)
    else:
        for _ in range(depth):
            x = [x] if kind == "list" else {"a": x}
    cur = model
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = x
    return model


def _source(payload, where):
    if "build" in payload:
        return apply_build(payload["model"], payload["build"])
    if "files" not in payload:
        return payload["model"]
    for name, data in payload["files"].items():
        p = where / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if data is None:  # a directory where a file is expected
            p.mkdir()
        else:
            p.write_bytes(data)
    return where / payload["model"]


def run(op, payload, options):
    """One stage (``load``, ``solve``, ``simulate``), or ``chain``: load, and if that works solve and simulate the
    loaded model (``options = {"solve": {...}, "simulate": {...}}``); a list of outcomes then."""
    if op == "chain":
        first = run("load", payload, {})
        out = [first]
        if first["status"] == "ok":
            model = first.pop("model")
            for stage in ("solve", "simulate"):
                out.append(run(stage, {"model": model}, options[stage]))
        first.pop("model", None)
        return out
    import trajmc

    where = Path(tempfile.mkdtemp(prefix="fuzz-"))
    out = where / "out"
    t0 = time.perf_counter()
    res = {"op": op}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                src = _source(payload, where)
                if op == "load":
                    res["model"] = trajmc.load_model(src)
                elif op == "solve":
                    trajmc.solve(src, memory_budget=options.get("memory_budget"), progress=False)
                elif op == "simulate":
                    ens = trajmc.simulate(src, out=out, **options)
                    ens.thermo()
                    trajmc.load_run(out)
                res["status"] = "ok"
            except trajmc.ModelError as exc:
                res.update(status="model_error", key=exc.key, message=str(exc))
            except trajmc.TrajmcError as exc:
                res.update(status="trajmc_error", type=type(exc).__name__, message=str(exc))
            except MemoryError as exc:
                res.update(status="memory_error", message=str(exc), traceback=traceback.format_exc()[-3000:])
            except Exception as exc:  # noqa: BLE001 - what the fuzzer looks for
                res.update(status="exception", type=type(exc).__name__, message=str(exc)[:500],
                           traceback=traceback.format_exc()[-3000:])
            res["warnings"] = [str(w.message)[:300] for w in caught]
        res["written"] = out.exists() and res["status"] != "ok"
    finally:
        shutil.rmtree(where, ignore_errors=True)
    res["seconds"] = time.perf_counter() - t0
    return res


def main():
    inp, outp = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # trajmc prints nothing here, but keep the protocol stream clean
    import trajmc  # noqa: F401 - imported once, before the first case is timed

    outp.write(b"R")  # ready
    outp.flush()
    while True:
        head = _read(inp, 8)
        if head is None:
            return
        (n,) = struct.unpack("<Q", head)
        op, payload, options = pickle.loads(_read(inp, n))
        res = run(op, payload, options)
        if isinstance(res, dict):
            res.pop("model", None)
        data = pickle.dumps(res)
        outp.write(struct.pack("<Q", len(data)) + data)
        outp.flush()


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    main()
