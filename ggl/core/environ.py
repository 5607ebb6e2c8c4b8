"""Environment variables that must not reach some code, removed for its duration and then restored."""
from __future__ import annotations

import contextlib
import os
from typing import Iterable, Iterator


@contextlib.contextmanager
def without_env(names: Iterable[str]) -> Iterator[None]:
    """Remove ``names`` from ``os.environ`` inside the block; put back what was there after it."""
    saved = {k: os.environ.pop(k) for k in names if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)
