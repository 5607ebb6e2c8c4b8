"""Defences in the federation: one generic Lightning callback applies any defense to client updates.

A step of the chain implements one extra hook, ``on_client_update(trainer, module, update) -> update``;
the FedAvg module calls it on every callback that has it, in the order the config lists them
(``apply_defenses``). ``DefenseCallback`` is that step for any registered defense
(``ggl.defenses``): it calls the defense's transform, keeps its per-client state (error feedback:
checkpointed, shared across processes), averages and logs its per-round numbers and reports its
per-run summary (DP epsilon). The math lives on the defense object, so the adaptive attacker applies
the very same one.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from ggl.defenses import Defense, check_chain
from ggl.fl.update import ClientUpdate


class UpdateTransform(Callback):
    """Base class of the steps of the chain. Subclasses override ``on_client_update``."""

    def __init__(self, spec=None):
        self.spec = spec

    def on_client_update(self, trainer, module, update: ClientUpdate) -> ClientUpdate:
        return update

    @property
    def state_key(self) -> str:  # two defences of one kind in a chain keep separate state
        return f"{type(self).__qualname__}[{self.spec!r}]"


class DefenseCallback(UpdateTransform):
    """Applies one defense (entry ``index`` of ``chain``, default: a chain of its own) to every update.

    Per-client state (``defense.keeps_client_state``) changes only with the updates of a training
    round: an audit capture (outside the round's ``training_step``) sends what the client would send,
    state included, and leaves the state alone. With several processes the states written in a round
    are all-reduced, so every process holds every client's state whichever process trains it next.
    States are saved in checkpoints (``state_dict``).
    """

    def __init__(self, defense: Defense, chain: Optional[Sequence[Defense]] = None, index: int = 0):
        super().__init__(defense)
        chain = list(chain) if chain is not None else [defense]
        self.key = f"defenses[{index}]"
        self.defense = defense.bind(chain, index, "defenses")
        self.states: Dict[int, torch.Tensor] = {}  # client id -> flat state
        self._touched: set = set()
        self._in_round = False
        self._stats = [0.0] * (len(defense.round_stat_keys) + 1)  # sums this round, this process; + count
        self.rounds = 0
        self.sample_rate: Optional[float] = None

    # ------------------------------------------------------------------ the transform
    def on_client_update(self, trainer, module, update: ClientUpdate) -> ClientUpdate:
        d = self.defense
        state = self.states.get(update.client_id) if d.keeps_client_state else None
        sent, bits, new_state = d.apply(update.tensors, update, state)
        if self._in_round:
            if d.round_stat_keys:
                stats = d.round_stats(update.tensors, sent)
                for i, k in enumerate(d.round_stat_keys):
                    self._stats[i] += float(stats[k])
                self._stats[-1] += 1
            # a broken (rejected) update must not poison the state
            if new_state is not None and bool(torch.isfinite(new_state).all()):
                self.states[update.client_id] = new_state
                self._touched.add(update.client_id)
        return update.with_tensors(sent, bits=bits)

    # ------------------------------------------------------------------ Lightning hooks
    def on_fit_start(self, trainer, module) -> None:
        warning = self.defense.setup(module.model, self.key)
        if warning:
            rank_zero_warn(warning)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._touched, self._in_round = set(), True
        self._stats = [0.0] * len(self._stats)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._in_round = False
        if self.defense.keeps_client_state and trainer is not None and trainer.world_size > 1:
            self._share_states(trainer, module)

    def on_train_epoch_end(self, trainer, module) -> None:
        keys = self.defense.round_stat_keys
        if keys:
            stats = torch.tensor(self._stats, dtype=torch.float64, device=module.device)
            *sums, count = trainer.strategy.reduce(stats, reduce_op="sum").tolist()
            if count:
                module.log_dict({k: s / count for k, s in zip(keys, sums)}, on_step=False, on_epoch=True,
                                rank_zero_only=True)
        n = trainer.datamodule.num_clients
        self.sample_rate = module.clients_per_round(n) / n
        self.rounds = trainer.current_epoch + 1
        metrics = self.defense.round_metrics(self.rounds, self.sample_rate)
        if metrics:
            module.log_dict(metrics, on_step=False, on_epoch=True, rank_zero_only=True)

    def summary(self) -> Optional[Dict]:
        return self.defense.summary(self.rounds, self.sample_rate)

    # ------------------------------------------------------------------ per-client state
    def _share_states(self, trainer, module) -> None:
        """Every process learns the states written this round (each client is trained by one process)."""
        n = trainer.datamodule.num_clients
        mask = torch.zeros(n, device=module.device)
        mask[sorted(self._touched)] = 1.0
        ids = trainer.strategy.reduce(mask, reduce_op="sum").nonzero().flatten().tolist()
        numel = sum(p.numel() for p in module.parameters())
        rows = torch.zeros(len(ids), numel, device=module.device)
        for j, cid in enumerate(ids):
            if cid in self._touched:
                rows[j] = self.states[cid].to(module.device)
        rows = trainer.strategy.reduce(rows, reduce_op="sum")
        for j, cid in enumerate(ids):
            self.states[cid] = rows[j].clone()

    def state_dict(self) -> Dict:
        return {"states": {int(c): r.detach().cpu().clone() for c, r in self.states.items()}}

    def load_state_dict(self, state_dict: Dict) -> None:
        self.states = {int(c): r.clone() for c, r in state_dict.get("states", {}).items()}


def build_defense_callbacks(specs) -> List[DefenseCallback]:
    """One callback per ``defenses:`` entry, in the order written (each bound to its place in the chain)."""
    specs = list(specs)
    check_chain(specs)
    return [DefenseCallback(s, specs, i) for i, s in enumerate(specs)]


def check_defenses_fit(specs, model) -> None:
    """Checks of the chain against the federation's model (e.g. Soteria's ``layer``), as
    ``DefenseCallback.on_fit_start`` runs them: call it before writing anything to fail with nothing
    half-written."""
    specs = list(specs)
    for i, s in enumerate(specs):
        s.bind(specs, i, "defenses").setup(model, f"defenses[{i}]")


def privacy_summary(callbacks) -> Optional[Dict]:
    """The privacy budget of a run for results.json: the first defence's non-empty ``summary()``, or None."""
    for cb in callbacks:
        summary = getattr(cb, "summary", None)
        out = summary() if callable(summary) else None
        if out is not None:
            return out
    return None


def apply_defenses(callbacks, trainer, module, update: ClientUpdate) -> ClientUpdate:
    for cb in callbacks:
        if hasattr(cb, "on_client_update"):
            update = cb.on_client_update(trainer, module, update)
    return update
