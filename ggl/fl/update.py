"""What a client sends: the unit every defence transforms and the server aggregates."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from ggl.core.seeding import generator


@dataclass
class ClientData:
    """What the client computed its update from: the model, the global weights it started from and its
    own images and labels. Only defenses that look at the data use it (Soteria); it never leaves the
    client (an ``Observation`` copies none of it)."""
    model: nn.Module
    params: Dict[str, Tensor]
    x: Tensor
    y: Tensor


@dataclass
class ClientUpdate:
    client_id: int
    round: int
    tensors: List[Tensor]          # one per model parameter, in ``names`` order
    names: List[str]
    num_samples: int
    kind: str                      # "delta" (FedAvg: local weights - global) or "gradient" (FedSGD)
    bits: int                      # uplink payload size in bits, as transmitted
    seed: int = 0                  # run seed: defences derive their randomness from it
    meta: dict = field(default_factory=dict)
    private: Optional[ClientData] = field(default=None, repr=False)  # client-side only (see ClientData)

    def with_tensors(self, tensors: List[Tensor], bits: int | None = None) -> "ClientUpdate":
        return replace(self, tensors=list(tensors), bits=self.bits if bits is None else bits)

    def rng(self, stream: int) -> torch.Generator:
        """Randomness private to this (run, round, client, stream)."""
        device = self.tensors[0].device if self.tensors else "cpu"
        return generator(self.seed, self.round, self.client_id, stream, device=device)

    def is_finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self.tensors)

    @property
    def numel(self) -> int:
        return sum(t.numel() for t in self.tensors)
