"""Defences as Lightning callbacks: each transforms every client update before it leaves the client.

A defence implements one extra hook, ``on_client_update(trainer, module, update) -> update``; the
FedAvg module calls it on every callback that has it, in the order the config lists them. The math
lives in ``ggl.defenses`` as pure functions, so the adaptive attacker applies the very same one.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, List, Optional

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from ggl.defenses.accounting import dp_epsilon
from ggl.defenses.clip import clip_update
from ggl.defenses.noise import add_gaussian_noise
from ggl.defenses.quantize import FLOAT_BITS, quantize_update
from ggl.defenses.sign import sign_update
from ggl.defenses.specs import (ClipSpec, IdentitySpec, NoiseSpec, QuantizeSpec, SignSpec, TopKSpec, check_chain,
                                resolve_noise)
from ggl.defenses.topk import topk_sparsify
from ggl.fl.update import ClientUpdate
from ggl.seeding import STREAM_DEFENSE, generator

# Gaussian noise draws from (seed, round, client, STREAM_DEFENSE, NOISE_SUBSTREAM): never the stream
# stochastic rounding uses (update.rng(STREAM_DEFENSE)), so a chain with both has independent draws
NOISE_SUBSTREAM = 1


class UpdateTransform(Callback):
    """Base class of the defences. Subclasses override ``on_client_update``."""

    def __init__(self, spec=None):
        self.spec = spec

    def on_client_update(self, trainer, module, update: ClientUpdate) -> ClientUpdate:
        return update

    @property
    def state_key(self) -> str:  # two defences of one class in a chain keep separate state
        return f"{type(self).__qualname__}[{self.spec!r}]"


class IdentityUpdates(UpdateTransform):
    """Changes nothing: a control that must leave a run bit-for-bit unchanged."""


class QuantizeUpdates(UpdateTransform):
    """Quantize every update to ``spec.bits`` bits (see ``ggl.defenses.quantize.quantize_update``)."""

    def on_client_update(self, trainer, module, update: ClientUpdate) -> ClientUpdate:
        s: QuantizeSpec = self.spec
        if s.bits >= 32:
            return update
        gen = update.rng(STREAM_DEFENSE) if s.rounding == "stochastic" else None
        tensors, bits = quantize_update(update.tensors, s.bits, s.rounding, s.range, generator=gen)
        return update.with_tensors(tensors, bits=bits)


class ClipUpdates(UpdateTransform):
    """Scale every update to global L2 norm <= ``spec.max_norm`` (``ggl.defenses.clip.clip_update``).

    Bits are unchanged (a scaled update is sent in the same format). Logs, per round, the mean norm
    before clipping (``clip/norm_mean``) and the share of updates that were clipped (``clip/clipped``),
    the two numbers to look at when choosing ``max_norm``.
    """

    def __init__(self, spec=None):
        super().__init__(spec)
        self._stats = [0.0, 0.0, 0.0]  # [sum of norms, clipped updates, updates] this round, this process
        self._in_round = False

    def on_client_update(self, trainer, module, update: ClientUpdate) -> ClientUpdate:
        tensors, norm = clip_update(update.tensors, self.spec.max_norm)
        if self._in_round:
            norm = float(norm)
            self._stats[0] += norm
            self._stats[1] += float(norm > self.spec.max_norm)
            self._stats[2] += 1
        return update.with_tensors(tensors)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._stats, self._in_round = [0.0, 0.0, 0.0], True

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._in_round = False

    def on_train_epoch_end(self, trainer, module) -> None:
        stats = torch.tensor(self._stats, dtype=torch.float64, device=module.device)
        total, clipped, count = trainer.strategy.reduce(stats, reduce_op="sum").tolist()
        if count:
            module.log_dict({"clip/norm_mean": total / count, "clip/clipped": clipped / count},
                            on_step=False, on_epoch=True, rank_zero_only=True)


class GaussianNoise(UpdateTransform):
    """Add N(0, std**2) to every coordinate (``ggl.defenses.noise.add_gaussian_noise``).

    ``std`` is ``spec.std`` or ``spec.noise_multiplier`` times the clip bound before it in the chain
    (resolved by ``build_defense_callbacks``). Draws are seeded by (seed, round, client). The update
    leaves as dense float32: bits = 32 * numel.

    When a clip bounds the update (``ggl.defenses.specs.resolve_noise``) this is DP-FedAvg at
    client level: after every round the callback logs ``privacy/epsilon`` (Opacus' RDP accountant;
    noise multiplier, sample rate = clients per round / clients, rounds so far, ``spec.delta``) and
    ``summary()`` returns it for results.json.
    """

    def __init__(self, spec=None, std: Optional[float] = None, noise_multiplier: Optional[float] = None):
        super().__init__(spec)
        if std is None:  # built on its own: a std spec, without DP accounting
            std, noise_multiplier = resolve_noise([spec], 0, key="defenses")
        self.std = float(std)
        self.noise_multiplier = noise_multiplier
        self.sample_rate: Optional[float] = None
        self.rounds = 0
        self._warned = False

    def on_client_update(self, trainer, module, update: ClientUpdate) -> ClientUpdate:
        if self.std == 0:
            return update
        device = update.tensors[0].device if update.tensors else "cpu"
        gen = generator(update.seed, update.round, update.client_id, STREAM_DEFENSE, NOISE_SUBSTREAM, device=device)
        return update.with_tensors(add_gaussian_noise(update.tensors, self.std, gen), bits=FLOAT_BITS * update.numel)

    def epsilon(self, rounds: int, sample_rate: float) -> Optional[float]:
        """Client-level epsilon after ``rounds`` rounds; None when the chain gives no DP guarantee."""
        if self.noise_multiplier is None:
            return None
        with warnings.catch_warnings():  # "optimal order is the smallest alpha": only at huge epsilon
            warnings.filterwarnings("ignore", message="Optimal order is the")
            return dp_epsilon(self.noise_multiplier, sample_rate, rounds, self.spec.delta)

    def on_fit_start(self, trainer, module) -> None:
        if self.noise_multiplier is None and not self._warned:
            self._warned = True
            rank_zero_warn(f"defence '{self.spec.label}': no clip bounds the update it perturbs, so the run has no "
                           f"DP guarantee and no privacy/epsilon is reported (put 'clip' right before 'noise')")

    def on_train_epoch_end(self, trainer, module) -> None:
        n = trainer.datamodule.num_clients
        self.sample_rate = module.clients_per_round(n) / n
        self.rounds = trainer.current_epoch + 1
        eps = self.epsilon(self.rounds, self.sample_rate)
        if eps is not None:
            module.log("privacy/epsilon", eps if math.isfinite(eps) else float("inf"),
                       on_step=False, on_epoch=True, rank_zero_only=True)

    def summary(self) -> Dict:
        """What results.json should say about privacy: epsilon None = no DP guarantee (or no round run)."""
        eps = self.epsilon(self.rounds, self.sample_rate) if self.sample_rate is not None else None
        return {"epsilon": eps if eps is None or math.isfinite(eps) else None, "delta": self.spec.delta,
                "noise_multiplier": self.noise_multiplier, "std": self.std, "sample_rate": self.sample_rate,
                "rounds": self.rounds, "accountant": "opacus.rdp (Poisson sampling, client level)"}


class TopKSparsify(UpdateTransform):
    """Keep the ``ceil(fraction * numel)`` largest-magnitude coordinates (``ggl.defenses.topk``).

    Bits = k float32 values + k indices of ceil(log2(numel)) bits. With ``error_feedback`` each client
    adds what it did not send so far (its residual) to its update, and keeps the new residual for the
    next round it is sampled in. Residuals are callback state, saved in checkpoints (``state_dict``).
    Only updates of a training round change residuals: an audit capture (outside the round's
    ``training_step``) sends what the client would send, residual included, and leaves the state alone.
    With several processes the residuals written in a round are all-reduced, so every process holds
    every client's residual whichever process trains that client next.
    """

    def __init__(self, spec=None):
        super().__init__(spec)
        self.residuals: Dict[int, torch.Tensor] = {}  # client id -> flat residual
        self._touched: set = set()
        self._in_round = False

    def on_client_update(self, trainer, module, update: ClientUpdate) -> ClientUpdate:
        s: TopKSpec = self.spec
        tensors = update.tensors
        if s.error_feedback:
            residual = self.residuals.get(update.client_id)
            if residual is not None:
                flat = torch.cat([t.reshape(-1) for t in tensors]) + residual.to(tensors[0].device)
                tensors = [c.view_as(t) for c, t in zip(torch.split(flat, [t.numel() for t in tensors]), tensors)]
        sent, bits = topk_sparsify(tensors, s.fraction)
        if s.error_feedback and self._in_round:
            residual = torch.cat([(t - k).reshape(-1) for t, k in zip(tensors, sent)]).detach()
            if bool(torch.isfinite(residual).all()):  # a broken (rejected) update must not poison the state
                self.residuals[update.client_id] = residual
                self._touched.add(update.client_id)
        return update.with_tensors(sent, bits=bits)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._touched, self._in_round = set(), True

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._in_round = False
        if self.spec.error_feedback and trainer is not None and trainer.world_size > 1:
            self._share_residuals(trainer, module)

    def _share_residuals(self, trainer, module) -> None:
        """Every process learns the residuals written this round (each client is trained by one process)."""
        n = trainer.datamodule.num_clients
        mask = torch.zeros(n, device=module.device)
        mask[sorted(self._touched)] = 1.0
        ids = trainer.strategy.reduce(mask, reduce_op="sum").nonzero().flatten().tolist()
        numel = sum(p.numel() for p in module.parameters())
        rows = torch.zeros(len(ids), numel, device=module.device)
        for j, cid in enumerate(ids):
            if cid in self._touched:
                rows[j] = self.residuals[cid].to(module.device)
        rows = trainer.strategy.reduce(rows, reduce_op="sum")
        for j, cid in enumerate(ids):
            self.residuals[cid] = rows[j].clone()

    def state_dict(self) -> Dict:
        return {"residuals": {int(c): r.detach().cpu().clone() for c, r in self.residuals.items()}}

    def load_state_dict(self, state_dict: Dict) -> None:
        self.residuals = {int(c): r.clone() for c, r in state_dict.get("residuals", {}).items()}


class SignUpdates(UpdateTransform):
    """Send each tensor as 1 bit per coordinate plus one float32 scale, mean |x| (``ggl.defenses.sign``)."""

    def on_client_update(self, trainer, module, update: ClientUpdate) -> ClientUpdate:
        tensors, bits = sign_update(update.tensors)
        return update.with_tensors(tensors, bits=bits)


_CALLBACKS = {QuantizeSpec: QuantizeUpdates, IdentitySpec: IdentityUpdates, ClipSpec: ClipUpdates,
              NoiseSpec: GaussianNoise, TopKSpec: TopKSparsify, SignSpec: SignUpdates}


def build_defense_callbacks(specs) -> List[UpdateTransform]:
    """One callback per ``defenses:`` entry, in the order written (noise learns its clip bound here)."""
    specs = list(specs)
    check_chain(specs)
    callbacks: List[UpdateTransform] = []
    for i, s in enumerate(specs):
        if isinstance(s, NoiseSpec):
            std, multiplier = resolve_noise(specs, i)
            callbacks.append(GaussianNoise(s, std=std, noise_multiplier=multiplier))
        else:
            callbacks.append(_CALLBACKS[type(s)](s))
    return callbacks


def privacy_summary(callbacks) -> Optional[Dict]:
    """The privacy budget of a run for results.json: the first noise defence's ``summary()``, or None."""
    for cb in callbacks:
        if isinstance(cb, GaussianNoise):
            return cb.summary()
    return None


def apply_defenses(callbacks, trainer, module, update: ClientUpdate) -> ClientUpdate:
    for cb in callbacks:
        if hasattr(cb, "on_client_update"):
            update = cb.on_client_update(trainer, module, update)
    return update
