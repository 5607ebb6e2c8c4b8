"""One results schema: the typed records the attack job writes and the report and the sweep read.

``ImageRecord`` (one attacked image, from the evaluator to the CSV), ``FederationRef`` (which federation
run a capture came from), ``FederationResult`` (what the report needs of a federation's results.json),
the tidy per-image CSV (``ImageRecord.to_row`` / ``from_row``; floats as ``repr``, so a read gives back
the exact values) and ``accuracy.csv``. Files of format ``RECORDS_FORMAT`` are read here; older formats
only in ``ggl.audit.legacy``. See docs/reference.md, "Outputs", for the columns. A file that fits none of
this fails with ``SchemaError``, one line naming what is wrong.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ggl.audit.baselines import BASELINES, best_baseline
from ggl.audit.metrics import METRICS
from ggl.defenses import defenses_label, parse_chain

RECORDS_FORMAT = "ggl.records/2"
GALLERY_KEYS = ("reid_gallery_all", "reid_gallery_class")
FED_COLUMNS = ("test_acc", "bits_per_round", "compression_ratio", "epsilon", "delta", "rounds", "dataset", "model",
               "faults")  # a row's federation numbers (``to_row``; ggl.audit.tidy writes them)
ATTACKER_KINDS = ("non-adaptive", "adaptive")  # the CSV's ``attacker`` column: does the attacker model the defence


class SchemaError(Exception):
    """A results file that does not fit the schema (the message names what is wrong)."""


def num(value: Any, what: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SchemaError(f"{what} = {value!r} is not a number")
    return float(value)


def integer(value: Any, what: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SchemaError(f"{what} = {value!r} is not an integer")
    return int(value)


@dataclass(frozen=True)
class FederationRef:
    name: str
    stamp: str

    @property
    def key(self) -> Tuple[str, str]:
        return self.name, self.stamp

    @classmethod
    def from_source(cls, source: Any) -> Optional["FederationRef"]:
        """The federation run an ``attack.source`` points into: the folder holding ``results.json`` and
        ``audit/`` (resolved through ``latest``), else the path's last two parts before ``audit``."""
        if not isinstance(source, str) or not source:
            return None
        p = Path(source).expanduser()
        if p.exists():
            p = p.resolve()
            for q in [p] + list(p.parents):
                if (q / "results.json").is_file() and (q / "audit").is_dir():
                    return cls(q.parent.name, q.name)
        parts = list(p.parts)
        if "audit" in parts:
            parts = parts[:parts.index("audit")]
        return cls(parts[-2], parts[-1]) if len(parts) >= 2 else None

    @classmethod
    def from_json(cls, blob: Any, what: str) -> Optional["FederationRef"]:
        if blob is None:
            return None
        if not isinstance(blob, dict) or not all(isinstance(blob.get(k), str) for k in ("name", "stamp")):
            raise SchemaError(f"{what} must be {{'name': str, 'stamp': str}}")
        return cls(blob["name"], blob["stamp"])


@dataclass
class ImageRecord:
    setting: str                      # the attack's setting (its folder): "q4@ggl-eot", or "q4-adaptive" (one attacker)
    defense: str                      # the defence chain's label, e.g. "q4"
    attacker: str                     # the attacker's registered name: ggl-l2, ggl-eot, ...
    adaptive: bool                    # does the attacker model the defence (CSV ``attacker``: adaptive | non-adaptive)
    seed: Optional[int]
    round: Optional[int]
    capture_id: Optional[str]         # the observation (capture) id, e.g. r0003_b001
    victim_index: Optional[int]       # dataset index of the victim's image
    image: int                        # position in the victim's batch
    label: Optional[int]
    label_pred: Optional[int]
    batch_label_acc: Optional[float]
    metrics: Dict[str, Optional[float]] = field(default_factory=dict)
    baselines: Dict[str, Dict[str, Optional[float]]] = field(default_factory=dict)
    leakage: Dict[str, Optional[float]] = field(default_factory=dict)
    federation: Optional[FederationRef] = None
    images: Optional[str] = None      # the attack's images.pt of this setting (for the figure)
    probe: Optional[str] = None       # what the victim sent: fedsgd | local_update | fl
    search: Dict[str, Any] = field(default_factory=dict)  # the search behind it: seed, index (0, 1, ... of
    #                                   attack.search_seeds; CSV search_seed), loss, evaluations, seconds

    def to_json(self) -> dict:
        blob = asdict(self)
        blob["federation"] = asdict(self.federation) if self.federation else None
        return blob

    @classmethod
    def from_json(cls, blob: Any, what: str) -> "ImageRecord":
        if not isinstance(blob, dict):
            raise SchemaError(f"{what} is not an object")
        unknown = sorted(set(blob) - {f.name for f in fields(cls)})
        if unknown:
            raise SchemaError(f"{what} has unknown fields {unknown}")
        try:
            rec = cls(**{**blob, "federation": FederationRef.from_json(blob.get("federation"), f"{what}.federation")})
        except TypeError as exc:
            raise SchemaError(f"{what}: {exc}") from None
        for k, v in rec.metrics.items():
            num(v, f"{what}.metrics.{k}")
        for k, v in rec.search.items():
            num(v, f"{what}.search.{k}")
        for b, scores in rec.baselines.items():
            for k, v in scores.items():
                num(v, f"{what}.baselines.{b}.{k}")
        return rec

    def metric(self, key: str) -> Optional[float]:
        """A metric, ``leakage_<m>``, ``best_baseline_<m>`` or ``baseline_<name>_<m>`` by its flat name."""
        if key.startswith("leakage_"):
            return self.leakage.get(key[len("leakage_"):])
        if key.startswith("best_baseline_"):
            m = key[len("best_baseline_"):]
            return best_baseline(m, {b: s.get(m) for b, s in self.baselines.items()})
        for b in BASELINES:
            if key.startswith(f"baseline_{b}_"):
                return self.baselines.get(b, {}).get(key[len(f"baseline_{b}_"):])
        return self.metrics.get(key)

    # ------------------------------------------------------------------ the CSV row (today's column names)
    def to_row(self, fed: Optional["FederationResult"], folder: Path) -> Dict[str, Any]:
        """The CSV cells of this record and its federation (``images`` relative to the CSV's ``folder``)."""
        row: Dict[str, Any] = {"setting": self.setting, "defense": self.defense,
                               "attacker": ATTACKER_KINDS[self.adaptive], "attacker_name": self.attacker,
                               "adaptive": self.adaptive, "seed": self.seed,
                               "fed_seed": fed.seed if fed is not None and fed.seed is not None else self.seed,
                               "search_seed": self.search.get("index", 0), "round": self.round,
                               "probe_kind": self.probe, "probe": self.capture_id, "victim_id": self.victim_index,
                               "image": self.image, "label": self.label, "label_pred": self.label_pred,
                               "batch_label_acc": self.batch_label_acc,
                               "round_test_acc": fed.accuracy_at(self.round) if fed is not None else None,
                               "fed_run": "/".join(self.federation.key) if self.federation else None,
                               "images": os.path.relpath(Path(self.images).resolve(), folder.resolve())
                               if self.images else None}
        row.update({k: getattr(fed, k) if fed is not None else None for k in FED_COLUMNS})
        row.update({k: self.metrics.get(k) for k in (*METRICS, *GALLERY_KEYS)})
        row.update({f"baseline_{b}_{m}": self.baselines.get(b, {}).get(m) for b in BASELINES for m in METRICS})
        row.update({f"leakage_{m}": self.leakage.get(m) for m in METRICS})
        return row

    @classmethod
    def from_row(cls, line: Dict[str, str], folder: Path, f, n) -> "ImageRecord":
        """The record of one CSV line (``f``/``n``: the line's float / int cell readers)."""
        fed_run = line.get("fed_run") or ""
        return cls(
            setting=line["setting"], defense=line.get("defense") or line["setting"],
            attacker=line.get("attacker_name") or ("ggl-l2-adaptive" if line.get("adaptive") == "true" else "ggl-l2"),
            adaptive=line.get("adaptive") == "true", seed=n("seed"), round=n("round"),
            capture_id=line.get("probe") or None, victim_index=n("victim_id"), image=n("image") or 0,
            label=n("label"), label_pred=n("label_pred"), batch_label_acc=f("batch_label_acc"),
            metrics={k: f(k) for k in (*METRICS, *GALLERY_KEYS)},  # an empty cell is a null score
            baselines={b: {m: f(f"baseline_{b}_{m}") for m in METRICS}
                       for b in BASELINES if any(line.get(f"baseline_{b}_{m}", "") != "" for m in METRICS)},
            leakage={m: f(f"leakage_{m}") for m in METRICS},
            federation=FederationRef(*fed_run.split("/", 1)) if "/" in fed_run else None,
            images=str(folder / line["images"]) if line.get("images") else None, probe=line.get("probe_kind") or None,
            search={"index": n("search_seed") or 0})


def parse_records(path: Path, data: dict) -> List[ImageRecord]:
    """The records of a ``RECORDS_FORMAT`` attack results.json (``ggl.audit.legacy`` reads every format)."""
    if not isinstance(data.get("records"), list):
        raise SchemaError(f"{path}: 'records' is not a list")
    try:
        return [ImageRecord.from_json(r, f"records[{i}]") for i, r in enumerate(data["records"])]
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}") from None


@dataclass
class FederationResult:
    key: Tuple[str, str]              # (run name, timestamp folder)
    dir: str
    label: str                        # the defence chain's label
    test_acc: float
    bits_per_round: Optional[float]
    compression_ratio: Optional[float]
    rounds: Optional[int]
    dataset: Optional[str]
    model: Optional[str]
    seed: Optional[int]
    epsilon: Optional[float]
    delta: Optional[float]
    faults: int = 0                   # failed clients + rejected updates + rejected aggregates: the report flags them
    curve: Tuple[Tuple[int, float], ...] = ()  # (rounds completed, test accuracy) of every evaluation

    def accuracy_at(self, rnd: Optional[int]) -> Optional[float]:
        """Test accuracy of the global model after ``rnd`` rounds (the model a round-``rnd`` capture
        attacked), where it was evaluated."""
        return next((acc for r, acc in self.curve if r == rnd), None)

    @classmethod
    def from_json(cls, path: Path, data: dict) -> "FederationResult":
        final, config = data.get("final"), data.get("config")
        if not isinstance(final, dict) or not isinstance(config, dict):
            raise SchemaError("a federation result needs 'final' and 'config' objects")
        if final.get("test_acc") is None:
            raise SchemaError("final.test_acc is null (the federation has not been evaluated yet)")
        chain = config.get("defenses")
        if not isinstance(chain, list):
            raise SchemaError("config.defenses is missing")
        try:
            label = defenses_label(parse_chain(chain))
        except Exception as exc:
            raise SchemaError(f"config.defenses: {exc}") from None
        privacy = final.get("privacy") if isinstance(final.get("privacy"), dict) else {}
        eps, delta = privacy.get("epsilon"), privacy.get("delta")
        dp = isinstance(eps, (int, float)) and isinstance(delta, (int, float))
        acc = num(final.get("test_acc"), "final.test_acc")
        if not math.isfinite(acc):
            raise SchemaError(f"final.test_acc = {acc} is not a number")
        return cls(key=(Path(path).parent.parent.name, Path(path).parent.name), dir=str(Path(path).parent),
                   label=label, test_acc=acc,
                   bits_per_round=num(final.get("uplink_bits_per_round"), "final.uplink_bits_per_round"),
                   compression_ratio=num(final.get("compression_ratio"), "final.compression_ratio"),
                   rounds=final.get("rounds"), dataset=(config.get("data") or {}).get("name"),
                   model=(config.get("model") or {}).get("name"), seed=config.get("seed"),
                   epsilon=float(eps) if dp else None, delta=float(delta) if dp else None,
                   faults=sum(int(final.get(k) or 0) for k in ("failed_clients", "rejected_updates",
                                                                 "rejected_aggregates")),
                   curve=_curve(data.get("history")))


def _curve(history: Any) -> Tuple[Tuple[int, float], ...]:
    """(round, test accuracy) pairs of a federation's ``history`` (entries without both are skipped)."""
    if history is None:
        return ()
    if not isinstance(history, list):
        raise SchemaError("'history' is not a list")
    out = []
    for h in history:
        if isinstance(h, dict) and isinstance(h.get("round"), int) and isinstance(h.get("test_acc"), (int, float)) \
                and not isinstance(h.get("test_acc"), bool) and math.isfinite(h["test_acc"]):
            out.append((int(h["round"]), float(h["test_acc"])))
    return tuple(sorted(out))
