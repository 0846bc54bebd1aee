"""trajmc: trajectories and exact solutions of the Pauli microcanonical master equation.

Re-exports only; see the modules for the implementation.
"""
from .errors import ModelError, RunError, TrajmcError, UnsupportedError
from .examples import get_example, list_examples
from .model import Model, load_model
from .network import Network, build_network
from .solver import Solution, solve

__version__ = "0.1.0"

__all__ = ["load_model", "solve", "Model", "Solution", "Network", "build_network",
           "get_example", "list_examples", "TrajmcError", "ModelError", "RunError", "UnsupportedError",
           "__version__"]
