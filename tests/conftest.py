"""Shared test helpers: tiny configs, offline, CPU-only, writing under pytest's tmp_path."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def make_cfg(tmp_path):
    """load_config with a tiny, fast federation on `digits`, writing into tmp_path."""
    from ggl.config import load_config

    def _make(*overrides: str, config: str | None = "fed_fp32.yaml"):
        base = [f"output_dir={tmp_path / 'runs'}", "logger.mode=disabled", "data.name=digits", "data.num_clients=4", "fl.local_epochs=2",
                "fl.rounds=2", "fl.eval_every=1", "trainer.accelerator=cpu",
                "trainer.enable_progress_bar=false"]
        return load_config(config, base + list(overrides))
    return _make
