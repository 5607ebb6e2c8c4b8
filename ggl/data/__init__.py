"""Data: the dataset registry (sources), deterministic splits, the federation's DataModule."""
