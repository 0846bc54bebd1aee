"""Model specification: parse and validate a model file or dict (the model-file schema: README, model-file reference).

Everything a user writes is checked here, once; a :class:`Model` that exists is
valid, so nothing downstream (network, solver, compiled kernels) checks again.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import html
import math
import os
import re
import stat
import tomllib
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

from . import _validate as v
from .dos import Exponential, Oscillators, Spins, Table
from .errors import ModelError

__all__ = ["Model", "Bath", "Kernel", "Spectral", "BathState", "Step", "load_model", "toml_dumps"]

#: largest canonical-state mass the energy grid may cut off
TRUNCATION_TOL = 1e-9
#: bounds that keep every array trajmc allocates finite (a grid of 10^7 points is already huge)
MAX_ENERGY = 10**7
MAX_TIMES = 10**6
KERNELS = ("sqrt", "eth", "golden", "linear", "table")
#: largest grid a table kernel may cover: its (emax+1)^2 entries are held in memory and written to model.toml
MAX_TABLE_GRID = 4096
#: a model or lnV table file larger than this cannot hold a model trajmc can run (lnV tables stop at MAX_ENERGY)
MAX_FILE_BYTES = 512 * 2**20
#: run-directory names are ``<name>-<timestamp>``: the name must fit a file name
MAX_NAME = 100
SHAPES = ("flat", "gaussian", "exponential")


@dataclass(frozen=True)
class Spectral:
    """Even spectral function ``J(omega)`` of the energy change ``omega = E' - E`` (docs/physics.md §2).

    Parameters
    ----------
    shape : {"flat", "gaussian", "exponential"}
        ``J = 1``, ``exp(-omega^2 / (2 width^2))`` or ``exp(-abs(omega) / cutoff)``.
    width : float or None
        Width of the gaussian shape (grid steps).
    cutoff : float or None
        Cutoff of the exponential shape (grid steps).
    """

    shape: str = "flat"
    width: float | None = None
    cutoff: float | None = None

    def log_j(self, omega):
        """``ln J(omega)``.

        Parameters
        ----------
        omega : array_like of float
            Energy changes of the bath (grid steps), any shape.

        Returns
        -------
        ndarray of float64
            ``ln J``, the shape of ``omega`` (``-inf`` where ``J`` underflows).
        """
        omega = np.asarray(omega, dtype=float)
        with np.errstate(over="ignore"):  # a width or cutoff of 1e-300: ln J = -inf, the jump does not happen
            if self.shape == "gaussian":  # (omega / width)^2: width**2 of a Python float overflowed at 1e300
                return -0.5 * (omega / self.width) ** 2
            if self.shape == "exponential":
                return -np.abs(omega) / self.cutoff
        return np.zeros_like(omega)

    def to_dict(self):
        """The ``spectral`` table of the model file (plain data)."""
        d = {"shape": self.shape}
        if self.shape == "gaussian":
            d["width"] = self.width
        if self.shape == "exponential":
            d["cutoff"] = self.cutoff
        return d


@dataclass(frozen=True, eq=False)
class Kernel:
    """Bath correlation kernel (docs/physics.md §2): sqrt | eth | golden | linear | table.

    Parameters
    ----------
    model : {"sqrt", "eth", "golden", "linear", "table"}
        The form of ``f(E, E')``.
    gamma : float
        Rate constant (it sets the unit of time).
    spectral : Spectral
        The spectral function ``J`` (not used by ``table``).
    E_ref : float or None
        ``golden`` only: ``V_ref = V(E_ref)`` (grid steps).
    lnf : ndarray (emax+1, emax+1) float64 or None
        ``table`` only: ``ln f(E, E')`` on the grid, symmetric, ``-inf`` where the bath does not couple.
    """

    model: str
    gamma: float
    spectral: Spectral
    E_ref: float | None = None  # golden only: V_ref = V(E_ref)
    lnf: np.ndarray | None = None  # table only: ln f(E, E') on the grid, (emax+1, emax+1), symmetric

    def to_dict(self):
        """The ``kernel`` table of the model file (plain data)."""
        if self.model == "table":  # f holds everything, the spectral function included
            return {"model": "table", "gamma": self.gamma, "lnf": self.lnf.tolist()}
        d = {"model": self.model, "gamma": self.gamma, "spectral": self.spectral.to_dict()}
        if self.model == "golden":
            d["E_ref"] = self.E_ref
        return d


@dataclass(frozen=True, eq=False)
class BathState:
    """Initial state of one bath, resolved to a distribution ``p`` on the grid ``0..emax`` (docs/physics.md §3).

    Parameters
    ----------
    state : {"canonical", "microcanonical", "table"}
        The kind of state.
    p : ndarray (emax+1,) float64
        ``p(E)`` on the grid (sums to 1).
    beta : float or None
        The canonical ``beta``, or the reference ``beta`` given with a microcanonical or table state.
    energy : int or None
        The energy of a microcanonical state (grid steps).
    truncated : float
        The canonical probability above ``emax`` that the grid cuts off (at most ``1e-9``).
    """

    state: str  # canonical | microcanonical | table
    p: np.ndarray
    beta: float | None = None  # canonical beta, or the reference beta given for the others
    energy: int | None = None  # microcanonical
    truncated: float = 0.0  # canonical mass the grid cuts off

    def to_dict(self):
        """The bath's entry of ``initial.baths`` in the model file (plain data)."""
        d = {"state": self.state}
        if self.beta is not None:
            d["beta"] = self.beta
        if self.state == "microcanonical":
            d["energy"] = self.energy
        if self.state == "table":
            d["p"] = self.p.tolist()
        return d


@dataclass(frozen=True, eq=False)
class Bath:
    """One bath of a model: its density of states on the grid, its kernel and its coupling.

    Parameters
    ----------
    name : str
        The bath's name (it names the columns ``E_<name>``, ``Q_<name>``, ...).
    dos : trajmc.dos.Oscillators, trajmc.dos.Spins, trajmc.dos.Exponential or trajmc.dos.Table
        The density-of-states model.
    emax : int
        Top of the bath's energy grid ``0 .. emax`` (grid steps).
    kernel : Kernel
        The correlation kernel.
    coupling : ndarray (n_ops, n_s, n_s) complex128 or None
        The bath's own system coupling operators; None: the model's ``coupling``.
    lnV : ndarray (emax+1,) float64
        ``ln V_E`` on the grid, ``-inf`` where there are no microstates.
    """

    name: str
    dos: object
    emax: int
    kernel: Kernel
    coupling: np.ndarray | None  # (n_ops, n_s, n_s) complex; None = the system's coupling
    lnV: np.ndarray  # (emax+1,) float64, -inf where there are no microstates

    @property
    def quantum(self) -> int:
        """The bath's quantum ``w`` (grid steps): microstates only at multiples of it."""
        return self.dos.w

    def to_dict(self):
        """The bath's entry of ``baths`` in the model file (plain data)."""
        d = {"name": self.name, "dos": self.dos.to_dict(), "emax": self.emax, "kernel": self.kernel.to_dict()}
        if self.coupling is not None:
            d["coupling"] = _matrices_to_list(self.coupling)
        return d


@dataclass(frozen=True)
class Step:
    """One protocol entry: from ``time`` on, the levels have ``energies`` (docs/physics.md §5.7).

    Parameters
    ----------
    time : float
        Switching time (``1/gamma``).
    energies : tuple of int
        The level energies from then on (grid steps).
    given : tuple of float or None
        The energies as written (energy units), when they were placed on the grid of step ``delta``.
    """

    time: float
    energies: tuple
    given: tuple | None = None  # the energies as written (energy units), when placed on the grid of step delta


@dataclass(frozen=True, eq=False)
class Model:
    """A validated trajmc model.  Build it with :func:`load_model`.

    A ``Model`` that exists is valid: every check happens in :func:`load_model`, once.  It is immutable;
    :meth:`with_times` returns a copy with other sample times.  Energies are integers in units of the
    grid step ``delta`` (docs/physics.md, Conventions).

    Parameters
    ----------
    name : str
        The model's name (it names run directories).
    energies : ndarray (n_s,) int64
        System level energies ``eps_s`` on the grid (the initial ones for a driven model).
    coupling : ndarray (n_ops, n_s, n_s) complex128
        The system coupling operators ``S_a`` (Hermitian); a bath without its own ``coupling`` uses these.
    baths : tuple of trajmc.model.Bath
        The baths, in model-file order (index ``nu``).
    p_system : ndarray (n_s,) float64 or None
        Initial system distribution of a product start; None for a joint initial table.
    system_gibbs_beta : float or None
        ``beta`` when the system starts in its Gibbs state, else None.
    bath_states : tuple of trajmc.model.BathState or None
        Each bath's initial state (product start); None for a joint initial table.
    joint : tuple or None
        ``(states, p)`` of a joint initial table: ``states`` (k, 1+N) int64 rows ``(s, E_1, .., E_N)``,
        ``p`` (k,) float64; None for a product start.
    times : ndarray (n_t,) float64
        Sample times, starting at 0 and increasing, in units of ``1/gamma``.
    simulation : dict
        Monte Carlo settings of the model file's ``[simulation]`` table (``trajectories``, ``seed``,
        ``chunk_size``, ``engine``, ``records``, ...); they do not change the physics.
    protocol : tuple of trajmc.model.Step
        Driving protocol (piecewise-constant levels); empty for an undriven model.
    source : str or None
        The file the model was read from, if any.
    given : dict or None
        The system as written, when its levels were placed on the grid (``delta``, the energies or the
        Hamiltonian and coupling as given, ``max_error``); None for integer levels.

    Other Parameters
    ----------------
    _hash : str
        Cache of :attr:`digest` (internal).

    See Also
    --------
    load_model : read and validate a model file or dict.
    get_example : the model dicts of the built-in examples.
    """

    name: str
    energies: np.ndarray  # (n_s,) int64
    coupling: np.ndarray  # (n_ops, n_s, n_s) complex128
    baths: tuple
    p_system: np.ndarray | None  # (n_s,) initial system distribution (product initial states)
    system_gibbs_beta: float | None
    bath_states: tuple | None  # per-bath BathState (product initial states)
    joint: tuple | None  # (states (n, 1+N) int64, p (n,)) for a joint initial table
    times: np.ndarray
    simulation: dict
    protocol: tuple = ()
    source: str | None = None
    given: dict | None = None  # the system as written when its levels were placed on the grid (see place_levels)
    _hash: str = field(default="", repr=False)

    @property
    def n_levels(self) -> int:
        """Number of system levels ``n_s``."""
        return len(self.energies)

    @property
    def n_baths(self) -> int:
        """Number of baths ``N``."""
        return len(self.baths)

    @property
    def bath_names(self) -> list[str]:
        """The baths' names, in order (they name the columns ``E_<b>``, ``Q_<b>``, ...)."""
        return [b.name for b in self.baths]

    def coupling_weight(self, nu: int) -> np.ndarray:
        """Coupling weights of one bath.

        Parameters
        ----------
        nu : int
            Bath index.

        Returns
        -------
        ndarray (n_s, n_s) float64
            ``c[s, s'] = sum_a |S_a[s, s']|^2`` over the bath's coupling operators, with a zero diagonal
            (diagonal elements cause no jumps).
        """
        S = self.baths[nu].coupling
        if S is None:
            S = self.coupling
        c = np.sum(np.abs(S) ** 2, axis=0)
        np.fill_diagonal(c, 0.0)
        return c

    def beta_ref(self, nu: int) -> float:
        """Reference inverse temperature of one bath (docs/physics.md §3).

        Parameters
        ----------
        nu : int
            Bath index.

        Returns
        -------
        float
            The ``beta`` of the bath's initial state (canonical, or the reference ``beta`` of a
            microcanonical or table state), else that of an ``exponential`` density of states, else NaN.
            It enters ``Sigma_tilde``.
        """
        st = self.bath_states[nu] if self.bath_states is not None else None
        if st is not None and st.beta is not None:
            return st.beta
        dos = self.baths[nu].dos
        if isinstance(dos, Exponential):
            return dos.beta
        return float("nan")

    def canonical_pi(self, nu: int):
        """The canonical reference ``pi_E`` of one bath, on its grid.

        A canonical start is its own reference; a microcanonical or table start with a reference ``beta``
        has ``pi_E ∝ V_E exp(-beta E)`` normalised on the grid ``0..emax`` (the states a run can visit).

        Parameters
        ----------
        nu : int
            Bath index.

        Returns
        -------
        ndarray (emax+1,) float64 or None
            ``pi_E`` for ``E = 0 .. emax`` (sums to 1); None without a reference (a joint initial table,
            or a non-canonical state without ``beta``).
        """
        if self.bath_states is None:
            return None
        st = self.bath_states[nu]
        if st.state == "canonical":
            return st.p
        if st.beta is None:
            return None
        b = self.baths[nu]
        x = b.lnV - st.beta * np.arange(b.emax + 1)
        return np.exp(x - logsumexp(x))

    def to_dict(self) -> dict:
        """The resolved model as plain data.

        Returns
        -------
        dict
            Every default filled in, in the model-file schema (lists, numbers, strings);
            ``load_model(model.to_dict())`` gives the same model.
        """
        d = {"name": self.name,
             "system": {"energies": self.energies.tolist(), "coupling": _matrices_to_list(self.coupling)},
             "baths": [b.to_dict() for b in self.baths]}
        if self.given is not None:
            d["system"]["given"] = copy.deepcopy(self.given)
        ini = {}
        if self.joint is not None:
            ini["joint"] = {"states": self.joint[0].tolist(), "p": self.joint[1].tolist()}
        else:
            if self.system_gibbs_beta is not None:
                ini["system"] = {"gibbs": True, "beta": self.system_gibbs_beta}
            else:
                ini["system"] = self.p_system.tolist()
            ini["baths"] = [st.to_dict() for st in self.bath_states]
        d["initial"] = ini
        t = self.times
        if len(t) >= 2 and np.array_equal(t, np.linspace(0.0, t[-1], len(t))):
            d["times"] = {"stop": float(t[-1]), "num": len(t)}  # reloads to the same linspace, bit for bit
        else:
            d["times"] = {"values": t.tolist()}
        d["simulation"] = {k: v for k, v in self.simulation.items() if v is not None}
        if self.protocol:
            d["protocol"] = [{"time": s.time, "energies": list(s.energies)}
                             | ({"given_energies": list(s.given)} if s.given is not None else {})
                             for s in self.protocol]
        return d

    def to_toml(self) -> str:
        """The resolved model as TOML text (:func:`toml_dumps` of :meth:`to_dict`); reloads identically.

        Returns
        -------
        str
        """
        return toml_dumps(self.to_dict())

    def summary(self) -> dict:
        """The few facts that identify the model at a glance (what :meth:`__repr__` and the notebook
        summary show).

        Returns
        -------
        dict
            ``name``, ``levels`` (the level energies, list of int), ``baths`` (one string per bath: name,
            density of states, ``emax``, kernel), ``initial`` (str), ``times`` (str), ``protocol`` (number of
            switches).
        """
        baths = []
        for b in self.baths:
            dos = b.dos.to_dict()
            kind = dos.pop("model")
            arg = ", ".join(f"{k}={val}" for k, val in dos.items() if k not in ("lnV", "file")) or "table"
            baths.append(f"{b.name}: {kind}({arg}), emax={b.emax}, kernel={b.kernel.model}")
        if self.joint is not None:
            ini = f"joint table ({len(self.joint[1])} states)"
        else:
            sys_ = (f"gibbs(beta={self.system_gibbs_beta:g})" if self.system_gibbs_beta is not None
                    else _short_list(self.p_system))
            parts = []
            for st in self.bath_states:
                if st.state == "canonical":
                    parts.append(f"canonical(beta={st.beta:g})")
                elif st.state == "microcanonical":
                    parts.append(f"microcanonical(E={st.energy})")
                else:
                    parts.append("table")
            ini = f"system {sys_}; baths " + ", ".join(parts)
        t = self.times
        times = f"{len(t)} times in [{t[0]:g}, {t[-1]:g}]"
        return {"name": self.name, "levels": [int(e) for e in self.energies], "baths": baths, "initial": ini,
                "times": times, "protocol": len(self.protocol)}

    def __repr__(self):
        s = self.summary()
        drive = f", {s['protocol']} switches" if s["protocol"] else ""
        return (f"<Model {s['name']!r}: levels {_short_list(s['levels'])}{drive}; "
                f"baths [{'; '.join(s['baths'])}]; {s['initial']}; {s['times']}>")

    def _repr_html_(self):
        s = self.summary()
        rows = [("levels", _short_list(s["levels"]))] + [("bath", b) for b in s["baths"]] \
            + [("initial", s["initial"]), ("times", s["times"])]
        if s["protocol"]:
            rows.append(("protocol", f"{s['protocol']} switches"))
        return html_table(f"Model {s['name']!r}", rows)

    @property
    def digest(self) -> str:
        """SHA-256 (hex str) of the resolved model without its name and Monte Carlo settings: identifies the physics."""
        if not self._hash:
            d = self.to_dict()
            d.pop("simulation")
            d.pop("name")
            object.__setattr__(self, "_hash", hashlib.sha256(repr(d).encode()).hexdigest())
        return self._hash

    def with_times(self, times) -> Model:
        """A copy of the model with other sample times.

        Parameters
        ----------
        times : array_like (n_t,) of float
            New sample times (must start at 0 and increase).

        Returns
        -------
        Model
            The same model with ``times`` replaced.

        Raises
        ------
        trajmc.ModelError
            The times are not valid (the message names ``times``).
        """
        t = _parse_times({"values": list(np.asarray(times, dtype=float).ravel())}, "times")
        m = copy.copy(self)
        object.__setattr__(m, "times", t)
        object.__setattr__(m, "_hash", "")
        return m


def _short_list(a, limit=8) -> str:
    """``[a, b, c]`` for a short sequence, ``[a, b, ..., z] (n entries)`` for a long one (numbers as %g)."""
    vals = [f"{float(x):g}" if not isinstance(x, (int, np.integer)) else str(int(x)) for x in a]
    if len(vals) <= limit:
        return "[" + ", ".join(vals) + "]"
    return "[" + ", ".join(vals[:3]) + ", ..., " + vals[-1] + f"] ({len(vals)} entries)"


def html_table(title, rows) -> str:
    """A compact HTML summary: a bold title over a two-column table of ``(label, value)`` rows (escaped)."""

    body = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                   f"<td style='text-align:left'>{html.escape(str(val))}</td></tr>" for k, val in rows)
    return f"<div><b>{html.escape(str(title))}</b><table>{body}</table></div>"


# --------------------------------------------------------------------------- TOML writer

#: arrays and inline tables whose one-line form is at most this long are written on one line
TOML_WIDTH = 100
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_str(s: str) -> str:
    out = ['"']
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif c in "\b\t\n\f\r":
            out.append({"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}[c])
        elif ord(c) < 32 or ord(c) == 127:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out) + '"'


def _toml_key(k) -> str:
    if not isinstance(k, str):
        raise TypeError(f"TOML keys are strings, got {type(k).__name__}")
    return k if _BARE_KEY.match(k) else _toml_str(k)


def _toml_scalar(x) -> str:
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return str(float(x))  # repr: round-trips; inf, -inf, nan are TOML too
    if isinstance(x, str):
        return _toml_str(x)
    raise TypeError(f"a value of type {type(x).__name__} cannot be written to TOML")


def _toml_inline(x) -> str:
    """``x`` on one line."""
    if isinstance(x, dict):
        if not x:
            return "{}"
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_inline(val)}" for k, val in x.items()) + " }"
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(_toml_inline(e) for e in x) + "]"
    return _toml_scalar(x)


def _toml_value(x, indent) -> str:
    """An array (or scalar) value: on one line when short, else one line per row (nested arrays) or items
    wrapped at :data:`TOML_WIDTH` characters (flat arrays)."""
    one = _toml_inline(x)
    if len(one) + indent <= TOML_WIDTH or not isinstance(x, (list, tuple)) or not x:
        return one
    pad = " " * (indent + 4)
    if any(isinstance(e, (list, tuple, dict)) for e in x):
        items = [_toml_value(e, indent + 4) if not isinstance(e, dict) else _toml_inline(e) for e in x]
        return "[\n" + "".join(f"{pad}{it},\n" for it in items) + " " * indent + "]"
    lines, cur = [], ""
    for it in (_toml_scalar(e) for e in x):
        if cur and len(pad) + len(cur) + len(it) + 2 > TOML_WIDTH:
            lines.append(cur)
            cur = ""
        cur = f"{cur} {it}," if cur else f"{it},"
    lines.append(cur)
    return "[\n" + "".join(f"{pad}{ln}\n" for ln in lines) + " " * indent + "]"


def _is_table_array(x) -> bool:
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(e, dict) for e in x)


def _toml_table(d, path, out):
    later = []
    for k, val in d.items():
        if val is None:
            raise TypeError(f"{'.'.join(path + [k])}: None cannot be written to TOML")
        key = _toml_key(k)
        if isinstance(val, dict) or _is_table_array(val):
            one = _toml_inline(val)
            if path and len(key) + 3 + len(one) <= TOML_WIDTH:  # top-level tables keep their [header]
                out.append(f"{key} = {one}")
            else:
                later.append((key, val))
        else:
            out.append(f"{key} = {_toml_value(val, 0)}")
    for key, val in later:
        sub = path + [key]
        if isinstance(val, dict):
            out.append("")
            out.append(f"[{'.'.join(sub)}]")
            _toml_table(val, sub, out)
        else:
            for e in val:
                out.append("")
                out.append(f"[[{'.'.join(sub)}]]")
                _toml_table(e, sub, out)


def toml_dumps(d: dict) -> str:
    """TOML text of a model dict, laid out for reading: short arrays and tables on one line, long arrays
    wrapped (several numbers a line, one row of a matrix a line); ``tomllib.loads`` gives ``d`` back.

    Parameters
    ----------
    d : dict
        Plain data (str keys; str, int, float, bool, lists and dicts as values; no None).

    Returns
    -------
    str
    """
    out = []
    _toml_table(d, [], out)
    return "\n".join(out).lstrip("\n") + "\n"


def _matrices_to_list(S):
    out = []
    for M in S:
        if np.all(M.imag == 0):
            out.append(M.real.tolist())
        else:
            out.append([[repr(complex(z)).strip("()") for z in row] for row in M])
    return out if len(out) > 1 else out[0]


# --------------------------------------------------------------------------- parsing

def load_model(source) -> Model:
    """Load and validate a model.

    Parameters
    ----------
    source : str, os.PathLike, dict or Model
        A TOML file, or a dict with the same keys (the model-file schema: README, model-file reference).
        Relative file names inside a model file (``lnV`` or ``lnf`` tables) are resolved against the
        file's folder.  A :class:`Model` is returned unchanged.

    Returns
    -------
    Model
        The validated, resolved model (every default filled in).

    Raises
    ------
    trajmc.ModelError
        One line naming the offending key and the problem.

    Examples
    --------
    >>> import trajmc
    >>> m = trajmc.load_model(trajmc.get_example("two-baths"))
    >>> m.bath_names
    ['hot', 'cold']
    """
    if isinstance(source, Model):
        return source
    base = None
    src_name = None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise ModelError("", f"{v.show(str(path))} is a directory, not a model file")
        if not path.is_file():
            raise ModelError("", f"model file {v.show(str(path))} does not exist")
        data = _read_toml(path)
        v.check_nesting(data)
        base = path.parent
        src_name = str(path)
    elif isinstance(source, dict):
        v.check_nesting(source)  # before deepcopy, which recurses
        data = copy.deepcopy(source)
    else:
        raise ModelError("", f"a model must be a TOML path or a dict, got {type(source).__name__}")
    return _parse_model(data, base, src_name)


def _read_toml(path):
    """Parse a TOML model file; every failure is one ModelError (with the line and key where known)."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ModelError("", f"{path}: {size / 2**20:.0f} MiB is too large for a model file (at most "
                                 f"{MAX_FILE_BYTES // 2**20} MiB)")
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelError("", f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelError("", f"{path}: not a text (UTF-8 TOML) file (byte 0x{raw[exc.start]:02x} at offset "
                             f"{exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelError("", f"{path}: not valid TOML ({v.show(str(exc))[1:-1]})") from None
    except RecursionError:  # arrays or inline tables nested ~1000 deep
        raise ModelError(_toml_key_at(text, _deep_position(text, v.MAX_DEPTH)),
                         f"{path}: arrays or tables nested more than {v.MAX_DEPTH} deep (a model needs at most "
                         "6 levels)") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python converts (4300 digits)
        m = re.search(r"[0-9_]{4000,}", text)
        where = _toml_key_at(text, m.start()) if m else ""
        what = "an integer literal too long to convert" if m else v.show(str(exc))
        raise ModelError(where, f"{path}: {what}") from None


def _deep_position(text, limit):
    """Offset where brackets (outside strings and comments) first nest deeper than ``limit``; best effort,
    only used to name the key of a file tomllib could not parse."""
    depth, i, n = 0, 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif c in "\"'":
            q = text[i:i + 3] if text[i:i + 3] in ('"""', "'''") else c
            j = i + len(q)
            while j < n and text[j:j + len(q)] != q:
                j += 2 if c == '"' and text[j] == "\\" else 1
            i = j + len(q)
            continue
        elif c in "[{":
            depth += 1
            if depth > limit:
                return i
        elif c in "]}":
            depth -= 1
        i += 1
    return 0


def _toml_key_at(text, pos):
    """The dotted key whose value is at ``pos`` in a TOML text: the last table header before it and the key
    of its line (best effort, for messages)."""
    head = text[:pos]
    table = ""
    seen = {}  # arrays of tables: [[baths]] -> baths[0], baths[1], ...
    for m in re.finditer(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(?:#.*)?$", head, flags=re.M):
        name = m.group(2).replace('"', "").replace("'", "").replace(" ", "")
        if m.group(1) == "[[":
            seen[name] = seen.get(name, -1) + 1
        parts = name.split(".")  # [baths.dos] after the second [[baths]] is baths[1].dos
        table = ""
        for i, part in enumerate(parts):
            table = f"{table}.{part}" if table else part
            prefix = ".".join(parts[: i + 1])
            if prefix in seen:
                table += f"[{seen[prefix]}]"
    start = head.rfind("\n") + 1
    line = head[start:]
    after = len(head)
    for m in re.finditer(r"^\s*([A-Za-z0-9_.\-\"' ]+?)\s*=", head, flags=re.M):  # the last key = before pos
        line, after = m.group(1), m.end()
    key = line.strip().replace('"', "").replace("'", "").replace(" ", "")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,60}", key or "-"):
        key = ""
    elif inner := _inline_keys(head[after:]):  # dos = { model = "spins", n = [[[...: baths[0].dos.n
        key = ".".join([key] + inner)
    full = f"{table}.{key}" if table and key else table or key
    return full if len(full) <= 80 else full[:80] + "..."


def _inline_keys(seg):
    """The keys of the inline tables still open at the end of ``seg`` (a value's text after its ``key =``)."""
    stack, last, i, n = [], "", 0, len(seg)
    while i < n:
        c = seg[i]
        if c in "\"'":
            q = seg[i:i + 3] if seg[i:i + 3] in ('"""', "'''") else c
            j = i + len(q)
            while j < n and seg[j:j + len(q)] != q:
                j += 2 if c == '"' and seg[j] == "\\" else 1
            i, last = j + len(q), q[0]
            continue
        if c == "{":
            stack.append("")
        elif c == "}" and stack:
            stack.pop()
        elif stack and last in "{," and (m := re.match(r"([A-Za-z0-9_\-]+)\s*=", seg[i:])):
            stack[-1] = m.group(1)
            i, last = i + m.end(), "="
            continue
        if not c.isspace():
            last = c
        i += 1
    return [k for k in stack if k]


def check_name(name, key="name"):
    """A model name names the run directory ``<name>-<timestamp>``: a visible, portable file name."""
    if not name:
        raise ModelError(key, "must be a non-empty name")
    if len(name) > MAX_NAME:
        raise ModelError(key, f"must be at most {MAX_NAME} characters (it names the run directory), got "
                              f"{len(name)}")
    if any(c in name for c in "/\\\0"):
        raise ModelError(key, f"must be a name without path separators, got {v.show(name)}")
    if name.startswith("."):
        raise ModelError(key, f"must not start with '.' (it names the run directory, which would be hidden), got "
                              f"{v.show(name)}")
    if any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in name):
        raise ModelError(key, f"must not contain control or unprintable characters, got {v.show(name)}")
    return name


def _parse_model(d, base, src_name) -> Model:
    v.check_table(d, "", {"name", "delta", "system", "baths", "initial", "times", "simulation", "protocol"},
                  required=("system", "baths", "initial"))
    name = check_name(v.as_str(d.get("name", "model"), "name"))

    delta = v.as_float(d["delta"], "delta", positive=True) if "delta" in d else None
    sysd = v.check_table(d["system"], "system", {"energies", "coupling", "hamiltonian", "given"},
                         required=("coupling",))
    energies, U, given = _parse_levels(sysd, delta)
    n_s = len(energies)
    coupling = _parse_coupling(sysd["coupling"], "system.coupling", n_s, U)
    if given is not None and "hamiltonian" in given and "coupling" not in given:
        given["coupling"] = _matrices_to_list(_parse_coupling(sysd["coupling"], "system.coupling", n_s, check=False))

    baths_raw = v.as_list(d["baths"], "baths")
    baths = [_parse_bath(b, f"baths[{i}]", n_s, base, U) for i, b in enumerate(baths_raw)]
    names = [b.name for b in baths]
    for i, nm in enumerate(names):
        if names.index(nm) != i:
            raise ModelError(f"baths[{i}].name", f"duplicate bath name {v.show(nm)}")

    p_sys, gibbs_beta, bath_states, joint = _parse_initial(d["initial"], "initial", energies, baths)
    # the golden kernel's reference energy defaults to the mean initial bath energy
    baths = [_resolve_eref(b, i, bath_states, joint) for i, b in enumerate(baths)]
    times = _parse_times(d.get("times", {}), "times")
    sim = _parse_simulation(d.get("simulation", {}), "simulation")
    protocol = _parse_protocol(d.get("protocol", []), "protocol", n_s, times,
                               given["delta"] if given is not None else None)
    if joint is None:
        for i, (b, st) in enumerate(zip(baths, bath_states, strict=True)):
            if not np.any(np.isfinite(b.lnV) & (st.p > 0)):
                raise ModelError(f"initial.baths[{i}]", "puts no weight on a grid energy with microstates")
    return Model(name=name, energies=energies, coupling=coupling, baths=tuple(baths), p_system=p_sys,
                 system_gibbs_beta=gibbs_beta, bath_states=None if joint else tuple(bath_states),
                 joint=joint, times=times, simulation=sim, protocol=tuple(protocol), source=src_name, given=given)


#: a given energy within this fraction of delta of a grid point is on the grid (no rounding reported)
ON_GRID_TOL = 1e-9
#: eigenvalues closer than this (relative to the spectrum's scale) are degenerate
DEGENERATE_TOL = 1e-9
#: entries of a rotated coupling operator below this (relative to its largest entry) are rounding: set to 0
ROTATION_TOL = 1e-13


def place_levels(values, delta, key):
    """Place level energies (energy units) on the grid of step ``delta``: (grid integers, largest error).

    Each level goes to the nearest multiple of ``delta``.  Two levels that differ but land on the same grid
    point are refused (the grid would merge them); a rounding error above ``ON_GRID_TOL * delta`` is reported
    as a warning, since the dynamics then uses the placed, not the given, gaps.
    """
    values = np.asarray(values, dtype=float)
    with np.errstate(over="ignore", invalid="ignore"):
        x = values / delta
    if not np.all(np.abs(x) <= MAX_ENERGY):
        i = int(np.flatnonzero(~(np.abs(x) <= MAX_ENERGY))[0])
        raise ModelError(f"{key}[{i}]", f"{values[i]:g} is {x[i]:.3g} grid steps of delta = {delta:g}; at most "
                                        f"{MAX_ENERGY:.0e} (a larger delta would do)")
    k = np.rint(x).astype(np.int64)
    err = np.abs(values - k * delta)
    scale = max(float(np.max(np.abs(values))), delta)
    for i in range(len(k)):
        for j in range(i):
            if k[i] == k[j] and abs(values[i] - values[j]) > DEGENERATE_TOL * scale:
                raise ModelError(key, f"levels {j} and {i} ({values[j]:.6g} and {values[i]:.6g}) fall on the same "
                                      f"grid point {k[i]} x delta (delta = {delta:g}): the grid would merge them; "
                                      f"a delta below {abs(values[i] - values[j]):.3g} separates them")
    worst = float(err.max()) if len(err) else 0.0
    if worst > ON_GRID_TOL * delta:
        i = int(np.argmax(err))
        warnings.warn(f"{key}: levels placed on the grid of step delta = {delta:g}; the largest rounding error is "
                      f"{worst:.3g} ({worst / delta:.2g} delta, level {i}: {values[i]:.6g} -> {k[i] * delta:.6g}); "
                      f"the dynamics uses the placed values", stacklevel=4)
    return k, worst


def _parse_levels(sysd, delta):
    """The system levels on the grid, the eigenbasis rotation (or None), and the record of what was given."""
    if "hamiltonian" in sysd:
        if "energies" in sysd:
            raise ModelError("system.hamiltonian", "excludes 'energies' (the levels are its eigenvalues)")
        if "given" in sysd:
            raise ModelError("system.given", "is the record of a placed system; it excludes 'hamiltonian'")
        H = _parse_matrices(sysd["hamiltonian"], "system.hamiltonian", None)
        if len(H) != 1:
            raise ModelError("system.hamiltonian", "must be one Hermitian matrix")
        H = H[0]
        dl = 1.0 if delta is None else delta
        w, U = np.linalg.eigh(H)
        scale = max(float(np.max(np.abs(w))), dl)
        deg = np.flatnonzero(np.diff(w) <= DEGENERATE_TOL * scale)
        if len(deg):
            i = int(deg[0])
            warnings.warn(f"system.hamiltonian: eigenvalues {i} and {i + 1} are degenerate ({w[i]:.6g}); the secular "
                          "approximation behind the master equation assumes a non-degenerate spectrum, and the "
                          "basis trajmc picks inside a degenerate eigenspace is arbitrary", stacklevel=3)
        if np.all(H == np.diag(np.diag(H))):
            U = None  # already diagonal: keep the given order and basis (eigh would sort the levels)
            w = np.diag(H).real
        k, worst = place_levels(w, dl, "system.hamiltonian")
        given = {"delta": dl, "hamiltonian": _matrices_to_list(H[None]), "max_error": worst}
        return k, U, given
    if "energies" not in sysd:
        raise ModelError("system.energies", "is required but missing (or give system.hamiltonian)")
    if "given" in sysd:  # a resolved model: energies are grid integers, `given` the record; re-place and compare
        if delta is not None:
            raise ModelError("delta", "excludes system.given (the record of a placed system holds its own delta)")
        energies = v.as_int_array(sysd["energies"], "system.energies", lo=-MAX_ENERGY, hi=MAX_ENERGY)
        g = v.check_table(copy.deepcopy(sysd["given"]), "system.given",
                          {"delta", "energies", "hamiltonian", "coupling", "max_error"}, required=("delta",))
        redo = {"hamiltonian": g["hamiltonian"]} if "hamiltonian" in g else {"energies": g.get("energies", [])}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            placed, U, _ = _parse_levels(redo | {"coupling": sysd["coupling"]},
                                         v.as_float(g["delta"], "system.given.delta", positive=True))
        if not np.array_equal(placed, energies):
            raise ModelError("system.given", f"places the levels at {placed.tolist()}, but system.energies is "
                                             f"{energies.tolist()}: the two were edited apart")
        return energies, None, g
    if delta is None:
        energies = v.as_int_array(sysd["energies"], "system.energies", lo=-MAX_ENERGY, hi=MAX_ENERGY)
        if len(energies) < 2:
            raise ModelError("system.energies", f"needs at least 2 levels, got {len(energies)}")
        return energies, None, None
    vals = v.as_float_array(sysd["energies"], "system.energies")
    if len(vals) < 2:
        raise ModelError("system.energies", f"needs at least 2 levels, got {len(vals)}")
    k, worst = place_levels(vals, delta, "system.energies")
    return k, None, {"delta": delta, "energies": vals.tolist(), "max_error": worst}


def _parse_matrices(raw, key, n):
    """One Hermitian matrix (a list of rows) or a list of them, each n x n (n = None: square, any size)."""
    items = v.as_list(raw, key)
    # one matrix (list of rows of numbers) or a list of matrices
    if all(isinstance(r, (list, tuple)) for r in items) and items and all(
            isinstance(x, (list, tuple)) for r in items for x in r) and all(len(r) for r in items):
        mats = [(m, f"{key}[{i}]") for i, m in enumerate(items)]
    else:
        mats = [(items, key)]
    out = []
    for m, k in mats:
        size = n if n is not None else len(v.as_list(m, k))
        if n is None and size < 2:
            raise ModelError(k, f"needs at least 2 levels, got {size}")
        rows = v.as_list(m, k, length=size)
        M = np.array([[v.as_complex(z, f"{k}[{i}][{j}]") for j, z in enumerate(v.as_list(r, f"{k}[{i}]", length=size))]
                      for i, r in enumerate(rows)], dtype=np.complex128)
        scale = max(np.abs(M).max(), 1.0)
        if np.abs(M - M.conj().T).max() > 1e-12 * scale:
            i, j = np.unravel_index(np.argmax(np.abs(M - M.conj().T)), M.shape)
            raise ModelError(k, f"must be Hermitian: S[{i}][{j}] = {M[i, j]} but conj(S[{j}][{i}]) = "
                                f"{np.conj(M[j, i])}")
        out.append(M)
    return np.array(out)


def _parse_coupling(raw, key, n_s, U=None, check=True):
    """Coupling operators (n_ops, n_s, n_s), rotated into the eigenbasis ``U`` of a given hamiltonian."""
    S = _parse_matrices(raw, key, n_s)
    if U is not None:
        top = float(np.abs(S).max())
        S = np.einsum("ji,ajk,kl->ail", U.conj(), S, U)
        S = 0.5 * (S + S.conj().transpose(0, 2, 1))  # Hermitian to the last bit
        S[np.abs(S) <= ROTATION_TOL * top] = 0.0  # rounding of the rotation is not a coupling
    if not check:
        return S
    off = S.copy()
    for M in off:
        np.fill_diagonal(M, 0)
    if not np.any(off):
        raise ModelError(key, "has no off-diagonal element: the system can never jump")
    return S


def _parse_dos(d, key, base):
    d = v.check_table(d, key, {"model", "n", "quantum", "beta", "lnV", "file"}, required=("model",))
    model = v.as_str(d["model"], f"{key}.model", ("oscillators", "spins", "exponential", "table"))
    allowed = {"oscillators": {"model", "n", "quantum"}, "spins": {"model", "n", "quantum"},
               "exponential": {"model", "beta", "quantum"}, "table": {"model", "lnV", "file"}}[model]
    for k in d:
        if k not in allowed:
            raise ModelError(f"{key}.{k}", f"is not a key of the {model!r} model "
                                           f"(allowed: {', '.join(sorted(allowed))})")
    w = v.as_int(d.get("quantum", 1), f"{key}.quantum", lo=1, hi=MAX_ENERGY)
    if model in ("oscillators", "spins"):
        if "n" not in d:
            raise ModelError(f"{key}.n", "is required but missing")
        n = v.as_int(d["n"], f"{key}.n", lo=1, hi=10**12, what="a positive integer")
        return (Oscillators if model == "oscillators" else Spins)(n, w)
    if model == "exponential":
        if "beta" not in d:
            raise ModelError(f"{key}.beta", "is required but missing")
        return Exponential(v.as_float(d["beta"], f"{key}.beta"), w)
    if ("lnV" in d) == ("file" in d):
        raise ModelError(key, "a 'table' model needs exactly one of 'lnV' or 'file'")
    if "lnV" in d:
        raw = v.as_list(d["lnV"], f"{key}.lnV")
        if len(raw) > MAX_ENERGY + 1:
            raise ModelError(f"{key}.lnV", f"at most {MAX_ENERGY + 1} entries (E = 0..{MAX_ENERGY}), got {len(raw)}")
        vals = v.as_float_array(raw, f"{key}.lnV", allow_neg_inf=True)
    else:
        fname = v.as_str(d["file"], f"{key}.file")
        if not fname or "\0" in fname:
            raise ModelError(f"{key}.file", f"must be a file name, got {v.show(fname)}")
        # relative to the model file's directory (a dict source: the working directory); absolute paths and
        # symbolic links are followed (README, model-file reference: the numbers are copied into the run)
        p = Path(fname) if base is None or os.path.isabs(fname) else Path(base) / fname
        vals = _read_lnv_file(p, f"{key}.file")
    if not np.any(np.isfinite(vals)):
        raise ModelError(key, "lnV has no finite entry (no microstates anywhere)")
    return Table(vals)


def _read_lnv_file(path, key):
    """The last column of a CSV (or one-column) text file: one ln V per energy 0, 1, ...; an optional header,
    '#' comments; every failure is one ModelError naming ``key``."""
    shown = v.show(str(path))
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelError(key, f"file {shown} does not exist") from None
    except OSError as exc:
        raise ModelError(key, f"file {shown} cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelError(key, f"{shown} is not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise ModelError(key, f"{shown}: {st.st_size / 2**20:.0f} MiB is too large for an lnV table (at most "
                              f"{MAX_FILE_BYTES // 2**20} MiB)")
    rows = []
    reader = None
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            for row in reader:
                if not row or row[0].strip().startswith("#"):
                    continue
                rows.append(row)
                if len(rows) > MAX_ENERGY + 2:  # a header and E = 0..MAX_ENERGY
                    raise ModelError(key, f"{shown}: more than {MAX_ENERGY + 1} lnV rows (E = 0..{MAX_ENERGY})")
    except UnicodeDecodeError as exc:
        raise ModelError(key, f"{shown}: not a UTF-8 text file (byte 0x{exc.object[exc.start]:02x} that UTF-8 "
                              "cannot decode)") from None
    except csv.Error as exc:
        line = f"line {reader.line_num}: " if reader is not None else ""
        raise ModelError(key, f"{shown}: not a readable CSV table ({line}{exc})") from None
    except OSError as exc:
        raise ModelError(key, f"file {shown} cannot be read ({exc.strerror or exc})") from None
    if rows and not _is_number(rows[0][-1]):
        rows = rows[1:]  # header
    try:
        vals = [float(r[-1]) for r in rows]
    except ValueError:
        raise ModelError(key, f"{path}: the last column must hold numbers (lnV)") from None
    if not vals:
        raise ModelError(key, f"{path}: no lnV values found")
    return v.as_float_array(vals, key, allow_neg_inf=True)


def _is_number(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


def _parse_bath(d, key, n_s, base, U=None):
    d = v.check_table(d, key, {"name", "dos", "emax", "kernel", "coupling"}, required=("dos", "emax", "kernel"))
    name = v.as_str(d.get("name", key.replace("[", "").replace("]", "")), f"{key}.name")
    if not name.isidentifier():
        raise ModelError(f"{key}.name", f"must be an identifier (it names columns like E_<name>), got {v.show(name)}")
    if name == "S":
        raise ModelError(f"{key}.name", "'S' is reserved (column E_S is the system energy)")
    dos = _parse_dos(d["dos"], f"{key}.dos", base)
    emax = v.as_int(d["emax"], f"{key}.emax", lo=0, hi=MAX_ENERGY)
    if isinstance(dos, Table) and emax > dos.max_energy:
        raise ModelError(f"{key}.emax", f"is {emax} but the lnV table only covers E = 0..{dos.max_energy}")
    if isinstance(dos, Spins) and emax > dos.max_energy:  # the grid above n * quantum holds no microstate
        raise ModelError(f"{key}.emax", f"is {emax} but {dos.n} spins of quantum {dos.w} hold at most E = "
                                        f"{dos.max_energy} (n * quantum); use emax <= {dos.max_energy}")
    with np.errstate(over="ignore", invalid="ignore"):
        lnV = dos.lnv(np.arange(emax + 1)).astype(np.float64)
    bad = np.flatnonzero(np.isnan(lnV) | (lnV == np.inf))
    if len(bad):
        raise ModelError(f"{key}.dos", f"ln V overflows at E = {bad[0]} ({lnV[bad[0]]}); lower emax or the "
                                       "parameters of the density of states")
    if not np.any(np.isfinite(lnV)):
        raise ModelError(f"{key}.emax", f"the grid 0..{emax} holds no bath microstates")
    kernel = _parse_kernel(d["kernel"], f"{key}.kernel", dos, emax, base)
    coupling = _parse_coupling(d["coupling"], f"{key}.coupling", n_s, U) if "coupling" in d else None
    return Bath(name=name, dos=dos, emax=emax, kernel=kernel, coupling=coupling, lnV=lnV)


def _parse_kernel(d, key, dos, emax, base=None):
    d = v.check_table(d, key, {"model", "gamma", "spectral", "E_ref", "lnf", "file"}, required=("model",))
    model = v.as_str(d["model"], f"{key}.model", KERNELS)
    gamma = v.as_float(d.get("gamma", 1.0), f"{key}.gamma", positive=True)
    if model == "table":
        return Kernel(model="table", gamma=gamma, spectral=Spectral(), lnf=_parse_lnf(d, key, emax, base))
    for k in ("lnf", "file"):
        if k in d:
            raise ModelError(f"{key}.{k}", f"only applies to the 'table' kernel, not {model!r}")
    sd = v.check_table(d.get("spectral", {"shape": "flat"}), f"{key}.spectral", {"shape", "width", "cutoff"})
    shape = v.as_str(sd.get("shape", "flat"), f"{key}.spectral.shape", SHAPES)
    width = cutoff = None
    if shape == "gaussian":
        if "width" not in sd:
            raise ModelError(f"{key}.spectral.width", "is required for a gaussian spectral function")
        width = v.as_float(sd["width"], f"{key}.spectral.width", positive=True)
    elif "width" in sd:
        raise ModelError(f"{key}.spectral.width", f"only applies to shape 'gaussian', not {shape!r}")
    if shape == "exponential":
        if "cutoff" not in sd:
            raise ModelError(f"{key}.spectral.cutoff", "is required for an exponential spectral function")
        cutoff = v.as_float(sd["cutoff"], f"{key}.spectral.cutoff", positive=True)
    elif "cutoff" in sd:
        raise ModelError(f"{key}.spectral.cutoff", f"only applies to shape 'exponential', not {shape!r}")
    E_ref = None
    if "E_ref" in d:
        if model != "golden":
            raise ModelError(f"{key}.E_ref", f"only applies to the 'golden' kernel, not {model!r}")
        E_ref = v.as_float(d["E_ref"], f"{key}.E_ref", nonneg=True)
        if E_ref > emax:  # V_ref sets the unit of time; far off the grid ln V is not even computable
            raise ModelError(f"{key}.E_ref", f"must lie on the bath's grid 0..{emax}, got {E_ref:g}")
    if model == "linear" and not isinstance(dos, (Oscillators, Spins)):
        raise ModelError(f"{key}.model", f"'linear' needs an oscillators or spins bath, not {dos.model!r}")
    return Kernel(model=model, gamma=gamma, spectral=Spectral(shape, width, cutoff), E_ref=E_ref)


def _parse_lnf(d, key, emax, base):
    """The table kernel's ``ln f(E, E')``: (emax+1)^2 entries, finite or -inf, symmetric."""
    for k in ("spectral", "E_ref"):
        if k in d:
            raise ModelError(f"{key}.{k}", "does not apply to the 'table' kernel (f already holds the spectral "
                                           "function and every normalisation)")
    if ("lnf" in d) == ("file" in d):
        raise ModelError(key, "a 'table' kernel needs exactly one of 'lnf' or 'file'")
    G = emax + 1
    if G > MAX_TABLE_GRID:
        raise ModelError(f"{key}.model", f"a table kernel holds (emax+1)^2 entries; emax = {emax} is above the "
                                         f"limit {MAX_TABLE_GRID - 1} for tables")
    if "lnf" in d:
        k = f"{key}.lnf"
        if isinstance(d["lnf"], np.ndarray):
            M = np.array(d["lnf"], dtype=np.float64)
            if M.shape != (G, G):
                raise ModelError(k, f"must be {G} x {G} (the grid 0..{emax}), got shape {M.shape}")
        else:
            rows = v.as_list(d["lnf"], k, length=G)
            M = np.array([v.as_float_array(r, f"{k}[{i}]", length=G, allow_neg_inf=True)
                          for i, r in enumerate(rows)])
    else:
        fname = v.as_str(d["file"], f"{key}.file")
        k = f"{key}.file"
        M = _read_matrix_file(Path(fname) if base is None or os.path.isabs(fname) else Path(base) / fname, k)
        if M.shape != (G, G):
            raise ModelError(k, f"{fname}: must hold a {G} x {G} table (the grid 0..{emax}), got shape {M.shape}")
    bad = np.argwhere(np.isnan(M) | (M == np.inf))
    if len(bad):
        i, j = bad[0]
        raise ModelError(f"{k}" if "file" in d else f"{k}[{i}][{j}]",
                         f"ln f must be finite or -inf (no coupling), got {M[i, j]} at [{i}][{j}]")
    fin = np.isfinite(M)
    with np.errstate(invalid="ignore"):
        gap = np.where(fin & fin.T, np.abs(M - M.T), 0.0)
    asym = (fin != fin.T) | (gap > 1e-12 * np.maximum(1.0, np.abs(np.where(fin, M, 0.0))))
    if np.any(asym):
        i, j = (int(x) for x in np.argwhere(asym)[0])
        where = f"{k}[{i}][{j}]" if "file" not in d else k
        raise ModelError(where, f"f(E, E') must be symmetric: ln f[{i}][{j}] = {M[i, j]!r} but "
                                f"ln f[{j}][{i}] = {M[j, i]!r}")
    if not np.any(fin):
        raise ModelError(k, "has no finite entry: the bath never couples")
    with np.errstate(invalid="ignore"):
        M = np.where(fin, 0.5 * (M + M.T), -np.inf)  # exactly symmetric: detailed balance to the last bit
    return M


def _read_matrix_file(path, key):
    """A square table from ``.npy`` or a comma/space separated text file (``-inf`` allowed)."""
    if not path.is_file():
        raise ModelError(key, f"file {str(path)!r} does not exist")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ModelError(key, f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB; a table kernel has at most "
                                  f"{MAX_TABLE_GRID}^2 entries")
        if path.suffix == ".npy":
            M = np.load(path, allow_pickle=False)
        else:
            with open(path, encoding="utf-8") as fh:
                lines = [ln for ln in fh.read().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
            delim = "," if any("," in ln for ln in lines) else None
            M = np.loadtxt(lines, delimiter=delim, ndmin=2)
    except (ValueError, OSError, UnicodeDecodeError, EOFError) as exc:
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ModelError(key, f"{path}: not a readable numeric table ({msg})") from None
    if M.ndim != 2 or not np.issubdtype(M.dtype, np.number) or np.iscomplexobj(M):
        raise ModelError(key, f"{path}: must hold a real 2-D table, got {M.dtype} of shape {M.shape}")
    return M.astype(np.float64)


def _resolve_eref(bath, i, bath_states, joint):
    k = bath.kernel
    if k.model != "golden" or k.E_ref is not None:
        return bath
    if joint is not None:
        states, p = joint
        mean = float(np.dot(p, states[:, 1 + i]))
    else:
        mean = float(np.dot(bath_states[i].p, np.arange(bath.emax + 1)))
    kern = Kernel(k.model, k.gamma, k.spectral, E_ref=mean, lnf=k.lnf)
    return Bath(bath.name, bath.dos, bath.emax, kern, bath.coupling, bath.lnV)


def _parse_initial(d, key, energies, baths):
    d = v.check_table(d, key, {"system", "baths", "joint"})
    n_s = len(energies)
    if "joint" in d:
        if "system" in d or "baths" in d:
            raise ModelError(f"{key}.joint", "excludes 'system' and 'baths' (give one or the other)")
        return None, None, None, _parse_joint(d["joint"], f"{key}.joint", n_s, baths)
    for k in ("system", "baths"):
        if k not in d:
            raise ModelError(f"{key}.{k}", "is required (or give 'joint')")
    sysd = d["system"]
    gibbs_beta = None
    if isinstance(sysd, dict):
        v.check_table(sysd, f"{key}.system", {"gibbs", "beta"}, required=("gibbs", "beta"))
        if not v.as_bool(sysd["gibbs"], f"{key}.system.gibbs"):
            raise ModelError(f"{key}.system.gibbs", "must be true (or give p_s(0) as a list)")
        gibbs_beta = v.as_float(sysd["beta"], f"{key}.system.beta")
        x = -gibbs_beta * energies.astype(float)
        p_sys = np.exp(x - logsumexp(x))
    else:
        p_sys = v.as_distribution(sysd, f"{key}.system", n_s)
    states = v.as_list(d["baths"], f"{key}.baths", length=len(baths))
    return p_sys, gibbs_beta, [_parse_bath_state(s, f"{key}.baths[{i}]", baths[i]) for i, s in enumerate(states)], None


def _parse_bath_state(d, key, bath):
    d = v.check_table(d, key, {"state", "beta", "energy", "p"}, required=("state",))
    state = v.as_str(d["state"], f"{key}.state", ("canonical", "microcanonical", "table"))
    beta = v.as_float(d["beta"], f"{key}.beta") if "beta" in d else None
    grid = np.arange(bath.emax + 1)
    if state == "canonical":
        for k in ("energy", "p"):
            if k in d:
                raise ModelError(f"{key}.{k}", "does not apply to a canonical state")
        if beta is None:
            raise ModelError(f"{key}.beta", "is required for a canonical state")
        frac, suggest = canonical_truncation(bath.dos, beta, bath.emax, f"{key}.beta")
        if frac == math.inf:
            raise ModelError(f"{bath_key(key)}.emax", f"the canonical bath state at beta = {beta:g} peaks beyond the "
                                                      f"grid 0..{bath.emax} (at least 1/(emax+2) of it is cut off); "
                                                      "raise emax or beta")
        if frac > TRUNCATION_TOL:
            hint = f"; emax = {suggest} would do" if suggest is not None else ""
            raise ModelError(f"{bath_key(key)}.emax",
                             f"the grid 0..{bath.emax} cuts off {frac:.3g} of the canonical bath state at "
                             f"beta = {beta:g} "
                             f"(more than {TRUNCATION_TOL:g}){hint}")
        x = bath.lnV - beta * grid
        p = np.exp(x - logsumexp(x))
        return BathState("canonical", p, beta=beta, truncated=frac)
    if state == "microcanonical":
        if "p" in d:
            raise ModelError(f"{key}.p", "does not apply to a microcanonical state")
        if "energy" not in d:
            raise ModelError(f"{key}.energy", "is required for a microcanonical state")
        E0 = v.as_int(d["energy"], f"{key}.energy")
        if not 0 <= E0 <= bath.emax:
            raise ModelError(f"{key}.energy", f"{E0} is off the grid 0..{bath.emax}")
        if not np.isfinite(bath.lnV[E0]):
            raise ModelError(f"{key}.energy", f"the bath has no microstates at E = {E0} (quantum {bath.quantum})")
        p = np.zeros(bath.emax + 1)
        p[E0] = 1.0
        return BathState("microcanonical", p, beta=beta, energy=E0)
    if "energy" in d:
        raise ModelError(f"{key}.energy", "does not apply to a table state")
    if "p" not in d:
        raise ModelError(f"{key}.p", "is required for a table state")
    p = v.as_distribution(d["p"], f"{key}.p", bath.emax + 1)
    bad = np.flatnonzero((p > 0) & ~np.isfinite(bath.lnV))
    if len(bad):
        raise ModelError(f"{key}.p", f"puts weight on E = {bad[0]}, where the bath has no microstates")
    return BathState("table", p, beta=beta)


def bath_key(key):
    # "initial.baths[i]" -> "baths[i]"
    return key.split(".", 1)[1] if key.startswith("initial.") else key


def canonical_truncation(dos, beta, emax, key):
    """Fraction of ``V_E e^{-beta E}`` beyond ``emax``, and the smallest ``emax`` keeping it <= TRUNCATION_TOL / 2."""
    top = dos.max_energy
    if top is not None and top <= max(2 * emax, 256):
        hi = top
    else:  # unbounded, or bounded far beyond the grid (spins n = 10^9): the tail is found by doubling
        if isinstance(dos, Exponential) and not beta > dos.beta:
            raise ModelError(key, f"a canonical state of an exponential(beta={dos.beta:g}) bath needs "
                                  f"beta > {dos.beta:g}, "
                                  f"got {beta:g} (not normalisable)")
        if beta <= 0 and top is None:
            raise ModelError(key, f"must be > 0 for an unbounded bath, got {beta:g}")
        hi = max(2 * emax, 256)
        while True:
            x = dos.lnv(np.arange(hi + 1)) - beta * np.arange(hi + 1)
            m = np.max(x[np.isfinite(x)])
            last = x[np.isfinite(x)][-8:]
            if last[-1] < m - 80 and np.all(np.diff(last) <= 0):
                break
            if hi >= 1 << 20 and np.max(x[emax + 1:]) >= np.max(x[:emax + 1]):
                # a weight beyond the grid is the largest on it: at least 1/(emax+2) of the state is cut off;
                # no search on to 2^26 points (a bath of 10^12 oscillators) to say so
                return math.inf, None
            hi *= 2
            if top is not None and hi >= top:
                hi = top
                break
            if hi > 1 << 26:
                raise ModelError(key, f"canonical state at beta = {beta:g} is too broad to normalise")
    E = np.arange(max(hi, emax) + 1)
    x = dos.lnv(E) - beta * E
    total = logsumexp(x)
    # mass beyond each E, from the top down
    tail = np.logaddexp.accumulate(x[::-1])[::-1]  # tail[E] = log sum_{E' >= E}
    frac = float(np.exp(tail[emax + 1] - total)) if emax + 1 < len(E) else 0.0
    ok = np.flatnonzero(np.append(np.exp(tail[1:] - total), 0.0) <= TRUNCATION_TOL / 2)
    suggest = int(ok[0]) if len(ok) else None
    return frac, suggest


def _parse_joint(d, key, n_s, baths):
    d = v.check_table(d, key, {"states", "p"}, required=("states", "p"))
    rows = v.as_list(d["states"], f"{key}.states")
    N = len(baths)
    states = np.array([v.as_int_array(r, f"{key}.states[{i}]", length=1 + N, lo=-MAX_ENERGY, hi=MAX_ENERGY)
                       for i, r in enumerate(rows)], dtype=np.int64)
    p = v.as_distribution(d["p"], f"{key}.p", len(rows))
    for i, row in enumerate(states):
        if not 0 <= row[0] < n_s:
            raise ModelError(f"{key}.states[{i}][0]", f"level {row[0]} is not in 0..{n_s - 1}")
        for nu, b in enumerate(baths):
            E = row[1 + nu]
            if not 0 <= E <= b.emax or not np.isfinite(b.lnV[E]):
                raise ModelError(f"{key}.states[{i}][{1 + nu}]",
                                 f"E = {E} is off the grid of bath {b.name!r} or has no microstates")
    if len({tuple(r) for r in states.tolist()}) != len(states):
        raise ModelError(f"{key}.states", "lists a state twice")
    return states, p


def _parse_times(d, key):
    d = v.check_table(d, key, {"stop", "num", "values"})
    if "values" in d:
        if "stop" in d or "num" in d:
            raise ModelError(f"{key}.values", "excludes 'stop' and 'num'")
        t = v.as_float_array(d["values"], f"{key}.values", nonneg=True)
        if len(t) > MAX_TIMES:
            raise ModelError(f"{key}.values", f"at most {MAX_TIMES} sample times, got {len(t)}")
    else:
        stop = v.as_float(d.get("stop", 5.0), f"{key}.stop", positive=True)
        num = v.as_int(d.get("num", 51), f"{key}.num", lo=2, hi=MAX_TIMES)
        t = np.linspace(0.0, stop, num)
    if t[0] != 0.0:
        raise ModelError(f"{key}.values", f"must start at 0 (the reference time of Sigma and Q), got {t[0]}")
    if np.any(np.diff(t) <= 0):
        raise ModelError(f"{key}.values", "must be strictly increasing")
    return t


#: bounds on the Monte Carlo counts (chunk indices and trajectory numbers stay within int64)
MAX_TRAJECTORIES = 2**62
MAX_SEED = 2**256 - 1
SIM_DEFAULTS = {"trajectories": 100_000, "seed": None, "chunk_size": 4096, "engine": None, "records": None,
                "trajectory_entropy": None, "max_jumps": None}
ENGINES = ("auto", "enumerated", "implicit")


def _parse_simulation(d, key):
    d = v.check_table(d, key, set(SIM_DEFAULTS))
    out = dict(SIM_DEFAULTS)
    if "trajectories" in d:
        out["trajectories"] = v.as_int(d["trajectories"], f"{key}.trajectories", lo=1, hi=MAX_TRAJECTORIES)
    if "seed" in d:
        out["seed"] = v.as_int(d["seed"], f"{key}.seed", lo=0, hi=MAX_SEED)
    if "chunk_size" in d:
        out["chunk_size"] = v.as_int(d["chunk_size"], f"{key}.chunk_size", lo=1, hi=2**31 - 1)
    if "engine" in d:
        out["engine"] = v.as_str(d["engine"], f"{key}.engine", ENGINES)
    for k in ("records", "trajectory_entropy"):
        if k in d:
            out[k] = v.as_bool(d[k], f"{key}.{k}")
    if "max_jumps" in d:
        out["max_jumps"] = v.as_float(d["max_jumps"], f"{key}.max_jumps", positive=True)
    return out


def _parse_protocol(raw, key, n_s, times, delta=None):
    if isinstance(raw, dict):
        raw = [raw]
    items = v.as_list(raw, key, nonempty=False)
    steps = []
    last = 0.0
    for i, s in enumerate(items):
        k = f"{key}[{i}]"
        s = v.check_table(s, k, {"time", "energies", "given_energies"}, required=("time", "energies"))
        t = v.as_float(s["time"], f"{k}.time", positive=True)
        if t <= last:
            raise ModelError(f"{k}.time", f"switch times must increase: {t} follows {last}")
        last = t
        given = None
        if "given_energies" in s:  # a resolved model: energies are placed, given_energies the record
            if delta is None:
                raise ModelError(f"{k}.given_energies", "needs system.given (the delta they were placed with)")
            given = v.as_float_array(s["given_energies"], f"{k}.given_energies", length=n_s)
            e = v.as_int_array(s["energies"], f"{k}.energies", length=n_s, lo=-MAX_ENERGY, hi=MAX_ENERGY)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                placed, _ = place_levels(given, delta, f"{k}.given_energies")
            if not np.array_equal(placed, e):
                raise ModelError(f"{k}.given_energies", f"places the levels at {placed.tolist()}, but "
                                                        f"{k}.energies is {e.tolist()}: the two were edited apart")
        elif delta is not None:
            given = v.as_float_array(s["energies"], f"{k}.energies", length=n_s)
            e, _ = place_levels(given, delta, f"{k}.energies")
        else:
            e = v.as_int_array(s["energies"], f"{k}.energies", length=n_s, lo=-MAX_ENERGY, hi=MAX_ENERGY)
        steps.append(Step(t, tuple(int(x) for x in e), None if given is None else tuple(float(x) for x in given)))
    return steps
