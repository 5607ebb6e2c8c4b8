"""The federation's LightningDataModule: the dataset, its split, the clients' partition.

A Lightning "epoch" of the federation is one FL round, so ``train_dataloader`` yields one item (the
round marker) per epoch; the clients' data are served by ``client_data(cid)`` to the FedAvg module,
which samples clients and batches itself. ``val_dataloader`` is the test split.
"""
from __future__ import annotations

from typing import List, Tuple

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ggl.data.sources import ImageData, load_dataset
from ggl.data.splits import Split, label_histogram, partition, split_indices


def load_split(data_cfg) -> Tuple[ImageData, Split]:
    """The configured dataset and its public/private/test split (the same for every job)."""
    data = load_dataset(data_cfg.name, data_cfg.root, data_cfg.download)
    split = split_indices(data.labels.numpy(), data_cfg.public_fraction, data_cfg.test_fraction,
                          data_cfg.split_seed, data_cfg.limit)
    return data, split


class _OneItemPerRound(Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> Tensor:
        return torch.zeros(())


class _Batches(Dataset):
    """Ready-made slices of in-memory tensors (no per-sample collation)."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int):
        self.x, self.y, self.bs = x, y, batch_size

    def __len__(self) -> int:
        return -(-len(self.y) // self.bs)

    def __getitem__(self, i: int):
        return self.x[i * self.bs:(i + 1) * self.bs], self.y[i * self.bs:(i + 1) * self.bs]


class FederatedDataModule(L.LightningDataModule):
    def __init__(self, data_cfg, eval_batch_size: int = 1000, seed: int = 0):
        super().__init__()
        self.cfg = data_cfg
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.data: ImageData | None = None
        self.split: Split | None = None
        self.client_indices: List[np.ndarray] = []

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        self.data, self.split = load_split(self.cfg)
        self.client_indices = partition(self.data.labels.numpy(), self.split.private, self.cfg.num_clients,
                                        self.cfg.partition, self.seed, self.cfg.alpha,
                                        self.cfg.classes_per_client)

    @property
    def num_clients(self) -> int:
        return len(self.client_indices)

    def client_data(self, cid: int) -> Tuple[Tensor, Tensor]:
        idx = torch.from_numpy(self.client_indices[cid])
        return self.data.images[idx], self.data.labels[idx]

    def test_tensors(self) -> Tuple[Tensor, Tensor]:
        idx = torch.from_numpy(self.split.test)
        return self.data.images[idx], self.data.labels[idx]

    def label_histogram(self) -> np.ndarray:
        return label_histogram(self.data.labels.numpy(), self.client_indices, self.data.num_classes)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_OneItemPerRound(), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Batches(*self.test_tensors(), self.eval_batch_size), batch_size=None)
