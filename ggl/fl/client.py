"""Local training of one client on a functional copy of the global weights."""
from __future__ import annotations

import math
from typing import Dict, Iterator, List

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ggl.defenses.base import FLOAT_BITS
from ggl.fl.update import ClientData, ClientUpdate


def local_step_count(num_samples: int, batch_size: int, local_epochs: float, local_steps: int | None) -> int:
    if local_steps is not None:
        return local_steps
    return max(1, math.ceil(local_epochs * num_samples / batch_size))


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator) -> Iterator[Tensor]:
    """``steps`` mini-batches of indices, reshuffling at each pass over the data."""
    done = 0
    while done < steps:
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            if done == steps:
                return
            yield perm[start:start + batch_size]
            done += 1


def train_client(model: nn.Module, global_params: Dict[str, Tensor], x: Tensor, y: Tensor, *,
                 client_id: int, round: int, seed: int, lr: float, momentum: float, weight_decay: float,
                 batch_size: int, local_epochs: float = 1.0, local_steps: int | None = None,
                 data_gen: torch.Generator | None = None) -> ClientUpdate:
    """Train from ``global_params`` with SGD; return the update the client would send.

    One local step (FedSGD) sends the gradient of that step; more steps (FedAvg) send the weight
    delta. Either way the same loop runs: FedSGD is a config, not a code path. The update carries the
    data it came from (``update.private``) for defenses that look at it; none of it is ever sent.
    """
    names = list(global_params)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in global_params.items()}
    buffers = dict(model.named_buffers())
    opt = torch.optim.SGD(params.values(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps = local_step_count(len(y), batch_size, local_epochs, local_steps)
    first_grads: List[Tensor] = []
    for idx in _batches(len(y), batch_size, steps, data_gen):
        loss = F.cross_entropy(functional_call(model, (params, buffers), (x[idx],)), y[idx])
        grads = torch.autograd.grad(loss, list(params.values()))
        if steps == 1:
            first_grads = [g.detach() for g in grads]
            break
        for p, g in zip(params.values(), grads):
            p.grad = g
        opt.step()
    if steps == 1:
        tensors, kind = first_grads, "gradient"
    else:
        tensors = [(params[k] - global_params[k]).detach() for k in names]
        kind = "delta"
    numel = sum(t.numel() for t in tensors)
    return ClientUpdate(client_id=client_id, round=round, tensors=tensors, names=names,
                        num_samples=int(len(y)), kind=kind, bits=FLOAT_BITS * numel, seed=seed,
                        meta={"lr": lr, "local_steps": steps, "batch_size": batch_size},
                        private=ClientData(model=model, params=dict(global_params), x=x, y=y))


def as_delta(update: ClientUpdate) -> List[Tensor]:
    """The weight change the server applies for an update (a gradient becomes -lr * gradient)."""
    if update.kind == "gradient":
        return [-update.meta["lr"] * t for t in update.tensors]
    return update.tensors
