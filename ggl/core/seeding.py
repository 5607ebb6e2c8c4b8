"""Seeds derived from (seed, round, client, stream): randomness that does not depend on how many
processes share the work, nor on the order in which clients are processed."""
from __future__ import annotations

import numpy as np
import torch


def derived_seed(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


def generator(*keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derived_seed(*keys))


# stream ids, so two uses of randomness for the same (seed, round, client) never share a stream
STREAM_SAMPLING = 1
STREAM_LOCAL_DATA = 2
STREAM_DEFENSE = 3
STREAM_AUDIT = 4
