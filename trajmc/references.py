"""Exact references of Monte Carlo quantities, for the comparisons of ``validate`` and ``analyze``.

* :func:`exact_reference`: the exact solution, where the network can be enumerated;
* :func:`pauli_marginal`: the ordinary Pauli master equation of ``p_s(t)`` and the mean heats (sqrt kernel,
  exponential baths), which holds exactly on any grid while no trajectory reaches an edge;
* :func:`work_beta`: the inverse temperature of the work statistics of a driven model.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg

from . import fluctuations as fl
from .dos import Exponential
from .errors import ModelError
from .network import log_rates
from .solver import solve
from .tables import ENUM_SEARCH_MAX, _radix_space

__all__ = ["exact_reference", "pauli_marginal", "work_beta"]


def exact_reference(model, plan=None, progress=None):
    """The exact solution when the network can be enumerated and fits the memory budget (None otherwise)."""
    if plan is not None and plan.network is None and _radix_space(model) > ENUM_SEARCH_MAX:
        return None
    try:
        return solve(model, progress=progress)
    except ModelError as exc:
        if exc.key == "memory_budget":  # too large to solve exactly: the Monte Carlo stands alone
            return None
        raise


def pauli_marginal(model, times):
    """The ordinary Pauli master equation of ``p_s(t)`` and the mean heats, valid when every bath is
    ``exponential`` with the ``sqrt`` kernel, the model is undriven and no grid edge is reached.

    Returns (p_s (n_t, n_s), Q (n_t, N)) or a string saying why it does not apply.
    """
    if model.protocol:
        return "driven model"
    for b in model.baths:
        if b.kernel.model != "sqrt" or not isinstance(b.dos, Exponential):
            return f"bath {b.name!r} is not an exponential bath with the sqrt kernel"
    n_s, N = model.n_levels, model.n_baths
    eps = model.energies
    L = np.zeros((n_s + N, n_s + N))
    for nu, b in enumerate(model.baths):
        E = (b.emax // 2) // b.quantum * b.quantum  # rates do not depend on E away from the edges
        for s in range(n_s):
            for s2 in range(n_s):
                if s2 == s:
                    continue
                E2 = E + int(eps[s]) - int(eps[s2])
                if not 0 <= E2 <= b.emax or not np.isfinite(b.lnV[E2]):
                    continue
                lr = log_rates(model, nu, np.array([s]), np.array([s2]), np.array([E]), np.array([E2]))[0]
                if not np.isfinite(lr):
                    continue
                k = np.exp(lr)
                L[s2, s] += k
                L[s, s] -= k
                L[n_s + nu, s] += k * (eps[s2] - eps[s])  # heat into the system: dQ = eps_s' - eps_s
    if model.joint is not None:
        st, p = model.joint
        p0 = np.bincount(st[:, 0], weights=p, minlength=n_s)
    else:
        p0 = model.p_system
    y0 = np.concatenate([p0, np.zeros(N)])
    out = np.array([scipy.linalg.expm(L * t) @ y0 for t in times])
    return np.maximum(out[:, :n_s], 0.0), out[:, n_s:]


def work_beta(model, net):
    """(beta of the work statistics, True if the start is the global Gibbs state at it) or (None, False)."""
    beta = fl.global_gibbs_beta(model, net) if net is not None else None
    if beta is not None:
        return beta, True
    for nu in range(model.n_baths):
        if np.isfinite(model.beta_ref(nu)):
            return model.beta_ref(nu), False
    return None, False
