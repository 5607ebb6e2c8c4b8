"""Reading the runs: every results.json under the folders (never the network), attacks paired with the
federation whose captures they attacked (the attack's recorded ``federation``; older files: its
``attack.source`` path), the newest attack of each (defence, attacker, dataset, model, seed) kept.
A results.json that cannot be read or lacks its fields is reported by path and skipped.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ggl.audit.legacy import read_attack_records
from ggl.audit.records import FederationRef, FederationResult, ImageRecord, SchemaError
from ggl.report.points import Pair


@dataclass
class Collected:
    pairs: List[Pair]                                  # (record, its federation or None), newest attack wins
    feds: List[FederationResult]                       # the federations some attack is paired with
    feds_alone: List[FederationResult] = field(default_factory=list)   # federations without an attack yet
    skipped: List[Tuple[str, str]] = field(default_factory=list)      # (path, why)
    ignored: int = 0                                   # results of other jobs (GAN runs)
    superseded: int = 0                                # older attacks of a key already read
    n_feds: int = 0
    n_attacks: int = 0
    n_files: int = 0


def results_files(roots: Iterable[Path]) -> List[Path]:
    """Every results.json under the roots (not through symlinks such as ``latest``), each once."""
    out, seen = [], set()
    for root in roots:
        root = Path(root)
        candidates = [root] if root.is_file() else []
        if not root.is_file():
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                dirnames[:] = sorted(d for d in dirnames if d != "wandb" and not d.startswith("."))
                if "results.json" in filenames:
                    candidates.append(Path(dirpath) / "results.json")
        for c in candidates:
            if c.resolve() not in seen:
                seen.add(c.resolve())
                out.append(c)
    return out


def is_json_object(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text()), dict)
    except (OSError, ValueError):
        return False


def _kind(data: dict) -> Optional[str]:
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    if "final" in data or config.get("task") == "fedavg":
        return "fed"
    if "summary" in data or "records" in data or config.get("task") == "attack":
        return "attack"
    return None  # GAN runs and other jobs: not part of this report


def _load(files: Sequence[Path], out: Collected) -> List[Tuple[Path, dict]]:
    loaded = []
    for path in files:
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            out.skipped.append((str(path), f"cannot be read as JSON ({str(exc).splitlines()[0][:120]})"))
            continue
        loaded.append((path, data))
    return loaded


def _read(loaded, out: Collected) -> Tuple[Dict[Tuple[str, str], FederationResult], list]:
    """Federations by key and (path, records) of the attacks; the rest counted or skipped into ``out``."""
    # a whole attack run (with "settings"): the per-setting copies below it, written before
    # ggl.records/2, hold the same images
    tops = {path.parent.resolve() for path, data in loaded if isinstance(data.get("settings"), list)}
    feds, attacks = {}, []
    for path, data in loaded:
        kind = _kind(data)
        try:
            if kind == "fed":
                fed = FederationResult.from_json(path, data)
                feds[fed.key] = fed
            elif kind == "attack":
                if "settings" not in data and path.parent.parent.resolve() in tops:
                    continue
                attacks.append((path, read_attack_records(path, data)))
            else:
                out.ignored += 1
        except SchemaError as exc:
            msg = str(exc)
            out.skipped.append((str(path), msg[len(f"{path}: "):] if msg.startswith(f"{path}: ") else msg))
    return feds, attacks


def collect(roots: Sequence[Path]) -> Collected:
    """The (record, federation) pairs under ``roots``: one unit per (attack run, setting), the newest unit
    of each (defence, attacker, dataset, model, seed) wins."""
    files = results_files(roots)
    out = Collected(pairs=[], feds=[], n_files=len(files))
    feds, attacks = _read(_load(files, out), out)
    latest_by_name = {key[0]: fed for key, fed in sorted(feds.items())}

    def fed_of(ref: Optional[FederationRef]) -> Optional[FederationResult]:
        if ref is None:
            return None
        return feds.get(ref.key) or (latest_by_name.get(ref.name) if ref.stamp == "latest" else None)

    units: Dict[tuple, Tuple[tuple, List[Pair]]] = {}
    for path, recs in attacks:
        by_setting: Dict[str, List[ImageRecord]] = {}
        for r in recs:
            by_setting.setdefault(r.setting, []).append(r)
        for group in by_setting.values():
            out.n_attacks += 1
            fed = fed_of(group[0].federation)
            key = (group[0].defense, group[0].attacker, fed.dataset if fed else None, fed.model if fed else None,
                   group[0].seed)
            stamp = (path.parent.name, str(path.parent))
            if key in units:
                out.superseded += 1
                if units[key][0] >= stamp:
                    continue
            units[key] = (stamp, [(r, fed) for r in group])
    paired_feds = set()
    for _, unit in units.values():
        out.pairs += unit
        if unit and unit[0][1] is not None:
            paired_feds.add(unit[0][1].key)
    out.feds = [feds[k] for k in sorted(paired_feds)]
    out.feds_alone = [f for k, f in sorted(feds.items()) if k not in paired_feds]
    out.n_feds = len(feds)
    return out
