"""Command line: ``python -m trajmc simulate | validate | analyze | examples | solve``.

One parser, one small function per subcommand calling the public API.  Any
user error prints one line to stderr and exits with status 2.  Long work reports progress on stderr (a bar
on a terminal, a status line every ~10 s otherwise); ``--quiet`` silences it.

The plotting and validation modules are imported by the commands that use them (matplotlib and scipy.stats
would slow down ``--help`` and every other command by ~2 s); the Dask packages only for the Dask backend
(an optional dependency, :func:`trajmc.cluster.require_dask`).
"""
from __future__ import annotations

import argparse
import signal
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from . import cluster
from ._validate import show
from ._version import __version__
from .analyze import analyze_run
from .engine import Interrupted, resolve_threads
from .errors import TrajmcError
from .examples import DEFAULT_EXAMPLE, get_example, list_examples
from .model import load_model
from .rundir import default_run_dir, extend_run, locked, output_dir, resume_run
from .simulation import backend_kwargs, plan_run, simulate
from .solver import solve
from .thermo import marginal_system, space_of

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
            raise argparse.ArgumentTypeError(f"must be {what}, got {show(text)}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {what}, got {show(text)}")
        return v

    return parse


def _integer(text):
    """An integer, also written like ``1e6`` (refused if it is not a whole number)."""
    try:
        return int(text)
    except ValueError:
        v = float(text)  # ValueError propagates: not a number at all
        if not np.isfinite(v) or v != round(v) or abs(v) > 2**62:
            raise ValueError(text) from None
        return int(v)


_positive_int = _number(_integer, lambda v: v >= 1, "a positive integer")
_nonneg_int = _number(_integer, lambda v: v >= 0, "a non-negative integer")
_positive_float = _number(float, lambda v: np.isfinite(v) and v > 0, "a positive number")
_nonneg_float = _number(float, lambda v: np.isfinite(v) and v >= 0, "a non-negative number")
_alpha = _number(float, lambda v: 0 < v < 1, "a number in (0, 1)")


def _add_sim_options(p):
    p.add_argument("--example", metavar="NAME", help=f"a built-in example instead of a model file: "
                                                     f"{', '.join(list_examples())} (see `examples`)")
    p.add_argument("--trajectories", type=_positive_int, metavar="N",
                   help="number of trajectories, e.g. 1e6 (default: the model's simulation.trajectories)")
    p.add_argument("--seed", type=_nonneg_int, metavar="S", help="seed (default: the model's, else fresh entropy)")
    p.add_argument("--threads", type=_positive_int, metavar="T", help="numba threads (never changes the result)")
    p.add_argument("--chunk-size", type=_positive_int, metavar="C", help="trajectories per chunk (default 4096)")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/<model>-<timestamp>)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress report (a bar on a terminal, a status line every ~10 s otherwise) and no summary")
    p.add_argument("--backend", choices=("threads", "dask"),
                   help="where chunks run: numba threads on this machine, or Dask tasks (needs the extra: "
                        f"{cluster.INSTALL_HINT}); the result is bit-identical. Default: dask when --scheduler or "
                        "--workers is given, else threads")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run chunks on this Dask scheduler (dask backend)")
    p.add_argument("--workers", type=_positive_int, metavar="N",
                   help="run chunks on a Dask LocalCluster of N processes (or wait for N workers at --scheduler)")
    p.add_argument("--engine", choices=("auto", "enumerated", "implicit"),
                   help="enumerated network (full joint p_x(t)) or implicit per-bath rate tables (marginals; any "
                        "size); default: the model's simulation.engine, else auto")
    p.add_argument("--records", action=argparse.BooleanOptionalAction, default=None,
                   help="keep every trajectory's state at every sample time in records.npz, or not (default: the "
                        "model's simulation.records, else off: all statistics are streamed)")
    p.add_argument("--memory-budget", metavar="SIZE",
                   help="refuse runs estimated to need more memory, e.g. 4GiB (default: TRAJMC_MEMORY_BUDGET or half "
                        "the RAM)")
    p.add_argument("--max-jumps", type=_positive_float, metavar="N",
                   help="refuse runs expected to make more jumps (default: the model's simulation.max_jumps, "
                        "else 1e13)")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace an existing run directory --out (only one that holds nothing but trajmc's files)")


def build_parser() -> argparse.ArgumentParser:
    """The ``trajmc`` argument parser (every subcommand and option).

    Returns
    -------
    argparse.ArgumentParser
    """
    ap = _Parser(prog="trajmc", description="Trajectory Monte Carlo of the Pauli microcanonical master equation.")
    ap.add_argument("--version", action="version", version=f"trajmc {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("simulate", help="sample trajectories and write a run directory")
    p.add_argument("model", nargs="?", help="model TOML file (default: the built-in default example)")
    _add_sim_options(p)
    p.add_argument("--resume", metavar="DIR", help="finish an interrupted run directory; with --trajectories N, "
                   "extend a finished one to N trajectories (bit-identical to one run of N)")
    p.add_argument("--paths", type=_nonneg_int, metavar="K", help="keep full jump paths of K trajectories (default 5)")
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser("validate", help="compare a run (or a fresh simulation of a model) with the exact solver")
    p.add_argument("target", nargs="?",
                   help="a run directory (validated as it was run), or a model TOML file (simulated into --out, "
                        "then validated); or give --example NAME")
    _add_sim_options(p)
    p.add_argument("--alpha", type=_alpha, default=1e-3,
                   help="family-wise false-alarm rate of the statistical checks, Holm-corrected (default 1e-3)")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("analyze", help="fluctuation statistics, tables and figures of a run directory")
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="a run directory written by `simulate` (a model file must be simulated first: "
                        "trajmc simulate MODEL.toml --out RUN_DIR)")
    p.add_argument("--bath", metavar="NAME", action="append",
                   help="heat statistics of this bath only (repeat for several; default: every bath)")
    p.add_argument("--times", metavar="T", type=_nonneg_float, nargs="+", action="extend",
                   help="times of the heat distributions and cumulants, each read at the nearest sample time "
                        "(default: a quarter, half and all of the run)")
    p.add_argument("--out", metavar="DIR",
                   help="folder for the tables, with the figures in DIR/figures (default: RUN_DIR/analysis and "
                        "RUN_DIR/figures)")
    p.add_argument("--quiet", action="store_true", help="no progress report and no summary")
    p.set_defaults(func=cmd_analyze)
    p = sub.add_parser("examples", help="list the built-in models")
    p.set_defaults(func=cmd_examples)
    p = sub.add_parser("solve", help="exact rate-equation solution: print the thermodynamics table")
    p.add_argument("model", nargs="?", help="model TOML file (default: the built-in default example)")
    p.add_argument("--example", metavar="NAME", help=f"a built-in example instead of a model file: "
                                                     f"{', '.join(list_examples())}")
    p.add_argument("--every", type=_positive_int, metavar="K",
                   help="print every K-th sample time (the last time is always printed; default: every time)")
    p.add_argument("--csv", metavar="FILE", help="also write the full table (every column and time) as CSV")
    p.add_argument("--quiet", action="store_true", help="no progress report (the table is still printed)")
    p.add_argument("--memory-budget", metavar="SIZE",
                   help="memory the exact solution may use, e.g. 4GiB (default: TRAJMC_MEMORY_BUDGET or half the RAM)")
    p.set_defaults(func=cmd_solve)
    return ap


def _model_source(args):
    if args.model and args.example:
        raise TrajmcError("give a model file or --example, not both")
    if args.model:
        return args.model
    return get_example(args.example or DEFAULT_EXAMPLE)


def cmd_examples(args):
    for name, desc in list_examples().items():
        mark = " (default)" if name == DEFAULT_EXAMPLE else ""
        print(f"{name:22s} {desc}{mark}")
    return 0


def thinned(n, every=None) -> np.ndarray:
    """Row indices ``0, K, 2K, ...`` of ``n`` rows, always with the last one.

    Parameters
    ----------
    n : int
        Number of rows.
    every : int, optional
        K (default 1: every row).

    Returns
    -------
    ndarray, shape (m,), int64
    """
    idx = np.arange(0, n, every or 1, dtype=np.int64)
    return idx if n == 0 or idx[-1] == n - 1 else np.append(idx, np.int64(n - 1))


def solve_table(sol, every=None) -> pd.DataFrame:
    """What ``solve`` prints: ``p_<s>``, the entropies, ``E_S``, ``Q_<bath>`` (and ``W`` when driven) by time.

    Parameters
    ----------
    sol : Solution
    every : int, optional
        Keep every ``every``-th time (and the last).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``t``.
    """
    th = sol.thermo()
    ps = marginal_system(sol.p, space_of(sol.network))
    out = pd.DataFrame({f"p_{s}": ps[:, s] for s in range(ps.shape[1])}, index=th.index)
    cols = ["S_obs", "Sigma", "Sigma_tilde", "S_sh", "I", "D", "E_S"] + [f"Q_{b}" for b in sol.model.bath_names]
    if sol.model.protocol:
        cols.append("W")
    out = pd.concat([out, th[cols]], axis=1) + 0.0  # + 0.0: no "-0" printed for a zero heat
    return out.iloc[thinned(len(out), every)]


def cmd_solve(args):
    sol = solve(_model_source(args), memory_budget=args.memory_budget, progress=False if args.quiet else None)
    if args.csv:
        sol.thermo().to_csv(args.csv)
    print(solve_table(sol, args.every).to_string(float_format=lambda v: f"{v:.6g}"))
    return 0


def _summary(ens, run_dir):
    th = ens.thermo()
    ps, pse = ens.p_system(), ens.p_system_se()
    rows = np.unique(np.linspace(0, len(ens.times) - 1, 6).round().astype(int))
    out = pd.DataFrame(index=pd.Index(ens.times[rows], name="t"))
    for s in range(ps.shape[1]):
        out[f"p_{s}"] = [f"{ps[i, s]:.4f}±{pse[i, s]:.2g}" for i in rows]
    ent = ["S_obs", "Sigma"] if th.attrs.get("joint") else ["S_obs_upper", "Sigma_upper"]
    for c in ent + ["Sigma_tilde"] + [f"Q_{b}" for b in ens.model.bath_names]:
        out[c] = [f"{th[c].iloc[i]:.4f}±{th[f'{c}_se'].iloc[i]:.2g}" for i in rows]
    st = ens.stats
    where = (f"Dask at {st['scheduler']} ({st['workers']} workers)" if st.get("backend") == "dask"
             else f"{st['threads']} threads")
    print(f"{ens.model.name}: {st['trajectories']} trajectories, {st['jumps']} jumps, {st['chunks']} chunks, "
          f"{where}, {st['wall_s']:.2f} s (+ compile/cache {st['compile_s']:.2f} s)")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(out.to_string())
    print(f"(± one standard error; entropies bias-corrected: {st['bias_correction']})")
    if not th.attrs.get("joint"):
        print(f"{st['path']} path ({st['path_reason']}): marginals only; S_obs_upper and Sigma_upper are upper bounds, "
              "S_obs, Sigma and I are not estimated")
    print(f"run directory: {run_dir}")


def _backend_args(args):
    """The backend keyword arguments of the command; the Dask backend's packages are checked here, before any
    work (a missing ``trajmc[cluster]`` extra is one line)."""
    kw = backend_kwargs(args.scheduler, args.workers)
    if args.backend == "threads" and kw:
        raise TrajmcError(f"--{'scheduler' if args.scheduler is not None else 'workers'}: needs --backend dask "
                          "(the threads backend runs on this machine only)")
    if args.backend == "dask":
        kw = {"backend": "dask", "scheduler": args.scheduler, "workers": args.workers}
    if kw:
        cluster.require_dask()
    return kw


def _figures(draw, what):
    """Draw figures; a figure that cannot be drawn is reported and never fails the command."""
    try:
        draw()
    except Exception as exc:  # noqa: BLE001 - the numbers are saved; a figure is a bonus
        print(f"trajmc: warning: the {what} figure could not be drawn ({type(exc).__name__}: "
              f"{str(exc).splitlines()[0] if str(exc) else ''})", file=sys.stderr)


def _run_options(args):
    """The simulation options shared by `simulate` and `validate MODEL` (checked before anything is written)."""
    return {"trajectories": args.trajectories, "seed": args.seed, "chunk_size": args.chunk_size,
            "records": args.records, "engine": args.engine, "memory_budget": args.memory_budget,
            "max_jumps": args.max_jumps}


def _simulate_into(model, args, paths, run_dir, threads, backend):
    opts = _run_options(args)
    plan_run(model, opts["trajectories"], opts["seed"], None, opts["chunk_size"], opts["records"], paths,
             opts["engine"], threads, opts["memory_budget"], opts["max_jumps"])  # every option checked first
    return simulate(model, threads=threads, paths=paths, out=run_dir, progress=_progress(args),
                    overwrite=bool(args.overwrite), **opts, **backend)


def _progress(args):
    """The ``progress=`` of the API for a command: off with ``--quiet``, else auto (bar or status lines)."""
    return False if args.quiet else None


def _figures_dir(run_dir):
    """Refuse a symbolic link (or a file) where the run's figures go, before any work (never written through)."""
    return output_dir(run_dir, "figures", create=False)


def cmd_simulate(args):
    from .plotting import summary_figure  # matplotlib: keeps --help and the other commands fast

    threads = resolve_threads(args.threads)
    backend = _backend_args(args)

    def draw():
        summary_figure(ens, output_dir(run_dir, "figures") / "summary.png")
    if args.resume:
        given = [f for f in ("model", "example", "seed", "chunk_size", "out", "paths", "records",
                             "engine", "memory_budget", "max_jumps", "overwrite") if getattr(args, f) is not None]
        if given:
            raise TrajmcError(f"--resume takes only --trajectories, --threads, --backend, --scheduler, --workers and "
                              f"--quiet (not --{given[0].replace('_', '-')}): the run's own settings are used")
        if args.trajectories is not None and backend:
            raise TrajmcError("--resume with --trajectories (extending a finished run) runs on threads: drop "
                              "--backend/--scheduler/--workers")
        args.run_dir = run_dir = Path(args.resume)
        with locked(run_dir):  # one writer from the first checkpoint to the last figure
            _figures_dir(run_dir)
            if args.trajectories is not None:  # extend a finished run: bit-identical to one longer run
                ens = extend_run(args.resume, args.trajectories, threads=threads, progress=_progress(args))
            else:
                ens = resume_run(args.resume, threads, progress=_progress(args), **backend)
            _figures(draw, "summary")
    else:
        model = load_model(_model_source(args))
        paths = 5 if args.paths is None else args.paths
        args.run_dir = run_dir = Path(args.out) if args.out else default_run_dir(model.name)
        ens = _simulate_into(model, args, paths, run_dir, threads, backend)

        def draw_locked():  # the run is complete: a writer that took the directory meanwhile costs only the figure
            with locked(run_dir):
                draw()
        _figures(draw_locked, "summary")
    if not args.quiet:
        _summary(ens, run_dir)
    return 0


def cmd_validate(args):
    from .plotting import validation_figures  # matplotlib: keeps --help and the other commands fast
    from .validate import validate_run  # scipy.stats: keeps --help and the other commands fast

    if args.target and args.example:
        raise TrajmcError("give a run directory, a model file or --example, not two of them")
    if not args.target and not args.example:
        raise TrajmcError("validate needs a run directory, a model file or --example NAME")
    target = Path(args.target) if args.target else None
    if target is not None and target.is_dir():
        given = [f for f in ("trajectories", "seed", "chunk_size", "out", "backend", "scheduler", "workers", "records",
                             "engine", "memory_budget", "max_jumps", "overwrite") if getattr(args, f) is not None]
        if given:
            raise TrajmcError(f"--{given[0].replace('_', '-')}: applies only when validating a model file "
                              f"(a run directory is validated as it was run)")
        run_dir = target
        _figures_dir(run_dir)
    else:
        threads = resolve_threads(args.threads)
        backend = _backend_args(args)
        model = load_model(get_example(args.example) if args.example else target)
        args.run_dir = run_dir = Path(args.out) if args.out else default_run_dir(model.name)
        _simulate_into(model, args, 0, run_dir, threads, backend)
    with locked(run_dir):  # one writer from the report to the last figure
        ok, results, ens, sol = validate_run(run_dir, args.alpha, progress=_progress(args))
        _figures(lambda: validation_figures(ens, sol, output_dir(run_dir, "figures")), "validation")
    if not args.quiet:
        for r in results:
            p = f"p_adj={r.adjusted_pvalue:.3g}" if r.kind == "statistical" else r.kind
            print(f"{r.mark:4s}  {r.name:34s} {p:16s} {r.detail}")
        off = [r for r in results if not r.counted]
        note = f" ({len(off)} not applicable or not checkable: {', '.join(r.name for r in off)})" if off else ""
        print(f"{'PASS' if ok else 'FAIL'}{note}: report in {run_dir / 'validation.md'}")
    return 0 if ok else 1


def cmd_analyze(args):
    from .plotting import analysis_figures  # matplotlib: keeps --help and the other commands fast

    path = Path(args.run_dir)
    if path.is_file():
        if path.suffix.lower() == ".toml":
            raise TrajmcError(f"{path}: is a model file; analyze takes a run directory: first run `trajmc simulate "
                              f"{path} --out RUN_DIR`, then `trajmc analyze RUN_DIR`")
        raise TrajmcError(f"{path}: analyze takes a run directory (written by `simulate`), not a file")
    out = Path(args.out) if args.out else None
    if out is None:
        _figures_dir(path)
    elif (out / "figures").exists() and not (out / "figures").is_dir():
        raise TrajmcError(f"{out / 'figures'}: exists and is not a directory")
    with locked(path):  # one writer from the first table to the last figure
        res, ens = analyze_run(path, times=args.times, quiet=args.quiet, progress=_progress(args), bath=args.bath,
                               out=out)

        def figdir():
            if out is None:
                return output_dir(path, "figures")
            (out / "figures").mkdir(parents=True, exist_ok=True)
            return out / "figures"
        _figures(lambda: analysis_figures(ens, res, figdir()), "analysis")
    if not args.quiet:
        print(f"figures in {(out or path) / 'figures'}")
    return 0


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as one line (no source location or code line: they are meant for the user)."""
    text = str(message).splitlines()[0] if str(message) else category.__name__
    print(text if text.startswith("trajmc:") else f"trajmc: warning: {text}", file=sys.stderr)


def _resume_hint(args):
    where = getattr(args, "run_dir", None)
    if where is not None and (Path(where) / "provenance.json").is_file():
        return f"; resume with: python -m trajmc simulate --resume {where}"
    return ""


def main(argv=None) -> int:
    """Run the command line.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 success, 1 a validation that failed, 2 bad input, 130 interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    old = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        old = None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.func(args)
    except (Interrupted, KeyboardInterrupt) as exc:
        # the run directory (given or default) if it was created: it can be resumed from its last checkpoint
        print(f"trajmc: {exc if isinstance(exc, Interrupted) else 'interrupted'}{_resume_hint(args)}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except TrajmcError as exc:  # (a lost Dask cluster leaves a checkpoint: say how to go on)
        hint = _resume_hint(args) if getattr(exc, "resumable", False) else ""
        print(f"trajmc: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}{hint}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except (OSError, MemoryError) as exc:  # a path we cannot write, a request too large to allocate
        msg = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"trajmc: error: {type(exc).__name__}: {msg}".splitlines()[0], file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
