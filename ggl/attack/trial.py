"""Trial updates: the attacker replays the client's computation on candidate images.

``ClientSimulator.update(x, y)`` is a pure function (``torch.func``) of one candidate batch ``x``
(B, C, H, W): the first step's gradient (FedSGD) or the weight delta after ``local_steps`` SGD steps
with the observed lr, momentum and weight decay (FedAvg), as ``ggl.fl.client.train_client`` computes
it. ``batched`` vmaps it over a population (``evaluation: batched``); ``reference`` is plain autograd,
one candidate at a time (``evaluation: loop``); the tests check that both give the same losses.

``DefenseModel`` is what an *adaptive* attacker knows of the defence chain: each defence's own model,
applied to every trial update in chain order with the very functions the client used (straight-through
gradients where those are not differentiable: rounding, sign).
"""
from __future__ import annotations

import copy
import functools
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ggl.attack.observation import Observation
from ggl.attack.per_candidate import PerCandidateGradients, supports as supports_per_candidate
from ggl.core.errors import UserError
from ggl.defenses import MASK, NONE, parse_chain
from ggl.defenses.quantize import Quantize


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
        # FedSGD on a plain conv net: every candidate's gradient from one backward (per_candidate.py)
        self._per_candidate = (PerCandidateGradients(model, self.names)
                               if self.kind == "gradient" and supports_per_candidate(model) else None)
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

    def batched(self, x: Tensor, y: Tensor, factored: bool = False) -> Tuple[Tensor, ...]:
        """x (P, B, C, H, W) -> per-candidate updates, each (P, *param shape), in one vectorised pass;
        ``factored``: linear layers' weight updates may come as ``per_candidate.OuterSum``."""
        if self._per_candidate is not None:
            grads = self._per_candidate(x, y, factored)
            if grads is not None:
                return grads
            self._per_candidate = None  # its forward reuses or skips a layer: vmap from now on
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


class DefenseModel:
    """The adaptive attacker's copy of the client's defence chain (from the observation's spec): each
    defense's own ``attack_model()`` (``ggl.defenses.base.AttackModel``), applied in chain order to every
    trial update. Re-applied transforms (quantize with nearest rounding, clip, sign) use the very
    functions the client used, with a straight-through (identity) gradient where they are not
    differentiable; unbiased randomness (stochastic rounding, QSGD, Gaussian noise) is modelled by its
    expectation, the update itself; sparsifiers (top-k, per-layer pruning, Soteria) by the observed mask,
    the coordinates the client did not send (exact zeros in ``observed``). A defense without a model
    is refused with its reason: an adaptive attack never silently falls back to a non-adaptive one.
    """

    def __init__(self, specs: Sequence, observed: Sequence[Tensor] = ()):
        self.steps: List[Callable[[Sequence[Tensor]], List[Tensor]]] = []
        # the chain's one step when it is a nearest-rounding quantizer: the search may then quantize and match
        # factored linear gradients without materialising them (ggl/attack/factored.py)
        self.quantizer: Optional[Quantize] = None
        # the same steps on P trial updates at once, where every defence gives a batched form
        batched_steps: List[Optional[Callable[[Sequence[Tensor]], List[Tensor]]]] = []
        for defense in parse_chain(specs, "observation.defenses"):
            model = defense.attack_model()
            if model.kind == NONE:
                raise UserError(f"attack.adaptive=true: the adaptive attacker has no model of defence "
                                f"'{defense.label}' ({model.reason}); set attack.adaptive=false")
            if model.kind == MASK:
                if not len(observed):
                    raise UserError(f"attack.adaptive=true: defence '{defense.label}' is modelled by the "
                                    f"observed update's mask, and no observed update was given")
                self.steps.append(functools.partial(_apply_mask, tuple(t != 0 for t in observed)))
                batched_steps.append(self.steps[-1])  # the masks broadcast over the candidates
            elif model.fn is not None:
                self.steps.append(_as_step(model.fn, model.straight_through))
                if isinstance(defense, Quantize) and model.batched_fn is not None:
                    self.quantizer = defense
                batched_steps.append(None if model.batched_fn is None
                                     else _as_step(model.batched_fn, model.straight_through))
        self.batched_steps = batched_steps if all(f is not None for f in batched_steps) else None
        if len(self.steps) != 1:
            self.quantizer = None

    @property
    def active(self) -> bool:
        return bool(self.steps)

    def __call__(self, tensors: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
        out = list(tensors)
        for step in self.steps:
            out = list(step(out))
        return tuple(out)

    def batched(self, tensors: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
        """P trial updates (each tensor (P, *shape)) through the chain: natively where every defence
        has a batched form, else through vmap; the same values either way."""
        if self.batched_steps is None:
            return vmap(self.__call__)(tuple(tensors))
        out = list(tensors)
        for step in self.batched_steps:
            out = list(step(out))
        return tuple(out)


def _as_step(fn, straight_through: bool):
    return functools.partial(_straight_through, fn) if straight_through else fn


def _straight_through(fn, tensors: Sequence[Tensor]) -> List[Tensor]:
    """fn's value with the identity's gradient (for rounding and sign, whose gradient is zero)."""
    if not torch.is_grad_enabled():  # no gradient to carry (the CMA-ES phase): the value alone, two passes less
        return list(fn(tensors))
    with torch.no_grad():  # only its value is used: no graph, and the transform may work in place
        q = fn(tensors)
    return [t + (qt - t).detach() for t, qt in zip(tensors, q)]


def _apply_mask(masks: Sequence[Tensor], tensors: Sequence[Tensor]) -> List[Tensor]:
    return [t * m.to(t.dtype) for t, m in zip(tensors, masks)]


