"""Deterministic data splits: public / private-train / test, and the private partition over clients.

The public split is what the attacker may train a GAN prior on; clients never see it. The split is
driven by ``data.split_seed`` (not the run's ``seed``) so that changing the run seed never moves an
image between public and private: a prior trained once stays valid for every federation.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import List

import numpy as np

from ggl.core.errors import ConfigError


@dataclass(frozen=True)
class Split:
    public: np.ndarray
    private: np.ndarray
    test: np.ndarray


def indices_hash(indices: np.ndarray) -> str:
    """A short, stable fingerprint of a set of dataset indices (order-independent)."""
    return hashlib.sha256(np.sort(np.asarray(indices, dtype=np.int64)).tobytes()).hexdigest()[:16]


def split_indices(labels: np.ndarray, public_fraction: float, test_fraction: float, seed: int,
                  limit: int | None = None) -> Split:
    """Stratified split: each class contributes the same fractions to public, test and private.

    ``limit`` keeps a seeded, stratified subset of that many samples first (for quick runs).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 0x5EED])
    pool = np.arange(len(labels))
    if limit is not None and limit < len(labels):
        pool = np.sort(_stratified_take(labels, pool, limit / len(labels), rng))
    public, test, private = [], [], []
    for cls in np.unique(labels[pool]):
        idx = rng.permutation(pool[labels[pool] == cls])
        n_pub = int(round(public_fraction * len(idx)))
        n_test = int(round(test_fraction * len(idx)))
        public.append(idx[:n_pub])
        test.append(idx[n_pub:n_pub + n_test])
        private.append(idx[n_pub + n_test:])
    return Split(*(np.sort(np.concatenate(parts)).astype(np.int64) for parts in (public, private, test)))


def _stratified_take(labels: np.ndarray, pool: np.ndarray, fraction: float, rng) -> np.ndarray:
    keep = []
    for cls in np.unique(labels[pool]):
        idx = rng.permutation(pool[labels[pool] == cls])
        keep.append(idx[:max(1, int(round(fraction * len(idx))))])
    return np.concatenate(keep)


def partition(labels: np.ndarray, indices: np.ndarray, num_clients: int, scheme: str, seed: int,
              alpha: float = 0.5, classes_per_client: int = 2) -> List[np.ndarray]:
    """Partition ``indices`` (into ``labels``) over ``num_clients``; every client gets >= 1 sample.

    iid: a seeded shuffle cut into near-equal parts. dirichlet: per class, client proportions drawn
    from Dir(alpha) (smaller alpha, more skew). shards: sort by label, cut into
    ``num_clients * classes_per_client`` shards and deal each client ``classes_per_client`` of them.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if num_clients > len(indices):
        raise ConfigError(f"config key 'data.num_clients' = {num_clients} exceeds the {len(indices)} "
                          f"private training samples; lower it or raise the data size")
    rng = np.random.default_rng([seed, 0xC11E])
    labels = np.asarray(labels)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(indices), num_clients)
    elif scheme == "shards":
        n_shards = num_clients * classes_per_client
        if n_shards > len(indices):
            raise ConfigError(f"config keys 'data.num_clients' x 'data.classes_per_client' = {n_shards} "
                              f"shards exceed the {len(indices)} private samples")
        by_label = indices[np.lexsort((rng.permutation(len(indices)), labels[indices]))]
        shards = np.array_split(by_label, n_shards)
        order = rng.permutation(n_shards)
        parts = [np.concatenate([shards[s] for s in order[c::num_clients]]) for c in range(num_clients)]
    elif scheme == "dirichlet":
        parts = _dirichlet(labels, indices, num_clients, alpha, rng)
    else:
        raise ConfigError(f"config key 'data.partition' = {scheme!r} is not one of iid, dirichlet, shards")
    return [np.sort(p).astype(np.int64) for p in parts]


def _dirichlet(labels, indices, num_clients, alpha, rng, tries: int = 100) -> List[np.ndarray]:
    classes = np.unique(labels[indices])
    for _ in range(tries):
        buckets: List[list] = [[] for _ in range(num_clients)]
        for cls in classes:
            idx = rng.permutation(indices[labels[indices] == cls])
            cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, alpha))) * len(idx)).astype(int)[:-1]
            for c, chunk in enumerate(np.split(idx, cuts)):
                buckets[c].extend(chunk.tolist())
        if min(len(b) for b in buckets) > 0:
            return [np.array(b, dtype=np.int64) for b in buckets]
    raise ConfigError(f"config key 'data.alpha' = {alpha}: could not give every one of {num_clients} "
                      f"clients a sample in {tries} draws; raise data.alpha or lower data.num_clients")


def label_histogram(labels: np.ndarray, parts: List[np.ndarray], num_classes: int) -> np.ndarray:
    """(clients, classes) counts: what non-IID partitions look like."""
    return np.stack([np.bincount(np.asarray(labels)[p], minlength=num_classes) for p in parts])
