"""Splits and partitions: disjoint, complete, seeded; datasets shaped 32x32."""
import numpy as np
import pytest

from ggl.data.sources import load_dataset
from ggl.data.splits import indices_hash, partition, split_indices
from ggl.core.errors import ConfigError, UserError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_embedded_datasets_are_32x32(digits):
    assert digits.images.shape[1:] == (1, 32, 32) and digits.num_classes == 10
    assert 0.0 <= float(digits.images.min()) and float(digits.images.max()) <= 1.0
    mnist = load_dataset("mnist5k")
    assert mnist.images.shape == (5000, 1, 32, 32)
    assert np.bincount(mnist.labels.numpy()).tolist() == [500] * 10
    # the 28x28 digit sits in the middle with a 2-pixel empty border
    assert float(mnist.images[:, :, :2].abs().sum()) == 0.0


def test_split_is_disjoint_complete_stratified_and_seeded(digits):
    labels = digits.labels.numpy()
    s = split_indices(labels, 0.4, 0.2, seed=0)
    parts = [s.public, s.private, s.test]
    allidx = np.concatenate(parts)
    assert len(allidx) == len(labels) == len(np.unique(allidx))  # complete and disjoint
    assert abs(len(s.public) / len(labels) - 0.4) < 0.01
    for cls in range(10):  # stratified: each class in the same proportion
        frac = np.mean(labels[s.public] == cls) - np.mean(labels == cls)
        assert abs(frac) < 0.01
    again = split_indices(labels, 0.4, 0.2, seed=0)
    assert indices_hash(again.public) == indices_hash(s.public)
    assert indices_hash(split_indices(labels, 0.4, 0.2, seed=1).public) != indices_hash(s.public)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_partition_disjoint_complete_seeded(digits, scheme):
    labels = digits.labels.numpy()
    private = split_indices(labels, 0.4, 0.2, seed=0).private
    parts = partition(labels, private, 8, scheme, seed=3, alpha=0.3, classes_per_client=2)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == sorted(private.tolist())
    assert all(len(p) > 0 for p in parts)
    again = partition(labels, private, 8, scheme, seed=3, alpha=0.3, classes_per_client=2)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition(labels, private, 8, scheme, seed=4, alpha=0.3, classes_per_client=2)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other))


def test_non_iid_partitions_are_skewed(digits):
    labels = digits.labels.numpy()
    private = split_indices(labels, 0.4, 0.2, seed=0).private
    shards = partition(labels, private, 10, "shards", seed=0, classes_per_client=2)
    assert max(len(np.unique(labels[p])) for p in shards) <= 3  # 2 shards can straddle one boundary
    iid = partition(labels, private, 10, "iid", seed=0)
    assert min(len(np.unique(labels[p])) for p in iid) >= 8


def test_more_clients_than_samples_is_a_config_error(digits):
    labels = digits.labels.numpy()
    with pytest.raises(ConfigError, match="data.num_clients"):
        partition(labels, np.arange(5), 6, "iid", seed=0)


def test_missing_torchvision_dataset_names_folder_and_flag(tmp_path):
    with pytest.raises(UserError) as err:
        load_dataset("cifar10", root=str(tmp_path / "nowhere"), download=False)
    msg = str(err.value)
    assert "cifar10" in msg and "nowhere" in msg and "data.download=true" in msg
