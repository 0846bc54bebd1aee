"""The benchmark model of the Foundation and Engine issues (shared by the bench_* scripts)."""
import math


def benchmark_model(stop=5.0, num=51, trajectories=100_000, seed=1):
    """Energies [0, 3, 7], all-ones off-diagonal coupling, 40 oscillators (quantum 1), emax 400,
    sqrt kernel, flat J, gamma 1, canonical bath with mean energy 150, system in the top level."""
    n, mean = 40, 150.0
    beta = math.log1p(n / mean)  # Einstein solid: <E> = n / (e^beta - 1)
    return {
        "name": "bench-3level",
        "system": {"energies": [0, 3, 7], "coupling": [[0, 1, 1], [1, 0, 1], [1, 1, 0]]},
        "baths": [{"name": "B", "dos": {"model": "oscillators", "n": n, "quantum": 1}, "emax": 400,
                   "kernel": {"model": "sqrt", "gamma": 1.0, "spectral": {"shape": "flat"}}}],
        "initial": {"system": [0.0, 0.0, 1.0], "baths": [{"state": "canonical", "beta": beta}]},
        "times": {"stop": stop, "num": num},
        "simulation": {"trajectories": trajectories, "seed": seed},
    }
