"""FedAvg as a LightningModule: one Trainer epoch = one step = one FL round.

Per round: sample clients with a round-seeded generator; each process trains its share of them on a
functional copy of the global weights; every update passes the defence callbacks; rejected (non-finite)
or absurd updates are dropped and counted; every process gathers the rest and sums them in client-id
order (so N processes equal 1 bitwise, see ``aggregate``), and the server optimizer applies the weighted
mean (plain SGD with ``server_lr``: w += server_lr * weighted mean delta) unless it is not finite.
"""
from __future__ import annotations

import random
import time
import warnings
from typing import Dict, List

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from ggl.defenses.quantize import FLOAT_BITS
from ggl.fl.callbacks import apply_defenses
from ggl.fl.client import as_delta, train_client
from ggl.fl.schema import FLConfig
from ggl.fl.update import ClientUpdate
from ggl.models import build_model
from ggl.core.seeding import STREAM_LOCAL_DATA, STREAM_SAMPLING, generator

# An update whose largest |value| exceeds this many times the largest global weight (at least 1) is
# rejected as absurd: legitimate deltas and gradients are within a few orders of magnitude of the weights.
ABSURD_UPDATE_RATIO = 1e4


def sample_clients(num_clients: int, per_round: int, seed: int, round: int) -> List[int]:
    """The clients of a round: depends on (seed, round) only."""
    rng = np.random.default_rng([seed, round, STREAM_SAMPLING])
    return sorted(rng.choice(num_clients, size=per_round, replace=False).tolist())


def weighted_mean_in_client_order(deltas: Tensor, slot_meta: Tensor) -> Tensor | None:
    """Sum of weight * delta over the slots of weight > 0, in client-id order, / the total weight.

    ``slot_meta`` rows are (client id, weight). The result does not depend on the order of the slots,
    bit for bit: one fixed sequence of float64 elementwise adds (each exact-rounded by IEEE 754).
    """
    weights = slot_meta[:, 1].tolist()
    ids = slot_meta[:, 0].tolist()
    order = sorted((i for i, w in enumerate(weights) if w > 0), key=lambda i: ids[i])
    if not order:
        return None
    total = torch.zeros(deltas.shape[-1], dtype=torch.float64, device=deltas.device)
    for i in order:
        total += weights[i] * deltas[i].double()
    return (total / sum(weights[i] for i in order)).float()


class FedAvgModule(L.LightningModule):
    def __init__(self, model_name: str, channels: int, num_classes: int, fl: Dict, seed: int = 0,
                 init: str = "default"):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.fl = fl if isinstance(fl, FLConfig) else FLConfig(**fl)  # hparams keep the plain dict
        self.seed = seed
        self.model = build_model(model_name, channels, num_classes, init=init, seed=seed)
        self.history: List[dict] = []
        self.rejected_total = 0
        self.failed_total = 0
        self.aggregates_rejected_total = 0
        self.rounds_completed = 0
        self._val_loss = self._val_correct = self._val_count = 0.0

    # -------------------------------------------------------------------------- set-up
    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=self.fl.server_lr)

    @property
    def rounds(self) -> int:
        return self.fl.rounds

    def clients_per_round(self, num_clients: int) -> int:
        if self.fl.clients_per_round:
            return min(self.fl.clients_per_round, num_clients)
        return max(1, int(round(self.fl.client_fraction * num_clients)))

    def defense_callbacks(self):
        return [cb for cb in self.trainer.callbacks if hasattr(cb, "on_client_update")]

    # -------------------------------------------------------------------------- one client
    def global_params(self) -> Dict[str, Tensor]:
        return {k: v.detach() for k, v in self.model.named_parameters()}

    def client_update(self, x: Tensor, y: Tensor, client_id: int, round: int) -> ClientUpdate:
        """What ``client_id`` would send in ``round`` after training on (x, y), before defences."""
        fl = self.fl
        if client_id in fl.simulate_failures:
            raise RuntimeError(f"simulated failure of client {client_id} (fl.simulate_failures)")
        return train_client(
            self.model, self.global_params(), x.to(self.device), y.to(self.device),
            client_id=client_id, round=round, seed=self.seed, lr=fl.lr, momentum=fl.momentum,
            weight_decay=fl.weight_decay, batch_size=fl.batch_size, local_epochs=fl.local_epochs,
            local_steps=fl.local_steps, data_gen=generator(self.seed, round, client_id, STREAM_LOCAL_DATA))

    def defended_update(self, update: ClientUpdate) -> ClientUpdate:
        """The update as transmitted: passed through this run's defence callbacks, in order."""
        return apply_defenses(self.defense_callbacks(), self.trainer, self, update)

    # -------------------------------------------------------------------------- one round
    def screen(self, update: ClientUpdate) -> str | None:
        """Why ``update`` must not enter the aggregate (None = accept it).

        Non-finite values, and absurd finite ones (e.g. 1e30): a delta ``ABSURD_UPDATE_RATIO`` times the
        largest global weight would destroy the model in one round and overflow the weighted sum.
        """
        if not update.is_finite():
            return "non-finite values (NaN or Inf)"
        largest = max(float(t.detach().abs().max()) for t in update.tensors if t.numel())
        scale = max(1.0, max(float(p.detach().abs().max()) for p in self.model.parameters()))
        if largest > ABSURD_UPDATE_RATIO * scale:
            return (f"an absurd value (|x| up to {largest:.3g} > {ABSURD_UPDATE_RATIO:.0e} x the largest "
                    f"global weight {scale:.3g})")
        return None

    def training_step(self, batch, batch_idx):
        """One FL round: the sampled clients train and send (defended), the server averages and steps."""
        start = time.perf_counter()
        rnd = self.current_epoch
        dm = self.trainer.datamodule
        chosen = sample_clients(dm.num_clients, self.clients_per_round(dm.num_clients), self.seed, rnd)
        deltas, slot_meta, counters = self._train_clients(chosen, rnd)
        mean_delta = self.aggregate(deltas, slot_meta)
        counters = self.trainer.strategy.reduce(counters, reduce_op="sum")
        uplink_bits, accepted, rejected, failed = counters.tolist()
        self.rejected_total += int(rejected)
        self.failed_total += int(failed)
        self._step_server(mean_delta, rnd)
        self._log_round(rnd, start, uplink_bits, accepted, rejected, failed, numel=deltas.shape[-1])

    def _train_clients(self, chosen, rnd: int):
        """This rank's share of ``chosen``: (deltas by slot, slot meta [client id, weight], counters)."""
        dm = self.trainer.datamodule
        world = self.trainer.world_size
        mine = chosen[self.global_rank::world]
        numel = sum(p.numel() for p in self.model.parameters())
        # Each rank fills the same number of slots (padding stays weight 0), so all ranks gather equal shapes.
        slots = -(-len(chosen) // world)
        deltas = torch.zeros(slots, numel, device=self.device)
        # per slot: [client id, weight (sample count; 0 = nothing to aggregate)]
        slot_meta = torch.zeros(slots, 2, dtype=torch.float64, device=self.device)
        # [uplink bits, accepted, rejected, failed]: integers, so their float64 sum is exact in any order
        counters = torch.zeros(4, dtype=torch.float64, device=self.device)
        for slot, cid in enumerate(mine):
            x, y = dm.client_data(cid)
            try:  # only the client's own training may fail without stopping the federation
                raw = self.client_update(x, y, cid, rnd)
            except Exception as exc:
                counters[3] += 1
                warnings.warn(f"round {rnd}: client {cid} failed during local training and was dropped "
                              f"({type(exc).__name__}: {exc})")
                continue
            try:  # a defence that raises is a bug in the defence: stop, don't count it as a client failure
                update = self.defended_update(raw)
            except Exception as exc:
                raise RuntimeError(f"round {rnd}: the defence chain failed on client {cid}'s update "
                                   f"({type(exc).__name__}: {exc}); the run stops so that a broken defence "
                                   f"is not reported as a federation that does not learn") from exc
            counters[0] += update.bits
            reason = self.screen(update)
            if reason is not None:
                counters[2] += 1
                warnings.warn(f"round {rnd}: client {cid}'s update was rejected: {reason}")
                continue
            deltas[slot] = torch.cat([t.reshape(-1) for t in as_delta(update)])
            slot_meta[slot, 0] = cid
            slot_meta[slot, 1] = update.num_samples
            counters[1] += 1
        return deltas, slot_meta, counters

    def _step_server(self, mean_delta: Tensor | None, rnd: int) -> None:
        """The server optimizer descends along -mean_delta (unless nothing, or nothing finite, came)."""
        opt = self.optimizers()
        if mean_delta is None:
            rank_zero_warn(f"round {rnd}: no client update was accepted; the global model is unchanged")
        elif not bool(torch.isfinite(mean_delta).all()):
            self.aggregates_rejected_total += 1
            rank_zero_warn(f"round {rnd}: the aggregate of the accepted updates is not finite; it was "
                           f"rejected and the global model is unchanged")
        else:
            offset = 0
            for p in self.model.parameters():
                p.grad = -mean_delta[offset:offset + p.numel()].view_as(p).to(p.dtype)
                offset += p.numel()
            opt.step()
            opt.zero_grad(set_to_none=True)

    def _log_round(self, rnd: int, start: float, uplink_bits: float, accepted: float, rejected: float,
                   failed: float, numel: int) -> None:
        fp32_bits = FLOAT_BITS * numel * (accepted + rejected)
        round_metrics = {
            "round": float(rnd + 1),
            "round_seconds": time.perf_counter() - start,
            "uplink_bits": uplink_bits,
            "compression_ratio": fp32_bits / uplink_bits if uplink_bits else 1.0,
            "clients/accepted": accepted,
            "clients/rejected": rejected,
            "clients/rejected_total": float(self.rejected_total),
            "clients/failed": failed,
            "clients/failed_total": float(self.failed_total),
            "aggregates_rejected_total": float(self.aggregates_rejected_total),
        }
        self.log_dict(round_metrics, on_step=True, on_epoch=False, prog_bar=False, logger=False)
        for lg in self.loggers:  # W&B step = rounds completed, the one round numbering (docs/reference.md, "Results of a run")
            lg.log_metrics(round_metrics, step=rnd + 1)
        self.rounds_completed = rnd + 1
        self._last_round_stats = {"uplink_bits": uplink_bits,
                                  "compression_ratio": fp32_bits / uplink_bits if uplink_bits else 1.0}

    def aggregate(self, deltas: Tensor, slot_meta: Tensor) -> Tensor | None:
        """The sample-weighted mean of every rank's accepted deltas (None when there is none).

        Bitwise the same on 1 or N processes: every rank gathers all deltas and sums them in client-id
        order, one elementwise float64 add at a time. An all-reduce would sum per-rank partial sums, a
        different association of the same terms: one ulp of difference that nearest-rounding quantization
        amplifies in the next round. (Float64 accumulation alone would not make that exact: a sum of
        float32 terms of different magnitudes still rounds, and differently for another association.)
        Each product weight * delta is exact in float64 (a count below 2**29 times a 24-bit mantissa).
        Cost: clients_per_round x parameters floats on every rank for the gather.
        """
        strategy = self.trainer.strategy
        if self.trainer.world_size > 1:
            deltas = strategy.all_gather(deltas).reshape(-1, deltas.shape[-1])
            slot_meta = strategy.all_gather(slot_meta).reshape(-1, slot_meta.shape[-1])
        return weighted_mean_in_client_order(deltas, slot_meta)

    # -------------------------------------------------------------------------- evaluation
    def is_eval_round(self, rnd: int) -> bool:
        return (rnd + 1) % self.fl.eval_every == 0 or rnd + 1 == self.rounds

    def on_validation_epoch_start(self) -> None:
        self._val_loss = self._val_correct = self._val_count = 0.0

    def validation_step(self, batch, batch_idx):
        if self.trainer.sanity_checking or not self.is_eval_round(self.current_epoch):
            return
        x, y = batch
        logits = self.model(x)
        self._val_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        self._val_correct += float((logits.argmax(1) == y).sum())
        self._val_count += len(y)

    def on_validation_epoch_end(self) -> None:
        if not self._val_count:
            return
        acc, loss = self._val_correct / self._val_count, self._val_loss / self._val_count
        self.log_dict({"test/acc": acc, "test/loss": loss}, on_epoch=True, prog_bar=True)
        self.history.append({"round": self.current_epoch + 1, "test_acc": acc, "test_loss": loss})

    # -------------------------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Every draw is derived from (seed, round, client), but user code may use the global RNGs.
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint["ggl_rng"] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                                 "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
        checkpoint["ggl_history"] = list(self.history)
        checkpoint["ggl_rejected_total"] = self.rejected_total
        checkpoint["ggl_failed_total"] = self.failed_total
        checkpoint["ggl_aggregates_rejected_total"] = self.aggregates_rejected_total
        checkpoint["ggl_rounds_completed"] = self.rounds_completed
        # a finished run resumed from this checkpoint reports the last round's traffic, not null
        checkpoint["ggl_last_round_stats"] = dict(getattr(self, "_last_round_stats", {}))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("ggl_history", []))
        self.rejected_total = int(checkpoint.get("ggl_rejected_total", 0))
        self.failed_total = int(checkpoint.get("ggl_failed_total", 0))
        self.aggregates_rejected_total = int(checkpoint.get("ggl_aggregates_rejected_total", 0))
        self.rounds_completed = int(checkpoint.get("ggl_rounds_completed", 0))
        if checkpoint.get("ggl_last_round_stats"):
            self._last_round_stats = dict(checkpoint["ggl_last_round_stats"])
        rng = checkpoint.get("ggl_rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            kind, keys, pos, has_gauss, gauss = rng["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            random.setstate(rng["python"])
