"""``model.checkpoint``: the classifier weights a federation starts from instead of a fresh init.

The file is a plain state dict (``torch.save(model.state_dict(), path)``) or a federation's Lightning
checkpoint (weights under ``state_dict`` with a ``model.`` prefix). It is read without unpickling
code (weights only) and checked against the configured model before any run folder exists: a
missing, unreadable or mismatching file is one line naming the file and the first parameter that
does not fit. A resumed run starts from its own checkpoint; ``model.checkpoint`` only seeds round 0.
Fresh victims of an attack start from it too (``load_into``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from torch import Tensor, nn

from ggl.core.errors import UserError
from ggl.core.safe_load import safe_load

KEY = "model.checkpoint"


def read_state(path: str | Path) -> Dict[str, Tensor]:
    """The state dict in ``path`` (plain or inside a Lightning checkpoint), read weights-only."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"config key '{KEY}' = '{path}': no such file (give a state_dict file saved with "
                        f"torch.save(model.state_dict(), path), or null for a fresh model)")
    try:
        blob = safe_load(p, "model.checkpoint")  # weights_only, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says
    except Exception as exc:  # truncated file, a pickle that needs code, not a torch file at all
        first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UserError(f"config key '{KEY}' = '{path}' could not be read as weights ({first})") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"config key '{KEY}' = '{path}' holds no state dict of tensors")
    if any(str(k).startswith("model.") for k in state):  # a federation's Lightning checkpoint
        state = {k[len("model."):]: v for k, v in state.items() if str(k).startswith("model.")}
    return state


def check_fits(model: nn.Module, state: Dict[str, Tensor], path: str | Path, model_name: str) -> None:
    """Every parameter and buffer of ``model`` in ``state`` with its shape, and nothing else."""
    own = model.state_dict()
    where = f"config key '{KEY}' = '{path}' does not fit model.name={model_name}"
    for name, t in own.items():
        if name not in state:
            raise UserError(f"{where}: it lacks parameter '{name}' {tuple(t.shape)}")
        if tuple(state[name].shape) != tuple(t.shape):
            raise UserError(f"{where}: parameter '{name}' is {tuple(state[name].shape)} in the file, "
                            f"{tuple(t.shape)} in the model")
    extra: List[str] = [k for k in state if k not in own]
    if extra:
        raise UserError(f"{where}: it has parameter '{extra[0]}' the model does not"
                        + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))


def load_into(model: nn.Module, path: str | Path, model_name: str) -> None:
    """``model`` given the checked weights of ``path``."""
    state = read_state(path)
    check_fits(model, state, path, model_name)
    model.load_state_dict(state, strict=True)
