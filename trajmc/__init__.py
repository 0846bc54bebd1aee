"""trajmc: trajectories and exact solutions of the Pauli microcanonical master equation.

Re-exports only; see the modules for the implementation.
"""
from .engine import Interrupted
from .ensemble import Ensemble, simulate
from .errors import ModelError, RunError, TrajmcError, UnsupportedError
from .examples import get_example, list_examples
from .model import Model, load_model
from .network import Network, build_network
from .runio import load_run
from .solver import Solution, solve

from ._version import __version__

__all__ = ["load_model", "solve", "simulate", "load_run", "Model", "Solution", "Ensemble", "Network",
           "build_network", "Interrupted",
           "get_example", "list_examples", "TrajmcError", "ModelError", "RunError", "UnsupportedError",
           "__version__"]
