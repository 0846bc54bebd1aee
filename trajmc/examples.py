"""Built-in example models (plain dicts in the model-file schema)."""
from __future__ import annotations

import copy

from .errors import ModelError
from .model import load_model

__all__ = ["EXAMPLES", "DEFAULT_EXAMPLE", "get_example", "load_example", "list_examples"]

_OFFDIAG3 = [[0, 1, 1], [1, 0, 1], [1, 1, 0]]

EXAMPLES = {
    "qubit-oscillators": {
        "description": "qubit (gap 1) relaxing in a finite bath of 40 oscillators, canonical at beta = 0.5",
        "model": {
            "name": "qubit-oscillators",
            "system": {"energies": [0, 1], "coupling": [[0, 1], [1, 0]]},
            "baths": [{"name": "B", "dos": {"model": "oscillators", "n": 40, "quantum": 1}, "emax": 300,
                       "kernel": {"model": "sqrt", "gamma": 1.0, "spectral": {"shape": "flat"}}}],
            "initial": {"system": [0.0, 1.0], "baths": [{"state": "canonical", "beta": 0.5}]},
            "times": {"stop": 5.0, "num": 51},
            "simulation": {"trajectories": 100_000, "seed": 1},
        },
    },
    "three-level-ideal": {
        "description": "3-level system (0, 1, 3) in an ideal exponential bath (beta = 0.5), microcanonical start",
        "model": {
            "name": "three-level-ideal",
            "system": {"energies": [0, 1, 3], "coupling": _OFFDIAG3},
            "baths": [{"name": "B", "dos": {"model": "exponential", "beta": 0.5}, "emax": 200,
                       "kernel": {"model": "sqrt", "gamma": 1.0, "spectral": {"shape": "gaussian", "width": 2.0}}}],
            "initial": {"system": [0.0, 0.0, 1.0], "baths": [{"state": "microcanonical", "energy": 100}]},
            "times": {"stop": 4.0, "num": 41},
            "simulation": {"trajectories": 100_000, "seed": 2},
        },
    },
    "two-baths": {
        "description": "3-level system (0, 1, 2) between a hot (beta 0.2) and a cold (beta 1.0) oscillator bath",
        "model": {
            "name": "two-baths",
            "system": {"energies": [0, 1, 2], "coupling": _OFFDIAG3},
            "baths": [
                {"name": "hot", "dos": {"model": "oscillators", "n": 8, "quantum": 1}, "emax": 200,
                 "kernel": {"model": "sqrt", "gamma": 1.0, "spectral": {"shape": "flat"}}},
                {"name": "cold", "dos": {"model": "oscillators", "n": 8, "quantum": 1}, "emax": 60,
                 "kernel": {"model": "sqrt", "gamma": 1.0, "spectral": {"shape": "flat"}}},
            ],
            "initial": {"system": [1 / 3, 1 / 3, 1 / 3],
                        "baths": [{"state": "canonical", "beta": 0.2}, {"state": "canonical", "beta": 1.0}]},
            "times": {"stop": 5.0, "num": 26},
            "simulation": {"trajectories": 100_000, "seed": 3},
        },
    },
    "qubit-linear-exact": {
        "description": ("docs/physics.md §5.4: qubit + 5 oscillators, linear kernel, bath at E = 6; "
                        "p1(t) = 0.375 (1 - exp(-16 t))"),
        "model": {
            "name": "qubit-linear-exact",
            "system": {"energies": [0, 1], "coupling": [[0, 1], [1, 0]]},
            "baths": [{"name": "B", "dos": {"model": "oscillators", "n": 5, "quantum": 1}, "emax": 20,
                       "kernel": {"model": "linear", "gamma": 1.0}}],
            "initial": {"system": [1.0, 0.0], "baths": [{"state": "microcanonical", "energy": 6}]},
            "times": {"stop": 0.5, "num": 51},
            "simulation": {"trajectories": 100_000, "seed": 4},
        },
    },
    "qubit-spins-eth": {
        "description": "qubit (gap 2) in a bath of 60 spins (quantum 2), ETH kernel, canonical at beta = 0.4",
        "model": {
            "name": "qubit-spins-eth",
            "system": {"energies": [0, 2], "coupling": [[0, 1], [1, 0]]},
            "baths": [{"name": "spins", "dos": {"model": "spins", "n": 60, "quantum": 2}, "emax": 120,
                       "kernel": {"model": "eth", "gamma": 0.5,
                                  "spectral": {"shape": "exponential", "cutoff": 4.0}}}],
            "initial": {"system": [0.0, 1.0], "baths": [{"state": "canonical", "beta": 0.4}]},
            "times": {"stop": 6.0, "num": 31},
            "simulation": {"trajectories": 100_000, "seed": 5},
        },
    },
    "driven-qubit": {
        "description": "qubit in 40 oscillators, global Gibbs start (beta 0.5), gap raised 1 -> 3 -> 5 (Jarzynski)",
        "model": {
            "name": "driven-qubit",
            "system": {"energies": [0, 1], "coupling": [[0, 1], [1, 0]]},
            "baths": [{"name": "B", "dos": {"model": "oscillators", "n": 40, "quantum": 1}, "emax": 300,
                       "kernel": {"model": "sqrt", "gamma": 1.0, "spectral": {"shape": "flat"}}}],
            "initial": {"system": {"gibbs": True, "beta": 0.5}, "baths": [{"state": "canonical", "beta": 0.5}]},
            "times": {"stop": 4.0, "num": 41},
            "simulation": {"trajectories": 100_000, "seed": 6},
            "protocol": [{"time": 1.0, "energies": [0, 3]}, {"time": 2.0, "energies": [0, 5]}],
        },
    },
}

DEFAULT_EXAMPLE = "qubit-oscillators"


def get_example(name: str) -> dict:
    """The model of a built-in example as a plain dict in the model-file schema (a fresh copy, to edit).

    A dict, not a :class:`trajmc.Model`: change a key, then pass it to :func:`trajmc.load_model`,
    :func:`trajmc.solve` or :func:`trajmc.simulate`.  For the validated model (``.bath_names``,
    ``.times``, ...) use :func:`load_example`.

    Parameters
    ----------
    name : str
        One of the names :func:`list_examples` returns (``python -m trajmc examples`` lists them too).

    Returns
    -------
    dict
        A fresh copy of the example's model, in the model-file schema: pass it to :func:`load_model`,
        :func:`solve` or :func:`simulate`, or change it first.  (It is plain data: the bath names are
        ``[b["name"] for b in d["baths"]]``, or ``load_model(d).bath_names``.)

    Raises
    ------
    trajmc.ModelError
        Unknown ``name``; the message lists the known examples.

    Examples
    --------
    >>> import trajmc
    >>> d = trajmc.get_example("two-baths")
    >>> d["simulation"]["trajectories"] = 10_000
    >>> [b["name"] for b in d["baths"]]
    ['hot', 'cold']
    """
    if name not in EXAMPLES:
        raise ModelError("example", f"unknown example {name!r} (known: {', '.join(EXAMPLES)})")
    return copy.deepcopy(EXAMPLES[name]["model"])


def load_example(name: str):
    """A built-in example as a validated :class:`trajmc.Model` (``load_model(get_example(name))``).

    Parameters
    ----------
    name : str
        One of :func:`list_examples`.

    Returns
    -------
    Model

    Examples
    --------
    >>> import trajmc
    >>> trajmc.load_example("two-baths").bath_names
    ['hot', 'cold']
    """
    return load_model(get_example(name))


def list_examples() -> dict:
    """The built-in examples.

    Returns
    -------
    dict of str to str
        ``{name: one-line description}``, in a fixed order; the default model of the command line is
        ``trajmc.examples.DEFAULT_EXAMPLE``.
    """
    return {k: e["description"] for k, e in EXAMPLES.items()}
