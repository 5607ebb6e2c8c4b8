"""Config schema of the GGL attack (``attack:`` section); keys documented in configs/attack.yaml."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ggl.attack.attackers import check_portfolio
from ggl.attack.device import DEVICES, check_device
from ggl.core.checks import changed, count, one_of, unused
from ggl.core.errors import ConfigError
from ggl.defenses import parse_defense

LPIPS_NETS = ("alex", "vgg", "squeeze")  # lpips' backbones (their weights: ggl.audit.metrics)

OPTIMIZERS = ("cmaes", "adam", "cmaes_adam")
LOSSES = ("l2", "cosine")
EVALUATIONS = ("batched", "loop")


@dataclass
class AttackConfig:
    source: Optional[str] = None          # null = fresh victims; else a federation run folder / capture file
    prior: str = "checkpoints/gan_mnist5k.pt"
    optimizer: str = "cmaes_adam"
    population: int = 50
    generations: int = 5
    restarts: int = 1
    sigma: float = 0.3
    latent_bound: Optional[float] = None
    adam_steps: int = 160
    adam_lr: float = 0.1
    adam_restarts: int = 4
    loss: str = "l2"
    kl_weight: float = 0.0
    evaluation: str = "batched"
    adaptive: bool = False
    true_labels: bool = False
    # defence settings side by side; null = the top-level chain (default: none and 4-bit, as attack.yaml)
    defenses: Optional[List[Any]] = field(default_factory=lambda: [
        [], [{"name": "quantize", "bits": 4, "rounding": "nearest", "range": "global"}]])
    max_observations: Optional[int] = None
    torch_threads: Optional[int] = 1
    progress: bool = True
    device: str = "auto"                  # auto | cpu | cuda (ggl/attack/device.py)
    patience: Optional[int] = None        # early stopping per search phase; null = the full budget
    search_seeds: int = 1                 # independent searches per victim and attacker (batched in one population)
    attackers: Optional[List[str]] = None  # the portfolio (ggl/attack/attackers); null = one GGL attacker (loss, adaptive)
    attacker_options: Dict[str, Any] = field(default_factory=dict)  # each attacker's own settings, by name
    trusted_generators: List[str] = field(default_factory=list)  # dotted generator classes a prior may name
    trusted_models: List[str] = field(default_factory=list)  # user models (pkg.module:Class) a capture may name
    image_every: int = 20                 # W&B: the best reconstruction so far every N search steps; 0 = off
    lpips_net: str = "alex"               # the evaluator's LPIPS backbone (LPIPS_NETS)

    def check(self) -> None:
        if self.attackers is not None or self.attacker_options:
            check_portfolio(self.attackers, self.attacker_options)


        for key, allowed in (("optimizer", OPTIMIZERS), ("loss", LOSSES), ("evaluation", EVALUATIONS),
                             ("device", DEVICES), ("lpips_net", LPIPS_NETS)):
            one_of(getattr(self, key), allowed, f"attack.{key}")
        check_device(self.device)
        uses_cma = self.optimizer in ("cmaes", "cmaes_adam")
        uses_adam = self.optimizer in ("adam", "cmaes_adam")
        if uses_cma:
            if self.generations < 1:
                raise ConfigError(f"config key 'attack.generations' = {self.generations}: the CMA-ES "
                                  f"budget must be >= 1 generation")
            if self.population < 2:
                raise ConfigError(f"config key 'attack.population' = {self.population} must be >= 2")
            if self.restarts < 1:
                raise ConfigError(f"config key 'attack.restarts' = {self.restarts} must be >= 1")
            if not self.sigma > 0:
                raise ConfigError(f"config key 'attack.sigma' = {self.sigma} must be > 0")
        if uses_adam:
            if self.adam_steps < 1:
                raise ConfigError(f"config key 'attack.adam_steps' = {self.adam_steps}: the Adam budget "
                                  f"must be >= 1 step")
            if self.adam_restarts < 1:
                raise ConfigError(f"config key 'attack.adam_restarts' = {self.adam_restarts} must be >= 1")
            if not self.adam_lr > 0:
                raise ConfigError(f"config key 'attack.adam_lr' = {self.adam_lr} must be > 0")
        if self.search_seeds < 1:
            raise ConfigError(f"config key 'attack.search_seeds' = {self.search_seeds} must be >= 1")
        for key in ("population", "generations", "restarts", "adam_steps", "adam_restarts", "max_observations",
                    "patience", "torch_threads", "search_seeds"):  # the upper ends (ggl.core.checks.LIMITS); the lower ones here
            count(getattr(self, key), f"attack.{key}", lo=None)
        if self.image_every < 0:
            raise ConfigError(f"config key 'attack.image_every' = {self.image_every} must be >= 0 (0 = no images)")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"config key 'attack.patience' = {self.patience} must be >= 1 (or null: no early "
                              f"stopping)")
        if self.latent_bound is not None and not self.latent_bound > 0:
            raise ConfigError(f"config key 'attack.latent_bound' = {self.latent_bound} must be > 0 (or null)")
        if self.kl_weight < 0:
            raise ConfigError(f"config key 'attack.kl_weight' = {self.kl_weight} must be >= 0")
        if self.max_observations is not None and self.max_observations < 1:
            raise ConfigError(f"config key 'attack.max_observations' = {self.max_observations} must be >= 1")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"config key 'attack.torch_threads' = {self.torch_threads} must be >= 1")
        self._unused_keys(uses_cma, uses_adam)
        if self.defenses is not None:
            self.defenses = [self._parse_setting(s, f"attack.defenses[{i}]", parse_defense)
                             for i, s in enumerate(self.defenses)]

    def _unused_keys(self, uses_cma: bool, uses_adam: bool) -> None:
        """Keys of a search or an attacker this config does not run: a warning line each."""
        for name in self.attacker_options:
            if name not in (self.attackers or ()):
                unused(f"attack.attacker_options.{name}", dict(self.attacker_options[name] or {}),
                       f"'{name}' is not in attack.attackers ({', '.join(self.attackers or ['null: one GGL attacker'])})")
        for keys, used, what in ((("population", "generations", "restarts", "sigma"), uses_cma, "CMA-ES"),
                                 (("adam_steps", "adam_lr", "adam_restarts"), uses_adam, "Adam")):
            for key in keys:
                if not used and changed(self, key):
                    unused(f"attack.{key}", getattr(self, key), f"attack.optimizer = {self.optimizer} runs no {what}")

    @staticmethod
    def _parse_setting(setting: Any, key: str, parse_defense) -> list:
        """One defence setting: a chain (list) of defence specs; ``[]`` or ``none`` = no defence."""
        if setting is None or setting == "none":
            return []
        if isinstance(setting, dict) or hasattr(setting, "label"):
            setting = [setting]
        if not isinstance(setting, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list of defences (a chain, [] for none), "
                              f"e.g. [{{name: quantize, bits: 4}}]")
        return [parse_defense(d, f"{key}[{j}]") for j, d in enumerate(setting)]
