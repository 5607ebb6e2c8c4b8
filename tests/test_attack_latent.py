"""The attack loss depends on the latent under every registered defence, adaptive or not.

The seed's ``NGReconstructor.ng_loss`` replaced the *trial* update with the quantized *observed* one
under quantization: its loss did not depend on z, and CMA-ES optimised a constant (README, "What the
seed claimed"). Here the gradient of the loss with respect to z must be non-zero for every defence in
``ggl.defenses.REGISTRY`` (whatever it holds when this runs) and both attackers.
"""
from __future__ import annotations

import pytest
import torch

from _attack_fixtures import TinyPrior, client_gradient, make_observation, one_torch_thread  # noqa: F401
from ggl.attack.objective import GGLObjective
from ggl.attack.trial import DefenseModel
from ggl.defenses import REGISTRY as DEFENSE_SPECS, parse_defense
from ggl.core.errors import ConfigError
from ggl.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# values for defences whose defaults are not a valid spec on their own (the rest use their defaults)
EXAMPLES = {"noise": {"std": 0.001}, "quantize": {"bits": 4}, "topk": {"fraction": 0.1}}


def _spec(name: str) -> dict:
    entry = {"name": name, **EXAMPLES.get(name, {})}
    try:
        parse_defense(dict(entry), "test")
    except ConfigError as exc:
        pytest.fail(f"defence '{name}' needs example values in EXAMPLES of this test: {exc}")
    return entry


@pytest.mark.parametrize("adaptive", [False, True], ids=["non-adaptive", "adaptive"])
@pytest.mark.parametrize("name", sorted(DEFENSE_SPECS))
def test_attack_loss_depends_on_the_latent(name, adaptive):
    G = TinyPrior()
    y = torch.tensor([3])
    x = G(torch.randn(1, 8, generator=torch.Generator().manual_seed(0)), y)
    spec = _spec(name)
    clean = client_gradient(build_model("lenet", 1, 10, init="dlg", seed=0), x, y)
    sent = list(DefenseModel([spec], observed=clean)(tuple(clean)))  # what the client transmits (noise: its mean)
    obs = make_observation(x, y, defenses=[spec], transform=lambda grads: sent)
    objective = GGLObjective(obs, G, y, adaptive=adaptive)
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float32).requires_grad_(True)
    for evaluation in ("batched", "loop"):
        losses = objective(z, evaluation)
        (grad,) = torch.autograd.grad(losses.sum(), z)
        assert torch.isfinite(grad).all()
        assert (grad.abs().sum(1) > 0).all(), f"{name} ({'adaptive' if adaptive else 'non-adaptive'}, {evaluation}): " \
                                              f"the loss does not depend on z"
        assert losses[0] != losses[1]  # two latents, two losses: not a constant
