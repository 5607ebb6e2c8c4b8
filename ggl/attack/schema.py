"""Config schema of the GGL attack (``attack:`` section); keys documented in configs/attack.yaml."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class AttackConfig:
    source: Optional[str] = None

    def check(self) -> None:
        pass
