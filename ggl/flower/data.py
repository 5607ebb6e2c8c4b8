"""ggl's datasets dealt to Flower clients exactly as ggl's federation deals them (same split, same partition).

``GGLPartition(data_cfg, seed)`` loads a ggl dataset (``data:`` config as a dict: ``name``, ``num_clients``,
``partition``, ...) once per process and gives each client (its ``partition-id``) the ``ClientShard`` that
``ggl.data.datamodule.FederatedDataModule`` gives client ``partition-id`` under the same ``seed``, with its
dataset indices, so that ``capture_mod`` writes ground truth the evaluator can reload.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Dict, Tuple

import torch
from torch import Tensor

from ggl.data.schema import DataConfig
from ggl.data.datamodule import FederatedDataModule
from ggl.flower.mods import ClientShard, client_id

_CACHE: Dict[Tuple, FederatedDataModule] = {}


class GGLPartition:
    """Picklable (the simulation ships it to its workers); the data load once per process."""

    def __init__(self, data_cfg: dict, seed: int = 0):
        cfg = DataConfig(**dict(data_cfg))
        cfg.check()
        self.data_cfg = asdict(cfg)
        self.seed = int(seed)

    def module(self) -> FederatedDataModule:
        key = (repr(sorted(self.data_cfg.items())), self.seed)
        if key not in _CACHE:
            dm = FederatedDataModule(DataConfig(**self.data_cfg), seed=self.seed)
            dm.setup()
            _CACHE[key] = dm
        return _CACHE[key]

    @property
    def num_clients(self) -> int:
        return int(self.data_cfg["num_clients"])

    def shard(self, cid: int) -> ClientShard:
        dm = self.module()
        idx = torch.as_tensor(dm.client_indices[cid], dtype=torch.long)
        return ClientShard(images=dm.data.images[idx], labels=dm.data.labels[idx], indices=idx,
                           dataset=dict(self.data_cfg))

    def __call__(self, context) -> ClientShard:
        return self.shard(client_id(context))

    def test_tensors(self) -> Tuple[Tensor, Tensor]:
        return self.module().test_tensors()

    @property
    def channels(self) -> int:
        return int(self.module().data.channels)

    @property
    def num_classes(self) -> int:
        return int(self.module().data.num_classes)
