"""What the attack benchmarks share: the prior and one real private digit's observed update."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Tuple

import torch

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PRIOR = REPO / "checkpoints" / "gan_mnist5k.pt"


def prior(path: str | Path) -> Tuple[torch.nn.Module, str]:
    """The GAN prior at ``path``, or an untrained generator of its architecture (speed is the same)."""
    if Path(path).is_file():
        from ggl.gan.prior import load_prior

        return load_prior(path), f"prior: {path}"
    from ggl.models.gan import Generator

    return (Generator(128, 1, 32, 10).eval().requires_grad_(False),
            f"prior: {path} not found -> an untrained generator of the prior's architecture (speed only)")


def private_observation(arch: str = "lenet", init: str = "dlg", adaptive: bool = False, rounding: str = "nearest"):
    """The FedSGD gradient of the first private MNIST digit at a fresh ``arch`` model, 4-bit
    quantized (``rounding``: nearest or stochastic, seeded; global range) when ``adaptive``, as an ``Observation``."""
    from ggl.attack.observation import Observation
    from ggl.config import DataConfig
    from ggl.data.datamodule import load_split
    from ggl.defenses.quantize import quantize_update
    from ggl.models import build_model

    data, split = load_split(DataConfig())
    idx = split.private[:1]
    x, y = data.images[idx], data.labels[idx]
    model = build_model(arch, 1, 10, init=init, seed=0)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    grads = [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]
    defenses = []
    if adaptive:
        grads, _ = quantize_update(grads, 4, rounding, generator=torch.Generator().manual_seed(0))
        defenses = [{"name": "quantize", "bits": 4, "rounding": rounding, "range": "global"}]
    return Observation(arch=arch, channels=1, num_classes=10, state=model.state_dict(),
                       names=[n for n, _ in model.named_parameters()], update=grads, kind="gradient",
                       batch_size=1, local_steps=1, lr=0.05, local_batch_size=32, defenses=defenses)


def rate(fn, n_per_call: int, seconds: float, clock=time.perf_counter) -> float:
    """Calls of ``fn`` per second of ``clock`` times ``n_per_call``, after one warm-up call, over
    ``seconds``. ``clock=time.process_time``: per CPU-second of this process (with one thread, robust
    to other jobs sharing the machine)."""
    fn()
    done, start = 0, clock()
    while clock() - start < seconds:
        fn()
        done += n_per_call
    return done / (clock() - start)
