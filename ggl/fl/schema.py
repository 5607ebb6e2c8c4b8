"""``fl:``: the FedAvg protocol (rounds, client sampling, local training, the server step)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from ggl.core.checks import at_least, in_range


@dataclass
class FLConfig:
    rounds: int = 20
    clients_per_round: Optional[int] = None
    client_fraction: float = 1.0
    local_epochs: float = 2.0
    local_steps: Optional[int] = None
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    server_lr: float = 1.0
    eval_every: int = 5
    eval_batch_size: int = 1000
    simulate_failures: List[int] = field(default_factory=list)

    def check(self) -> None:
        at_least(self.rounds, 1, "fl.rounds")
        in_range(self.client_fraction, 0.0, 1.0, "fl.client_fraction", lo_open=True)
        at_least(self.clients_per_round, 1, "fl.clients_per_round")
        if self.local_steps is None:
            in_range(self.local_epochs, 0.0, 1000.0, "fl.local_epochs", lo_open=True)
        at_least(self.local_steps, 1, "fl.local_steps", " (or null to use fl.local_epochs)")
        for key in ("batch_size", "eval_every", "eval_batch_size"):
            at_least(getattr(self, key), 1, f"fl.{key}")
        in_range(self.lr, 0.0, 100.0, "fl.lr", lo_open=True)
        in_range(self.momentum, 0.0, 0.999, "fl.momentum")
        in_range(self.weight_decay, 0.0, 1.0, "fl.weight_decay")
        in_range(self.server_lr, 0.0, 100.0, "fl.server_lr", lo_open=True)
