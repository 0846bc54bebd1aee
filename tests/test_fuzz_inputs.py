"""Fuzzer (issue 14): generated malformed and extreme models through the API and the command line.

Six classes of input, each drawn by Hypothesis (derandomised under the ``ci`` profile, see conftest.py):

* ``mutated``     valid models with keys deleted, values replaced by wrong types or junk, wrapped, tweaked;
* ``extreme``     numeric leaves set to extremes: 0, -0.0, 5e-324, 1e308, inf, NaN, 2**63, 10**5000, ...;
* ``physics``     valid-looking models with hazardous physics: rates that under- or overflow, cutoffs of 1e-300,
                  gamma 1e308, beta 1e300, lnV tables with jumps of 1e5 or entries of +-1e300, huge grids,
                  huge baths, 10^6 sample times ...;
* ``deep``        tables and lists nested up to 5000 deep, 100 KB strings and keys, 10^5-entry lists, cycles;
* ``toml_text``   valid model files cut, with garbage, invalid UTF-8, deep brackets or huge literals inserted;
* ``table_file``  ``dos.file`` tables: invalid UTF-8, NUL bytes, 200 KB fields, NaN, empty, binary, a directory.

Every input is loaded; what loads is solved (memory budget 256 MiB) and simulated with a few trajectories
(``max_jumps`` 1e6) into a run directory.  Each case runs in a worker process under a time limit (a case that
exceeds it is a hang: the worker is killed and the test fails).  The contract: no traceback (any exception
other than a TrajmcError), no hang, no raw MemoryError; every rejection is one line, a ModelError naming a key
(file-level errors only where the file itself is unreadable: invalid TOML or UTF-8); nothing written on
rejection.  A sample goes through ``python -m trajmc`` in subprocesses (exit 0 with a loadable run, or exit 2
with one ``trajmc: error:`` line and nothing written).  The counts per class and outcome are printed at the end
of the session (conftest.py: pytest_terminal_summary) and written to $TRAJMC_FUZZ_REPORT if set.

The fast part (1165 inputs, 2 through the command line) runs in every test run (~45 s); the ``slow`` part
adds 4350 more and 80 command-line runs (~6 min).
"""
from __future__ import annotations

import collections
import copy
import os
import pickle
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from conftest import TABLE_LNV, get_model_dict
from fuzz_worker import apply_build
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz_model import BASES, _get, _mutate, _paths

import trajmc

#: per case; a case that takes longer is a hang
TIME_LIMIT = 60.0
SOLVE = {"memory_budget": "256MiB"}
SIMULATE = {"trajectories": 32, "chunk_size": 16, "seed": 1, "max_jumps": 1e6, "memory_budget": "256MiB"}
CLI_SIM = ["--trajectories", "32", "--chunk-size", "16", "--seed", "1", "--max-jumps", "1e6", "--memory-budget",
           "256MiB", "--quiet"]

#: (class, stage, outcome) -> count; stage is load, solve, simulate or cli
TALLY: collections.Counter = collections.Counter()
INPUTS: collections.Counter = collections.Counter()
FAILURES: list = []
SAMPLES: dict = {}  # (class, stage, outcome) -> the first message seen


# --------------------------------------------------------------------------- the worker


class Worker:
    """One worker process (tests/fuzz_worker.py) that runs cases under a time limit; restarted after a hang."""

    def __init__(self):
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("fuzz_worker.py"))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        ready, _, _ = select.select([self.proc.stdout], [], [], 300)
        assert ready and self.proc.stdout.read(1) == b"R", "the fuzz worker did not start"

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def _read(self, n, timeout):
        buf = b""
        while len(buf) < n:
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if not ready:
                return None
            part = os.read(self.proc.stdout.fileno(), n - len(buf))
            if not part:
                raise EOFError
            buf += part
        return buf

    def call(self, op, payload, options=None, timeout=TIME_LIMIT):
        data = pickle.dumps((op, payload, options or {}))
        try:
            self.proc.stdin.write(struct.pack("<Q", len(data)) + data)
            self.proc.stdin.flush()
            head = self._read(8, timeout)
            if head is None:
                self.kill()
                self.start()
                return {"status": "hang", "op": op}
            (n,) = struct.unpack("<Q", head)
            return pickle.loads(self._read(n, timeout))
        except (EOFError, BrokenPipeError):
            rc = self.proc.wait()
            self.start()
            return {"status": "crashed", "op": op, "message": f"the worker died (status {rc})"}


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


# --------------------------------------------------------------------------- the contract


#: a key path as ModelError writes it: dotted names (quoted when not identifiers) with [i] indices, starting at
#: the top level of the model
KEYLIKE = re.compile(r"^(name|system|baths|initial|times|simulation|protocol|[^\W\d]\w*|'.*'|\".*\")([.\[]|$)")


def _check(cls, stage, res, file_level_ok=False):
    """Tally ``res`` and return a failure description (None if the outcome keeps the contract)."""
    status = res["status"]
    outcome = status
    problem = None
    if res.get("seconds", 0.0) > TIME_LIMIT:
        problem = f"took {res['seconds']:.0f} s, more than the time limit"
    if status in ("exception", "memory_error", "crashed", "hang"):
        problem = f"{status}: {res.get('type', '')} {res.get('message', '')}\n{res.get('traceback', '')}"
    elif status in ("model_error", "trajmc_error"):
        msg = res["message"]
        if "\n" in msg or not msg.strip() or len(msg) > 1200:
            problem = f"not one bounded line: {msg[:300]!r}"
        elif status == "model_error":
            key = res["key"]
            if key:
                outcome = "model_error (key)"
                if not KEYLIKE.match(key):
                    problem = f"the key {key!r} is not a key path: {msg}"
            elif file_level_ok:
                outcome = "model_error (file)"
            else:
                problem = f"no key named: {msg}"
        else:
            outcome = f"{res['type']}"
        if res.get("written"):
            problem = f"rejected but wrote its run directory: {msg}"
    TALLY[(cls, stage, outcome)] += 1
    if status != "ok":
        SAMPLES.setdefault((cls, stage, outcome), res.get("message", "")[:200])
    if problem is not None:
        FAILURES.append((cls, stage, problem))
    return problem


def run_case(worker, cls, payload):
    """Load; if it loads, solve and simulate.  Fails the test on the first broken contract."""
    INPUTS[cls] += 1
    res = worker.call("chain", payload, {"solve": SOLVE, "simulate": SIMULATE}, timeout=3 * TIME_LIMIT)
    for r, stage in zip(res if isinstance(res, list) else [res], ("load", "solve", "simulate"), strict=False):
        problem = _check(cls, stage, r, file_level_ok=stage == "load" and "files" in payload)
        assert problem is None, (cls, stage, problem, _show(payload))
    return res


def _show(payload):
    text = repr(payload)
    return text if len(text) < 3000 else text[:1500] + " ... " + text[-1500:]


# --------------------------------------------------------------------------- the classes of input


EXTREMES = [0, -0.0, -1, 1, 0.5, 3.0, 2**31, 2**53 + 1, 2**62, 2**63, 2**64, 10**19, 10**30, 10**400, -10**400,
            10**5000, -(10**5000), 5e-324, 1e-320, 1e-300, 1e-30, 1e-9, 1 - 1e-16, 1 + 1e-15, 1e9, 1e19, 1e30, 1e300,
            1e308, -1e308, float("inf"), float("-inf"), float("nan"), np.int64(2**62), np.uint64(2**64 - 1),
            np.float64("nan"), np.float32(1e30), True, "1e999", None]


def _numeric_paths(d):
    return [p for p in _paths(d) if p and isinstance(_get(d, p), (int, float)) and not isinstance(_get(d, p), bool)]


@st.composite
def extreme_models(draw):
    d = copy.deepcopy(draw(st.sampled_from(BASES)))
    paths = _numeric_paths(d)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        _get(d, path[:-1])[path[-1]] = draw(st.sampled_from(EXTREMES))
    return {"model": d}


@st.composite
def mutated_models(draw):
    d = copy.deepcopy(draw(st.sampled_from(BASES)))
    data = draw(st.data())
    for _ in range(draw(st.integers(1, 3))):
        _mutate(d, data)
    return {"model": d}


PHYSICS_BASES = ["qubit_osc_sqrt", "three_exp_golden", "qubit_table_sqrt", "two_baths", "qubit_spins_linear"]


def _lnv_tables(n):
    """Hazardous ln V tables of n entries: jumps of 1e5, entries of +-1e300, mostly -inf, steep ramps."""
    return st.sampled_from([
        [0.0 if i % 2 == 0 else 1e5 for i in range(n)],
        [0.0] + [1e300] * (n - 1),
        [float(i) * 1e3 for i in range(n)],
        [0.0] + [float("-inf")] * (n - 2) + [1.0],
        [-1e300 if i % 3 else 0.0 for i in range(n)],
        [1e308] * n,
        [float(i) ** 3 for i in range(n)],
    ])


@st.composite
def physics_models(draw, big=False):
    """(``big``: also the largest grids and time axes allowed, which take seconds each to load)"""
    d = get_model_dict(draw(st.sampled_from(PHYSICS_BASES)))
    for _ in range(draw(st.integers(1, 3))):
        b = draw(st.integers(0, len(d["baths"]) - 1))
        bath = d["baths"][b]
        what = draw(st.sampled_from(["gamma", "cutoff", "width", "golden", "lnv", "beta_dos", "n", "quantum",
                                     "beta_init", "micro", "stop", "num", "energies", "coupling", "emax",
                                     "values"]))
        if what == "gamma":
            bath["kernel"]["gamma"] = draw(st.sampled_from([1e-300, 1e-100, 1e-12, 1e3, 1e6, 1e12, 1e100, 1e300,
                                                            1e308]))
        elif what == "cutoff":
            bath["kernel"]["spectral"] = {"shape": "exponential",
                                          "cutoff": draw(st.sampled_from([1e-300, 1e-10, 1e-3, 0.01, 1e3, 1e300]))}
        elif what == "width":
            bath["kernel"]["spectral"] = {"shape": "gaussian",
                                          "width": draw(st.sampled_from([1e-300, 1e-3, 0.1, 1e300]))}
        elif what == "golden":
            bath["kernel"] = {"model": "golden", "gamma": bath["kernel"].get("gamma", 1.0),
                              "E_ref": draw(st.sampled_from([0, 1e-300, float(bath["emax"]), 1e300]))}
        elif what == "lnv":
            bath["dos"] = {"model": "table", "lnV": draw(_lnv_tables(bath["emax"] + 1))}
            if bath["kernel"]["model"] == "linear":
                bath["kernel"]["model"] = "sqrt"
        elif what == "beta_dos":
            bath["dos"] = {"model": "exponential", "beta": draw(st.sampled_from([-1e300, -5.0, 1e-300, 700.0, 1e3,
                                                                                 1e300]))}
            if bath["kernel"]["model"] == "linear":
                bath["kernel"]["model"] = "sqrt"
        elif what == "n" and bath["dos"]["model"] in ("oscillators", "spins"):
            bath["dos"]["n"] = draw(st.sampled_from([1, 2, 10**6, 10**9, 10**12]))
        elif what == "quantum" and bath["dos"]["model"] != "table":
            bath["dos"]["quantum"] = draw(st.sampled_from([2, 7, 1000, 10**7]))
        elif what == "beta_init" and "baths" in d["initial"]:
            d["initial"]["baths"][b] = {"state": "canonical",
                                        "beta": draw(st.sampled_from([-1.0, 1e-300, 1e-3, 50.0, 700.0, 1e12, 1e300]))}
        elif what == "micro" and "baths" in d["initial"]:
            d["initial"]["baths"][b] = {"state": "microcanonical",
                                        "energy": draw(st.sampled_from([0, 1, bath["emax"]]))}
        elif what == "stop":
            d["times"] = {"stop": draw(st.sampled_from([1e-300, 1e-9, 1e3, 1e6, 1e300])), "num": 5}
        elif what == "num":
            d["times"] = {"stop": 1.0, "num": draw(st.sampled_from([2, 1000, 10**5] + [10**6] * big))}
        elif what == "values":
            d["times"] = {"values": draw(st.sampled_from([[0.0, 5e-324], [0.0, 1e-300, 1e300], [0.0, 1.0, 1.0 + 2e-16],
                                                          [0.0] + [float(x) for x in range(1, 2000)]]))}
        elif what == "energies":
            scale = draw(st.sampled_from([10, 1000, 10**6, 10**7]))
            d["system"]["energies"] = [int(e) * scale for e in d["system"]["energies"]]
        elif what == "coupling":
            n = len(d["system"]["energies"])
            c = draw(st.sampled_from([1e-300, 1e-150, 1e150, 1e300]))
            d["system"]["coupling"] = [[0.0 if i == j else c for j in range(n)] for i in range(n)]
        elif what == "emax":
            bath["emax"] = draw(st.sampled_from([0, 1, 2, 10**5, 10**6] + [10**7] * big))
    return {"model": d}


@st.composite
def deep_models(draw):
    d = copy.deepcopy(draw(st.sampled_from(BASES)))
    kind = draw(st.sampled_from(["list", "dict", "string", "key", "long_list", "cycle", "shared"]))
    paths = [p for p in _paths(d) if p and isinstance(_get(d, p[:-1]), (dict, list))]
    path = draw(st.sampled_from(paths))
    parent = _get(d, path[:-1])
    if kind in ("list", "dict"):  # built in the worker: pickling (and printing) it would recurse
        return {"model": d, "build": (path, kind, draw(st.sampled_from([6, 15, 16, 17, 50, 999, 1000, 5000])),
                                      draw(st.sampled_from([0, 1.5, "s", None])))}
    elif kind == "string":
        parent[path[-1]] = draw(st.sampled_from(["x", "\n", "é", "\x00"])) * draw(st.sampled_from([10**4, 10**5]))
    elif kind == "key":
        container = parent if isinstance(parent, dict) else d
        container[draw(st.sampled_from(["k", "\n", "x y"])) * 10**5] = 1
    elif kind == "long_list":
        parent[path[-1]] = [draw(st.sampled_from([0, 0.5, "a", -1]))] * draw(st.sampled_from([10**4, 10**5]))
    elif kind == "cycle":
        return {"model": d, "build": (path, "cycle", 0, None)}
    else:
        shared = [[1.0] * 4] * 4
        parent[path[-1]] = [shared] * 200
    return {"model": d}


TOML_INSERTS = ["", "=", "[", "]]", "\n[x]\n", "nan", "\"", "\n", "1e999", "{", "-", "\x00", "\n[[baths]]\n",
                "\nname = 3\n", "9" * 5000, "[" * 2000 + "]" * 2000, "\ufeff", "\r", "'''", "\\u0000", "x" * 10**5]


@st.composite
def toml_texts(draw):
    src = trajmc.load_model(draw(st.sampled_from(BASES))).to_toml().encode()
    for _ in range(draw(st.integers(1, 2))):
        i = draw(st.integers(0, len(src)))
        j = draw(st.integers(i, min(len(src), i + 40)))
        insert = draw(st.one_of(st.sampled_from(TOML_INSERTS).map(str.encode), st.binary(max_size=8)))
        src = src[:i] + insert + src[j:]
    return {"model": "m.toml", "files": {"m.toml": src}}


def _csv(rows):
    return ("E,lnV\n" + "".join(f"{E},{v!r}\n" for E, v in enumerate(rows))).encode()


@st.composite
def table_files(draw):
    d = get_model_dict("qubit_table_sqrt")
    d["baths"][0]["dos"] = {"model": "table", "file": "tables/dos.csv"}
    good = _csv(TABLE_LNV)
    kind = draw(st.sampled_from(["edit", "bytes", "long_field", "empty", "header", "nul", "latin1", "columns",
                                 "directory", "missing", "crlf", "bom", "nan", "short", "huge_values"]))
    files = {"m.toml": tomli_w.dumps(d).encode()}
    if kind == "edit":
        i = draw(st.integers(0, len(good)))
        data = good[:i] + draw(st.binary(max_size=12)) + good[i + draw(st.integers(0, 20)):]
    elif kind == "bytes":
        data = draw(st.binary(max_size=400))
    elif kind == "long_field":
        data = good + b'40,"' + b"1" * 200_000 + b'"\n'
    elif kind == "empty":
        data = b""
    elif kind == "header":
        data = b"E,lnV\n"
    elif kind == "nul":
        data = good.replace(b"\n3,", b"\n3\x00,", 1)
    elif kind == "latin1":
        data = good + "# énergie\n".encode("latin-1")
    elif kind == "columns":
        data = b"".join(b"0,1,2,3," + repr(v).encode() + b"\n" for v in TABLE_LNV)
    elif kind == "directory":
        data = None
    elif kind == "missing":
        files["m.toml"] = files["m.toml"].replace(b"tables/dos.csv", b"tables/nothing.csv")
        data = good
    elif kind == "crlf":
        data = good.replace(b"\n", b"\r\n")
    elif kind == "bom":
        data = b"\xef\xbb\xbf" + good
    elif kind == "nan":
        data = good.replace(b"\n7,", b"\n7,nan\n#", 1)
    elif kind == "short":
        data = _csv(TABLE_LNV[:10])
    else:
        data = _csv([v * 1e300 if np.isfinite(v) else v for v in TABLE_LNV])
    files["tables/dos.csv"] = data
    return {"model": "m.toml", "files": files}


CLASSES = {"mutated": mutated_models(), "extreme": extreme_models(), "physics": physics_models(),
           "deep": deep_models(), "toml_text": toml_texts(), "table_file": table_files()}
BIG = dict(CLASSES, physics=physics_models(big=True))
#: examples per class: the fast part (CI) and the slow part
FAST = {"mutated": 300, "extreme": 250, "physics": 40, "deep": 175, "toml_text": 250, "table_file": 150}
SLOW = {"mutated": 1000, "extreme": 1000, "physics": 250, "deep": 500, "toml_text": 1000, "table_file": 600}

HC = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture,
      HealthCheck.filter_too_much, HealthCheck.large_base_example]


def _fuzz_test(cls, n, strategies):
    @settings(max_examples=n, deadline=None, suppress_health_check=HC, print_blob=True)
    @given(payload=strategies[cls])
    def test(worker, payload):
        run_case(worker, cls, payload)
    return test


for _cls in CLASSES:
    globals()[f"test_fuzz_{_cls}"] = _fuzz_test(_cls, FAST[_cls], CLASSES)
    globals()[f"test_fuzz_{_cls}_slow"] = pytest.mark.slow(_fuzz_test(_cls, SLOW[_cls], BIG))


# --------------------------------------------------------------------------- the command line


def _cli_case(payload, where: Path):
    """Write a case as files in ``where``; the model file's name, or None if the dict is not TOML."""
    if "files" in payload:
        for name, data in payload["files"].items():
            p = where / name
            p.parent.mkdir(parents=True, exist_ok=True)
            if data is None:
                p.mkdir()
            else:
                p.write_bytes(data)
        return payload["model"]
    model = apply_build(copy.deepcopy(payload["model"]), payload["build"]) if "build" in payload else payload["model"]
    try:
        text = tomli_w.dumps(model)
    except (TypeError, ValueError, RecursionError):  # None, complex, numpy scalars, cycles: not TOML
        return None
    (where / "m.toml").write_text(text)
    return "m.toml"


LINE = re.compile(r"^trajmc: error: (.+)$")


def cli_case(payload, command="simulate"):
    """Run one case through ``python -m trajmc`` in a fresh directory: (outcome, problem or None); thread-safe."""
    with tempfile.TemporaryDirectory(prefix="fuzzcli-") as tmp:
        where = Path(tmp)
        model = _cli_case(payload, where)
        if model is None:
            return "not TOML (skipped)", None
        before = sorted(p.name for p in where.iterdir())
        args = [command, model] + (["--out", "out", *CLI_SIM] if command == "simulate" else
                                   ["--memory-budget", "256MiB", "--quiet"])
        try:
            r = subprocess.run([sys.executable, "-m", "trajmc", *args], cwd=where, capture_output=True, text=True,
                               timeout=120)
        except subprocess.TimeoutExpired:
            return "hang", f"hang (over 120 s): {_show(payload)}"
        err = r.stderr.strip().splitlines()
        errors = [x for x in err if x.startswith("trajmc: error:")]
        if r.returncode == 0:
            if "Traceback" in r.stderr:
                return "exit 0 BROKEN", r.stderr[-3000:]
            if command == "simulate":
                try:
                    trajmc.load_run(where / "out")
                except trajmc.TrajmcError as exc:
                    return "exit 0 BROKEN", f"the run does not load: {exc}"
            return "exit 0", None
        ok = (r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr
              and all(x.startswith("trajmc:") for x in err) and sorted(p.name for p in where.iterdir()) == before)
        m = LINE.match(errors[0]) if errors else None
        named = m is not None and bool(KEYLIKE.match(m.group(1).split(": ", 1)[0]) or m.group(1).startswith(model)
                                       or "argument" in m.group(1))
        if ok and named:
            return "exit 2 (one line)", None
        return f"exit {r.returncode} BROKEN", f"{r.returncode}: {r.stderr[-3000:]}\n{_show(payload)}"


def _cli_test(cls, n, command="simulate", batch=1):
    """``n`` examples of ``batch`` cases each, run two at a time (the command line's start-up dominates)."""
    from concurrent.futures import ThreadPoolExecutor

    @settings(max_examples=n, deadline=None, suppress_health_check=HC, print_blob=True)
    @given(payloads=st.lists(BIG[cls], min_size=batch, max_size=batch))
    def test(payloads):
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(lambda p: cli_case(p, command), payloads))
        for outcome, problem in results:
            TALLY[(cls, "cli", outcome)] += 1
            if outcome != "not TOML (skipped)":
                INPUTS[f"{cls} (cli)"] += 1
            if problem is not None:
                FAILURES.append((cls, "cli", problem))
        bad = [p for _, p in results if p is not None]
        assert not bad, bad[0]
    return test


CLI_FAST = {"physics": 1, "table_file": 1}
#: (examples, cases per example)
CLI_SLOW = {"mutated": (3, 4), "extreme": (3, 4), "physics": (4, 4), "toml_text": (3, 4), "table_file": (3, 4),
            "deep": (2, 4)}
for _cls, _n in CLI_FAST.items():
    globals()[f"test_fuzz_cli_{_cls}"] = _cli_test(_cls, _n)
for _cls, (_n, _b) in CLI_SLOW.items():
    globals()[f"test_fuzz_cli_{_cls}_slow"] = pytest.mark.slow(_cli_test(_cls, _n, batch=_b))
globals()["test_fuzz_cli_solve_physics_slow"] = pytest.mark.slow(_cli_test("physics", 2, "solve", batch=4))


# --------------------------------------------------------------------------- the harness itself


def test_the_worker_reports_a_hang_and_is_replaced(worker):
    """A case over the time limit is reported as a hang (the worker killed and replaced), not waited for."""
    slow = get_model_dict("qubit_osc_sqrt")
    slow["baths"][0]["kernel"]["gamma"] = 1e9  # ~1e9 jumps per trajectory: minutes
    res = worker.call("simulate", {"model": slow}, {"trajectories": 4, "chunk_size": 1, "seed": 1,
                                                    "max_jumps": 1e12}, timeout=1.0)
    assert res["status"] == "hang"
    assert worker.call("load", {"model": get_model_dict("qubit_osc_sqrt")})["status"] == "ok"
