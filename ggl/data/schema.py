"""``data:``: which dataset, and how it splits into public, private (per client) and test images."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ggl.core.checks import changed, check_seed, count, in_range, one_of, unused
from ggl.core.errors import ConfigError
from ggl.data.sources import available_datasets


@dataclass
class DataConfig:
    name: str = "mnist5k"
    root: str = "data"
    download: bool = False
    split_seed: int = 0
    public_fraction: float = 0.4
    test_fraction: float = 0.2
    limit: Optional[int] = None
    partition: str = "iid"
    num_clients: int = 10
    alpha: float = 0.5
    classes_per_client: int = 2

    def check(self) -> None:
        one_of(self.name, tuple(available_datasets()), "data.name")
        check_seed(self.split_seed, "data.split_seed")
        in_range(self.public_fraction, 0.0, 0.9, "data.public_fraction")
        in_range(self.test_fraction, 0.0, 0.5, "data.test_fraction", lo_open=True)
        if self.public_fraction + self.test_fraction >= 0.95:
            raise ConfigError("config keys 'data.public_fraction' + 'data.test_fraction' must leave "
                              "at least 5% of the data for the clients' private split")
        count(self.limit, "data.limit", lo=20, hint=" (or null for all)")
        one_of(self.partition, ("iid", "dirichlet", "shards"), "data.partition")
        count(self.num_clients, "data.num_clients")
        in_range(self.alpha, 0.0, 1e6, "data.alpha", lo_open=True)
        count(self.classes_per_client, "data.classes_per_client")
        if self.partition != "dirichlet" and changed(self, "alpha"):
            unused("data.alpha", self.alpha, f"data.partition is {self.partition}, not dirichlet")
        if self.partition != "shards" and changed(self, "classes_per_client"):
            unused("data.classes_per_client", self.classes_per_client, f"data.partition is {self.partition}, not shards")
