"""Fuzz the model loader: malformed models either load or raise a one-line TrajmcError, nothing else.

Mutations of valid model dicts: delete keys / list items, replace values with
wrong types, NaN, infinities, negative or large numbers, strings and nested junk,
add unknown keys, wrap values in lists or tables.  Generated integers are capped
(|n| <= 5000) and floats kept away from 0 in magnitude (>= 1e-3) so that valid
mutations stay small and fast; the unbounded cases are separate tests in
test_model.py (test_huge_integers_are_model_errors).
"""
from __future__ import annotations

import copy
import os
import tempfile

import numpy as np
import pytest
from conftest import get_model_dict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trajmc


def _bases():
    out = [get_model_dict(n) for n in ("qubit_osc_sqrt", "three_spins_eth", "three_exp_golden", "qubit_spins_linear",
                                       "qubit_table_sqrt", "two_baths")]
    d = get_model_dict("qubit_osc_sqrt")
    d["initial"] = {"system": {"gibbs": True, "beta": 0.5},
                    "baths": [{"state": "microcanonical", "energy": 10}]}
    d["protocol"] = [{"time": 1.0, "energies": [0, 2]}, {"time": 2.0, "energies": [0, 1]}]
    d["simulation"] = {"trajectories": 1000, "seed": 3, "chunk_size": 64}
    out.append(d)
    d = get_model_dict("two_baths")
    d["initial"] = {"joint": {"states": [[0, 3, 2], [2, 1, 1], [1, 5, 0]], "p": [0.5, 0.25, 0.25]}}
    d["times"] = {"values": [0.0, 0.5, 1.5]}
    out.append(d)
    d = get_model_dict("qubit_spins_linear")
    p = [0.0] * 51
    p[4], p[10] = 0.25, 0.75
    d["initial"]["baths"] = [{"state": "table", "p": p}]
    out.append(d)
    return out


BASES = _bases()
for _b in BASES:  # every base is valid
    trajmc.load_model(_b)

KEY_NAMES = ["name", "system", "energies", "coupling", "baths", "dos", "model", "n", "quantum", "beta", "lnV", "file",
             "emax", "kernel", "gamma", "spectral", "shape", "width", "cutoff", "E_ref", "initial", "state", "energy",
             "p", "joint", "states", "gibbs", "times", "stop", "num", "values", "simulation", "trajectories", "seed",
             "chunk_size", "protocol", "time", "colour", "", "1"]

numbers = st.one_of(
    st.integers(min_value=-50, max_value=5000),
    st.floats(min_value=1e-3, max_value=1e4),
    st.floats(min_value=-1e4, max_value=-1e-3),
    st.sampled_from([0, 1, 2, -1, 0.0, -0.0, 0.5, 2.5, -2.5, 1e4, float("nan"), float("inf"), float("-inf")]),
)
# printable text only: a newline inside a key makes a multi-line message, a known bug with its own test
# (test_model.py::test_unknown_key_with_a_newline_gives_a_one_line_message)
text = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=6)
strings = st.one_of(text,
                    st.sampled_from(["", "nan", "inf", "1j", "0.5-1j", "canonical", "microcanonical", "table",
                                     "sqrt", "linear", "gaussian", "oscillators", "spins", "a b", "../x", "E_S"]))
scalars = st.one_of(st.none(), st.booleans(), numbers, strings,
                    st.sampled_from([np.int64(3), np.float64(2.5), np.float64("nan"), np.bool_(True), 1 + 2j]))
junk = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                    st.dictionaries(st.sampled_from(KEY_NAMES), kids, max_size=3)),
                    max_leaves=8)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _get(obj, path):
    for k in path:
        obj = obj[k]
    return obj


def _mutate(d, data):
    paths = list(_paths(d))
    path = paths[data.draw(st.integers(0, len(paths) - 1), label="path index")]
    target = _get(d, path)
    op = data.draw(st.sampled_from(["replace", "delete", "add_key", "wrap", "tweak", "extend"]), label="op")
    if op == "add_key" and isinstance(target, dict):
        target[data.draw(st.sampled_from(KEY_NAMES) | text, label="key")] = data.draw(junk)
        return
    if op == "extend" and isinstance(target, list):
        target.append(data.draw(junk))
        return
    if not path:  # the root: only adding keys makes sense
        d[data.draw(st.sampled_from(KEY_NAMES))] = data.draw(junk)
        return
    parent = _get(d, path[:-1])
    key = path[-1]
    if op == "delete":
        del parent[key]
    elif op == "wrap":
        parent[key] = data.draw(st.sampled_from([[target], {"value": target}, [target, target]]))
    elif op == "tweak" and isinstance(target, (int, float)) and not isinstance(target, bool):
        parent[key] = data.draw(st.sampled_from([
            -target, target + 0.5, target * 3, target - 1, float("nan"), str(target), [target], None, True]))
    else:
        parent[key] = data.draw(junk, label="junk")


def _check(d):
    try:
        m = trajmc.load_model(d)
    except trajmc.TrajmcError as exc:
        msg = str(exc)
        assert msg.strip(), "empty error message"
        assert len(msg.splitlines()) == 1, f"multi-line message: {msg!r}"
        assert isinstance(exc, trajmc.ModelError), f"{type(exc).__name__}: {msg}"
        return None
    # a model that loads is consistent: it serialises
    m.to_dict()
    assert m.n_levels >= 2 and m.n_baths >= 1
    assert len(m.times) >= 1 and m.times[0] == 0.0
    return m


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(base=st.integers(0, len(BASES) - 1), n_mut=st.integers(1, 3), data=st.data())
def test_mutated_models_load_or_raise_model_error(base, n_mut, data):
    d = copy.deepcopy(BASES[base])
    for _ in range(n_mut):
        _mutate(d, data)
    _check(d)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.integers(0, len(BASES) - 1), data=st.data())
def test_mutated_toml_files_load_or_raise_model_error(base, data):
    """The same from a file: text edits of a valid TOML model (cuts, inserted garbage)."""
    src = trajmc.load_model(BASES[base]).to_toml()
    i = data.draw(st.integers(0, len(src)), label="cut")
    j = data.draw(st.integers(i, min(len(src), i + 40)), label="cut end")
    insert = data.draw(st.sampled_from(["", "=", "[", "]]", "\n[x]\n", "nan", "\"", "\n", "1e999", "{", "-", "\x00",
                                        "\n[[baths]]\n", "\nname = 3\n"]), label="insert")
    fd, path = tempfile.mkstemp(suffix=".toml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(src[:i] + insert + src[j:])
        _check(path)
    finally:
        os.unlink(path)


@pytest.mark.parametrize("base", range(len(BASES)))
def test_every_top_level_key_deleted(base):
    for k in list(BASES[base]):
        d = copy.deepcopy(BASES[base])
        del d[k]
        m = _check(d)
        if k in ("system", "baths", "initial"):
            assert m is None
