"""attack.device: the search's tensors live on the chosen device and results come back to the CPU;
cuda without a GPU and absurd budgets are one line, exit 2. The CUDA test runs only where a GPU exists."""
from __future__ import annotations

import pytest
import torch

from _attack_fixtures import TinyPrior, make_observation, one_torch_thread  # noqa: F401
from ggl.attack import GGLObjective, attack
from ggl.attack.device import attack_device
from ggl.attack.schema import AttackConfig
from ggl.cli import attack_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none here)")


def _victim(dtype=torch.float32):
    G = TinyPrior().to(dtype)
    y = torch.tensor([3])
    x = G(torch.randn(1, 8, generator=torch.Generator().manual_seed(1), dtype=dtype), y)
    return G, make_observation(x.float(), y), y


def _args(tmp_path, *more):
    return [f"output_dir={tmp_path / 'runs'}", "logger.mode=disabled", "data.name=digits", "audit.num_images=1",
            "attack.optimizer=cmaes", "attack.generations=2", "attack.population=4", "attack.progress=false", *more]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_cuda_without_a_gpu_is_one_line_naming_the_key_and_the_choices(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert attack_main(_args(tmp_path, "attack.device=cuda")) == 2
    line = _one_error_line(capsys)
    assert "attack.device" in line and "auto" in line and "cpu" in line
    assert not (tmp_path / "runs").exists()  # nothing half-written
    assert attack_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("key", ["attack.population=100000000", "attack.adam_restarts=-1 attack.optimizer=adam",
                                 "attack.generations=-5", "attack.patience=0", "attack.device=tpu"])
def test_bad_budget_or_device_is_one_line_exit_2(tmp_path, capsys, key):
    assert attack_main(_args(tmp_path, *key.split())) == 2
    assert key.split()[0].split("=")[0] in _one_error_line(capsys)


def test_cpu_search_keeps_the_callers_model_and_prior_and_returns_cpu_tensors():
    G, obs, y = _victim()
    model = obs.build_model()
    obj = GGLObjective(obs, G, y, model=model, device="cpu")
    assert obj.model is model and obj.G is G  # no copy on the device they already live on
    res = attack(obs, G, AttackConfig(optimizer="cmaes", sigma=1.0, generations=2, population=4, device="cpu"), seed=0, labels=y)
    assert res.images.device.type == "cpu" and res.z.device.type == "cpu"


@needs_cuda
def test_on_cuda_every_search_tensor_is_on_the_gpu_and_losses_match_the_cpu_in_float64():
    G, obs, y = _victim(torch.float64)
    model = obs.build_model().double()
    cands = torch.randn(6, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cpu = GGLObjective(obs, G, y, model=model, device="cpu")
    gpu = GGLObjective(obs, G, y, model=model, device="cuda")
    assert next(model.parameters()).device.type == "cpu"  # the caller's model stays for the evaluator
    for mode in ("batched", "loop"):
        a, b = cpu(cands, mode), gpu(cands, mode)
        assert b.device.type == "cuda"
        torch.testing.assert_close(b.cpu(), a, rtol=1e-9, atol=1e-12)
    seen = []
    cfg = AttackConfig(optimizer="cmaes_adam", generations=2, population=4, adam_steps=2, adam_restarts=2,
                       device="cuda")
    res = attack(obs, G.float(), cfg, seed=0, labels=y, watch=lambda s: seen.append(s.best.z.device.type))
    assert seen and set(seen) == {"cuda"}
    assert res.images.device.type == "cpu" and res.z.device.type == "cpu"
