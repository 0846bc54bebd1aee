"""Microscopic system-bath models: from ``H = H_S + H_B + lambda S (x) B`` to the MME, and the exact
quantum dynamics to check the MME against (docs/physics.md §2, "The golden-rule factor").

Conventions (one place for all of them)
---------------------------------------
* ``hbar = 1`` and ``k_B = 1``.  Energies are physical (any unit); time is in ``1 / (energy unit)``.
* ``delta`` is the width of the bath's energy windows.  Window ``E`` (an integer, trajmc's grid index) is
  ``[E delta, (E + 1) delta)``, so a bath level ``e_i`` lies in window ``floor(e_i / delta)``.  (The paper
  labels the window ``(E - delta, E]`` by its upper edge; only differences of ``E`` enter anything.)
  ``V_E`` is the number of bath levels in window ``E``, ``Pi_E`` the projector on them.
* The system levels ``eps_s`` are the eigenvalues of ``H_S`` (ascending); the MME places them on the grid
  as the integers ``round(eps_s / delta)`` (see :class:`Microscopic` for the refusal rules).  The exact
  dynamics always uses the true ``eps_s``.
* ``lambda`` (the ``coupling`` argument) is the strength in ``H_SB = lambda S (x) B``; ``S`` is expressed in
  the eigenbasis of ``H_S`` and ``B`` in the eigenbasis of ``H_B`` (``H_B = diag(e_i)``).
* The golden rule (docs/physics.md §2) gives the MME rates::

      k((s, E) -> (s', E')) = gamma |S_ss'|^2 f(E, E') / V_E,     E' = E + (eps_s - eps_s') / delta,
      f(E, E') = tr{Pi_E B Pi_E' B} = sum_{i in E, j in E'} |B_ij|^2,
      gamma = 2 pi lambda^2 / (hbar delta).

  The paper's Eq. 43 is this with ``delta = 1`` (its ``2 pi`` stands in front, the ``1/delta`` of the
  continuum density of states ``V_E' / delta`` is silently 1).  :meth:`Microscopic.mme` writes ``gamma`` as
  the table kernel's rate constant, so the MME's time is the physical time of :meth:`Microscopic.evolve`.
* Inverse temperatures ``beta`` given here are per physical energy unit; the MME model (whose energies are
  in units of ``delta``) gets ``beta * delta``.  A canonical bath start is canonical *over windows*,
  ``p_E ∝ V_E exp(-beta delta E)``, uniform inside each window (docs/physics.md §3, Eq. 15), which is
  exactly the MME's canonical state on the grid.

Names
-----
:func:`random_matrix_bath` draws an Esposito-Gaspard style bath (levels in windows, banded GOE coupling).
:class:`Microscopic` holds ``H_S, S, H_B, B, delta``; ``.mme()`` builds the trajmc model, ``.evolve()`` the
exact dynamics as a :class:`QuantumSolution` (the same ``times, states, p, p_system(), thermo()`` as a
:class:`trajmc.Solution`).  :func:`deviation` compares the two.
"""
from __future__ import annotations

import math
import time as _time
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.linalg
from scipy.special import logsumexp

from .errors import UnsupportedError
from .results import ResultMixin, positive_series, times_text
from .thermo import Space, marginal_bath, marginal_system, thermo_table

__all__ = ["random_matrix_bath", "Microscopic", "QuantumSolution", "deviation", "golden_rule_gamma",
           "SecularWarning", "MAX_DIMENSION", "MAX_ROUNDING"]

#: largest Hilbert-space dimension ``n_s * N`` that :meth:`Microscopic.evolve` diagonalises densely
#: (D = 8000: five D x D float64 work matrices take 2.6 GB and the eigendecomposition several minutes)
MAX_DIMENSION = 8000
#: largest distance (in units of delta) of an eigenvalue of H_S / delta from its grid integer.  A level
#: that is off by r delta shifts every transition by r delta relative to the windows: a fraction ~r of the
#: bath microstates of a window then reach a different window than the MME books, an O(r) error in rates.
MAX_ROUNDING = 0.05
#: eigenvalue gaps below this (in units of delta) count as a degeneracy of H_S
DEGENERACY_TOL = 1e-9
#: tolerance of the Hermiticity checks (relative to the largest entry)
HERMITIAN_TOL = 1e-12


class SecularWarning(UserWarning):
    """H_S has degenerate levels: the secular approximation behind the MME assumes none."""


def golden_rule_gamma(coupling, delta) -> float:
    """The MME rate constant of a coupling strength, by the golden rule.

    Parameters
    ----------
    coupling : float
        ``lambda`` in ``H_SB = lambda S (x) B``.
    delta : float
        Width of the bath energy windows (an energy).

    Returns
    -------
    float
        ``gamma = 2 pi lambda^2 / (hbar delta)`` with ``hbar = 1`` (a rate, per physical time unit).
    """
    return 2.0 * math.pi * float(coupling) ** 2 / float(delta)


# --------------------------------------------------------------------------- argument checks

def _positive(x, name):
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be a positive number, got {x!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: must be a positive finite number, got {x!r}")
    return v


def _finite(x, name):
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be a real number, got {x!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name}: must be finite, got {x!r}")
    return v


def _square(M, name, n=None):
    try:
        A = np.asarray(M, dtype=np.complex128)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be a square matrix of numbers") from None
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"{name}: must be a square matrix, got shape {A.shape}")
    if n is not None and A.shape[0] != n:
        raise ValueError(f"{name}: must be {n} x {n} (like H_S), got {A.shape[0]} x {A.shape[1]}")
    if not np.all(np.isfinite(A)):
        raise ValueError(f"{name}: has a non-finite entry")
    scale = max(float(np.abs(A).max()) if A.size else 0.0, 1.0)
    dev = np.abs(A - A.conj().T)
    if dev.max() > HERMITIAN_TOL * scale:
        i, j = np.unravel_index(np.argmax(dev), A.shape)
        raise ValueError(f"{name}: must be Hermitian, but [{i}][{j}] = {A[i, j]} and conj([{j}][{i}]) = "
                         f"{np.conj(A[j, i])}")
    A = 0.5 * (A + A.conj().T)
    return A.real.copy() if not np.any(A.imag) else A


def _seed_rng(seed, name):
    if seed is None:
        raise ValueError(f"{name}: a seed is required (an int or a numpy SeedSequence), so the draw is reproducible")
    if isinstance(seed, bool):
        raise ValueError(f"{name}: must be an int or a numpy SeedSequence, got {seed!r}")
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: not a valid seed ({exc})") from None


# --------------------------------------------------------------------------- the random-matrix bath

def random_matrix_bath(counts, delta, width, seed, *, placement="random"):
    """An Esposito-Gaspard style bath: levels in energy windows and a banded GOE coupling operator.

    Parameters
    ----------
    counts : sequence of int
        ``counts[k] >= 0`` levels in window ``k = [k delta, (k+1) delta)``; ``counts[len(counts) // 2]``
        must be positive (it normalises ``B``).
    delta : float
        Window width (an energy).
    width : float
        Band width of ``B`` (an energy): ``Var B_ij = exp(-(e_i - e_j)^2 / (2 width^2)) / counts[len(counts)//2]``.
    seed : int or numpy.random.SeedSequence
        Seeds one ``numpy.random.default_rng``; the same seed gives the same bath, bit for bit.
    placement : {"random", "even"}
        ``"random"`` (default): each level uniform in its window, independently (Poisson level statistics
        inside the window), kept ``1e-9 delta`` away from the window edges so floating point cannot move a
        level into the neighbouring window; sorted ascending.  ``"even"``: the midpoints
        ``(k + (j + 1/2) / counts[k]) delta``, ``j = 0 .. counts[k]-1`` (no random draw for the levels).

    Returns
    -------
    E_b : ndarray (N,) float64
        Bath eigenenergies, ascending, ``N = sum(counts)``.
    B : ndarray (N, N) float64
        Real symmetric coupling operator in the bath eigenbasis.  Off-diagonal entries ``i < j`` are
        independent Gaussians of mean 0 and the variance above; the diagonal follows the GOE convention,
        variance ``2 / counts[len(counts)//2]`` (twice the off-diagonal variance at equal energies), so
        the distribution of ``B`` is invariant under orthogonal rotations inside a window.

    Notes
    -----
    Draw order (part of the reproducibility contract): the level positions (``"random"`` only), then one
    ``(N, N)`` array of standard normals whose upper triangle (diagonal included) is used.
    """
    try:
        c = np.asarray(counts)
    except (TypeError, ValueError):
        raise ValueError("counts: must be a sequence of non-negative integers") from None
    if c.ndim != 1 or len(c) == 0:
        raise ValueError(f"counts: must be a non-empty 1-D sequence, got shape {c.shape}")
    if c.dtype.kind not in "iu" and not (c.dtype.kind == "f" and np.all(np.isfinite(c)) and np.all(c == np.round(c))):
        raise ValueError(f"counts: must hold integers, got {counts!r}")
    c = c.astype(np.int64)
    if np.any(c < 0):
        raise ValueError(f"counts: must be >= 0, got {int(c.min())} at window {int(np.argmin(c))}")
    mid = len(c) // 2
    if c[mid] == 0:
        raise ValueError(f"counts: the middle window counts[{mid}] normalises B and must be > 0")
    delta = _positive(delta, "delta")
    width = _positive(width, "width")
    if placement not in ("random", "even"):
        raise ValueError(f"placement: must be 'random' or 'even', got {placement!r}")
    rng = _seed_rng(seed, "seed")
    N = int(c.sum())
    window = np.repeat(np.arange(len(c)), c)
    if placement == "even":
        j = np.concatenate([np.arange(n) for n in c]) if N else np.zeros(0)
        u = (j + 0.5) / np.repeat(c, c)
        E_b = (window + u) * delta
    else:
        margin = 1e-9
        u = margin + (1.0 - 2.0 * margin) * rng.random(N)
        E_b = np.empty(N)
        start = 0
        for k, n in enumerate(c):
            E_b[start:start + n] = (k + np.sort(u[start:start + n])) * delta
            start += n
    Z = rng.standard_normal((N, N))
    de = E_b[:, None] - E_b[None, :]
    var = np.exp(-(de**2) / (2.0 * width**2)) / c[mid]
    var[np.diag_indices(N)] *= 2.0  # GOE: the diagonal has twice the variance
    B = np.triu(Z * np.sqrt(var))
    B = B + np.triu(B, 1).T
    return E_b, B


# --------------------------------------------------------------------------- the model

@dataclass(frozen=True, eq=False)
class _Initial:
    """A resolved initial state: ``rho(0) = rho_S (x) rho_B`` with ``rho_S = diag(p_s)`` in the H_S eigenbasis."""

    p_s: np.ndarray           # (n_s,)
    kind: str                 # canonical | microcanonical | pure
    p_E: np.ndarray           # (K,) window distribution (on the grid 0..K-1)
    beta_grid: float | None   # reference inverse temperature in grid units (beta * delta)
    energy: int | None        # the window of a microcanonical or pure start
    phi: np.ndarray | None    # (N,) complex bath vector of a pure start
    mme_system: object        # the MME's initial.system entry
    mme_bath: dict            # the MME's initial.baths[0] entry


class Microscopic:
    """A system coupled to one bath through ``H = H_S (x) 1 + 1 (x) H_B + lambda S (x) B`` (``hbar = 1``).

    Parameters
    ----------
    H_S : array_like (n_s, n_s)
        System Hamiltonian, Hermitian, in any basis.  It is diagonalised (``numpy.linalg.eigh``, ascending
        eigenvalues); level ``s`` of the MME and of the exact dynamics is its ``s``-th eigenvector.
    S : array_like (n_s, n_s)
        System coupling operator, Hermitian, in the same basis as ``H_S``; rotated into the eigenbasis.
    bath_energies : array_like (N,)
        Eigenenergies ``e_i >= 0`` of ``H_B`` (any order; ``B`` in the same order).
    B : array_like (N, N)
        Bath coupling operator in the eigenbasis of ``H_B``, Hermitian.
    delta : float
        Width of the bath energy windows (an energy).
    name : str
        The bath's name in the MME model (columns ``E_<name>``, ``Q_<name>``, ...).
    max_rounding : float
        Largest allowed distance of ``eps_s / delta`` from its grid integer (default :data:`MAX_ROUNDING`).

    Raises
    ------
    ValueError
        A malformed argument (named), a bath level below 0, two distinct eigenvalues of ``H_S`` that the
        grid would merge into one integer, or an eigenvalue further than ``max_rounding`` from the grid.

    Warns
    -----
    SecularWarning
        ``H_S`` is degenerate (gap below ``1e-9 delta``): the MME's secular approximation assumes
        non-degenerate levels, and the rotated ``S`` inside a degenerate subspace depends on the arbitrary
        eigenbasis that ``eigh`` returns.

    Attributes
    ----------
    energies : ndarray (n_s,)    eigenvalues ``eps_s`` of ``H_S`` (physical)
    levels : ndarray (n_s,) int  their grid placement ``round(eps_s / delta)``
    rounding : ndarray (n_s,)    ``eps_s / delta - levels`` (the largest is checked against ``max_rounding``)
    S : ndarray (n_s, n_s)       the coupling operator in the eigenbasis of ``H_S``
    window : ndarray (N,) int    window ``floor(e_i / delta)`` of each bath level
    counts : ndarray (K,) int    ``V_E`` for ``E = 0 .. K-1`` (``K - 1`` = the MME's ``emax``)
    lnV : ndarray (K,)           ``ln V_E`` (``-inf`` for an empty window)
    f : ndarray (K, K)           ``f(E, E') = tr{Pi_E B Pi_E' B}`` (exactly symmetric)
    lnf : ndarray (K, K)         ``ln f`` (``-inf`` where 0)
    """

    def __init__(self, H_S, S, bath_energies, B, delta, *, name="B", max_rounding=MAX_ROUNDING):
        H = _square(H_S, "H_S")
        n_s = H.shape[0]
        if n_s < 2:
            raise ValueError(f"H_S: needs at least 2 levels, got {n_s}")
        S_in = _square(S, "S", n_s)
        self.delta = _positive(delta, "delta")
        max_rounding = _positive(max_rounding, "max_rounding")
        if max_rounding >= 0.5:
            raise ValueError(f"max_rounding: must be below 0.5 (half a window), got {max_rounding}")
        if not isinstance(name, str) or not name.isidentifier() or name == "S":
            raise ValueError(f"name: must be an identifier other than 'S' (it names columns E_<name>), got {name!r}")
        self.name = name
        try:
            e = np.asarray(bath_energies, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError("bath_energies: must be a 1-D sequence of real numbers") from None
        if e.ndim != 1 or len(e) == 0:
            raise ValueError(f"bath_energies: must be a non-empty 1-D sequence, got shape {e.shape}")
        if not np.all(np.isfinite(e)):
            raise ValueError("bath_energies: has a non-finite entry")
        if e.min() < 0:
            raise ValueError(f"bath_energies: the lowest level is {e.min():g} < 0; windows are [E delta, (E+1) delta) "
                             "for E = 0, 1, .. (shift the bath spectrum: a constant changes nothing)")
        N = len(e)
        Bm = _square(B, "B")
        if Bm.shape[0] != N:
            raise ValueError(f"B: must be {N} x {N} (one row per bath level), got {Bm.shape[0]} x {Bm.shape[1]}")

        eps, U = np.linalg.eigh(H)
        self.energies = eps
        self.eigenvectors = U
        x = eps / self.delta
        self.levels = np.rint(x).astype(np.int64)
        self.rounding = x - self.levels
        gaps = np.diff(x)
        degenerate = gaps < DEGENERACY_TOL
        for k in np.flatnonzero(~degenerate & (np.diff(self.levels) == 0)):
            raise ValueError(f"H_S: the distinct eigenvalues {eps[k]:.6g} and {eps[k + 1]:.6g} both fall on grid "
                             f"level {self.levels[k]} (delta = {self.delta:g}): the grid would merge them; use a "
                             "smaller delta")
        worst = int(np.argmax(np.abs(self.rounding)))
        if abs(self.rounding[worst]) > max_rounding:
            raise ValueError(f"H_S: eigenvalue {eps[worst]:.6g} is {abs(self.rounding[worst]):.3g} delta from its grid "
                             f"level {self.levels[worst]} (limit max_rounding = {max_rounding:g} delta): the MME would "
                             "book transitions into the wrong windows; choose delta so the level spacings are "
                             "multiples of it")
        if np.any(degenerate):
            k = int(np.flatnonzero(degenerate)[0])
            warnings.warn(f"H_S has degenerate eigenvalues ({eps[k]:.6g} twice): the MME's secular approximation "
                          "assumes non-degenerate levels, and S inside the degenerate subspace depends on the "
                          "arbitrary eigenbasis chosen", SecularWarning, stacklevel=2)
        Sr = U.conj().T @ S_in @ U
        Sr = 0.5 * (Sr + Sr.conj().T)
        self.S = Sr.real.copy() if np.all(np.abs(Sr.imag) <= HERMITIAN_TOL * max(np.abs(Sr).max(), 1.0)) else Sr
        off = np.abs(self.S).copy()
        np.fill_diagonal(off, 0.0)
        if not np.any(off > 0):
            raise ValueError("S: has no off-diagonal element in the eigenbasis of H_S: the system can never jump")

        self.bath_energies = e
        self.B = Bm
        self.window = np.floor(e / self.delta).astype(np.int64)
        K = int(self.window.max()) + 1
        self.counts = np.bincount(self.window, minlength=K)
        with np.errstate(divide="ignore"):
            self.lnV = np.log(self.counts.astype(float))
        P = np.zeros((K, N))
        P[self.window, np.arange(N)] = 1.0
        F = P @ (np.abs(Bm) ** 2) @ P.T
        self.f = 0.5 * (F + F.T)  # symmetric to the last bit (f(E,E') = f(E',E) exactly for a Hermitian B)
        with np.errstate(divide="ignore"):
            self.lnf = np.log(self.f)

    # ------------------------------------------------------------------ sizes

    @property
    def n_levels(self) -> int:
        """Number of system levels ``n_s``."""
        return len(self.energies)

    @property
    def n_bath(self) -> int:
        """Number of bath levels ``N``."""
        return len(self.bath_energies)

    @property
    def dimension(self) -> int:
        """Hilbert-space dimension ``n_s * N`` of the exact dynamics."""
        return self.n_levels * self.n_bath

    @property
    def emax(self) -> int:
        """Top of the MME's grid: ``K - 1`` with ``K`` the number of windows."""
        return len(self.counts) - 1

    def gamma(self, coupling) -> float:
        """The MME rate constant of a coupling strength.

        Parameters
        ----------
        coupling : float
            ``lambda`` (finite).

        Returns
        -------
        float
            ``2 pi coupling^2 / delta`` (``hbar = 1``; :func:`golden_rule_gamma`).
        """
        return golden_rule_gamma(_finite(coupling, "coupling"), self.delta)

    def rates(self, coupling):
        """MME rates from ``f`` by the golden rule, without trajmc: ``{(s, E, s2, E2): k}``.

        ``k((s, E) -> (s2, E2)) = gamma |S_ss2|^2 f(E, E2) / V_E`` with ``E2 = E + levels[s] - levels[s2]``, for
        every pair of distinct levels and every window ``E`` with ``V_E > 0`` whose target window lies on the
        grid and has ``V_E2 > 0``.  The MME of :meth:`mme` must have exactly these rates.

        Parameters
        ----------
        coupling : float
            ``lambda`` (finite).

        Returns
        -------
        dict of tuple to float
            ``{(s, E, s2, E2): k}`` with integer levels and windows; absent jumps are not listed.
        """
        G = self.gamma(coupling)
        out = {}
        c = np.abs(self.S) ** 2
        K = len(self.counts)
        for s in range(self.n_levels):
            for s2 in range(self.n_levels):
                if s2 == s or c[s, s2] == 0:
                    continue
                for E in np.flatnonzero(self.counts):
                    E2 = int(E + self.levels[s] - self.levels[s2])
                    if 0 <= E2 < K and self.counts[E2] > 0 and self.f[E, E2] > 0:
                        out[(s, int(E), s2, E2)] = G * c[s, s2] * self.f[E, E2] / self.counts[E]
        return out

    # ------------------------------------------------------------------ initial states

    def _initial(self, initial) -> _Initial:
        if not isinstance(initial, dict):
            raise ValueError(f"initial: must be a dict with keys 'system' and 'bath', got {type(initial).__name__}")
        extra = set(initial) - {"system", "bath"}
        if extra:
            raise ValueError(f"initial.{sorted(extra)[0]}: unknown key (allowed: system, bath)")
        for k in ("system", "bath"):
            if k not in initial:
                raise ValueError(f"initial.{k}: is required")
        n_s = self.n_levels
        sysd = initial["system"]
        if isinstance(sysd, dict):
            if set(sysd) != {"gibbs", "beta"} or sysd["gibbs"] is not True:
                raise ValueError("initial.system: a dict must be {'gibbs': True, 'beta': b}, else give p_s as a list")
            b = _finite(sysd["beta"], "initial.system.beta")
            # on the placed levels, so that the MME's Gibbs state is the same distribution
            x = -b * self.delta * self.levels.astype(float)
            p_s = np.exp(x - logsumexp(x))
            mme_system = {"gibbs": True, "beta": b * self.delta}
        else:
            try:
                p_s = np.asarray(sysd, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError("initial.system: must be a list of n_s probabilities (diagonal in the H_S eigenbasis)"
                                 ) from None
            if p_s.shape != (n_s,):
                raise ValueError(f"initial.system: must hold {n_s} probabilities (one per eigenlevel of H_S), "
                                 f"got shape {p_s.shape}")
            if not np.all(np.isfinite(p_s)) or np.any(p_s < 0):
                raise ValueError("initial.system: probabilities must be finite and >= 0")
            if abs(p_s.sum() - 1.0) > 1e-9:
                raise ValueError(f"initial.system: must sum to 1, sums to {p_s.sum():.12g}")
            mme_system = [float(p) for p in p_s]
        bd = initial["bath"]
        if not isinstance(bd, dict) or "state" not in bd:
            raise ValueError("initial.bath: must be a dict with a 'state' (canonical | microcanonical | pure)")
        state = bd["state"]
        allowed = {"canonical": {"state", "beta"}, "microcanonical": {"state", "energy", "beta"},
                   "pure": {"state", "energy", "beta", "seed"}}
        if state not in allowed:
            raise ValueError(f"initial.bath.state: must be 'canonical', 'microcanonical' or 'pure', got {state!r}")
        for k in bd:
            if k not in allowed[state]:
                raise ValueError(f"initial.bath.{k}: does not apply to a {state} state "
                                 f"(allowed: {', '.join(sorted(allowed[state]))})")
        K = len(self.counts)
        beta = _finite(bd["beta"], "initial.bath.beta") if "beta" in bd else None
        beta_grid = None if beta is None else beta * self.delta
        if state == "canonical":
            if beta is None:
                raise ValueError("initial.bath.beta: is required for a canonical state")
            xE = self.lnV - beta_grid * np.arange(K)
            p_E = np.exp(xE - logsumexp(xE))
            return _Initial(p_s, state, p_E, beta_grid, None, None, mme_system,
                            {"state": "canonical", "beta": beta_grid})
        if "energy" not in bd:
            raise ValueError(f"initial.bath.energy: is required for a {state} state (a window index E)")
        E0 = bd["energy"]
        if isinstance(E0, bool) or not isinstance(E0, (int, np.integer)):
            raise ValueError(f"initial.bath.energy: must be a window index (an integer E: the window "
                             f"[E delta, (E+1) delta)), got {E0!r}; for an energy e use E = floor(e / delta)")
        E0 = int(E0)
        if not 0 <= E0 < K or self.counts[E0] == 0:
            raise ValueError(f"initial.bath.energy: window {E0} holds no bath levels (windows 0..{K - 1}, "
                             f"occupied: {np.flatnonzero(self.counts).tolist()})")
        p_E = np.zeros(K)
        p_E[E0] = 1.0
        mme_bath = {"state": "microcanonical", "energy": E0}
        if beta_grid is not None:
            mme_bath["beta"] = beta_grid
        phi = None
        if state == "pure":
            if "seed" not in bd:
                raise ValueError("initial.bath.seed: is required for a pure state (reproducible draw)")
            rng = _seed_rng(bd["seed"], "initial.bath.seed")
            idx = np.flatnonzero(self.window == E0)
            z = rng.standard_normal(len(idx)) + 1j * rng.standard_normal(len(idx))
            phi = np.zeros(self.n_bath, dtype=np.complex128)
            phi[idx] = z / np.linalg.norm(z)  # Haar-random in the window's subspace
        return _Initial(p_s, state, p_E, beta_grid, E0, phi, mme_system, mme_bath)

    # ------------------------------------------------------------------ the MME

    def mme(self, coupling, initial, times, *, kernel=None, name="microscopic") -> dict:
        """The trajmc model of the MME of this Hamiltonian at coupling ``lambda``.

        Parameters
        ----------
        coupling : float
            ``lambda`` (nonzero).
        initial : dict
            ``{"system": p_s or {"gibbs": True, "beta": b}, "bath": state}`` with ``state`` one of
            ``{"state": "canonical", "beta": b}``, ``{"state": "microcanonical", "energy": E}`` (``E`` a window
            index; optional reference ``"beta"``) or ``{"state": "pure", "energy": E, "seed": k}`` (the MME
            sees a pure state in window ``E`` as microcanonical).  ``beta`` per physical energy unit.
        times : array_like
            Sample times (physical), from 0, increasing.
        kernel : dict, optional
            Default: the bath's own table kernel ``{"model": "table", "gamma": gamma, "lnf": lnf}``.  A dict
            replaces it (e.g. a closed-form kernel to compare with); its ``gamma`` defaults to ``gamma``.
        name : str
            The model's name.

        Returns
        -------
        dict
            A model that :func:`trajmc.load_model`, :func:`trajmc.solve` and :func:`trajmc.simulate` accept:
            system levels ``levels`` (integers), coupling ``S`` rotated into the eigenbasis, one bath with a
            table DOS ``ln V_E`` over the windows, ``emax = K - 1``, the kernel, and the initial state.
        """
        lam = _finite(coupling, "coupling")
        if lam == 0:
            raise ValueError("coupling: must be nonzero for the MME (gamma = 2 pi coupling^2 / delta is a rate)")
        G = golden_rule_gamma(lam, self.delta)
        ini = self._initial(initial)
        t = _times(times)
        if kernel is None:
            kern = {"model": "table", "gamma": G, "lnf": [[float(v) for v in row] for row in self.lnf]}
        else:
            if not isinstance(kernel, dict):
                raise ValueError(f"kernel: must be a dict (a trajmc kernel table), got {type(kernel).__name__}")
            kern = dict(kernel)
            kern.setdefault("gamma", G)
        return {"name": name,
                "system": {"energies": [int(x) for x in self.levels], "coupling": _matrix_to_list(self.S)},
                "baths": [{"name": self.name, "dos": {"model": "table", "lnV": [float(v) for v in self.lnV]},
                           "emax": int(self.emax), "kernel": kern}],
                "initial": {"system": ini.mme_system, "baths": [ini.mme_bath]},
                "times": {"values": [float(x) for x in t]}}

    # ------------------------------------------------------------------ exact dynamics

    def hamiltonian(self, coupling) -> np.ndarray:
        """The total Hamiltonian ``H = H_S (x) 1 + 1 (x) H_B + lambda S (x) B``.

        Parameters
        ----------
        coupling : float
            ``lambda`` (finite).

        Returns
        -------
        ndarray (D, D) float64 or complex128
            ``H`` in the product basis ``|s> (x) |i>`` (index ``s * N + i``, ``D = n_s N``); real when ``S``
            and ``B`` are.
        """
        lam = _finite(coupling, "coupling")
        D = self.dimension
        H = lam * np.kron(self.S, self.B)
        h0 = np.repeat(self.energies, self.n_bath) + np.tile(self.bath_energies, self.n_levels)
        H[np.diag_indices(D)] += h0
        return H

    def evolve(self, coupling, initial, times, *, route="auto", max_dimension=MAX_DIMENSION):
        """Exact unitary dynamics of ``rho_S(0) (x) rho_B(0)``, measured with ``|s><s| (x) Pi_E`` (Eq. 8 of the paper).

        Parameters
        ----------
        coupling : float
            ``lambda``.
        initial : dict or list of dict
            As for :meth:`mme`.  ``rho_S(0) = diag(p_s)`` in the eigenbasis of ``H_S``; a canonical or
            microcanonical bath is uniform inside each window, ``rho_B(0) = sum_E p_E Pi_E / V_E``; a pure
            start is ``|phi><phi|`` with ``phi`` Haar-random in the window (seeded).  A list evolves every
            entry with one diagonalisation and returns a list.
        times : array_like
            Sample times, from 0, increasing.
        route : {"auto", "columns", "trace"}
            How ``p`` is computed from ``H = V Lambda V^T`` (both exact; ``auto`` takes the cheaper):

            * ``columns``: ``rho(0) = sum_k w_k |psi_k><psi_k|`` with the ``m`` vectors of its support
              (``m = sum_{s: p_s > 0} V_E0`` for a microcanonical start, the number of occupied levels for a
              pure one); ``U(t) |psi_k> = V e^{-i Lambda t} V^T |psi_k>`` and ``p_a = sum_k w_k |P_a U psi_k|^2``.
              Cost ``O(D^2 m)`` per sample time.
            * ``trace``: ``p_a(t) = tr{P_a U rho U^dag} = sum_mn cos((l_m - l_n) t) (A_a)_mn (A_rho)_mn`` with
              ``A_X = V^T X V`` (real case); the cosine splits as ``c_m c_n + s_m s_n``, so each outcome ``a``
              costs ``O(D^2)`` per time after one ``O(D^3)`` pass for all ``A_a`` together.  This is how a
              canonical start over all windows (``m = D``; ``O(D^3)`` per time with columns) stays cheap:
              ``O(D^3)`` once plus ``O(n_outcomes D^2)`` per time.  With a list of starts, the ``O(D^3)``
              part (``A_a`` for every outcome) is computed once for all of them.
        max_dimension : int
            Refuse a Hilbert space larger than this (default :data:`MAX_DIMENSION`).

        Returns
        -------
        QuantumSolution or list of QuantumSolution

        Notes
        -----
        Dense ``scipy.linalg.eigh`` of the ``D x D`` Hamiltonian (real symmetric when ``H_S``, ``S`` and ``B``
        are real): ``O(D^3)``, about 5 s at D = 3000 and 1-2 minutes at D = 6000 on two cores.  Diagnostics
        in ``info``: ``<H>(t)`` evaluated in the product basis (``energy``), its largest drift, the largest
        ``|sum_a p_a - 1|``, the eigendecomposition residual ``max |H V - V Lambda|``, and ``p_min``: the
        most negative probability computed (rounding, ~1e-17; ``p`` is stored clipped at 0).
        """
        lam = _finite(coupling, "coupling")
        many = isinstance(initial, (list, tuple))
        inits = [self._initial(x) for x in (initial if many else [initial])]
        t = _times(times)
        if route not in ("auto", "columns", "trace"):
            raise ValueError(f"route: must be 'auto', 'columns' or 'trace', got {route!r}")
        D = self.dimension
        if D > max_dimension:
            raise ValueError(f"evolve: the Hilbert space has dimension n_s * N = {self.n_levels} * {self.n_bath} = "
                             f"{D}, "
                             f"beyond max_dimension = {max_dimension} for a dense diagonalisation (memory "
                             f"~{5 * 8 * D * D / 2**30:.1f} GiB, time ~D^3); use a smaller bath")
        t0 = _time.perf_counter()
        H = self.hamiltonian(lam)
        lamb, V = scipy.linalg.eigh(H, driver="evd")
        t_eigh = _time.perf_counter() - t0
        HV = H @ V
        residual = float(np.abs(HV - V * lamb).max())
        blocks, states = self._blocks()
        nb = len(states)
        supports, routes = [], []
        for ini in inits:
            wts, vecs, cols = self._support(ini)
            m = len(wts)
            # flops of each route (the trace route's O(D^3) part is shared by every trace start of the list)
            cost_col = 8.0 * D * D * m * len(t)
            cost_trace = 6.0 * D**3 + 2.0 * D * D * m + 4.0 * D * D * len(t) * (nb + 1)
            routes.append(route if route != "auto" else ("columns" if cost_col <= cost_trace else "trace"))
            supports.append((wts, vecs, cols))
        results, seconds = [None] * len(inits), [0.0] * len(inits)
        for k, r in enumerate(routes):
            if r == "columns":
                t1 = _time.perf_counter()
                results[k] = _evolve_columns(H, lamb, V, *supports[k], t, blocks, nb)
                seconds[k] = _time.perf_counter() - t1
        tr = [k for k, r in enumerate(routes) if r == "trace"]
        if tr:
            t1 = _time.perf_counter()
            for k, res in zip(tr, _evolve_trace(HV, lamb, V, [supports[k] for k in tr], t, blocks, nb), strict=True):
                results[k] = res
                seconds[k] = (_time.perf_counter() - t1) / len(tr)
        out = []
        for k, ini in enumerate(inits):
            p, energy = results[k]
            p_min = float(p.min())
            p = np.maximum(p, 0.0)  # exact zeros come out as +-1e-17; the entropies need p >= 0
            e0 = _energy0(H, *supports[k])
            info = {"route": routes[k], "dimension": D, "support": len(supports[k][0]), "seconds_eigh": t_eigh,
                    "seconds": seconds[k], "eigh_residual": residual, "energy": energy,
                    "energy_initial": e0, "energy_drift": float(np.abs(energy - e0).max()), "p_min": p_min,
                    "norm_error": float(np.abs(p.sum(axis=1) - 1.0).max()), "coupling": lam,
                    "gamma": golden_rule_gamma(lam, self.delta) if lam != 0 else 0.0}
            out.append(QuantumSolution(self, t, states, p, ini, info))
        return out if many else out[0]

    def _blocks(self):
        """Outcome index of each product-basis state, and the outcome table (s, E) with V_E > 0."""
        occ = np.flatnonzero(self.counts)
        compact = -np.ones(len(self.counts), dtype=np.int64)
        compact[occ] = np.arange(len(occ))
        w = compact[self.window]
        blocks = (np.arange(self.n_levels)[:, None] * len(occ) + w[None, :]).ravel()
        states = np.stack([np.repeat(np.arange(self.n_levels), len(occ)), np.tile(occ, self.n_levels)], axis=1)
        return blocks, states.astype(np.int64)

    def _support(self, ini: _Initial):
        """``rho(0) = sum_k w_k |psi_k><psi_k|``: weights, and either basis indices (``cols``) or vectors."""
        N = self.n_bath
        occ_s = np.flatnonzero(ini.p_s > 0)
        if ini.kind == "pure":
            vecs = np.zeros((self.dimension, len(occ_s)), dtype=np.complex128)
            for k, s in enumerate(occ_s):
                vecs[s * N:(s + 1) * N, k] = ini.phi
            return ini.p_s[occ_s], vecs, None
        p_lvl = ini.p_E[self.window] / self.counts[self.window]  # uniform inside each window
        lv = np.flatnonzero(p_lvl > 0)
        cols = (occ_s[:, None] * N + lv[None, :]).ravel()
        wts = (ini.p_s[occ_s][:, None] * p_lvl[lv][None, :]).ravel()
        return wts, None, cols


def _times(times):
    try:
        t = np.asarray(times, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise ValueError("times: must be a 1-D sequence of numbers") from None
    if len(t) == 0 or not np.all(np.isfinite(t)):
        raise ValueError("times: must be a non-empty sequence of finite numbers")
    if t[0] != 0.0:
        raise ValueError(f"times: must start at 0 (the reference time of Sigma and Q), got {t[0]}")
    if np.any(np.diff(t) <= 0):
        raise ValueError("times: must be strictly increasing")
    return t


def _matrix_to_list(S):
    if np.isrealobj(S):
        return [[float(x) for x in row] for row in S]
    return [[repr(complex(z)).strip("()") for z in row] for row in S]


def _dag(A):
    """Conjugate transpose; a view (no copy) for a real array."""
    return A.T if np.isrealobj(A) else A.conj().T


def _phases(lamb, t):
    """``cos(l_m t)`` and ``sin(l_m t)`` as one (D, 2 n_t) array."""
    ph = np.outer(lamb, t)
    return np.concatenate([np.cos(ph), np.sin(ph)], axis=1)


def _energy0(H, wts, vecs, cols):
    """``tr{H rho(0)}`` in the product basis (independent of the eigendecomposition)."""
    if cols is not None:
        return float(np.dot(wts, np.real(H[cols, cols])))
    return float(np.real(np.einsum("k,xk,xk->", wts, vecs.conj(), H @ vecs)))


#: largest number of propagated columns at once (bounds the D x 2m work arrays)
_COLUMN_CHUNK = 512


def _evolve_columns(H, lamb, V, wts, vecs, cols, t, blocks, nb):
    real = np.isrealobj(V)
    U0 = _dag(V[cols, :]) if cols is not None else _dag(V) @ vecs  # (D, m) eigen-coordinates of psi_k
    n_t = len(t)
    p = np.zeros((n_t, nb))
    energy = np.zeros(n_t)
    for lo in range(0, U0.shape[1], _COLUMN_CHUNK):
        u = U0[:, lo:lo + _COLUMN_CHUNK]
        w = wts[lo:lo + _COLUMN_CHUNK]
        for it, tt in enumerate(t):
            z = np.exp(-1j * lamb * tt)[:, None] * u  # e^{-i Lambda t} V^dag psi
            if real:
                k = z.shape[1]
                Zs = V @ np.concatenate([z.real, z.imag], axis=1)  # one real product: Re and Im of U psi
                HZ = H @ Zs
                prob = (Zs[:, :k] ** 2 + Zs[:, k:] ** 2) @ w
                energy[it] += np.sum((Zs * HZ) @ np.concatenate([w, w]))
            else:
                Zs = V @ z
                prob = (np.abs(Zs) ** 2) @ w
                energy[it] += float(np.real(np.sum((Zs.conj() * (H @ Zs)) @ w)))
            p[it] += np.bincount(blocks, weights=prob, minlength=nb)
    return p, energy


def _evolve_trace(HV, lamb, V, supports, t, blocks, nb):
    """The trace route for several starts at once: [(p, energy)] per entry of ``supports``."""
    n_t = len(t)
    A_rhos = []
    for wts, vecs, cols in supports:
        if cols is not None:
            Vj = V[cols, :]
            A_rhos.append((_dag(Vj) * wts) @ Vj)  # V^dag rho V, rho diagonal in the product basis
        else:
            X = _dag(V) @ vecs
            A_rhos.append((X * wts) @ _dag(X))
    CS = _phases(lamb, t)  # the eigenvalues are real
    Z = np.exp(-1j * np.outer(lamb, t))  # (D, n_t), for a complex H

    def contract(A, A_rho):
        # sum_mn conj(A)_mn (A_rho)_mn z_m conj(z_n) with z = e^{-i Lambda t}: the expectation at every time
        if np.isrealobj(A) and np.isrealobj(A_rho):  # then z_m conj(z_n) -> c_m c_n + s_m s_n
            Y = (A * A_rho) @ CS
            both = np.sum(CS * Y, axis=0)
            return both[:n_t] + both[n_t:]
        Y = (np.conj(A) * A_rho) @ np.conj(Z)
        return np.real(np.sum(Z * Y, axis=0))

    A_H = _dag(V) @ HV
    energies = [contract(A_H, A) for A in A_rhos]
    del A_H
    ps = [np.zeros((n_t, nb)) for _ in supports]
    for a in range(nb):
        Va = V[blocks == a, :]
        A_a = _dag(Va) @ Va
        for p, A_rho in zip(ps, A_rhos, strict=True):
            p[:, a] = contract(A_a, A_rho)
    return list(zip(ps, energies, strict=True))


# --------------------------------------------------------------------------- the result

class QuantumSolution(ResultMixin):
    """Exact ``p_{sE}(t)`` of a :class:`Microscopic` model, with the methods and return types of a
    :class:`trajmc.Solution`: :meth:`p_system` (standard errors :meth:`p_system_se`: zeros),
    :meth:`p_system_table`, :meth:`thermo`, :meth:`bath_distribution`, :attr:`bath_names`.

    Heat statistics (:meth:`heat_distribution`, :meth:`heat_table`) need the joint distribution of the
    initial and final bath windows, which ``p_{sE}(t)`` does not hold: they raise
    :class:`trajmc.UnsupportedError`.

    Parameters
    ----------
    micro : Microscopic
        The model evolved (a QuantumSolution is made by :meth:`Microscopic.evolve`, not by hand).
    times : ndarray of float64, shape (n_t,)
        Sample times.
    states : pandas.DataFrame
        One row per ``(s, E)`` cell: columns ``s`` and ``E_<bath>``.
    p : ndarray of float64, shape (n_t, n_states)
        ``p_{sE}(t)``.
    initial : object
        The resolved initial state.
    info : dict
        Diagnostics (see :attr:`info`).

    Attributes
    ----------
    times : ndarray of float64, shape (n_t,)
        Sample times (units of ``1/gamma`` of the MME).
    p : ndarray of float64, shape (n_t, n_states)
        ``p_{sE}(t) = tr{(|s><s| (x) Pi_E) rho(t)}``, one column per row of :attr:`states`.
    info : dict
        ``route``, ``dimension``, ``support`` (columns propagated), ``seconds_eigh``, ``seconds``,
        ``eigh_residual``, ``energy`` (``<H>(t)`` in the product basis, (n_t,)), ``energy_initial``
        (``tr{H rho(0)}`` directly), ``energy_drift`` (largest ``|<H>(t) - tr{H rho(0)}|``), ``norm_error``
        (largest ``|sum p - 1|``), ``p_min`` (the most negative ``p`` computed, a rounding error; ``p`` holds
        ``max(p, 0)``), ``coupling``, ``gamma``.
    micro : Microscopic
        The microscopic model evolved.
    initial : object
        The resolved initial state (``kind``, ``p_E``, ``beta_grid``, ...).
    """

    def __init__(self, micro, times, states, p, initial, info):
        self.micro = micro
        self.times = times
        self.p = p
        self.info = info
        self.initial = initial
        self._states = states

    @property
    def bath_names(self) -> list[str]:
        """The bath's name, as a one-element list (as :attr:`trajmc.Solution.bath_names`)."""
        return [self.micro.name]

    @property
    def states(self) -> pd.DataFrame:
        """One row per outcome ``(s, E)`` with ``V_E > 0`` -- *every* such pair (the quantum dynamics is not
        confined to one MME shell) -- in the column order of :attr:`p`: columns ``s`` and ``E_<bath>``
        (int64), sorted by ``s`` then ``E`` (pandas DataFrame)."""
        return pd.DataFrame({"s": self._states[:, 0], f"E_{self.micro.name}": self._states[:, 1]})

    def space(self) -> Space:
        """The :class:`trajmc.thermo.Space` of the outcomes: the MME's definitions of every quantity.

        System energies are the placed grid levels (units of ``delta``, as in the MME); ``Sigma_tilde`` uses
        the reference ``beta * delta`` of the initial state (canonical, or a reference given with the others);
        ``D`` needs a canonical start (its ``pi_E`` is the initial ``p_E``).

        Returns
        -------
        trajmc.thermo.Space
        """
        m = self.micro
        s, E = self._states[:, 0], self._states[:, 1]
        ini = self.initial
        beta = np.array([ini.beta_grid if ini.beta_grid is not None else np.nan])
        pi = (ini.p_E,) if ini.kind == "canonical" else (None,)
        return Space(s=s, E=E[:, None], lnV=m.lnV[E], eps=m.levels[s].astype(float), n_levels=m.n_levels,
                     bath_names=(m.name,), bath_lnV=(m.lnV,), beta=beta, pi=pi)

    def p_system(self) -> np.ndarray:
        """System marginal ``p_s(t)`` (as :meth:`trajmc.Solution.p_system`).

        Returns
        -------
        ndarray of float64, shape (n_t, n_levels)
        """
        return marginal_system(self.p, self.space())

    def p_system_se(self) -> np.ndarray:
        """Standard errors of :meth:`p_system`: zeros (the dynamics is exact).

        Returns
        -------
        ndarray of float64, shape (n_t, n_levels)
        """
        return np.zeros((len(self.times), self.micro.n_levels))

    def p_bath(self) -> np.ndarray:
        """Window distribution ``p_E(t)`` on the grid ``0 .. K-1``.

        Returns
        -------
        ndarray of float64, shape (n_t, K)
        """
        return marginal_bath(self.p, self.space(), 0)

    def bath_distribution(self, bath=0, t_index=-1) -> pd.Series:
        """``p(E)`` of the bath at ``times[t_index]`` (as :meth:`trajmc.Solution.bath_distribution`).

        Parameters
        ----------
        bath : str or int
            The bath's name or 0.
        t_index : int
            Index into :attr:`times` (default: the last time).

        Returns
        -------
        pandas.Series
            Probabilities (float64) indexed by ``E`` (int64, window index), windows with ``p > 0`` only.
        """
        self._bath(bath)
        pE = self.p_bath()[self._t_index(t_index)]
        return positive_series(np.arange(len(pE)), pE, "E", f"p(E_{self.micro.name})")

    def _heat_matrix(self, nu):
        raise UnsupportedError("the exact dynamics gives p_sE(t), not the joint distribution of the initial and "
                               "final bath windows that the heat distribution needs")

    def thermo(self) -> pd.DataFrame:
        """The thermodynamic quantities of ``p`` (:func:`trajmc.thermo.thermo_table`, as for the MME).

        Returns
        -------
        pandas.DataFrame
            Indexed by ``t``; the columns of :meth:`trajmc.Solution.thermo`.
        """
        return thermo_table(self.times, self.p, self.space())

    def summary(self) -> dict:
        """What :func:`repr` and the notebook summary show.

        Returns
        -------
        dict
            ``kind``, ``levels``, ``baths``, ``times``, ``dimension``, ``outcomes``, ``route``.
        """
        return {"kind": "QuantumSolution", "levels": [int(e) for e in self.micro.levels],
                "baths": self.bath_names, "times": times_text(self.times), "dimension": self.info["dimension"],
                "outcomes": len(self._states), "route": self.info["route"]}


def deviation(quantum: QuantumSolution, solution) -> dict:
    """How far an MME solution is from the exact dynamics at the common sample times.

    Parameters
    ----------
    quantum : QuantumSolution
    solution : trajmc.Solution
        Of the model :meth:`Microscopic.mme` built (same levels, windows and times).

    Returns
    -------
    dict
        ``p_s``, ``p_E``, ``p_sE``: the largest absolute difference over times and outcomes; ``p_s_t``,
        ``p_E_t``: the largest over outcomes at each time, (n_t,).
    """
    if len(quantum.times) != len(solution.times) or not np.allclose(quantum.times, solution.times, rtol=0, atol=1e-12):
        raise ValueError("solution: its sample times differ from the quantum solution's")
    name = quantum.micro.name
    st = solution.states
    if f"E_{name}" not in st.columns:
        raise ValueError(f"solution: has no bath named {name!r}")
    K = len(quantum.micro.counts)
    full = np.zeros((len(solution.times), quantum.micro.n_levels, K))
    s = st["s"].to_numpy()
    E = st[f"E_{name}"].to_numpy()
    np.add.at(full, (slice(None), s, E), solution.p)
    qs = quantum._states
    d_sE = np.abs(quantum.p - full[:, qs[:, 0], qs[:, 1]])
    pq_E = quantum.p_bath()
    d_E = np.abs(pq_E - full.sum(axis=1))
    d_s = np.abs(quantum.p_system() - full.sum(axis=2))
    return {"p_s": float(d_s.max()), "p_E": float(d_E.max()), "p_sE": float(d_sE.max()),
            "p_s_t": d_s.max(axis=1), "p_E_t": d_E.max(axis=1)}
