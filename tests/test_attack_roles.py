"""The threat model in code: the attacker never imports the data module; observations carry nothing
private; ground truth lives in separate files; observations round-trip with weights_only=True."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from _attack_fixtures import make_observation, one_torch_thread  # noqa: F401
from ggl.attack.observation import Observation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_attack_package_never_imports_the_data_module():
    code = (
        "import sys, pkgutil, importlib, ggl.attack\n"
        "for m in pkgutil.iter_modules(ggl.attack.__path__):\n"
        "    importlib.import_module('ggl.attack.' + m.name)\n"
        "import cmaes, torch.func\n"
        "bad = sorted(m for m in sys.modules if m == 'ggl.data' or m.startswith('ggl.data.')\n"
        "             or m.startswith('ggl.audit') or m.startswith('torchvision.datasets'))\n"
        "print('loaded:', len([m for m in sys.modules if m.startswith('ggl.attack')]))\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split("loaded:")[1]) >= 6  # the check did import the attack's modules


def test_observation_round_trips_with_weights_only(tmp_path):
    x, y = torch.rand(2, 1, 32, 32), torch.tensor([3, 9])
    obs = make_observation(x, y, defenses=[{"name": "quantize", "bits": 4, "rounding": "nearest", "range": "global"}])
    path = obs.save(tmp_path / "o.pt")
    torch.load(path, weights_only=True)  # loadable by the safe unpickler
    back = Observation.load(path)
    assert back.arch == "lenet" and back.batch_size == 2 and back.defenses[0]["bits"] == 4
    for a, b in zip(back.update, obs.update):
        assert torch.equal(a, b)
    model = back.build_model()
    assert all(not p.requires_grad for p in model.parameters())


def test_fresh_captures_keep_ground_truth_out_of_observations(make_cfg, tmp_path):
    from ggl.jobs.attack import defense_settings
    from ggl.audit.truth import GroundTruth, find_captures
    from ggl.audit.victim import fresh_captures
    from ggl.data.datamodule import load_split

    cfg = make_cfg("audit.num_images=4", "audit.batch_size=2", "model.name=lenet", "model.init=dlg",
                   config="attack.yaml")
    root = tmp_path / "caps"
    caps = fresh_captures(cfg, defense_settings(cfg), root)
    assert set(caps) == {"fp32", "q4"} and all(len(v) == 2 for v in caps.values())
    assert find_captures(root) == caps
    data, split = load_split(cfg.data)
    private = set(split.private.tolist())
    for setting, pairs in caps.items():
        for obs_path, truth_path in pairs:
            assert obs_path.parent.parent.name == "observations" and truth_path.parent.name == "ground_truth"
            blob = torch.load(obs_path, weights_only=True)
            assert not {"indices", "labels", "images", "dataset"} & set(blob)
            gt = GroundTruth.load(truth_path)
            assert set(gt.indices.tolist()) <= private  # victims come from the private split only
            images = data.images[gt.indices]
            for t in list(blob["state"].values()) + blob["update"]:  # no tensor is the images
                assert t.shape != images.shape or not torch.equal(t, images)
            obs = Observation.load(obs_path)
            assert obs.batch_size == 2 and obs.kind == "gradient"
            if setting == "q4":
                assert obs.defenses == [{"name": "quantize", "bits": 4, "rounding": "nearest", "range": "global",
                                        "grid": "project"}]
                assert all(len(torch.unique(torch.cat([t.flatten() for t in obs.update]))) <= 16 for _ in [0])
            else:
                assert obs.defenses == []
    # both settings observe the same victims
    assert [t for _, t in caps["fp32"]] == [t for _, t in caps["q4"]]
