"""Small validators used at the public boundary.  Each raises ModelError(key, problem)."""
from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import ModelError


def check_table(d, key, allowed, required=()):
    if not isinstance(d, dict):
        raise ModelError(key, f"must be a table (dict), got {type(d).__name__}")
    for k in d:
        if not isinstance(k, str):
            raise ModelError(key, f"keys must be strings, got {k!r}")
        if k not in allowed:
            shown = k if k.isidentifier() else repr(k)
            raise ModelError(f"{key}.{shown}" if key else shown,
                             f"unknown key (allowed here: {', '.join(sorted(allowed))})")
    for k in required:
        if k not in d:
            raise ModelError(f"{key}.{k}" if key else k, "is required but missing")
    return d


def sub(key, name):
    return f"{key}.{name}" if key else name


def as_int(v, key, lo=None, hi=None, what="an integer"):
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ModelError(key, f"must be {what}, got {type(v).__name__} {v!r}")
    if isinstance(v, numbers.Integral):
        out = int(v)
    else:
        if not math.isfinite(float(v)) or float(v) != round(float(v)):
            raise ModelError(key, f"must be {what} (energies are integers in units of the grid step), got {v!r}")
        out = int(round(float(v)))
    if lo is not None and out < lo:
        raise ModelError(key, f"must be >= {lo}, got {out}")
    if hi is not None and out > hi:
        raise ModelError(key, f"must be <= {hi}, got {out}")
    return out


def as_float(v, key, positive=False, nonneg=False, allow_neg_inf=False):
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ModelError(key, f"must be a number, got {type(v).__name__} {v!r}")
    x = float(v)
    if math.isnan(x):
        raise ModelError(key, "must be a number, got NaN")
    if math.isinf(x) and not (allow_neg_inf and x < 0):
        raise ModelError(key, f"must be finite, got {x}")
    if positive and not x > 0:
        raise ModelError(key, f"must be > 0, got {x}")
    if nonneg and x < 0:
        raise ModelError(key, f"must be >= 0, got {x}")
    return x


def as_bool(v, key):
    if not isinstance(v, bool):
        raise ModelError(key, f"must be true or false, got {v!r}")
    return v


def as_str(v, key, choices=None):
    if not isinstance(v, str):
        raise ModelError(key, f"must be a string, got {type(v).__name__} {v!r}")
    if choices is not None and v not in choices:
        raise ModelError(key, f"must be one of {', '.join(choices)}, got {v!r}")
    return v


def as_list(v, key, length=None, nonempty=True):
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if not isinstance(v, (list, tuple)):
        raise ModelError(key, f"must be a list, got {type(v).__name__}")
    if nonempty and len(v) == 0:
        raise ModelError(key, "must not be empty")
    if length is not None and len(v) != length:
        raise ModelError(key, f"must have {length} entries, got {len(v)}")
    return list(v)


def as_int_array(v, key, length=None, lo=None, hi=None):
    items = as_list(v, key, length)
    return np.array([as_int(x, f"{key}[{i}]", lo=lo, hi=hi) for i, x in enumerate(items)], dtype=np.int64)


def as_float_array(v, key, length=None, nonneg=False, allow_neg_inf=False):
    items = as_list(v, key, length)
    return np.array([as_float(x, f"{key}[{i}]", nonneg=nonneg, allow_neg_inf=allow_neg_inf)
                     for i, x in enumerate(items)], dtype=np.float64)


def as_complex(v, key):
    if isinstance(v, str):
        try:
            z = complex(v.replace(" ", ""))
        except ValueError:
            raise ModelError(key, f"must be a number or a complex string like '0.5-1j', got {v!r}") from None
    elif isinstance(v, bool) or not isinstance(v, numbers.Number):
        raise ModelError(key, f"must be a number, got {type(v).__name__} {v!r}")
    else:
        z = complex(v)
    if not (math.isfinite(z.real) and math.isfinite(z.imag)):
        raise ModelError(key, f"must be finite, got {v!r}")
    return z


def as_distribution(v, key, length):
    p = as_float_array(v, key, length=length, nonneg=True)
    total = p.sum()
    if not abs(total - 1.0) <= 1e-9:
        raise ModelError(key, f"must sum to 1 (a probability distribution), sums to {total:.12g}")
    # leave an already normalised p untouched, so a saved model reloads bit for bit
    if abs(total - 1.0) <= 8 * np.finfo(float).eps * len(p):
        return p
    return p / total
