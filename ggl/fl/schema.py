"""``fl:``: the FedAvg protocol (rounds, client sampling, local training, the server step)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from ggl.core.checks import at_least, changed, count, in_range, unused


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
        count(self.rounds, "fl.rounds")
        in_range(self.client_fraction, 0.0, 1.0, "fl.client_fraction", lo_open=True)
        count(self.clients_per_round, "fl.clients_per_round")
        if self.local_steps is None:
            in_range(self.local_epochs, 0.0, 1000.0, "fl.local_epochs", lo_open=True)
        count(self.local_steps, "fl.local_steps", hint=" (or null to use fl.local_epochs)")
        for key in ("batch_size", "eval_batch_size"):
            count(getattr(self, key), f"fl.{key}")
        at_least(self.eval_every, 1, "fl.eval_every")
        in_range(self.lr, 0.0, 100.0, "fl.lr", lo_open=True)
        in_range(self.momentum, 0.0, 0.999, "fl.momentum")
        in_range(self.weight_decay, 0.0, 1.0, "fl.weight_decay")
        in_range(self.server_lr, 0.0, 100.0, "fl.server_lr", lo_open=True)
        if self.local_steps is not None and changed(self, "local_epochs"):
            unused("fl.local_epochs", self.local_epochs, f"fl.local_steps = {self.local_steps} is set")
        if self.clients_per_round is not None and changed(self, "client_fraction"):
            unused("fl.client_fraction", self.client_fraction, f"fl.clients_per_round = {self.clients_per_round} is set")
