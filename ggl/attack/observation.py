"""What the server/attacker sees of one client update: the ``Observation``.

An observation holds the global model (architecture name + state dict) the client started from, the
update as transmitted (after the client's defences), and public protocol metadata: batch size, local
steps, learning rate, momentum, round, update kind. The defence spec is stored too; only an
*adaptive* attacker (``attack.adaptive=true``) reads it. Nothing private (images, labels, dataset
indices) is ever in an observation: that is the ground truth, a separate file only the evaluator opens.

Files are plain dicts of tensors, numbers and strings, loaded with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ggl.core.atomic import atomic_write_with
from ggl.core.errors import UserError
from ggl.core.safe_load import safe_load
from ggl.defenses import check_chain, parse_chain
from ggl.models import available_models, build_model, check_trusted_model, is_dotted, model_name_of

FORMAT = "ggl.observation/1"


def _check_finite(obs: "Observation", path) -> None:
    """A NaN/Inf update has no image to reconstruct: any score would be noise (the federation rejects
    such updates too), so the attack refuses it instead of scoring it."""
    if not (isinstance(obs.state, dict) and isinstance(obs.update, (list, tuple))
            and all(isinstance(t, Tensor) for t in list(obs.update) + list(obs.state.values()))):
        raise UserError(f"observation file '{path}': 'update' and 'state' must hold tensors")
    bad = sum(int((~torch.isfinite(t)).sum()) for t in obs.update if t.is_floating_point())
    if bad:
        total = sum(t.numel() for t in obs.update)
        raise UserError(f"observation file '{path}': its update holds {bad} NaN/Inf of {total} values; "
                        f"nothing to attack (recapture it; the federation rejects such updates)")
    if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in obs.state.values()):
        raise UserError(f"observation file '{path}': its global model state holds NaN/Inf; recapture it")


@dataclass
class Observation:
    arch: str                       # model name for ggl.models.build_model
    channels: int
    num_classes: int
    state: Dict[str, Tensor]        # the global model the client started from (parameters + buffers)
    names: List[str]                # parameter names, in ``update`` order
    update: List[Tensor]            # the transmitted (defended) update, one tensor per parameter
    kind: str                       # "gradient" (1 local step) or "delta" (local weights - global)
    batch_size: int                 # images in the update
    local_steps: int
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    local_batch_size: int = 0       # the client's SGD mini-batch size (>= batch_size: full batch)
    round: int = 0
    client_id: int = 0
    bits: int = 0                   # uplink payload in bits
    image_size: int = 32
    defenses: List[dict] = field(default_factory=list)  # defence chain (public only to adaptive attackers)
    obs_id: str = ""

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        d = asdict(self)
        d["state"] = {k: v.detach().cpu().clone() for k, v in self.state.items()}
        d["update"] = [t.detach().cpu().clone() for t in self.update]
        d["format"] = FORMAT
        return d

    def save(self, path: str | Path) -> Path:
        return atomic_write_with(path, lambda fh: torch.save(self.to_dict(), fh))

    @classmethod
    def load(cls, path: str | Path) -> "Observation":
        path = Path(path)
        try:
            blob = safe_load(path, "observation file")  # weights_only, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says
        except Exception as exc:  # unpickling error, truncated file, not a torch file
            raise UserError(f"observation file '{path}' could not be read ({str(exc).splitlines()[0][:120]})") from None
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise UserError(f"'{path}' is not a ggl observation file (expected format {FORMAT})")
        known = {f.name for f in fields(cls)}
        missing = [k for k in ("arch", "state", "update", "names", "kind") if k not in blob]
        if missing:
            raise UserError(f"observation file '{path}' lacks {', '.join(missing)}")
        obs = cls(**{k: v for k, v in blob.items() if k in known})
        if len(obs.update) != len(obs.names):
            raise UserError(f"observation file '{path}': {len(obs.update)} update tensors for "
                            f"{len(obs.names)} parameter names")
        _check_finite(obs, path)
        return obs

    # ------------------------------------------------------------------ the attacked model
    def build_model(self, source: str = "observation", trusted: Sequence[str] = ()) -> nn.Module:
        """The observed global model, rebuilt from its architecture name and state dict.

        ``arch`` is a ggl model name or a user model ``pkg.module:Class``; the latter is imported only when
        it is ggl's or listed in ``trusted`` (``attack.trusted_models``), else a ``ConfigError`` before any
        import. A state dict that does not fit the named architecture (an observation from another model) is
        a ``UserError`` naming both.
        """
        if not is_dotted(self.arch) and self.arch not in available_models():
            raise UserError(f"{source}: architecture '{self.arch}' is unknown (known: "
                            f"{', '.join(available_models())}, or a user model pkg.module:Class)")
        check_trusted_model(self.arch, trusted, source)
        model = build_model(self.arch, self.channels, self.num_classes, where=source)
        try:
            model.load_state_dict(self.state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()
            detail = (first[1].strip() if len(first) > 1 else first[0])[:160]
            raise UserError(f"{source}: its state dict does not fit architecture '{self.arch}' "
                            f"({detail}); the observation comes from a different model") from None
        shapes = dict(model.named_parameters())
        for name, t in zip(self.names, self.update):
            if name not in shapes or tuple(shapes[name].shape) != tuple(t.shape):
                raise UserError(f"{source}: update tensor '{name}' {tuple(t.shape)} does not match "
                                f"architecture '{self.arch}'")
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    @classmethod
    def from_update(cls, model: Union[nn.Module, str], global_state: Mapping, sent_tensors,
                    defense_spec=(), probe: str = "fedsgd", *, batch_size: int, lr: float,
                    local_steps: Optional[int] = None, momentum: float = 0.0, weight_decay: float = 0.0,
                    local_batch_size: int = 0, round: int = 0, client_id: int = 0, bits: int = 0,
                    arch: Optional[str] = None, channels: Optional[int] = None, num_classes: Optional[int] = None,
                    image_size: int = 32, obs_id: str = "") -> "Observation":
        """The server's view of one update that any FL framework sent (docs/flower.md, "capture format").

        ``model``: the architecture (an ``nn.Module``, or a ggl model name / ``pkg.module:Class`` with
        ``channels`` and ``num_classes``); its own weights are not used. ``global_state``: the global model the
        client started from (its full state dict: parameters and buffers). ``sent_tensors``: the update as
        transmitted, after the client's defences: a mapping parameter name -> tensor, or a sequence in
        ``model.named_parameters()`` order, one per parameter. ``defense_spec``: the chain the client applied
        (ggl defence specs: dicts or ``ggl.defenses`` objects; [] for none). ``probe``: ``fedsgd`` (the
        gradient of one step on ``batch_size`` images) or ``local_update`` (the weight delta after
        ``local_steps`` SGD steps with ``lr``, ``momentum``, ``weight_decay``, mini-batches of
        ``local_batch_size``). Arrays may be numpy arrays. Every problem is a ``UserError`` naming the field.
        """
        where = "Observation.from_update"
        if probe not in ("fedsgd", "local_update"):
            raise UserError(f"{where}: probe={probe!r} is not one of fedsgd, local_update")
        model, arch, channels, num_classes = _model_of(model, arch, channels, num_classes, where)
        state = _checked_state(model, global_state, where)
        names, update = _checked_update(model, sent_tensors, where)
        if probe == "fedsgd":
            kind, steps = "gradient", 1
        else:
            if local_steps is None or int(local_steps) < 1:
                raise UserError(f"{where}: probe='local_update' needs local_steps >= 1 (the client's SGD steps)")
            kind, steps = "delta", int(local_steps)
        if isinstance(defense_spec, Mapping) or hasattr(defense_spec, "label"):
            defense_spec = [defense_spec]

        specs = parse_chain(defense_spec, "defense_spec")
        check_chain(specs, "defense_spec")
        obs = cls(arch=str(arch), channels=int(channels), num_classes=int(num_classes), state=state, names=names,
                  update=update, kind=kind, batch_size=int(batch_size), local_steps=steps, lr=float(lr),
                  momentum=float(momentum), weight_decay=float(weight_decay), local_batch_size=int(local_batch_size),
                  round=int(round), client_id=int(client_id), bits=int(bits), image_size=int(image_size),
                  defenses=[asdict(s) for s in specs], obs_id=str(obs_id))
        _check_finite(obs, where)
        return obs

    @property
    def input_shape(self) -> tuple:
        return (self.channels, self.image_size, self.image_size)


def _as_tensor(v, name: str, where: str) -> Tensor:
    import numpy as np  # only for arrays from other frameworks

    try:
        return torch.as_tensor(np.asarray(v) if not isinstance(v, Tensor) else v).detach().cpu().clone()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"{where}: '{name}' is not an array ({exc})") from None


def _model_of(model, arch, channels, num_classes, where: str):
    """(model, arch, channels, num_classes) of ``from_update``'s ``model`` argument, checked."""
    if isinstance(model, str):
        if channels is None or num_classes is None:
            raise UserError(f"{where}: a model given by name ('{model}') needs channels= and num_classes=")
        arch = arch or model
        model = build_model(model, int(channels), int(num_classes), where=where)
    elif not isinstance(model, nn.Module):
        raise UserError(f"{where}: model must be an nn.Module or a model name, not {type(model).__name__}")
    arch = arch or model_name_of(model)
    if channels is None:
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        channels = conv.in_channels if conv is not None else None
    if num_classes is None:
        linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
        num_classes = linear[-1].out_features if linear else None
    if channels is None or num_classes is None:
        raise UserError(f"{where}: cannot tell the model's input channels and classes; pass channels= and "
                        f"num_classes=")
    return model, arch, channels, num_classes


def _checked_state(model: nn.Module, global_state: Mapping, where: str) -> Dict[str, Tensor]:
    """The global model's full state dict, with the model's keys and shapes."""
    expected = dict(model.state_dict())
    state = {str(k): _as_tensor(v, f"global_state[{k}]", where) for k, v in dict(global_state).items()}
    missing, unknown = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unknown:
        what = f"lacks '{missing[0]}'" if missing else f"has '{unknown[0]}', which the model does not"
        raise UserError(f"{where}: global_state {what} (it must be the model's full state dict)")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise UserError(f"{where}: global_state['{k}'] has shape {tuple(v.shape)}, the model's "
                            f"{tuple(expected[k].shape)}")
    return state


def _checked_update(model: nn.Module, sent_tensors, where: str) -> Tuple[List[str], List[Tensor]]:
    """(parameter names, one floating-point tensor per parameter with its shape) of what was sent."""
    names = [n for n, _ in model.named_parameters()]
    if isinstance(sent_tensors, Mapping):
        absent = [n for n in names if n not in sent_tensors]
        if absent or len(sent_tensors) != len(names):
            extra = sorted(set(map(str, sent_tensors)) - set(names))
            raise UserError(f"{where}: sent_tensors " + (f"lacks parameter '{absent[0]}'" if absent else
                            f"has '{extra[0]}', which is not a parameter") + " (one tensor per parameter)")
        update = [_as_tensor(sent_tensors[n], f"sent_tensors[{n}]", where) for n in names]
    else:
        update = [_as_tensor(t, f"sent_tensors[{i}]", where) for i, t in enumerate(sent_tensors)]
        if len(update) != len(names):
            raise UserError(f"{where}: {len(update)} sent tensors for the model's {len(names)} parameters")
    shapes = dict(model.named_parameters())
    for n, t in zip(names, update):
        if tuple(t.shape) != tuple(shapes[n].shape):
            raise UserError(f"{where}: sent tensor '{n}' has shape {tuple(t.shape)}, the parameter's "
                            f"{tuple(shapes[n].shape)}")
        if not t.is_floating_point():
            raise UserError(f"{where}: sent tensor '{n}' is {t.dtype}; an update is floating point")
    return names, update
