"""``audit:``: which rounds a federation captures victim updates at, how many images, and the probe
(what a victim's update is: ``fedsgd`` one gradient, ``local_update`` a multi-step weight delta, or
null, the federation's own protocol)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from ggl.core.checks import count, unused
from ggl.core.errors import ConfigError

PROBES = ("fedsgd", "local_update")
DEFAULT_PROBE_STEPS = 5   # local_update: local SGD steps when audit.local_steps is unset


@dataclass
class AuditConfig:
    rounds: List[int] = field(default_factory=list)
    num_images: int = 8
    batch_size: int = 1
    victim_client: int = 0
    probe: Optional[str] = None  # null (the federation's protocol) | fedsgd | local_update
    local_steps: Optional[int] = None  # steps of a local_update probe (null: DEFAULT_PROBE_STEPS)

    def probe_steps(self) -> Optional[int]:
        """Local steps of the probe (1 for fedsgd; None: the federation's own ``fl`` protocol), checked."""
        if self.probe is not None and self.probe not in PROBES:
            raise ConfigError(f"config key 'audit.probe' = {self.probe!r} is not one of {', '.join(PROBES)} (or null)")
        if self.probe == "fedsgd":
            return 1
        if self.probe != "local_update":
            return None
        steps = DEFAULT_PROBE_STEPS if self.local_steps is None else self.local_steps
        if not isinstance(steps, int) or steps < 2:
            raise ConfigError(f"config key 'audit.local_steps' = {steps!r}: a local update takes >= 2 steps "
                              f"(one step is the fedsgd probe: set audit.probe=fedsgd)")
        count(steps, "audit.local_steps", lo=2)
        return steps

    def check(self) -> None:
        self.probe_steps()
        if self.local_steps is not None and self.probe != "local_update":
            unused("audit.local_steps", self.local_steps, f"audit.probe is {self.probe or 'null'}, not local_update")
        if any(r < 0 for r in self.rounds):
            raise ConfigError(f"config key 'audit.rounds' = {list(self.rounds)} must hold round numbers >= 0")
        count(self.num_images, "audit.num_images")
        count(self.batch_size, "audit.batch_size")
        if self.num_images % self.batch_size:
            raise ConfigError(f"config key 'audit.num_images' = {self.num_images} must be a multiple of "
                              f"'audit.batch_size' = {self.batch_size}")
