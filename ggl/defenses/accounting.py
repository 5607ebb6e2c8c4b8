"""Privacy budget of DP-FedAvg (clipping + Gaussian noise) with Opacus' RDP accountant."""
from __future__ import annotations

import math


def dp_epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """Epsilon of ``rounds`` sampled Gaussian mechanisms at (``noise_multiplier``, ``sample_rate``).

    Client-level DP-FedAvg: one mechanism per round, sensitivity = the clip bound, noise std =
    ``noise_multiplier`` * clip bound, each client taking part with probability ``sample_rate``
    (the accountant assumes Poisson sampling). Returns 0 for no rounds and ``inf`` without noise.
    """
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), not {delta}")
    if not 0.0 <= sample_rate <= 1.0:
        raise ValueError(f"sample_rate must be in [0, 1], not {sample_rate}")
    if rounds <= 0 or sample_rate == 0.0:
        return 0.0
    if noise_multiplier <= 0.0:
        return math.inf
    from opacus.accountants import RDPAccountant  # imported here: opacus takes seconds to import

    accountant = RDPAccountant()
    accountant.history = [(float(noise_multiplier), float(sample_rate), int(rounds))]  # what `rounds` step() calls build
    return float(accountant.get_epsilon(delta=delta))
