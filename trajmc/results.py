"""What every result (:class:`~trajmc.Solution`, :class:`~trajmc.Ensemble`,
:class:`~trajmc.microscopic.QuantumSolution`) shares: bath lookup, tidy long-format tables, summaries.

Conventions, the same on every result:

* ``p_system()`` is an ndarray (n_t, n_levels); its standard errors are ``p_system_se()`` (same shape;
  zeros on an exact result).
* ``heat_distribution(bath, t_index)`` is a pandas Series of probabilities indexed by the integer heat
  ``Q`` (grid steps; heat *into the system* from that bath since t = 0), occupied values only.
* ``p_system_table()`` and ``heat_table(bath)`` are long-format DataFrames (one row per time and value)
  with a standard-error column (``p_se``, ``P_se``) that is 0 on exact results, so code written for one
  kind of result runs on the other.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import ModelError, UnsupportedError
from .model import _short_list, html_table

__all__ = ["ResultMixin", "positive_series", "positive_table"]


def positive_series(values, p, index_name, name) -> pd.Series:
    """A distribution over integer ``values`` as a Series of its entries with ``p > 0`` (the type every
    ``*_distribution`` method returns): probabilities indexed by ``index_name`` (int64), named ``name``."""
    p = np.asarray(p)
    keep = p > 0
    return pd.Series(p[keep], index=pd.Index(np.asarray(values, dtype=np.int64)[keep], name=index_name), name=name)


def positive_table(values, P, times, value_name, se=None) -> pd.DataFrame:
    """Distributions ``P`` (n_t, n_v) over integer ``values`` in long format: columns ``t``, ``value_name``,
    ``P`` and ``P_se`` (``se`` (n_t, n_v), or 0), one row per entry with ``P > 0``, ordered by ``t`` then value."""
    P = np.asarray(P)
    ti, vi = np.nonzero(P > 0)
    return pd.DataFrame({"t": np.asarray(times, dtype=float)[ti], value_name: np.asarray(values, dtype=np.int64)[vi],
                         "P": P[ti, vi], "P_se": se[ti, vi] if se is not None else np.zeros(len(ti))})


class ResultMixin:
    """Shared methods; a result provides ``times``, ``bath_names``, ``p_system()``, ``p_system_se()``,
    ``_heat_matrix(nu)`` and ``summary()``."""

    def _bath(self, bath) -> int:
        """The index of ``bath`` (a name or an index); an unknown one is refused naming the valid ones."""
        names = list(self.bath_names)
        if isinstance(bath, str):
            if bath not in names:
                raise ModelError("bath", f"unknown bath {bath!r} (this model's baths: {', '.join(names)})")
            return names.index(bath)
        if isinstance(bath, bool) or not isinstance(bath, (int, np.integer)) or not 0 <= bath < len(names):
            raise ModelError("bath", f"must be a bath name ({', '.join(names)}) or index 0..{len(names) - 1}, got "
                                     f"{bath!r}")
        return int(bath)

    def _t_index(self, t_index) -> int:
        n = len(self.times)
        if isinstance(t_index, bool) or not isinstance(t_index, (int, np.integer)) or not -n <= t_index < n:
            raise ModelError("t_index", f"must be an integer index into times (-{n}..{n - 1}), got {t_index!r}")
        return int(t_index) % n

    def p_system_table(self) -> pd.DataFrame:
        """The system marginal in long format: one row per sample time and level.

        Returns
        -------
        pandas.DataFrame
            Columns ``t`` (float64), ``s`` (int64, level index), ``p`` (float64, ``p_s(t)``) and ``p_se``
            (float64, its standard error; 0 on an exact result); ``n_t * n_levels`` rows ordered by ``t``
            then ``s``.
        """
        p, se = self.p_system(), self.p_system_se()
        n_t, n_s = p.shape
        return pd.DataFrame({"t": np.repeat(np.asarray(self.times, dtype=float), n_s),
                             "s": np.tile(np.arange(n_s, dtype=np.int64), n_t),
                             "p": p.ravel(), "p_se": np.asarray(se, dtype=float).ravel()})

    def heat_table(self, bath=0) -> pd.DataFrame:
        """The distribution of the heat from one bath at every sample time, in long format.

        Parameters
        ----------
        bath : str or int
            Bath name (one of :attr:`bath_names`) or index.

        Returns
        -------
        pandas.DataFrame
            Columns ``t`` (float64), ``Q`` (int64: heat into the system from ``bath`` since t = 0,
            ``Q = E_bath(0) - E_bath(t)`` in grid steps), ``P`` (float64, its probability) and ``P_se``
            (float64, standard error; 0 on an exact result).  Only values with ``P > 0`` are listed,
            ordered by ``t`` then ``Q``; at each time ``P`` sums to 1 (up to rounding).
        """
        q, P, se = self._heat_matrix(self._bath(bath))
        return positive_table(q, P, self.times, "Q", se)

    def heat_distribution(self, bath=0, t_index=-1) -> pd.Series:
        """The distribution of the heat ``Q`` into the system from ``bath`` up to ``times[t_index]``.

        Parameters
        ----------
        bath : str or int
            Bath name (one of :attr:`bath_names`) or index.
        t_index : int
            Index into :attr:`times` (default: the last time).

        Returns
        -------
        pandas.Series
            Probabilities (float64) indexed by ``Q`` (int64, grid steps, ``Q = E_bath(0) - E_bath(t)``),
            only values with ``P > 0``; named ``P(Q_<bath>)``.  Standard errors: :meth:`heat_table`.
        """
        nu = self._bath(bath)
        k = self._t_index(t_index)
        q, P, _ = self._heat_matrix(nu)
        return positive_series(q, P[k], "Q", f"P(Q_{self.bath_names[nu]})")

    def _heat_matrix(self, nu):  # pragma: no cover - every result overrides it or refuses
        raise UnsupportedError(f"{type(self).__name__} has no heat distribution")

    def _repr_html_(self) -> str:
        s = self.summary()
        title = s.pop("kind") + (f" {s.pop('name')!r}" if "name" in s else "")
        return html_table(title, [(k, _fmt(v)) for k, v in s.items()])

    def __repr__(self) -> str:
        s = self.summary()
        kind = s.pop("kind")
        name = f" {s.pop('name')!r}" if "name" in s else ""
        return f"<{kind}{name}: " + "; ".join(f"{k} {_fmt(v)}" for k, v in s.items()) + ">"


def _fmt(v) -> str:
    if isinstance(v, (list, tuple, np.ndarray)):
        if len(v) and all(isinstance(x, str) for x in v):
            return ", ".join(v)
        return _short_list(v)
    return str(v)


def times_text(times) -> str:
    """``51 in [0, 5]``: how many sample times and their range."""
    t = np.asarray(times, dtype=float)
    return f"{len(t)} in [{t[0]:g}, {t[-1]:g}]" if len(t) else "none"
