"""The README is executable: its ``console`` blocks are run and their shown output compared, its ``python``
blocks are run.

* A ``console`` block holds commands (lines starting with ``$ ``), each followed by the output it printed.
  The commands of all blocks run in order in one fresh directory (later blocks use the run directories
  earlier ones made), and each command's output must equal the shown output line for line once numbers are
  masked (timings, thread counts and estimates vary with the machine; words, columns, verdicts and the
  number of lines must not).  A block that should not run (it takes minutes, or needs a cluster) is fenced
  as ``bash`` or ``text`` instead, never as ``console``.
* A ``python`` block runs (in the same directory, after the console blocks) and must not raise.

Regenerate the shown outputs after a change with ``python tests/test_readme.py --update``: it runs the same
commands and writes their output into README.md, so the README cannot drift from what the code prints.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
#: integers, decimals and floats in any notation, with an optional sign (and a trailing unit 's' kept as text)
NUMBER = re.compile(r"(?<![A-Za-z_])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Command:
    line: int  # 1-based line of the command in README.md
    argv: str
    shown: list[str] = field(default_factory=list)
    first: int = 0  # first and last line (0-based) of the shown output
    last: int = 0


def blocks(text):
    """(language, first line, lines) of every fenced block; first line is 0-based, of the first content line."""
    out, lang, start, body = [], None, 0, []
    for i, line in enumerate(text.splitlines()):
        m = FENCE.match(line)
        if m and lang is None:
            lang, start, body = m.group(1), i + 1, []
        elif line.strip() == "```" and lang is not None:
            out.append((lang, start, body))
            lang = None
        elif lang is not None:
            body.append(line)
    return out


def console_commands(text):
    cmds = []
    for lang, start, body in blocks(text):
        if lang != "console":
            continue
        for j, line in enumerate(body):
            if line.startswith("$ "):
                cmds.append(Command(start + j + 1, line[2:], first=start + j + 1, last=start + j + 1))
            elif cmds and cmds[-1].line > start:
                cmds[-1].shown.append(line)
                cmds[-1].last = start + j + 1
    return cmds


def python_blocks(text):
    return [(start + 1, "\n".join(body)) for lang, start, body in blocks(text) if lang == "python"]


def mask(lines):
    """Numbers replaced by '#', runs of blanks by one: what must not vary between machines and runs."""
    return [" ".join(NUMBER.sub("#", ln).split()) for ln in lines if ln.strip()]


def run(cmd: Command, cwd: Path) -> list[str]:
    argv = shlex.split(cmd.argv)
    if argv[0] == "python":
        argv[0] = sys.executable
    env = dict(os.environ, COLUMNS="200")
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        raise AssertionError(f"README.md:{cmd.line}: `{cmd.argv}` exited {r.returncode}:\n{r.stdout}{r.stderr}")
    # standard output only: progress lines (stderr, every ~10 s without a terminal) depend on the machine
    return r.stdout.rstrip("\n").splitlines()


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Every console command of the README run in order in one directory: [(command, output lines)]."""
    cwd = tmp_path_factory.mktemp("readme")
    return cwd, [(c, run(c, cwd)) for c in console_commands(README.read_text())]


def test_readme_has_console_and_python_blocks():
    text = README.read_text()
    assert len(console_commands(text)) >= 3 and python_blocks(text)


def test_readme_console_outputs_match(executed):
    _, results = executed
    bad = []
    for cmd, out in results:
        if mask(out) != mask(cmd.shown):
            bad.append(f"README.md:{cmd.line}: `{cmd.argv}` printed\n" + "\n".join(out)
                       + "\n--- but the README shows\n" + "\n".join(cmd.shown))
    assert not bad, "\n\n".join(bad) + "\n\n(regenerate with: python tests/test_readme.py --update)"


def test_readme_python_blocks_run(executed):
    cwd, _ = executed
    for line, code in python_blocks(README.read_text()):
        r = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=1800)
        assert r.returncode == 0, f"README.md:{line}: python block failed:\n{r.stderr[-3000:]}"


def test_mask_keeps_words_and_drops_numbers():
    assert mask(["pass  Foo   p_adj=0.297  G = 11.3, df = 1", "", "t=5: 4.99e-3 ± 7"]) == \
        ["pass Foo p_adj=# G = #, df = #", "t=#: # ± #"]
    assert mask(["E_B Q_B 1e6"]) == ["E_B Q_B #"]


# --------------------------------------------------------------------------- regeneration


def update(path=README):
    """Run every console command in a fresh directory and write its output into the README."""
    text = path.read_text()
    lines = text.splitlines()
    cmds = console_commands(text)
    with tempfile.TemporaryDirectory() as d:
        outs = [run(c, Path(d)) for c in cmds]
    for c, out in sorted(zip(cmds, outs, strict=True), key=lambda x: -x[0].line):
        keep_blank = [""] if c.shown and c.shown[-1] == "" else []
        lines[c.line:c.last if c.shown else c.line] = [ln.rstrip() for ln in out] + keep_blank
    path.write_text("\n".join(lines) + "\n")
    print(f"{path}: {len(cmds)} command outputs regenerated")


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/test_readme.py --update")
    update()
