"""Small validators used at the public boundary.  Each raises ModelError(key, problem)."""
from __future__ import annotations

import math
import numbers
import reprlib

import numpy as np

from .errors import ModelError

#: containers (tables and lists) nested deeper than this are refused; the deepest a model needs is 6
#: (baths[i].coupling: a list of matrices of rows of entries)
MAX_DEPTH = 16

_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 60
_SHOW.maxlist = _SHOW.maxtuple = _SHOW.maxset = 6
_SHOW.maxdict = 4
_SHOW.maxlevel = 3
_SHOW.maxlong = 40


def show(v) -> str:
    """A short one-line repr of a user value for a message: long strings, big lists and deep nests are
    abbreviated with '...'; an integer too long to print is described by its size."""
    if isinstance(v, numbers.Integral) and not isinstance(v, bool) and abs(int(v)).bit_length() > 128:
        return f"an integer of ~{int(abs(int(v)).bit_length() * 0.30103)} digits"
    try:
        return _SHOW.repr(v)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still named by its type
        return f"<{type(v).__name__}>"


def show_key(k) -> str:
    """A table key as it appears in a key path: plain if an identifier, else quoted; long keys abbreviated."""
    if isinstance(k, str) and k.isidentifier():
        return k if len(k) <= 60 else k[:28] + "..." + k[-28:]
    return show(k)


def check_nesting(root, key="", limit=MAX_DEPTH):
    """Refuse containers nested deeper than ``limit`` (one ModelError naming the path), without recursion:
    every later step may then recurse safely.  Shared sub-structures are walked once; a container that
    contains itself is refused as nested too deep."""
    def kids(o):
        if isinstance(o, dict):
            return iter(o.items())
        if isinstance(o, (list, tuple)):
            return iter(enumerate(o))
        return None

    if kids(root) is None:
        return
    height = {}  # id(container) -> levels of containers from it down (walked completely)
    stack = [[root, kids(root), 1, None]]  # container, children left, its height so far, key within parent
    on_stack = {id(root)}

    def where(extra=()):
        parts = [s[3] for s in stack[1:]] + list(extra)
        text = key
        for p in parts[:8]:
            text = f"{text}[{p}]" if isinstance(p, int) else (f"{text}.{show_key(p)}" if text else show_key(p))
        return text + ("..." if len(parts) > 8 else "")

    while stack:
        top = stack[-1]
        for k, c in top[1]:
            if kids(c) is None:
                continue
            known = height.get(id(c))
            if known is None and (id(c) in on_stack or len(stack) >= limit):
                raise ModelError(where((k,)), f"containers nested more than {limit} deep (a model needs at most "
                                              "6 levels)")
            if known is not None:
                if len(stack) + known > limit:
                    raise ModelError(where((k,)), f"containers nested more than {limit} deep (a model needs at "
                                                  "most 6 levels)")
                top[2] = max(top[2], known + 1)
                continue
            stack.append([c, kids(c), 1, k])
            on_stack.add(id(c))
            break
        else:
            stack.pop()
            on_stack.discard(id(top[0]))
            height[id(top[0])] = top[2]
            if stack:
                stack[-1][2] = max(stack[-1][2], top[2] + 1)


def check_table(d, key, allowed, required=()):
    if not isinstance(d, dict):
        raise ModelError(key, f"must be a table (dict), got {type(d).__name__}")
    for k in d:
        if not isinstance(k, str):
            raise ModelError(key, f"keys must be strings, got {show(k)}")
        if k not in allowed:
            shown = show_key(k)
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
        raise ModelError(key, f"must be {what}, got {type(v).__name__} {show(v)}")
    if isinstance(v, numbers.Integral):
        out = int(v)
    else:
        x = _to_float(v, key)
        if not math.isfinite(x) or x != round(x):
            raise ModelError(key, f"must be {what} (energies are integers in units of the grid step), got {show(v)}")
        out = int(round(x))
    if lo is not None and out < lo:
        raise ModelError(key, f"must be >= {_bound(lo)}, got {show(out)}")
    if hi is not None and out > hi:
        raise ModelError(key, f"must be <= {_bound(hi)}, got {show(out)}")
    return out


def _bound(n):
    """A bound for a message: 2^k or 2^k-1 when it is one and large, else the number."""
    if abs(n) > 10**12:
        for k, sym in ((n, ""), (n + 1, "-1")):
            if k > 0 and k & (k - 1) == 0:
                return f"2^{k.bit_length() - 1}{sym}"
    return str(n)


def _to_float(v, key):
    try:
        return float(v)
    except OverflowError:  # an integer beyond the double range
        raise ModelError(key, f"must be finite, got {show(v)}") from None


def as_float(v, key, positive=False, nonneg=False, allow_neg_inf=False):
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ModelError(key, f"must be a number, got {type(v).__name__} {show(v)}")
    x = _to_float(v, key)
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
        raise ModelError(key, f"must be true or false, got {show(v)}")
    return v


def as_str(v, key, choices=None):
    if not isinstance(v, str):
        raise ModelError(key, f"must be a string, got {type(v).__name__} {show(v)}")
    if choices is not None and v not in choices:
        raise ModelError(key, f"must be one of {', '.join(choices)}, got {show(v)}")
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


def as_int_array(v, key, length=None, lo=-(2**63), hi=2**63 - 1):
    """Integers into an int64 array (the bounds default to the int64 range, so nothing overflows)."""
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
            raise ModelError(key, f"must be a number or a complex string like '0.5-1j', got {show(v)}") from None
    elif isinstance(v, bool) or not isinstance(v, numbers.Number):
        raise ModelError(key, f"must be a number, got {type(v).__name__} {show(v)}")
    else:
        try:
            z = complex(v)
        except OverflowError:
            raise ModelError(key, f"must be finite, got {show(v)}") from None
    if not (math.isfinite(z.real) and math.isfinite(z.imag)):
        raise ModelError(key, f"must be finite, got {show(v)}")
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
