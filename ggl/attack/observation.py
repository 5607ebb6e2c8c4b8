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
from typing import Dict, List

import torch
from torch import Tensor, nn

from ggl.core.atomic import atomic_write_with
from ggl.core.errors import UserError
from ggl.core.safe_load import safe_load
from ggl.models import available_models, build_model

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
    def build_model(self, source: str = "observation") -> nn.Module:
        """The observed global model, rebuilt from its architecture name and state dict.

        A state dict that does not fit the named architecture (an observation from another model) is
        a ``UserError`` naming both.
        """
        if self.arch not in available_models():
            raise UserError(f"{source}: architecture '{self.arch}' is unknown (known: "
                            f"{', '.join(available_models())})")
        model = build_model(self.arch, self.channels, self.num_classes)
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

    @property
    def input_shape(self) -> tuple:
        return (self.channels, self.image_size, self.image_size)
