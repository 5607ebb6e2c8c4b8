"""The one loader for every torch file ggl did not just write: checkpoints, priors, observations, caches.

``torch.load(weights_only=True)`` unpickles only tensors and plain containers/values, so a crafted
file cannot run code. ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` must not switch that off: torch lets an
explicit ``weights_only=True`` win over it (2.6+), and the variable is also removed for the duration
of the call for older torch versions. Every failure is a one-line ``UserError`` naming the file.
"""
from __future__ import annotations

import contextlib
import pickle
import threading
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from ggl.core.environ import without_env
from ggl.core.errors import UserError

_UNSAFE_ENV = ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD",)
_env_lock = threading.Lock()


@contextlib.contextmanager
def _weights_only_enforced() -> Iterator[None]:
    with _env_lock, without_env(_UNSAFE_ENV):
        yield


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def safe_load(path: str | Path, what: str = "file", map_location: Any = "cpu") -> Any:
    """Load ``path`` with ``weights_only=True``, whatever the environment says.

    ``what`` names the file in errors, e.g. "checkpoint" or "GAN prior".
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} '{path}' not found")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is cut or not ours
        raise UserError(f"{what} '{path}' is not a torch file (truncated, plain text, or saved by torch < 1.6); "
                        f"give the file torch.save wrote")
    try:
        with _weights_only_enforced():
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"{what} '{path}' holds objects other than tensors and plain values and was refused "
                        f"(weights_only=True): {_first_line(exc)}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError,
            UnicodeDecodeError) as exc:
        raise UserError(f"{what} '{path}' is truncated or not a torch file ({_first_line(exc)})") from None
