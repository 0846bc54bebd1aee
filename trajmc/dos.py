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
    """Einstein solid of ``n`` modes with quantum ``w``: ``V = C(k+n-1, k)``, ``E = k w``."""

    n: int
    w: int = 1
    model: str = "oscillators"

    def lnv_continuous(self, E):
        """Analytic continuation in ``E`` (used for ETH mid-point densities)."""
        k = np.asarray(E, dtype=float) / self.w
        with np.errstate(invalid="ignore"):
            out = gammaln(k + self.n) - gammaln(k + 1.0) - gammaln(self.n)
        return np.where(k >= 0, out, -np.inf)

    def lnv(self, E):
        E = np.asarray(E)
        on = (E % self.w == 0) & (E >= 0)
        return np.where(on, self.lnv_continuous(np.where(on, E, 0)), -np.inf)

    @property
    def max_energy(self):
        return None  # unbounded

    def to_dict(self):
        return {"model": self.model, "n": self.n, "quantum": self.w}


@dataclass(frozen=True)
class Spins:
    """``n`` two-level systems of splitting ``w``: ``V = C(n, k)``, ``E = k w``, ``0 <= k <= n``."""

    n: int
    w: int = 1
    model: str = "spins"

    def lnv_continuous(self, E):
        k = np.asarray(E, dtype=float) / self.w
        ok = (k >= 0) & (k <= self.n)
        kk = np.where(ok, k, 0.0)
        out = gammaln(self.n + 1.0) - gammaln(kk + 1.0) - gammaln(self.n - kk + 1.0)
        return np.where(ok, out, -np.inf)

    def lnv(self, E):
        E = np.asarray(E)
        on = (E % self.w == 0) & (E >= 0) & (E <= self.n * self.w)
        return np.where(on, self.lnv_continuous(np.where(on, E, 0)), -np.inf)

    @property
    def max_energy(self):
        return self.n * self.w

    def to_dict(self):
        return {"model": self.model, "n": self.n, "quantum": self.w}


@dataclass(frozen=True)
class Exponential:
    """Ideal bath at inverse temperature ``beta``: ``ln V = beta E`` (constant dropped)."""

    beta: float
    w: int = 1
    model: str = "exponential"

    def lnv_continuous(self, E):
        E = np.asarray(E, dtype=float)
        return np.where(E >= 0, self.beta * E, -np.inf)

    def lnv(self, E):
        E = np.asarray(E)
        on = (E >= 0) & (E % self.w == 0)
        return np.where(on, self.beta * np.where(on, E, 0).astype(float), -np.inf)

    @property
    def max_energy(self):
        return None

    def to_dict(self):
        return {"model": self.model, "beta": self.beta, "quantum": self.w}


@dataclass(frozen=True, eq=False)
class Table:
    """User-given ``ln V`` on ``E = 0..len-1`` (``-inf`` marks an empty window)."""

    values: np.ndarray
    w: int = 1
    model: str = "table"

    def lnv(self, E):
        E = np.asarray(E)
        on = (E >= 0) & (E < len(self.values))
        return np.where(on, self.values[np.clip(E, 0, len(self.values) - 1)], -np.inf)

    def lnv_continuous(self, E):
        """Linear interpolation in ``ln V`` between the finite table points."""
        E = np.asarray(E, dtype=float)
        finite = np.flatnonzero(np.isfinite(self.values))
        out = np.interp(E, finite, self.values[finite], left=-np.inf, right=-np.inf)
        return out

    @property
    def max_energy(self):
        return len(self.values) - 1

    def to_dict(self):
        return {"model": self.model, "lnV": [float(v) for v in self.values]}
