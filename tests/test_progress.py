"""Progress reports (:mod:`trajmc.progress`): a bar on a terminal, a status line every ``interval`` seconds
otherwise, nothing when off; and the ``progress=`` of every long-running entry point of the API.

Time is a clock the test advances (``Progress(clock=...)``): no test sleeps or races with the work.
"""
from __future__ import annotations

import functools
import io
import re
import threading

import pytest
from conftest import THREADS

import trajmc
from trajmc import analyze, simulation, solver, validate
from trajmc.errors import ModelError
from trajmc.progress import Progress, progress_mode

EXAMPLE = "qubit-linear-exact"


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class Terminal(io.StringIO):
    def isatty(self):
        return True


def lines(stream):
    return stream.getvalue().strip().splitlines() if stream.getvalue().strip() else []


def text_progress(total=100, **kw):
    clock, out = Clock(), io.StringIO()
    kw.setdefault("heartbeat", False)
    return Progress(total, desc="work", unit="chunks", stream=out, interval=10.0, clock=clock, **kw), clock, out


def test_short_work_prints_nothing():
    bar, clock, out = text_progress()
    assert bar.mode == "text"
    for _ in range(100):
        clock.t += 0.05  # 5 s in all: below the 10 s interval
        bar.update(1)
    bar.close()
    assert out.getvalue() == ""


def test_a_status_line_every_interval_then_a_last_one():
    bar, clock, out = text_progress()
    clock.t += 9.9
    bar.update(10)
    assert lines(out) == []
    clock.t += 0.1  # 10 s since the start
    bar.update(10)
    assert lines(out) == ["work: 20/100 chunks (20%), 10 s elapsed, ~40 s left"]
    clock.t += 5
    bar.update(5)
    assert len(lines(out)) == 1  # 5 s since the last line
    clock.t += 5
    bar.set_description("work (stage 2)")
    bar.update(5)
    assert lines(out)[-1] == "work (stage 2): 30/100 chunks (30%), 20 s elapsed, ~47 s left"
    clock.t += 180
    bar.close()
    assert lines(out)[-1] == "work (stage 2): 100/100 chunks (100%), 3 min 20 s done after"
    assert len(lines(out)) == 3


def test_poll_reports_without_an_update():
    """A chunk that runs for hours: the heartbeat (here called by hand) still reports."""
    bar, clock, out = text_progress()
    bar.poll()
    assert lines(out) == []
    clock.t += 3 * 3600 + 120
    bar.poll()
    assert lines(out) == ["work: 0/100 chunks (0%), 3 h 02 min elapsed"]


def test_the_time_left_comes_from_this_session_s_pace():
    """A resumed run: the chunks done before do not count as done in this session's elapsed time."""
    bar, clock, out = text_progress(initial=50)
    clock.t += 10
    bar.update(10)
    assert lines(out) == ["work: 60/100 chunks (60%), 10 s elapsed, ~40 s left"]


def test_work_cut_short_says_stopped():
    bar, clock, out = text_progress()
    with pytest.raises(KeyboardInterrupt), bar:
        clock.t += 11
        bar.update(3)
        raise KeyboardInterrupt
    assert lines(out)[-1] == "work: 3/100 chunks (3%), 11 s stopped after"


@pytest.mark.parametrize("off", [False, ""])
def test_off_prints_nothing(off):
    bar, clock, out = text_progress(enabled=off)
    assert bar.mode == "off" and not bar.enabled
    clock.t += 100
    bar.update(50)
    bar.poll()
    bar.close()
    assert out.getvalue() == ""


@pytest.mark.parametrize("value, on_terminal, otherwise", [
    (None, "tqdm", "text"), (True, "tqdm", "text"), ("auto", "tqdm", "text"),
    ("tqdm", "tqdm", "tqdm"), ("text", "text", "text"), (False, "off", "off"), ("", "off", "off")])
def test_modes(value, on_terminal, otherwise):
    for stream, want in ((Terminal(), on_terminal), (io.StringIO(), otherwise)):
        bar = Progress(10, stream=stream, enabled=value, heartbeat=False)
        assert bar.mode == want, (value, type(stream).__name__)
        bar.close()


def test_a_bar_on_a_terminal():
    term = Terminal()
    with Progress(10, desc="bar-desc", unit="chunks", stream=term, delay=0) as bar:
        bar.update(4)
    assert "bar-desc" in term.getvalue()


@pytest.mark.parametrize("bad", ["bar", "yes", 1, 0.5, "TEXT"])
def test_bad_progress_values_are_refused_listing_the_choices(bad):
    with pytest.raises(ModelError) as e:
        progress_mode(bad)
    msg = str(e.value)
    assert msg.startswith("progress:") and repr(bad) in msg
    for choice in ("'auto'", "'tqdm'", "'text'", "True", "False", "None"):
        assert choice in msg


def test_heartbeat_reports_while_no_update_arrives():
    """The background thread prints status lines by itself (waits for the first line; never sleeps)."""
    written = threading.Event()

    class Log(io.StringIO):
        def write(self, s):
            n = super().write(s)
            if s.strip():
                written.set()
            return n

    log = Log()
    bar = Progress(5, desc="alive", unit="chunks", stream=log, interval=0.01)
    assert bar.mode == "text" and bar._thread is not None and bar._thread.is_alive()
    assert written.wait(120), "no status line from the heartbeat"
    thread = bar._thread
    bar.close()
    assert not thread.is_alive()
    assert re.match(r"alive: 0/5 chunks \(0%\), \d+ s elapsed", lines(log)[0])
    assert re.match(r"alive: 5/5 chunks \(100%\), \d+ s done after", lines(log)[-1])


def test_a_broken_stream_never_fails_the_work():
    class Broken(io.StringIO):
        def write(self, s):
            raise OSError("stream gone")

    clock = Clock()
    bar = Progress(10, stream=Broken(), interval=1.0, clock=clock, heartbeat=False)
    clock.t += 5
    bar.update(1)  # the write fails: progress turns itself off
    assert bar.mode == "off"
    bar.close()


# --------------------------------------------------------------------------- the API's progress=


@pytest.fixture
def every_update(monkeypatch):
    """Status lines at every update (interval 0) in every module that reports, so short work shows them."""
    fast = functools.partial(Progress, interval=0.0, heartbeat=False)
    for mod in (simulation, solver, validate, analyze):
        monkeypatch.setattr(mod, "Progress", fast)


def _status(err, what):
    return [ln for ln in err.splitlines() if ln.startswith(what)]


def test_simulate_progress(every_update, capsys, tmp_path):
    md = trajmc.get_example(EXAMPLE)
    trajmc.simulate(md, trajectories=2000, chunk_size=500, seed=1, threads=THREADS, progress="text")
    st = _status(capsys.readouterr().err, f"simulate {md['name']}")
    assert st and st[-1].startswith(f"simulate {md['name']} (enumerated): 4/4 chunks (100%)")
    for quiet in ({"progress": False}, {"quiet": True}, {"progress": ""}):
        trajmc.simulate(md, trajectories=2000, chunk_size=500, seed=1, threads=THREADS, **quiet)
        assert capsys.readouterr().err == "", quiet
    with pytest.raises(ModelError, match="progress"):
        trajmc.simulate(md, trajectories=100, out=tmp_path / "r", progress="loud")
    assert not (tmp_path / "r").exists()  # refused before anything is written


def test_solve_progress(every_update, capsys):
    trajmc.solve(trajmc.get_example(EXAMPLE), progress="text")
    assert _status(capsys.readouterr().err, "solve")
    trajmc.solve(trajmc.get_example(EXAMPLE), progress=False)
    assert capsys.readouterr().err == ""
    with pytest.raises(ModelError, match="progress"):
        trajmc.solve(trajmc.get_example(EXAMPLE), progress="loud")


def test_validate_and_analyze_progress(every_update, capsys, tmp_path):
    d = tmp_path / "r"
    trajmc.simulate(trajmc.get_example(EXAMPLE), trajectories=1000, seed=2, threads=THREADS, out=d, progress=False)
    capsys.readouterr()
    validate.validate_run(d, 1e-6, progress="text")
    err = capsys.readouterr().err
    checks = _status(err, "validate")
    assert checks[-1].startswith(f"validate ({list(validate.CHECKS)[-1]}): {len(validate.CHECKS)}/"
                                 f"{len(validate.CHECKS)} checks (100%)")
    assert _status(err, "solve")  # the exact reference reports too
    validate.validate_run(d, 1e-6, progress=False)
    assert capsys.readouterr().err == ""

    analyze.analyze_run(d, quiet=True, progress="text")
    out, err = capsys.readouterr()
    assert out == "" and _status(err, "analyze (")[-1].startswith("analyze (exchange FT): 5/5 steps (100%)")
    analyze.analyze_run(d, quiet=True)  # quiet: no progress unless asked for
    assert capsys.readouterr().err == ""
    with pytest.raises(ModelError, match="progress"):
        validate.validate_run(d, progress="loud")


def test_use_progress_sets_what_none_means_below():
    from trajmc.progress import use_progress

    def mode():
        bar = Progress(10, stream=io.StringIO(), heartbeat=False)
        bar.close()
        return bar.mode

    assert mode() == "text"  # auto, not a terminal
    with use_progress(False):
        assert mode() == "off"
        with use_progress(None):  # None keeps the enclosing choice
            assert mode() == "off"
        with use_progress("tqdm"):
            assert mode() == "tqdm"
        assert Progress(10, stream=io.StringIO(), enabled="text", heartbeat=False).mode == "text"  # explicit wins
    assert mode() == "text"
    with pytest.raises(ModelError, match="progress"), use_progress("loud"):
        pass
