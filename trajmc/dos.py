"""Bath densities of states, always as ``ln V_E`` (never ``V``: it overflows).

Energies are integers in units of the grid step ``delta``.  A model with
quantum ``w`` has microstates only at multiples of ``w``; elsewhere
``ln V = -inf`` (no microstates in that window).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

__all__ = ["Oscillators", "Spins", "Exponential", "Table"]


@dataclass(frozen=True)
class Oscillators:
    """Einstein solid of ``n`` modes with quantum ``w``: ``V = C(k+n-1, k)``, ``E = k w``.

    Parameters
    ----------
    n : int
        Number of oscillators (``dos.n``).
    w : int
        The quantum in grid steps (``dos.quantum``, default 1).
    model : str
        ``"oscillators"``.
    """

    n: int
    w: int = 1
    model: str = "oscillators"

    def lnv_continuous(self, E):
        """Analytic continuation of ``ln V`` in ``E`` (for the ``eth`` midpoint and ``golden``'s ``E_ref``).

        Parameters
        ----------
        E : array_like of float
            Energies (grid steps), any shape; need not be multiples of ``w``.

        Returns
        -------
        ndarray of float64
            ``lgamma(k + n) - lgamma(k + 1) - lgamma(n)`` with ``k = E / w``; ``-inf`` for ``E < 0``.
        """
        k = np.asarray(E, dtype=float) / self.w
        with np.errstate(invalid="ignore"):
            out = gammaln(k + self.n) - gammaln(k + 1.0) - gammaln(self.n)
        return np.where(k >= 0, out, -np.inf)

    def lnv(self, E):
        """``ln V_E`` at integer energies.

        Parameters
        ----------
        E : array_like of int
            Energies (grid steps), any shape.

        Returns
        -------
        ndarray of float64
            ``ln V_E``, the shape of ``E``; ``-inf`` where there are no microstates.
        """
        E = np.asarray(E)
        on = (E % self.w == 0) & (E >= 0)
        return np.where(on, self.lnv_continuous(np.where(on, E, 0)), -np.inf)

    @property
    def max_energy(self):
        """Largest energy with microstates (grid steps), or None when unbounded."""
        return None  # unbounded

    def to_dict(self):
        """The ``dos`` table of the model file (plain data)."""
        return {"model": self.model, "n": self.n, "quantum": self.w}


@dataclass(frozen=True)
class Spins:
    """``n`` two-level systems of splitting ``w``: ``V = C(n, k)``, ``E = k w``, ``0 <= k <= n``.

    Parameters
    ----------
    n : int
        Number of spins (``dos.n``).
    w : int
        The splitting in grid steps (``dos.quantum``, default 1).
    model : str
        ``"spins"``.
    """

    n: int
    w: int = 1
    model: str = "spins"

    def lnv_continuous(self, E):
        """Analytic continuation of ``ln V`` in ``E`` (for the ``eth`` midpoint and ``golden``'s ``E_ref``).

        Parameters
        ----------
        E : array_like of float
            Energies (grid steps), any shape.

        Returns
        -------
        ndarray of float64
            ``lgamma(n + 1) - lgamma(k + 1) - lgamma(n - k + 1)`` with ``k = E / w``; ``-inf`` outside
            ``0 <= k <= n``.
        """
        k = np.asarray(E, dtype=float) / self.w
        ok = (k >= 0) & (k <= self.n)
        kk = np.where(ok, k, 0.0)
        out = gammaln(self.n + 1.0) - gammaln(kk + 1.0) - gammaln(self.n - kk + 1.0)
        return np.where(ok, out, -np.inf)

    def lnv(self, E):
        """``ln V_E`` at integer energies.

        Parameters
        ----------
        E : array_like of int
            Energies (grid steps), any shape.

        Returns
        -------
        ndarray of float64
            ``ln V_E``, the shape of ``E``; ``-inf`` where there are no microstates.
        """
        E = np.asarray(E)
        on = (E % self.w == 0) & (E >= 0) & (E <= self.n * self.w)
        return np.where(on, self.lnv_continuous(np.where(on, E, 0)), -np.inf)

    @property
    def max_energy(self):
        """Largest energy with microstates (grid steps), or None when unbounded."""
        return self.n * self.w

    def to_dict(self):
        """The ``dos`` table of the model file (plain data)."""
        return {"model": self.model, "n": self.n, "quantum": self.w}


@dataclass(frozen=True)
class Exponential:
    """Ideal bath at inverse temperature ``beta``: ``ln V = beta E`` (constant dropped).

    Parameters
    ----------
    beta : float
        Inverse temperature (``1/delta``).
    w : int
        The quantum in grid steps (default 1): microstates only at multiples of ``w``.
    model : str
        ``"exponential"``.
    """

    beta: float
    w: int = 1
    model: str = "exponential"

    def lnv_continuous(self, E):
        """``beta E`` for ``E >= 0`` (``-inf`` below).

        Parameters
        ----------
        E : array_like of float
            Energies (grid steps), any shape.

        Returns
        -------
        ndarray of float64
            ``beta E``, the shape of ``E``.
        """
        E = np.asarray(E, dtype=float)
        return np.where(E >= 0, self.beta * E, -np.inf)

    def lnv(self, E):
        """``ln V_E`` at integer energies.

        Parameters
        ----------
        E : array_like of int
            Energies (grid steps), any shape.

        Returns
        -------
        ndarray of float64
            ``ln V_E``, the shape of ``E``; ``-inf`` where there are no microstates.
        """
        E = np.asarray(E)
        on = (E >= 0) & (E % self.w == 0)
        return np.where(on, self.beta * np.where(on, E, 0).astype(float), -np.inf)

    @property
    def max_energy(self):
        """Largest energy with microstates (grid steps), or None when unbounded."""
        return None

    def to_dict(self):
        """The ``dos`` table of the model file (plain data)."""
        return {"model": self.model, "beta": self.beta, "quantum": self.w}


@dataclass(frozen=True, eq=False)
class Table:
    """User-given ``ln V`` on ``E = 0..len-1`` (``-inf`` marks an empty window).

    Parameters
    ----------
    values : ndarray (K,) float64
        ``ln V_E`` for ``E = 0 .. K-1``; ``-inf`` where there are no microstates.
    w : int
        Always 1 (a table has a value at every grid point).
    model : str
        ``"table"``.
    """

    values: np.ndarray
    w: int = 1
    model: str = "table"

    def lnv(self, E):
        """``ln V_E`` at integer energies.

        Parameters
        ----------
        E : array_like of int
            Energies (grid steps), any shape.

        Returns
        -------
        ndarray of float64
            ``ln V_E``, the shape of ``E``; ``-inf`` where there are no microstates.
        """
        E = np.asarray(E)
        on = (E >= 0) & (E < len(self.values))
        return np.where(on, self.values[np.clip(E, 0, len(self.values) - 1)], -np.inf)

    def lnv_continuous(self, E):
        """Linear interpolation in ``ln V`` between the finite table points.

        Parameters
        ----------
        E : array_like of float
            Energies (grid steps), any shape.

        Returns
        -------
        ndarray of float64
            The interpolated ``ln V``; ``-inf`` outside the finite range of the table.
        """
        E = np.asarray(E, dtype=float)
        finite = np.flatnonzero(np.isfinite(self.values))
        out = np.interp(E, finite, self.values[finite], left=-np.inf, right=-np.inf)
        return out

    @property
    def max_energy(self):
        """Largest energy with microstates (grid steps), or None when unbounded."""
        return len(self.values) - 1

    def to_dict(self):
        """The ``dos`` table of the model file (plain data)."""
        return {"model": self.model, "lnV": [float(v) for v in self.values]}
