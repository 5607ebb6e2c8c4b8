"""Read what an offline W&B run wrote: the records of its ``run-<id>.wandb`` file (W&B's transaction log:
a 7-byte ``:W&B`` header, then LevelDB-log chunks of protobuf ``Record``s, parsed with wandb's own
``wandb_internal_pb2``), and the tables it wrote under ``files/media/table/``."""
from __future__ import annotations

import json
import re
import struct
import time
from pathlib import Path
from typing import List

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def offline_runs(folder: Path) -> List[Path]:
    """The ``offline-run-*`` folders under ``folder`` (any depth), in time order (their names start with it)."""
    return sorted(Path(folder).rglob("offline-run-*"), key=lambda p: p.name)


def records(run_dir: Path, wait_s: float = 30.0) -> list:
    """The run's records; W&B's service may still be writing the file after ``run.finish()`` returned, so
    this waits (up to ``wait_s``) for the ``exit`` record that ends a finished run."""
    deadline = time.monotonic() + wait_s
    while True:
        out = _parse(Path(run_dir))
        if any(r.WhichOneof("record_type") == "exit" for r in out) or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _parse(run_dir: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = list(Path(run_dir).glob("run-*.wandb"))
    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (FULL, FIRST) else buf + chunk
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def run_record(run_dir: Path):
    return next(r.run for r in records(run_dir) if r.WhichOneof("record_type") == "run")


def artifacts(run_dir: Path) -> list:
    """(type, name, used, digest) of each artifact the run logged (used: declared an input)."""
    return [(r.artifact.type, r.artifact.name, r.artifact.use_after_commit, r.artifact.digest)
            for r in records(run_dir) if r.WhichOneof("record_type") == "artifact"
            and not r.artifact.type.startswith("run_")]


def tables(run_dir: Path, key: str) -> list:
    """The ``wandb.Table``s logged under ``key``, as W&B serialised them into the run's ``run_table``
    artifact (its manifest names the staged ``.table.json``; image cells there are image-file dicts,
    media files of the same artifact). The copy under files/media/table holds the cells' type names only."""
    out = []
    for r in records(run_dir):
        a = r.artifact if r.WhichOneof("record_type") == "artifact" else None
        if a is not None and a.type == "run_table" and re.search(rf"-{re.escape(key.replace('/', ''))}(-|$)", a.name):
            (entry,) = [c for c in a.manifest.contents if c.path.endswith(".table.json")]
            table = json.loads(Path(entry.local_path).read_text())
            table["media"] = {c.path for c in a.manifest.contents}
            out.append(table)
    return out
