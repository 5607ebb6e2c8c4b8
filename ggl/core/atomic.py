"""The one way ggl writes a file: complete or not at all, even across a crash or a power cut.

Write a temp file in the same folder (same file system, so the rename is atomic), fsync it, rename it
over the target, fsync the folder (so the rename itself survives a power cut). On any error the temp
file is removed and the previous file, if any, is untouched.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from ggl.core.errors import WriteError


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """``with atomic_open(p) as fh: fh.write(...)``: ``p`` appears, complete, when the block ends."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # the previous file stays intact until this instant
    except BaseException as exc:  # KeyboardInterrupt too: never leave a temp file behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and "unexpected pos" in str(exc)):
            # a full disk or a read-only folder (torch reports a short write as "unexpected pos")
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0][:120]
            raise WriteError(f"cannot write '{path}' ({detail}); free some space or make the folder writable "
                             f"(the previous version of the file, if any, is intact)", detail) from None
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_open(path) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """``write(fh)`` into the file atomically, e.g. ``lambda fh: torch.save(obj, fh)``."""
    with atomic_open(path) as fh:
        write(fh)
    return Path(path)


def fsync_dir(folder: str | Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory fds: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
