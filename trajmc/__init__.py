"""trajmc: trajectories and exact solutions of the Pauli microcanonical master equation.

Re-exports only; see the modules for the implementation.
"""
from ._version import __version__
from .engine import Interrupted, SimulationError
from .ensemble import Ensemble
from .errors import ModelError, RunError, TrajmcError, UnsupportedError
from .examples import get_example, list_examples, load_example
from .model import Model, load_model
from .network import Network, build_network
from .rundir import extend_run, load_run
from .simulation import simulate
from .solver import Solution, solve

__all__ = ["load_model", "solve", "simulate", "load_run", "extend_run", "Model", "Solution", "Ensemble", "Network",
           "build_network", "Interrupted", "SimulationError",
           "get_example", "load_example", "list_examples", "TrajmcError", "ModelError", "RunError", "UnsupportedError",
           "__version__"]
