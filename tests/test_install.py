"""A wheel built from the tree, installed with ``pip install --no-deps --target`` (no checkout beside it),
runs ``ggl attack`` (the shipped prior and the embedded data come from the package) and ``ggl sweep
sweep_tiny.yaml --list`` from another folder. Offline: ``--no-index --no-build-isolation``. Runs in CI
(marker ``install``; about 25 CPU-seconds). A missing data file: tests/test_embedded_data.py."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PARTS = ("pyproject.toml", "README.md", "ggl", "configs", "checkpoints")
TINY_ATTACK = ["audit.num_images=1", "attack.optimizer=cmaes", "attack.generations=1", "attack.population=4",
               "attack.defenses=[[]]", "attack.progress=false", "logger.mode=disabled", "model.name=lenet"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"  # a copy: building in the checkout would leave build/ and *.egg-info there
    source.mkdir()
    for part in PARTS:
        if (REPO / part).is_dir():
            shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / part, source / part)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    build = subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w",
                                  str(tmp / "wheel"), str(source)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp / "wheel").glob("ggl-*.whl"))
    site = tmp / "site"
    inst = subprocess.run(pip + ["install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
                          capture_output=True, text=True)
    assert inst.returncode == 0, inst.stderr[-2000:]
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return site, elsewhere, env


def _ggl(installed, *args):
    site, elsewhere, env = installed
    return subprocess.run([str(site / "bin" / "ggl"), *args], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.install
def test_wheel_ships_its_data(installed):
    site, _, env = installed
    for rel in ("checkpoints/gan_mnist5k.pt", "checkpoints/gan_mnist5k_classifier.pt", "checkpoints/gan_mnist5k.json",
                "configs/sweep_tiny.yaml", "data/embedded/mnist5k.npz", "data/embedded/digits.npz",
                "data/embedded/LICENSES.md"):
        assert (site / "ggl" / rel).is_file(), rel
    assert not (site / "checkpoints").exists() and not (site / "configs").exists()  # no checkout beside it


@pytest.mark.install
def test_installed_ggl_attack_runs_from_another_folder(installed):
    out = _ggl(installed, "attack", *TINY_ATTACK, "output_dir=runs")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "done in" in out.stdout and (installed[1] / "runs" / "attack" / "latest" / "results.json").is_file()


@pytest.mark.install
def test_installed_ggl_sweep_list(installed):
    out = _ggl(installed, "sweep", "sweep_tiny.yaml", "--list")
    assert out.returncode == 0, out.stderr[-2000:]
    assert [line.split(":")[0] for line in out.stdout.strip().splitlines()] == ["fp32", "q4"]
