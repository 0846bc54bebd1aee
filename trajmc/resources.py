"""Memory budget: every run (Monte Carlo and exact) estimates what it will allocate and is refused,
before anything is allocated or written, when the estimate exceeds the budget.

The budget is, in order of precedence: the ``memory_budget=`` argument of the public function, the
environment variable ``TRAJMC_MEMORY_BUDGET``, or half of the machine's physical memory.  Sizes are
given in bytes or with a unit: ``"512MiB"``, ``"4GiB"``, ``"2e9"``.
"""
from __future__ import annotations

import math
import os
import re

from .errors import ModelError

__all__ = ["memory_budget", "parse_bytes", "format_bytes", "check_memory", "physical_memory"]

ENV_VAR = "TRAJMC_MEMORY_BUDGET"
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def physical_memory() -> int:
    """Physical memory of this machine in bytes (8 GiB if the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 8 * 2**30


def parse_bytes(value, key="memory_budget") -> int:
    """``4GiB``, ``"512 MB"``, ``2e9`` or an int -> bytes (a positive integer)."""
    if isinstance(value, bool):
        raise ModelError(key, f"must be a size like '4GiB' or a number of bytes, got {value!r}")
    if isinstance(value, (int, float)):
        num, unit = float(value), ""
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if m is None or m.group(2).lower() not in _UNITS:
            raise ModelError(key, f"must be a size like '4GiB', '512MB' or a number of bytes, got {value!r}")
        num, unit = float(m.group(1)), m.group(2).lower()
    else:
        raise ModelError(key, f"must be a size like '4GiB' or a number of bytes, got {type(value).__name__}")
    out = num * _UNITS[unit]
    if not math.isfinite(out) or out < 1:
        raise ModelError(key, f"must be a positive size, got {value!r}")
    return int(out)


def memory_budget(override=None) -> int:
    """The memory budget in bytes (see the module docstring for where it comes from)."""
    if override is not None:
        return parse_bytes(override)
    env = os.environ.get(ENV_VAR)
    if env:
        return parse_bytes(env, ENV_VAR)
    return physical_memory() // 2


def format_bytes(n) -> str:
    n = float(n)
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def check_memory(estimate, budget, what, hint) -> None:
    """Refuse (one line, ModelError) when ``estimate`` bytes exceed ``budget``; ``hint`` says what to change."""
    if estimate > budget:
        raise ModelError("memory_budget", f"{what} needs about {format_bytes(estimate)}, more than the budget of "
                                          f"{format_bytes(budget)}; {hint} (or raise the budget: memory_budget= / "
                                          f"--memory-budget / {ENV_VAR})")
