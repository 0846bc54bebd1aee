"""Command line: ``python -m trajmc simulate | validate | analyze | examples | solve``.

One parser, one small function per subcommand calling the public API.  Any
user error prints one line to stderr and exits with status 2.
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import TrajmcError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # one line, no usage dump: the same contract as every other bad input
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _number(convert, ok, what):
    """An argparse type: ``convert`` the text, then require ``ok(value)``; the message says ``what``."""

    def parse(text):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return v

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = _number(int, lambda v: v >= 0, "a non-negative integer")
_alpha = _number(float, lambda v: 0 < v < 1, "a number in (0, 1)")


def _add_sim_options(p):
    p.add_argument("--example", metavar="NAME", help="run a built-in example (see `examples`)")
    p.add_argument("--trajectories", type=_positive_int, metavar="N", help="number of trajectories")
    p.add_argument("--seed", type=_nonneg_int, metavar="S", help="seed (default: the model's, else fresh entropy)")
    p.add_argument("--threads", type=_positive_int, metavar="T", help="numba threads (never changes the result)")
    p.add_argument("--chunk-size", type=_positive_int, metavar="C", help="trajectories per chunk (default 4096)")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/<model>-<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run chunks on this Dask scheduler (dask backend)")
    p.add_argument("--workers", type=_positive_int, metavar="N",
                   help="run chunks on a Dask LocalCluster of N processes (or wait for N workers at --scheduler)")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="trajmc", description="Trajectory Monte Carlo of the Pauli microcanonical master equation.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("simulate", help="sample trajectories and write a run directory")
    p.add_argument("model", nargs="?", help="model TOML file (default: the built-in default example)")
    _add_sim_options(p)
    p.add_argument("--resume", metavar="DIR", help="finish an interrupted run directory")
    p.add_argument("--paths", type=_nonneg_int, metavar="K", help="keep full jump paths of K trajectories (default 5)")
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser("validate", help="compare a run (or a fresh simulation of a model) with the exact solver")
    p.add_argument("target", help="run directory or model TOML file")
    _add_sim_options(p)
    p.add_argument("--alpha", type=_alpha, default=1e-3, help="family-wise false-alarm rate (default 1e-3)")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("analyze", help="fluctuation statistics, tables and figures of a run directory")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_analyze)
    p = sub.add_parser("examples", help="list the built-in models")
    p.set_defaults(func=cmd_examples)
    p = sub.add_parser("solve", help="exact rate-equation solution: print the thermodynamics table")
    p.add_argument("model", nargs="?", help="model TOML file (default: the built-in default example)")
    p.add_argument("--example", metavar="NAME")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    p.add_argument("--quiet", action="store_true", help="no progress reports (the table is still printed)")
    p.add_argument("--memory-budget", metavar="SIZE",
                   help="memory the exact solution may use, e.g. 4GiB (default: TRAJMC_MEMORY_BUDGET or half the RAM)")
    p.set_defaults(func=cmd_solve)
    return ap


def _model_source(args):
    from .examples import DEFAULT_EXAMPLE, get_example

    if args.model and args.example:
        raise TrajmcError("give a model file or --example, not both")
    if args.model:
        return args.model
    return get_example(args.example or DEFAULT_EXAMPLE)


def cmd_examples(args):
    from .examples import DEFAULT_EXAMPLE, list_examples

    for name, desc in list_examples().items():
        mark = " (default)" if name == DEFAULT_EXAMPLE else ""
        print(f"{name:22s} {desc}{mark}")
    return 0


def cmd_solve(args):
    from .solver import solve

    sol = solve(_model_source(args), memory_budget=args.memory_budget, progress=False if args.quiet else None)
    th = sol.thermo()
    if args.csv:
        th.to_csv(args.csv)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(th[["S_obs", "Sigma", "Sigma_tilde", "S_sh", "I", "D", "E_S"]].iloc[:: max(1, len(th) // 10)])
    return 0


def _summary(ens, run_dir):
    th = ens.thermo()
    ps, pse = ens.p_system()
    rows = np.unique(np.linspace(0, len(ens.times) - 1, 6).round().astype(int))
    out = pd.DataFrame(index=pd.Index(ens.times[rows], name="t"))
    for s in range(ps.shape[1]):
        out[f"p_{s}"] = [f"{ps[i, s]:.4f}±{pse[i, s]:.2g}" for i in rows]
    for c in ["S_obs", "Sigma", "Sigma_tilde"] + [f"Q_{b}" for b in ens.model.bath_names]:
        out[c] = [f"{th[c].iloc[i]:.4f}±{th[f'{c}_se'].iloc[i]:.2g}" for i in rows]
    st = ens.stats
    where = (f"Dask at {st['scheduler']} ({st['workers']} workers)" if st.get("backend") == "dask"
             else f"{st['threads']} threads")
    print(f"{ens.model.name}: {st['trajectories']} trajectories, {st['jumps']} jumps, {st['chunks']} chunks, "
          f"{where}, {st['wall_s']:.2f} s (+ compile/cache {st['compile_s']:.2f} s)")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(out.to_string())
    print(f"(± one standard error; entropies bias-corrected: {st['bias_correction']})")
    print(f"run directory: {run_dir}")


def _backend_args(args):
    from .ensemble import backend_kwargs

    return backend_kwargs(args.scheduler, args.workers)


def cmd_simulate(args):
    from .engine import resolve_threads
    from .ensemble import simulate
    from .runio import default_run_dir, resume_run

    threads = resolve_threads(args.threads)
    if args.resume:
        if (args.model or args.example or args.trajectories or args.seed is not None or args.chunk_size or args.out
                or args.paths is not None):
            raise TrajmcError("--resume takes only --threads, --scheduler, --workers and --quiet: "
                              "the run's own settings are used")
        ens = resume_run(args.resume, threads, progress=(not args.quiet) and sys.stderr.isatty(),
                         **_backend_args(args))
        run_dir = Path(args.resume)
    else:
        from .engine import make_plan
        from .model import load_model

        model = load_model(_model_source(args))
        # validate every option before anything is written
        paths = 5 if args.paths is None else args.paths
        make_plan(model, args.trajectories, args.seed, None, args.chunk_size, None, paths)
        run_dir = Path(args.out) if args.out else default_run_dir(model.name)
        ens = simulate(model, trajectories=args.trajectories, seed=args.seed, threads=threads,
                       chunk_size=args.chunk_size, paths=paths, out=run_dir, quiet=args.quiet,
                       **_backend_args(args))
    if not args.quiet:
        _summary(ens, run_dir)
    return 0


def cmd_validate(args):
    from .validate import validate_cli

    return validate_cli(args)


def cmd_analyze(args):
    from .analyze import analyze_run

    analyze_run(args.run_dir)
    return 0


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    from .engine import Interrupted

    parser = build_parser()
    args = parser.parse_args(argv)
    old = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        old = None
    try:
        return args.func(args)
    except Interrupted as exc:
        where = getattr(args, "out", None) or getattr(args, "resume", None)
        hint = f"; resume with: python -m trajmc simulate --resume {where}" if where else ""
        print(f"trajmc: {exc}{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("trajmc: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TrajmcError as exc:
        print(f"trajmc: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (OSError, MemoryError) as exc:  # a path we cannot write, a request too large to allocate
        msg = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"trajmc: error: {type(exc).__name__}: {msg}".splitlines()[0], file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
