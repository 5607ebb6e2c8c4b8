"""The GGL objective: how well the update of ``G(z, y)`` matches the observed update.

``loss(z) = match(T(update(G(z, y))), observed) + kl_weight * KL(z)``: ``match`` = squared L2 (``l2``)
or one minus the cosine similarity (``cosine``) per layer, averaged over layers; ``T`` = the identity,
or an adaptive attacker's model of the client's defence (``DefenseModel``); ``KL(z)`` = GGL's KL from
N(0, 1) of each latent vector's entries, summed over the batch (default weight 0: docs/findings.md, "KL weight").

A population ``z`` (P, B * latent_dim) goes in one vectorised pass (``evaluation: batched``; without a
defence to replay, linear layers' gradients stay factored, ``per_candidate.OuterSum``; materialised
updates go in cache-sized chunks on a CPU; gradient-free ones in chunks that fit the free memory) or one
candidate at a time (``loop``, the reference), all on ``device`` (copies of the caller's model and generator).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import copy
import math

import torch
from torch import Tensor, nn

from ggl.attack.factored import (TargetRows, blockwise, candidate_grid, outer_loss, outer_quantized_match,
                                 quantized_l2_kernel)
from ggl.attack.fast_generator import for_batched_search
from ggl.attack.memory import activation_numel, candidate_bytes, check_fits, fitting
from ggl.attack.observation import Observation
from ggl.attack.per_candidate import OuterSum
from ggl.attack.trial import ClientSimulator, DefenseModel

# materialised trial updates per chunk of a CPU evaluation (GGLObjective.chunk): a few MB stay in cache
# between the defence's and the loss's passes (the chunk sizes measured: benchmarks/README.md)
CHUNK_BYTES = 16 << 20


def match_loss(trial: Sequence[Tensor], target: Sequence[Tensor], kind: str = "l2",
               cache: Optional[Dict[int, Tuple[Tensor, Tensor]]] = None, consume: bool = False) -> Tensor:
    """(P,) matching losses of P trial updates (each tensor (P, *shape), or an ``OuterSum``) against one
    target update. ``cache``: a dict the caller keeps for one target, holding its float64 layers.
    ``consume``: the trial tensors are the caller's scratch, which the L2 loss may overwrite when no
    gradient is needed (the same values, one P-sized temporary less per layer)."""
    per_layer = []
    for i, (t, g) in enumerate(zip(trial, target)):
        if isinstance(t, OuterSum):  # a linear layer's gradients as factors: the same loss, from inner products
            entry = None if cache is None else cache.get(i)
            if entry is None:
                g64 = g.to(torch.float64)
                entry = (g64, g64.pow(2).sum())
                if cache is not None:
                    cache[i] = entry
            per_layer.append(_factored_match(t, *entry, kind))
            continue
        if t.dim() == 1:  # a 0-dim parameter's
            t = t.unsqueeze(1)
        g = g.reshape(t.shape[1:]).to(t.dtype)
        if not t[0].is_contiguous():
            # a layout of its own (a quantized channels-last convolution gradient): the target in that layout
            # too, so that both are read in memory order (flattening t would copy it)
            g = torch.empty_like(t[0]).copy_(g)
        dims = tuple(range(1, t.dim()))
        if kind == "l2":
            d = t.sub_(g) if consume and not t.requires_grad and _writable(t) else t - g
            # squared in place when no gradient is needed: one ~P x 2 MB temporary less on the CNN,
            # the same numbers bit for bit
            per_layer.append((d.pow(2) if d.requires_grad else d.pow_(2)).sum(dims))
        else:
            cos = (t * g).sum(dims) / (torch.linalg.vector_norm(t, dim=dims) * g.norm()).clamp_min(1e-12)
            per_layer.append(1.0 - cos)
    return torch.stack(per_layer).mean(0)


def _writable(t: Tensor) -> bool:
    """Whether every element of t has memory of its own (not an expanded view, as vmap returns for an
    output that does not depend on the batch)."""
    return all(stride != 0 or size == 1 for stride, size in zip(t.stride(), t.shape))


def _factored_match(t: OuterSum, g64: Tensor, g_sq: Tensor, kind: str) -> Tensor:
    inner, sq = t.inner(g64), t.sq_norm()
    if kind == "l2":
        loss = (sq - 2 * inner + g_sq).clamp_min(0)
    else:
        loss = 1.0 - inner / (sq.sqrt() * g_sq.sqrt()).clamp_min(1e-12)
    return loss.to(t.dtype)


def kl_latent(z: Tensor) -> Tensor:
    """GGL's KL regulariser; z (P, B, d) -> (P,)."""
    mu = z.mean(-1)
    var = z.var(-1, unbiased=False)
    return (-0.5 * (1 + torch.log(var + 1e-10) - mu ** 2 - var)).sum(-1)


def _on(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` itself when it already lives on ``device``, else a copy there."""
    first = next(iter(module.parameters()), None)
    if first is None or first.device == device:
        return module
    return copy.deepcopy(module).to(device)


class GGLObjective:
    """Losses of candidate latents for one observation, with the attacker's inferred labels."""

    def __init__(self, obs: Observation, generator: nn.Module, labels: Tensor, loss: str = "l2",
                 kl_weight: float = 0.0, adaptive: bool = False, evaluation: str = "batched",
                 model: Optional[nn.Module] = None, device: torch.device | str = "cpu"):
        self.obs = obs
        self.device = torch.device(device)
        model = model if model is not None else obs.build_model()
        self.model = _on(model, self.device)
        self.sim = ClientSimulator(self.model, obs)
        dtype = next(self.model.parameters()).dtype
        self.target: List[Tensor] = [t.to(self.device, dtype) for t in obs.update]
        self.defense = DefenseModel(obs.defenses, self.target) if adaptive else None
        if self.defense is not None and not self.defense.active:
            self.defense = None
        self.G = _on(generator, self.device)
        self.G_batched = for_batched_search(self.G, self.device)  # the same function, faster CPU kernels
        self.labels = labels.long().view(-1).to(self.device)
        self.batch = obs.batch_size
        self.latent_dim = int(generator.latent_dim)
        self.dim = self.batch * self.latent_dim
        self.loss_kind = loss
        self.kl_weight = float(kl_weight)
        self.evaluation = evaluation
        self.evaluations = 0
        # with no defence to replay, the loss needs only inner products and norms of the trial updates:
        # linear layers' weight gradients may stay factored (per_candidate.OuterSum); a subclass whose
        # loss reads the updates themselves sets this False
        # a quantizer alone as the defence, on a CPU: factored too, quantized and matched by ggl/attack/factored.py
        # (one candidate at a time, a small kernel each: a GPU keeps the dense updates)
        self.factored_trial = self.defense is None or (self.defense.quantizer is not None and self.device.type == "cpu")
        self._target64: Dict[int, Tuple[Tensor, Tensor]] = {}  # match_loss's float64 copy of factored layers
        self._target_rows: Dict[int, TargetRows] = {}  # the factored quantized loss's target row statistics
        # a CPU evaluation of materialised updates goes in chunks of ~CHUNK_BYTES of them: the defence's and
        # the loss's passes then find them in cache (the gain: benchmarks/README.md)
        update_bytes = sum(t.numel() for t in self.target) * self.target[0].element_size()
        self.chunk = max(1, CHUNK_BYTES // update_bytes) if self.device.type == "cpu" else 1 << 30
        self._candidate: Dict[bool, int] = {}  # grad? -> estimated peak bytes of one candidate
        self.memory_key = "audit.batch_size"  # what makes one candidate large (a subclass may name its own)
        self.memory_value = self.batch

    # ------------------------------------------------------------------ memory
    def candidate_bytes(self, grad: bool) -> int:
        """Estimated peak bytes one candidate adds to a batched evaluation (with or without a graph)."""
        if grad not in self._candidate:
            if "acts" not in self.__dict__:  # a meta copy: no compute, no batch-norm statistics touched
                shape = (self.batch, *self.obs.input_shape)
                self.acts = activation_numel(copy.deepcopy(self.model).to("meta"), shape, torch.device("meta"))
            images = self.batch * math.prod(self.obs.input_shape)
            self._candidate[grad] = candidate_bytes(sum(t.numel() for t in self.target), images, self.acts,
                                                    self.target[0].element_size(), grad)
        return self._candidate[grad]

    def check_fits(self, rows: int, key: str, grad: bool = True) -> None:
        """Refuse (one line naming ``key``) a search evaluating ``rows`` candidates at once (with gradients:
        a graph through them) that would not fit the free memory of the device."""
        value = getattr(self, "memory_value", None) if key == self.memory_key else None
        check_fits(rows, self.candidate_bytes(grad), self.device, key, value)

    # ------------------------------------------------------------------ pieces
    def images(self, z: Tensor, generator: Optional[nn.Module] = None) -> Tensor:
        """z (P, B * d) -> candidate images (P, B, C, H, W), by ``generator`` (default: the batched search's)."""
        p = z.shape[0]
        flat = z.reshape(p * self.batch, self.latent_dim)
        y = self.labels.repeat(p) if getattr(self.G, "conditional", False) else None
        x = (self.G_batched if generator is None else generator)(flat, y)
        return x.view(p, self.batch, *x.shape[1:])

    def _total(self, trial: Tuple[Tensor, ...], z: Tensor) -> Tensor:
        loss = None
        if self.defense is not None:
            if self.factored_trial:
                loss = self._quantized_loss(trial)
            if loss is None:
                trial = self.defense.batched(tuple(t.dense() if isinstance(t, OuterSum) else t for t in trial))
        if loss is None:
            # the trial updates are this evaluation's own: the loss may overwrite them
            loss = match_loss(trial, self.target, self.loss_kind, self._target64, consume=True)
        if self.kl_weight:
            loss = loss + self.kl_weight * kl_latent(z.reshape(z.shape[0], self.batch, self.latent_dim))
        return loss

    @property
    def _grad_blockwise(self) -> bool:
        """Whether ``_quantized_loss`` takes factored layers with a gradient too: the payload's grid (fixed,
        straight through) and the L2 loss; a candidate's own grid moves with it (the dense path then)."""
        return getattr(self.defense, "quantizer", None) is None and self.loss_kind == "l2"

    def _quantized_loss(self, trial: Tuple) -> Optional[Tensor]:
        """(P,) losses of the trial updates through the defence's quantizer, one-row factored layers quantized
        and matched blockwise (``factored.outer_quantized_match``); None when a candidate's range is degenerate,
        or with a gradient unless the grid is the payload's and the loss L2 (then ``factored.outer_loss``, with
        the straight-through quantizer of ``Grid.transmitted``)."""
        grad = torch.is_grad_enabled()
        if grad and not self._grad_blockwise:
            return None
        q = getattr(self.defense, "quantizer", None)
        if q is not None:
            grids = candidate_grid(trial, q.bits, q.range, q.grid)
            if not all(g.grid.all_ok for g in grids):
                return None  # a range of one value or with a NaN: the dense path leaves it as it is
        else:  # the observed-grid model: the payload's grid, when it has one per tensor to give
            grids = self.defense.block_grids()
            if grids is None:
                return None
        per_layer = []
        for i, (t, g) in enumerate(zip(trial, grids)):
            if blockwise(t):
                shape = (t.delta.shape[2], -1)
                if grad:
                    kernel = quantized_l2_kernel(self.target[i].reshape(shape), g)
                    per_layer.append(outer_loss(t, kernel).to(t.dtype))
                    continue
                if i not in self._target_rows:
                    self._target_rows[i] = TargetRows(self.target[i].reshape(shape))
                per_layer.append(outer_quantized_match(t, self._target_rows[i], g, self.loss_kind).to(t.dtype))
                continue
            t = t.dense() if isinstance(t, OuterSum) else t
            if grad:  # straight through: the quantized values forward, the identity backward
                quantized = t + (g.dense(t.detach()) - t).detach()
            else:
                quantized = g.dense(t)
            per_layer.append(match_loss([quantized], [self.target[i]], self.loss_kind, consume=not grad))
        return torch.stack(per_layer).mean(0)

    # ------------------------------------------------------------------ evaluation
    def __call__(self, z: Tensor, evaluation: Optional[str] = None) -> Tensor:
        """(P,) losses of P candidates z (P, B * latent_dim)."""
        mode = evaluation or self.evaluation
        z = z.to(self.device)
        self.evaluations += z.shape[0]
        if mode == "batched":
            # a factored evaluation needs no chunks, unless its quantizer materialises them (with a gradient)
            factored = self.factored_trial and (self.defense is None or not torch.is_grad_enabled()
                                                or self._grad_blockwise)
            chunk = z.shape[0] if factored else self.chunk
            if not (z.requires_grad and torch.is_grad_enabled()) and z.shape[0] > 64:
                # no graph: chunks give the same losses; a population larger than memory goes in parts
                chunk = min(chunk, max(1, fitting(self.candidate_bytes(False), self.device)))
            if z.shape[0] <= chunk:
                return self._batched(z)
            return torch.cat([self._batched(part) for part in z.split(chunk)])
        return torch.cat([self._one(z[i:i + 1]) for i in range(z.shape[0])])

    def _batched(self, z: Tensor) -> Tensor:
        return self.image_losses(self.images(z), z)

    def image_losses(self, x: Tensor, z: Tensor) -> Tensor:
        """(P,) losses of P candidates' images x (P, B, C, H, W), generated from z: the batched evaluation
        after the generator."""
        return self._total(self.sim.batched(x, self.labels, factored=self.factored_trial), z)

    def _one(self, z: Tensor) -> Tensor:
        return self.image_loss_reference(self.images(z, self.G)[0], z)  # the generator as it is: the reference

    def image_loss_reference(self, x: Tensor, z: Tensor) -> Tensor:
        """(1,) loss of one candidate's images x (B, C, H, W), generated from z (1, B * latent_dim): the
        reference loop body after the generator (update, defence, loss)."""
        trial = self.sim.reference(x, self.labels)
        if self.defense is not None:
            trial = self.defense(trial)
        trial = tuple(t.unsqueeze(0) for t in trial)
        loss = match_loss(trial, self.target, self.loss_kind)
        if self.kl_weight:
            loss = loss + self.kl_weight * kl_latent(z.reshape(1, self.batch, self.latent_dim))
        return loss
