"""Trial updates: the attacker replays the client's computation on candidate images.

``ClientSimulator.update(x, y)`` is a pure function (``torch.func``) of one candidate batch ``x``
(B, C, H, W): the gradient of the client's first step (FedSGD) or the weight delta after
``local_steps`` SGD steps with the observed lr, momentum and weight decay (FedAvg), exactly as
``ggl.fl.client.train_client`` computes it. ``batched`` vectorises it over a whole population with
``torch.func.vmap`` (``evaluation: batched``). ``reference`` computes the same update with plain
autograd, one candidate at a time, as the reference implementation's loop does (``evaluation:
loop``); the tests check that both give the same losses.

``DefenceModel`` is what an *adaptive* attacker knows of the defence: it applies the very function
the client applied (``ggl.defenses.quantize.quantize_update``) to each trial update. Its forward
value is exact; its gradient is the straight-through estimator (identity), so gradient-based search
can pass through the quantizer.
"""
from __future__ import annotations

import copy
import warnings
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ggl.attack.observation import Observation
from ggl.defenses.quantize import quantize_update
from ggl.errors import UserError


class ClientSimulator:
    def __init__(self, model: nn.Module, obs: Observation):
        self.model = model
        named = dict(model.named_parameters())
        self.names = list(obs.names)
        self.params: Dict[str, Tensor] = {n: named[n].detach() for n in self.names}
        self.buffers: Dict[str, Tensor] = {n: b.detach() for n, b in model.named_buffers()}
        self.kind = obs.kind
        self.steps = max(1, int(obs.local_steps))
        self.lr, self.momentum, self.weight_decay = float(obs.lr), float(obs.momentum), float(obs.weight_decay)
        self.local_batch = int(obs.local_batch_size) or int(obs.batch_size)
        self._grad = grad(self._loss)
        self._ref_model = None
        self._ref_params: List[Tensor] = []

    def _loss(self, params: Dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(self.model, (params, self.buffers), (x,)), y)

    def _minibatch(self, x: Tensor, y: Tensor, step: int) -> Tuple[Tensor, Tensor]:
        """The images of local step ``step``. Exact when the client holds <= one mini-batch (the audit
        case); otherwise the client's private shuffling is unknown and consecutive chunks stand in."""
        n = x.shape[0]
        if n <= self.local_batch:
            return x, y
        per_pass = -(-n // self.local_batch)
        start = (step % per_pass) * self.local_batch
        return x[start:start + self.local_batch], y[start:start + self.local_batch]

    def update(self, x: Tensor, y: Tensor) -> Tuple[Tensor, ...]:
        """The update one candidate batch would produce, in ``names`` order."""
        if self.kind == "gradient":
            g = self._grad(self.params, x, y)
            return tuple(g[n] for n in self.names)
        p = dict(self.params)
        buf: Dict[str, Tensor] = {}
        for step in range(self.steps):
            xb, yb = self._minibatch(x, y, step)
            g = self._grad(p, xb, yb)
            for n in self.names:
                d = g[n] + self.weight_decay * p[n] if self.weight_decay else g[n]
                buf[n] = d if step == 0 or not self.momentum else self.momentum * buf[n] + d
                p[n] = p[n] - self.lr * buf[n]
        return tuple(p[n] - self.params[n] for n in self.names)

    def batched(self, x: Tensor, y: Tensor) -> Tuple[Tensor, ...]:
        """x (P, B, C, H, W) -> per-candidate updates, each (P, *param shape), in one vectorised pass."""
        return vmap(self.update, in_dims=(0, None))(x, y)

    def reference(self, x: Tensor, y: Tensor) -> Tuple[Tensor, ...]:
        """The same update with plain autograd, one candidate at a time: the reference
        implementation's loop body (``evaluation: loop``). Differentiable in ``x`` when grad is on."""
        outer = torch.is_grad_enabled() and x.requires_grad
        with torch.enable_grad():
            if self.kind == "gradient":
                if self._ref_model is None:  # a private copy whose parameters autograd can track
                    self._ref_model = copy.deepcopy(self.model).requires_grad_(True)
                    self._ref_params = [dict(self._ref_model.named_parameters())[n] for n in self.names]
                loss = F.cross_entropy(self._ref_model(x), y)
                return tuple(torch.autograd.grad(loss, self._ref_params, create_graph=outer))
            p = {n: v.detach().requires_grad_(True) for n, v in self.params.items()}
            start = dict(p)
            buf: Dict[str, Tensor] = {}
            for step in range(self.steps):
                xb, yb = self._minibatch(x, y, step)
                loss = self._loss(p, xb, yb)
                g = dict(zip(self.names, torch.autograd.grad(loss, [p[n] for n in self.names], create_graph=outer)))
                for n in self.names:
                    d = g[n] + self.weight_decay * p[n] if self.weight_decay else g[n]
                    buf[n] = d if step == 0 or not self.momentum else self.momentum * buf[n] + d
                    p[n] = p[n] - self.lr * buf[n]
            out = tuple(p[n] - start[n] for n in self.names)
            return out if outer else tuple(t.detach() for t in out)


class DefenceModel:
    """The adaptive attacker's copy of the client's defence chain (from the observation's spec),
    applied to every trial update with the very ``ggl.defenses`` functions the client used:

    * quantize (nearest rounding): ``quantize_update`` at the observed bits and range mode; with
      stochastic rounding the client's random draws are unknown and E[q(u)] = u, so the expected
      transmitted update (the update itself) is used;
    * clip: ``clip_update`` with the bound of the observed spec (``max_norm``; a clipped observed
      update has exactly that norm, so the bound can also be read off the observation);
    * top-k: the *observed* mask (the coordinates the client sent);
    * sign: ``sign_update``;
    * Gaussian noise: zero-mean and unknown, so its expectation (nothing) is applied.

    Non-differentiable steps (rounding, sign) pass gradients straight through (STE).
    """

    def __init__(self, specs: Sequence[dict], observed: Sequence[Tensor] = ()):
        from ggl.defenses.specs import (ClipSpec, IdentitySpec, NoiseSpec, QuantizeSpec, SignSpec, TopKSpec,
                                        parse_defense)

        self.steps: List[Tuple[str, object]] = []
        for i, raw in enumerate(specs):
            spec = parse_defense(dict(raw), f"observation.defenses[{i}]") if isinstance(raw, dict) else raw
            if isinstance(spec, QuantizeSpec):
                if spec.bits < 32 and spec.rounding == "nearest":
                    self.steps.append(("quantize", spec))
            elif isinstance(spec, ClipSpec):
                self.steps.append(("clip", float(spec.max_norm)))
            elif isinstance(spec, TopKSpec):
                if not observed:
                    raise UserError("attack.adaptive=true: a top-k defence needs the observed update's mask")
                self.steps.append(("mask", [(t != 0) for t in observed]))
            elif isinstance(spec, SignSpec):
                self.steps.append(("sign", spec))
            elif isinstance(spec, (IdentitySpec, NoiseSpec)):
                continue
            else:
                raise UserError(f"attack.adaptive=true: the adaptive attacker has no model of defence "
                                f"'{getattr(spec, 'name', spec)}'; set attack.adaptive=false")

    @property
    def active(self) -> bool:
        return bool(self.steps)

    def __call__(self, tensors: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
        from ggl.defenses.clip import clip_update
        from ggl.defenses.sign import sign_update

        out = list(tensors)
        for kind, arg in self.steps:
            if kind == "quantize":
                q, _ = quantize_update(out, arg.bits, "nearest", arg.range)
                out = [t + (qt - t).detach() for t, qt in zip(out, q)]  # straight-through estimator
            elif kind == "sign":
                q, _ = sign_update(out)
                out = [t + (qt - t).detach() for t, qt in zip(out, q)]
            elif kind == "clip":
                out, _ = clip_update(out, arg)
            elif kind == "mask":
                out = [t * m.to(t.dtype) for t, m in zip(out, arg)]
        return tuple(out)

    def batched(self, tensors: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
        with warnings.catch_warnings():  # vmap has no batching rule for the quantizer's clamp_ (a
            warnings.filterwarnings("ignore", message=".*batching rule.*")  # small fallback loop)
            return vmap(self.__call__)(tuple(tensors))
