"""Flower client mods: ggl's defences on what a Flower client sends, and audit captures of it.

``defense_mod(chain)`` defends what ggl's FedAvg defends, the parameters' weight delta, with the very
``ggl.defenses`` objects the audit attacks, and sends ``global + defended delta`` (Flower's ``FedAvg``
then averages the defended deltas, as ggl does with ``server_lr: 1``). ``capture_mod(out_dir, ...)`` writes
what chosen clients send at chosen rounds as ggl observations, and their ground truth apart, in the layout
``attack.source=<folder>`` reads. Rounds are ggl's (round r = Flower's ``server-round`` r + 1); the client id
is the node's ``partition-id``. A bad input is an error reply starting ``ggl:``; ``raise_ggl_errors`` turns
it into a ``UserError`` on the server. The details: docs/flower.md.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType
from torch import Tensor, nn

from ggl.attack.observation import Observation
from ggl.audit.schema import AuditConfig
from ggl.audit.truth import GroundTruth, capture_paths
from ggl.audit.victim import draw_private, probe_update
from ggl.defenses.base import FLOAT_BITS, Defense, check_chain, defenses_label, parse_chain
from ggl.core.errors import UserError
from ggl.fl.schema import FLConfig
from ggl.fl.update import ClientUpdate
from ggl.models import build_model

log = logging.getLogger("ggl.flower")

ERROR_PREFIX = "ggl: "
MOD_FAILED_PRECONDITION = 6     # flwr.common.constant.ErrorCode.MOD_FAILED_PRECONDITION
STATE_KEY = "ggl.defense.state"  # context.state: per-client defence state (error feedback), one array per step
SENT_KEY = "ggl.sent"            # context.state: the defended delta of this round, for capture_mod (never sent)
SENT_META_KEY = "ggl.sent.meta"
WANT_SENT_KEY = "ggl.want_sent"
FLOAT_DTYPES = (np.float32, np.float64)
PROBES = ("sent", "fedsgd", "local_update")


# ---------------------------------------------------------------------------------------------
# message helpers

def _error_reply(msg: Message, reason: str) -> Message:
    reason = ERROR_PREFIX + " ".join(str(reason).split())  # one line
    log.error(reason)
    return Message(Error(code=MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


def raise_ggl_errors(replies: Iterable[Message]) -> None:
    """Server side: a reply whose error a ggl mod wrote becomes a ``UserError`` (one line, exit 2 in a CLI)."""
    for m in replies:
        if m.has_error() and str(m.error.reason).startswith(ERROR_PREFIX):
            raise UserError(f"client {m.metadata.src_node_id}: {m.error.reason[len(ERROR_PREFIX):]}")


def _one_array_record(msg: Message, what: str) -> Tuple[str, ArrayRecord]:
    records = msg.content.array_records if msg.has_content() else {}
    if len(records) != 1:
        raise UserError(f"{what} carries {'no parameters (no ArrayRecord)' if not records else f'{len(records)} ArrayRecords'}; "
                        f"the ggl mods need exactly one (the model's arrays)")
    return next(iter(records.items()))


def server_round(msg: Message) -> int:
    """Flower's ``server-round`` of a message (FedAvg and the other strategies put it in the ConfigRecord)."""
    for rec in msg.content.config_records.values():
        if "server-round" in rec:
            return int(rec["server-round"])
    raise UserError("the train message has no 'server-round' in its ConfigRecord (Flower's strategies add it); "
                    "the ggl mods need it for the round number")


def client_id(context: Context) -> int:
    """The client's id in ggl's terms: the node's partition-id when it has one, else its node id."""
    pid = context.node_config.get("partition-id") if context.node_config else None
    return int(pid) if pid is not None else int(context.node_id)


def _torch(arrays: ArrayRecord) -> Dict[str, Tensor]:
    return {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in arrays.items()}


# ---------------------------------------------------------------------------------------------
# defence

def _chain(chain) -> List[Defense]:
    if isinstance(chain, dict) or isinstance(chain, Defense):
        chain = [chain]
    specs = parse_chain(chain or [])
    check_chain(specs)
    return specs


class DefenseMod:
    """The client mod of ``defense_mod`` (see the module docstring)."""

    def __init__(self, chain, seed: int = 0, params: Optional[Sequence[str]] = None):
        self.specs = _chain(chain)
        self.defenses = [s.bind(self.specs, i, "defenses") for i, s in enumerate(self.specs)]
        self.label = defenses_label(self.specs)
        self.seed = int(seed)
        self.params = list(params) if params is not None else None

    @property
    def spec_dicts(self) -> List[dict]:
        return [asdict(s) for s in self.specs]

    # ------------------------------------------------------------------ the transform (pure ggl)
    def defend(self, update: ClientUpdate, context: Optional[Context] = None, commit: bool = True) -> ClientUpdate:
        """``update`` through the chain, as ``ggl.fl.callbacks.DefenseCallback`` does: each defense's own
        ``apply`` with the client's state from ``context.state`` (written back when ``commit`` and finite;
        a capture probe leaves it alone, as ggl's audit does)."""
        for i, d in enumerate(self.defenses):
            state = self._state(context, i) if d.keeps_client_state else None
            sent, bits, new_state = d.apply(update.tensors, update, state)
            if commit and context is not None and new_state is not None and bool(torch.isfinite(new_state).all()):
                rec = context.state.array_records.get(STATE_KEY) or ArrayRecord()
                rec[str(i)] = Array(new_state.detach().cpu().numpy())
                context.state[STATE_KEY] = rec
            update = update.with_tensors(sent, bits=bits)
        return update

    @staticmethod
    def _state(context: Optional[Context], i: int) -> Optional[Tensor]:
        if context is None:
            return None
        rec = context.state.array_records.get(STATE_KEY)
        return torch.from_numpy(np.array(rec[str(i)].numpy(), copy=True)) if rec is not None and str(i) in rec else None

    def update_keys(self, arrays: Dict[str, Tensor]) -> List[str]:
        """The arrays that form the update: the model's parameters when given (``params``), else all."""
        if self.params is None:
            return list(arrays)
        missing = [k for k in self.params if k not in arrays]
        if missing:
            raise UserError(f"the message's arrays lack parameter '{missing[0]}' (defense_mod(params=...) names "
                            f"{len(self.params)} parameters)")
        return list(self.params)

    def check_types(self, arrays: Dict[str, Tensor], keys: Sequence[str]) -> None:
        for k in keys:
            t = arrays[k]
            if t.dtype not in (torch.float32, torch.float64):
                raise UserError(f"defence '{self.label}' cannot be applied to array '{k}' of dtype "
                                f"{str(t.dtype).replace('torch.', '')}: an update is float32 or float64 (pass "
                                f"defense_mod(..., params=[parameter names]) to defend only the model's parameters)")

    # ------------------------------------------------------------------ the mod
    def __call__(self, msg: Message, context: Context, call_next) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        try:
            key_in, global_rec = _one_array_record(msg, "the train message")
            rnd = server_round(msg) - 1
        except UserError as exc:
            return _error_reply(msg, f"defense_mod: {exc}")
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        try:
            key_out, local_rec = _one_array_record(reply, "the ClientApp's reply")
            glob, local = _torch(global_rec), _torch(local_rec)
            if list(glob) != list(local):
                raise UserError("the reply's arrays do not have the keys of the arrays the client received")
            keys = self.update_keys(local)
            self.check_types(local, keys)
            self.check_types(glob, keys)
            for k in keys:
                if glob[k].shape != local[k].shape or glob[k].dtype != local[k].dtype:
                    raise UserError(f"array '{k}': the reply's {tuple(local[k].shape)} {local[k].dtype} does not "
                                    f"match the received {tuple(glob[k].shape)} {glob[k].dtype}")
            num = _num_examples(reply)
            tensors = [local[k] - glob[k] for k in keys]
            update = ClientUpdate(client_id=client_id(context), round=rnd, tensors=tensors, names=list(keys),
                                  num_samples=num, kind="delta", bits=FLOAT_BITS * sum(t.numel() for t in tensors),
                                  seed=self.seed, meta={})
            sent = self.defend(update, context, commit=True)
        except UserError as exc:
            return _error_reply(msg, f"defense_mod: {exc}")
        out = {k: local[k] for k in local}
        for k, t in zip(keys, sent.tensors):
            out[k] = glob[k] + t.to(glob[k].dtype)
        reply.content[key_out] = ArrayRecord({k: Array(v.numpy()) for k, v in out.items()})
        if WANT_SENT_KEY in context.state.config_records:  # capture_mod asked for what was sent (stays on the client)
            context.state[SENT_KEY] = ArrayRecord({k: Array(t.detach().cpu().numpy()) for k, t in zip(keys, sent.tensors)})
            context.state[SENT_META_KEY] = ConfigRecord({"bits": int(sent.bits), "defenses": json.dumps(self.spec_dicts),
                                                         "num_samples": int(num), "round": int(rnd)})
        return reply


def _num_examples(reply: Message) -> int:
    for rec in reply.content.metric_records.values():
        if "num-examples" in rec:
            return int(rec["num-examples"])
    return 0


def defense_mod(chain, seed: int = 0, params: Optional[Sequence[str]] = None) -> DefenseMod:
    """A Flower client mod applying the ggl defence ``chain`` (a list of defence specs, e.g.
    ``[{"name": "quantize", "bits": 4}]``) to the update of every train reply. ``seed``: the run seed that
    the defences' randomness derives from (with the round and the client id), as in ggl's federation.
    ``params``: the parameter names that form the update (default: every array of the message; buffers such
    as BatchNorm statistics are not part of ggl's update, name the parameters to leave them alone)."""
    return DefenseMod(chain, seed=seed, params=params)


# ---------------------------------------------------------------------------------------------
# capture

@dataclass
class ClientShard:
    """A client's private data as the capture probe needs it: images (N, C, 32, 32) in [0, 1] and labels;
    ``indices`` (dataset indices of the images) and ``dataset`` (ggl's ``data:`` config they index) when the
    client can give ground truth; without them nothing is written to ``ground_truth/`` (nothing to score)."""
    images: Tensor
    labels: Tensor
    indices: Optional[Tensor] = None
    dataset: Optional[dict] = None


class CaptureMod:
    def __init__(self, out_dir, *, clients: Iterable[int], rounds: Iterable[int], data: Callable[[Context], ClientShard],
                 model: str = "cnn", channels: int = 1, num_classes: int = 10, num_images: int = 8,
                 batch_size: int = 1, probe: str = "fedsgd", defense: Optional[DefenseMod] = None, seed: int = 0,
                 protocol: Optional[dict] = None):
        if probe not in PROBES:
            raise UserError(f"capture_mod: probe={probe!r} is not one of {', '.join(PROBES)}")
        self.root = Path(out_dir)
        self.clients = sorted(set(int(c) for c in clients))
        self.rounds = sorted(set(int(r) for r in rounds))
        self.data = data
        self.model_name = str(model)
        self.channels, self.num_classes = int(channels), int(num_classes)
        self.num_images, self.batch_size = int(num_images), int(batch_size)
        if self.num_images < 1 or self.batch_size < 1 or self.num_images % self.batch_size:
            raise UserError(f"capture_mod: num_images={num_images} must be a positive multiple of batch_size={batch_size}")
        self.probe = probe
        self.defense = defense if defense is not None else DefenseMod([], seed=seed)
        if not isinstance(self.defense, DefenseMod):
            self.defense = DefenseMod(self.defense, seed=seed)
        self.seed = int(seed)
        # the client's local protocol (public metadata of the update): lr, momentum, weight_decay, batch_size,
        # local_steps (probe 'sent' and 'local_update' need local_steps)
        self.protocol = {"lr": 0.05, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 32, "local_steps": None,
                         **(protocol or {})}
        if probe == "sent" and not self.protocol.get("local_steps"):
            raise UserError("capture_mod: probe='sent' needs protocol={'local_steps': ..., 'lr': ..., ...}: the "
                            "client's local SGD steps, learning rate, momentum and batch size are the update's "
                            "public metadata")

    def __call__(self, msg: Message, context: Context, call_next) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        try:
            _, global_rec = _one_array_record(msg, "the train message")
            rnd, cid = server_round(msg) - 1, client_id(context)
        except UserError as exc:
            return _error_reply(msg, f"capture_mod: {exc}")
        if rnd not in self.rounds or cid not in self.clients:
            return call_next(msg, context)
        try:
            model = self._global_model(_torch(global_rec))
            shard = self.data(context)
            if self.probe != "sent":
                self._probe(model, shard, rnd, cid, context)
        except UserError as exc:
            return _error_reply(msg, f"capture_mod: {exc}")
        if self.probe != "sent":
            return call_next(msg, context)
        context.state[WANT_SENT_KEY] = ConfigRecord({"round": rnd})
        try:
            reply = call_next(msg, context)
            if reply.has_error():
                return reply
            try:
                self._sent(model, shard, reply, global_rec, rnd, cid, context)
            except UserError as exc:
                return _error_reply(msg, f"capture_mod: {exc}")
            return reply
        finally:
            for k in (WANT_SENT_KEY, SENT_KEY, SENT_META_KEY):
                if k in context.state:
                    del context.state[k]

    # ------------------------------------------------------------------ pieces
    def _global_model(self, state: Dict[str, Tensor]) -> nn.Module:
        model = build_model(self.model_name, self.channels, self.num_classes, where="capture_mod(model=...)")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            detail = [s.strip() for s in str(exc).splitlines() if s.strip()]
            raise UserError(f"the message's arrays do not fit model '{self.model_name}' "
                            f"({(detail[1] if len(detail) > 1 else detail[0])[:160]})") from None
        return model

    def _write(self, obs: Observation, shard: ClientShard, positions: Optional[Tensor], rnd: int, cid: int) -> None:
        label = defenses_label(self.defense.specs)
        obs_path, truth_path = capture_paths(self.root, label, obs.obs_id)
        obs.save(obs_path)
        if shard.indices is not None and shard.dataset is not None:
            idx = torch.as_tensor(shard.indices, dtype=torch.long)
            labels = torch.as_tensor(shard.labels, dtype=torch.long)
            if positions is not None:
                idx, labels = idx[positions], labels[positions]
            GroundTruth(obs_id=obs.obs_id, dataset=dict(shard.dataset), indices=idx.clone(), labels=labels.clone(),
                        round=rnd, client_id=cid).save(truth_path)

    def _observation(self, model, sent: ClientUpdate, probe: str, rnd: int, cid: int, stem: str, local_steps) -> Observation:
        p = self.protocol
        return Observation.from_update(
            model, model.state_dict(), sent.tensors, self.defense.spec_dicts, probe=probe, arch=self.model_name,
            channels=self.channels, num_classes=self.num_classes, batch_size=sent.num_samples, lr=p["lr"],
            local_steps=local_steps, momentum=p["momentum"], weight_decay=p["weight_decay"],
            local_batch_size=p["batch_size"], round=rnd, client_id=cid, bits=sent.bits, obs_id=stem)

    def _probe(self, model: nn.Module, shard: ClientShard, rnd: int, cid: int, context: Context) -> None:
        """ggl's audit probe (``ggl.audit.capture.AuditCapture``) on this client's images, at this global model."""
        n = min(self.num_images, len(shard.labels)) // self.batch_size * self.batch_size
        if n == 0:
            raise UserError(f"client {cid} holds {len(shard.labels)} images, fewer than batch_size={self.batch_size}")
        positions = draw_private(torch.arange(len(shard.labels)), n, self.seed, rnd, cid)
        params = {k: v.detach() for k, v in model.named_parameters()}
        audit = AuditConfig(probe=self.probe, local_steps=self.protocol.get("local_steps"))
        fl = FLConfig(local_epochs=1.0, **{k: self.protocol[k] for k in ("lr", "momentum", "weight_decay", "batch_size")})
        for k in range(n // self.batch_size):
            pos = positions[k * self.batch_size:(k + 1) * self.batch_size]
            x, y = shard.images[pos], torch.as_tensor(shard.labels[pos], dtype=torch.long)
            update = probe_update(model, params, x, y, audit=audit, fl=fl, client_id=cid, round=rnd, seed=self.seed)
            sent = self.defense.defend(update, context, commit=False)
            stem = f"r{rnd:04d}_c{cid:03d}_b{k:03d}"
            obs = self._observation(model, sent, self.probe, rnd, cid, stem, int(update.meta["local_steps"]))
            self._write(obs, shard, pos, rnd, cid)

    def _sent(self, model, shard: ClientShard, reply: Message, global_rec: ArrayRecord, rnd: int, cid: int,
              context: Context) -> None:
        """What the client really sent this round: the defended delta that defense_mod left in context.state
        (exact), or with no defense_mod, local weights - global weights."""
        names = [n for n, _ in model.named_parameters()]
        if SENT_KEY in context.state.array_records:
            sent_rec = _torch(context.state.array_records[SENT_KEY])
            meta = context.state.config_records[SENT_META_KEY]
            if json.loads(str(meta["defenses"])) != self.defense.spec_dicts:
                raise UserError("the defense_mod in the ClientApp applies another chain than capture_mod(defense=...)")
            tensors, bits, num = [sent_rec[n] for n in names], int(meta["bits"]), int(meta["num_samples"])
        else:
            if self.defense.specs:
                raise UserError("capture_mod(defense=...) names a defence but no defense_mod ran inside it: list the "
                                "mods as mods=[capture, defense] (capture outermost)")
            _, local_rec = _one_array_record(reply, "the ClientApp's reply")
            glob, local = _torch(global_rec), _torch(local_rec)
            tensors = [local[n] - glob[n] for n in names]
            bits, num = FLOAT_BITS * sum(t.numel() for t in tensors), _num_examples(reply) or len(shard.labels)
        update = ClientUpdate(client_id=cid, round=rnd, tensors=tensors, names=names, num_samples=num, kind="delta",
                              bits=bits, seed=self.seed)
        stem = f"r{rnd:04d}_c{cid:03d}_sent"
        obs = self._observation(model, update, "local_update", rnd, cid, stem, int(self.protocol["local_steps"]))
        self._write(obs, shard, None, rnd, cid)


def capture_mod(out_dir, *, clients: Iterable[int], rounds: Iterable[int], data: Callable[[Context], ClientShard],
                model: str = "cnn", channels: int = 1, num_classes: int = 10, num_images: int = 8,
                batch_size: int = 1, probe: str = "fedsgd", defense=None, seed: int = 0,
                protocol: Optional[dict] = None) -> CaptureMod:
    """A Flower client mod writing ggl audit captures (see the module docstring and docs/flower.md).

    ``probe``: ``fedsgd`` (ggl's headline threat model: the gradient of one step on ``batch_size`` of
    ``num_images`` private images drawn as ggl's audit draws them, at this round's global model, through the
    same defence chain), ``local_update`` (``protocol['local_steps']`` SGD steps on such a batch) or ``sent``
    (the update the client really sent this round, on all its images). ``defense``: the ``defense_mod`` of the
    same ClientApp (or its chain), listed after this mod: ``mods=[capture, defense]``. ``model``: a ggl model name
    or ``pkg.module:Class`` (the attacker rebuilds it from that name). ``data(context)``: the client's
    ``ClientShard``. ``protocol``: the client's lr, momentum, weight_decay, batch_size, local_steps.
    """
    return CaptureMod(out_dir, clients=clients, rounds=rounds, data=data, model=model, channels=channels,
                      num_classes=num_classes, num_images=num_images, batch_size=batch_size, probe=probe,
                      defense=defense, seed=seed, protocol=protocol)
