"""One results schema: typed records written by the attack job and read by the report and the sweep.

* ``FederationRef``: which federation run a capture came from (its run name and timestamp folder),
  resolved by the attack job from ``attack.source`` while that folder exists and written into the
  attack's ``results.json`` (``"federation"``): the report pairs attacks with federations by it, not
  by parsing folder paths (older files without it fall back to the path).
* ``ImageRecord``: one attacked image: setting, defence label, attacker, round, probe (observation
  id), victim id (dataset index), labels, every metric, every label-only baseline's scores, leakage,
  the federation run. ``results.json["records"]`` holds them (``add_records``).
* ``FederationResult``: what the report needs of a federation run's ``results.json``.
* The tidy CSV (``write_csv``/``read_csv``): one row per ``ImageRecord`` plus its federation's
  numbers; floats written with ``repr`` so a read gives back the exact values.

A file that fits none of this fails with ``SchemaError`` whose message is one line naming the file.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ggl.core.atomic import atomic_write_text
from ggl.audit.baselines import BASELINES
from ggl.audit.reid import reid_keys

RECORDS_FORMAT = "ggl.records/1"
METRICS: Tuple[str, ...] = ("psnr", "ssim", "lpips", "mse", "feature_mse", *reid_keys())
GALLERY_KEYS = ("reid_gallery_all", "reid_gallery_class")
ATTACKERS = ("non-adaptive", "adaptive")


class SchemaError(Exception):
    """A results file that does not fit the schema (the message names what is wrong)."""


def _num(value: Any, what: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SchemaError(f"{what} = {value!r} is not a number")
    return float(value)


def _int(value: Any, what: str) -> Optional[int]:
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
    setting: str                      # the attack's setting name, e.g. "q4-adaptive"
    defense: str                      # the defence chain's label, e.g. "q4"
    attacker: str                     # "non-adaptive" or "adaptive"
    adaptive: bool
    seed: Optional[int]
    round: Optional[int]
    probe: Optional[str]              # the observation (capture) id
    victim_id: Optional[int]          # dataset index of the victim's image
    image: int                        # position in the victim's batch
    label: Optional[int]
    label_pred: Optional[int]
    batch_label_acc: Optional[float]
    metrics: Dict[str, Optional[float]] = field(default_factory=dict)
    baselines: Dict[str, Dict[str, Optional[float]]] = field(default_factory=dict)
    leakage: Dict[str, Optional[float]] = field(default_factory=dict)
    federation: Optional[FederationRef] = None
    images: Optional[str] = None      # the attack's images.pt of this setting (for the figure)
    attacker_name: Optional[str] = None  # the portfolio attacker (ggl-l2, ggl-eot, ...); None = older files
    probe_kind: Optional[str] = None  # what the victim sent: fedsgd | local_update | fl (the federation's own)

    @property
    def attacker_id(self) -> str:
        """The attacker that made this record: its portfolio name, else (older files) the L2 GGL one."""
        return self.attacker_name or ("ggl-l2-adaptive" if self.adaptive else "ggl-l2")

    def to_json(self) -> dict:
        blob = asdict(self)
        blob["federation"] = asdict(self.federation) if self.federation else None
        return blob

    @classmethod
    def from_json(cls, blob: Any, what: str) -> "ImageRecord":
        if not isinstance(blob, dict):
            raise SchemaError(f"{what} is not an object")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(blob) - names)
        if unknown:
            raise SchemaError(f"{what} has unknown fields {unknown}")
        try:
            rec = cls(**{**blob, "federation": FederationRef.from_json(blob.get("federation"), f"{what}.federation")})
        except TypeError as exc:
            raise SchemaError(f"{what}: {exc}") from None
        for k, v in rec.metrics.items():
            _num(v, f"{what}.metrics.{k}")
        for b, scores in rec.baselines.items():
            for k, v in scores.items():
                _num(v, f"{what}.baselines.{b}.{k}")
        return rec

    def metric(self, key: str) -> Optional[float]:
        """A metric, ``leakage_<m>``, ``best_baseline_<m>`` or ``baseline_<name>_<m>`` by its flat name."""
        if key.startswith("leakage_"):
            return self.leakage.get(key[len("leakage_"):])
        if key.startswith("best_baseline_"):
            from ggl.audit.baselines import best_baseline

            m = key[len("best_baseline_"):]
            return best_baseline(m, {b: s.get(m) for b, s in self.baselines.items()})
        for b in BASELINES:
            if key.startswith(f"baseline_{b}_"):
                return self.baselines.get(b, {}).get(key[len(f"baseline_{b}_"):])
        return self.metrics.get(key)


def _defense_of(setting: str, adaptive: bool) -> str:
    """The defence label of an attack setting: ``q4@ggl-eot`` (portfolio) or ``q4-adaptive`` -> ``q4``."""
    if "@" in setting:
        return setting.split("@", 1)[0]
    return setting[:-len("-adaptive")] if adaptive and setting.endswith("-adaptive") else setting


def record_from_row(row: dict, config: dict, federation: Optional[FederationRef], images: Optional[str] = None,
                    what: str = "per_image") -> ImageRecord:
    """An ``ImageRecord`` from one ``per_image`` row of an attack's results.json (this version's rows or
    older ones, whose ``baseline_<metric>`` was the random prior sample)."""
    from ggl.audit.baselines import leakage

    if not isinstance(row, dict):
        raise SchemaError(f"{what} is not an object")
    attack = config.get("attack") if isinstance(config.get("attack"), dict) else {}
    models = row.get("attacker_models")  # a portfolio row says what its attacker models
    adaptive = bool(attack.get("adaptive")) if models is None else models != "none"
    attacker_name = row.get("attacker_name")
    if attacker_name is not None and not isinstance(attacker_name, str):
        raise SchemaError(f"{what}.attacker_name = {attacker_name!r} is not a string")
    setting = row.get("setting") or config.get("setting") or "?"
    metrics = {k: _num(row.get(k), f"{what}.{k}") for k in METRICS + GALLERY_KEYS if k in row}
    if "psnr" not in metrics:
        raise SchemaError(f"{what} has no 'psnr'")
    base: Dict[str, Dict[str, Optional[float]]] = {}
    for b in BASELINES:
        scores = {k: _num(row.get(f"baseline_{b}_{k}"), f"{what}.baseline_{b}_{k}") for k in METRICS
                  if f"baseline_{b}_{k}" in row}
        if scores:
            base[b] = scores
    if not base:  # an older row: its baseline_<metric> is the random prior sample
        old = {k: _num(row.get(f"baseline_{k}"), f"{what}.baseline_{k}") for k in METRICS if f"baseline_{k}" in row}
        if old:
            base["prior_sample"] = old
    leak = {k: leakage(k, v, {b: s.get(k) for b, s in base.items()}) for k, v in metrics.items()
            if k not in GALLERY_KEYS}
    return ImageRecord(
        setting=setting, defense=_defense_of(setting, adaptive), attacker=ATTACKERS[adaptive], adaptive=adaptive,
        seed=_int(config.get("seed"), "config.seed"), round=_int(row.get("round"), f"{what}.round"),
        probe=row.get("observation"), victim_id=_int(row.get("dataset_index"), f"{what}.dataset_index"),
        image=_int(row.get("image"), f"{what}.image") or 0, label=_int(row.get("label_true"), f"{what}.label_true"),
        label_pred=_int(row.get("label_pred"), f"{what}.label_pred"),
        batch_label_acc=_num(row.get("batch_label_acc"), f"{what}.batch_label_acc"),
        metrics=metrics, baselines=base, leakage=leak, federation=federation, images=images,
        attacker_name=attacker_name, probe_kind=row.get("probe_kind"))


def add_records(results: dict) -> dict:
    """Add ``federation`` and ``records`` to an attack job's results dict (from its ``config`` and
    ``per_image``); ``ggl.jobs.attack`` calls it before writing results.json. Returns ``results``."""
    config = results.get("config") or {}
    source = (config.get("attack") or {}).get("source")
    ref = FederationRef.from_source(source)
    results["federation"] = asdict(ref) if ref else None
    results["records_format"] = RECORDS_FORMAT
    results["records"] = [record_from_row(r, {**config, "setting": r.get("setting")}, ref,
                                          what=f"per_image[{i}]").to_json()
                          for i, r in enumerate(results.get("per_image") or [])]
    return results


def read_attack_records(path: Path, data: dict) -> List[ImageRecord]:
    """The records of an attack's results.json: its ``records`` when written by this version, else
    built from its ``per_image`` rows. ``SchemaError`` (one line naming the file) when neither fits."""
    config = data.get("config") if isinstance(data.get("config"), dict) else None
    if config is None or not isinstance(config.get("attack"), dict):
        raise SchemaError(f"{path}: an attack result needs a 'config' with an 'attack' section")
    settings = data.get("settings") if isinstance(data.get("settings"), list) else None
    base_dir = Path(path).parent
    try:
        if "records" in data:
            if not isinstance(data["records"], list):
                raise SchemaError("'records' is not a list")
            recs = [ImageRecord.from_json(r, f"records[{i}]") for i, r in enumerate(data["records"])]
        else:
            fed = FederationRef.from_json(data.get("federation"), "federation") if data.get("federation") \
                else FederationRef.from_source(config["attack"].get("source"))
            rows = data.get("per_image")
            if not isinstance(rows, list) or not rows:
                raise SchemaError("no 'records' and no 'per_image' rows (written by a version before per-image "
                                  "scores; rerun the attack)")
            default = config.get("setting") or (settings[0] if settings and len(settings) == 1 else None)
            recs = [record_from_row(r, {**config, "setting": (r.get("setting") if isinstance(r, dict) else None)
                                        or default}, fed, what=f"per_image[{i}]") for i, r in enumerate(rows)]
            summary = data.get("summary") if isinstance(data.get("summary"), dict) else {}
            for r in recs:  # rows of the oldest files lack their batch's label accuracy: the summary has it
                s = summary.get(r.setting) if settings is not None else summary
                if r.batch_label_acc is None and isinstance(s, dict):
                    r.batch_label_acc = _num(s.get("label_acc"), f"summary[{r.setting}].label_acc")
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}") from None
    if settings is not None:
        recs = [r for r in recs if r.setting in settings]
    for r in recs:
        if r.images is None and (base_dir / r.setting / "images.pt").is_file():
            r.images = str(base_dir / r.setting / "images.pt")
    return recs


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
        from ggl.defenses.specs import defenses_label, parse_defense

        final, config = data.get("final"), data.get("config")
        if not isinstance(final, dict) or not isinstance(config, dict):
            raise SchemaError("a federation result needs 'final' and 'config' objects")
        if final.get("test_acc") is None:
            raise SchemaError("final.test_acc is null (the federation has not been evaluated yet)")
        chain = config.get("defenses")
        if not isinstance(chain, list):
            raise SchemaError("config.defenses is missing")
        try:
            label = defenses_label([parse_defense(dict(d), f"defenses[{i}]") for i, d in enumerate(chain)])
        except Exception as exc:
            raise SchemaError(f"config.defenses: {exc}") from None
        privacy = final.get("privacy") if isinstance(final.get("privacy"), dict) else {}
        eps, delta = privacy.get("epsilon"), privacy.get("delta")
        dp = isinstance(eps, (int, float)) and isinstance(delta, (int, float))
        acc = _num(final.get("test_acc"), "final.test_acc")
        if not math.isfinite(acc):
            raise SchemaError(f"final.test_acc = {acc} is not a number")
        return cls(key=(Path(path).parent.parent.name, Path(path).parent.name), dir=str(Path(path).parent),
                   label=label, test_acc=acc,
                   bits_per_round=_num(final.get("uplink_bits_per_round"), "final.uplink_bits_per_round"),
                   compression_ratio=_num(final.get("compression_ratio"), "final.compression_ratio"),
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


# ---------------------------------------------------------------------------------------------
# the tidy CSV: one row per attacked image, with its federation's numbers

FED_COLUMNS = ("test_acc", "bits_per_round", "compression_ratio", "epsilon", "delta", "rounds", "dataset", "model",
               "faults")
ID_COLUMNS = ("setting", "defense", "attacker", "attacker_name", "adaptive", "seed", "dataset", "model", "round",
              "round_test_acc", "probe_kind", "probe", "victim_id", "image", "label", "label_pred", "batch_label_acc",
              "fed_run", "images")


def csv_columns() -> List[str]:
    cols = list(dict.fromkeys(ID_COLUMNS + FED_COLUMNS))
    cols += list(METRICS) + list(GALLERY_KEYS)
    cols += [f"baseline_{b}_{m}" for b in BASELINES for m in METRICS]
    cols += [f"leakage_{m}" for m in METRICS]
    return cols


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def write_csv(path: Path, rows: Iterable[Tuple[ImageRecord, Optional[FederationResult]]]) -> Path:
    """One line per (record, its federation) under the ``csv_columns()`` header; written atomically."""
    path = Path(path)
    with io.StringIO(newline="") as fh:
        w = csv.writer(fh)
        w.writerow(csv_columns())
        for rec, fed in rows:
            flat: Dict[str, Any] = {k: getattr(rec, k) for k in ("setting", "defense", "attacker", "attacker_name",
                                                                 "adaptive", "seed", "round", "probe_kind", "probe",
                                                                 "victim_id", "image", "label", "label_pred",
                                                                 "batch_label_acc", "images")}
            flat["round_test_acc"] = fed.accuracy_at(rec.round) if fed is not None else None
            flat["attacker_name"] = rec.attacker_id  # older files: the L2 GGL attacker they ran
            flat["fed_run"] = "/".join(rec.federation.key) if rec.federation else None
            if rec.images:  # relative to the CSV's folder, so a committed report still finds the runs
                flat["images"] = os.path.relpath(Path(rec.images).resolve(), path.parent.resolve())
            for k in FED_COLUMNS:
                flat[k] = getattr(fed, k) if fed is not None else None
            flat.update({k: rec.metrics.get(k) for k in METRICS + GALLERY_KEYS})
            flat.update({f"baseline_{b}_{m}": rec.baselines.get(b, {}).get(m) for b in BASELINES for m in METRICS})
            flat.update({f"leakage_{m}": rec.leakage.get(m) for m in METRICS})
            w.writerow([_cell(flat.get(c)) for c in csv_columns()])
        return atomic_write_text(path, fh.getvalue())


def read_csv(path: Path) -> List[Tuple[ImageRecord, Optional[FederationResult]]]:
    """The (record, federation numbers or None) pairs of a tidy CSV written by ``write_csv``."""
    path = Path(path)
    try:
        with path.open(newline="") as fh:
            lines = list(csv.DictReader(fh))
    except OSError as exc:
        raise SchemaError(f"{path}: cannot be read ({exc.strerror})") from None
    need = {"setting", "attacker", "psnr", "test_acc"}
    curves = read_accuracy_csv(path.parent / ACCURACY_FILE)
    out = []
    for i, line in enumerate(lines):
        missing = need - set(line)
        if missing:
            raise SchemaError(f"{path}: not a ggl per-image CSV (no column {sorted(missing)[0]!r})")

        def f(key: str) -> Optional[float]:
            v = line.get(key, "")
            try:
                return float(v) if v != "" else None
            except ValueError:
                raise SchemaError(f"{path}: line {i + 2}, column {key!r} = {v!r} is not a number") from None

        def n(key: str) -> Optional[int]:
            v = f(key)
            return None if v is None else int(v)

        fed_run = line.get("fed_run") or ""
        ref = FederationRef(*fed_run.split("/", 1)) if "/" in fed_run else None
        rec = ImageRecord(
            setting=line["setting"], defense=line.get("defense") or line["setting"], attacker=line["attacker"],
            adaptive=line.get("adaptive") == "true", seed=n("seed"), round=n("round"), probe=line.get("probe") or None,
            victim_id=n("victim_id"), image=n("image") or 0, label=n("label"), label_pred=n("label_pred"),
            batch_label_acc=f("batch_label_acc"),
            metrics={k: f(k) for k in METRICS + GALLERY_KEYS},  # an empty cell is a null score
            baselines={b: {m: f(f"baseline_{b}_{m}") for m in METRICS}
                       for b in BASELINES if any(line.get(f"baseline_{b}_{m}", "") != "" for m in METRICS)},
            leakage={m: f(f"leakage_{m}") for m in METRICS},
            federation=ref, images=str(path.parent / line["images"]) if line.get("images") else None,
            attacker_name=line.get("attacker_name") or None, probe_kind=line.get("probe_kind") or None)
        acc = f("test_acc")
        round_acc = f("round_test_acc")
        curve = curves.get(fed_run, ())
        if not curve and round_acc is not None and rec.round is not None:  # no accuracy.csv beside it
            curve = ((rec.round, round_acc),)
        fed = None if acc is None else FederationResult(key=ref.key if ref else ("", ""), dir="", label=rec.defense,
                               test_acc=acc, curve=tuple(curve),
                               bits_per_round=f("bits_per_round"), compression_ratio=f("compression_ratio"),
                               rounds=n("rounds"), dataset=line.get("dataset") or None, model=line.get("model") or None,
                               seed=rec.seed, epsilon=f("epsilon"), delta=f("delta"), faults=n("faults") or 0)
        out.append((rec, fed))
    return out


# ---------------------------------------------------------------------------------------------
# the accuracy curves: one row per (federation run, evaluated round), beside the per-image CSV

ACCURACY_FILE = "accuracy.csv"
ACCURACY_COLUMNS = ("fed_run", "defense", "seed", "round", "test_acc")


def write_accuracy_csv(path: Path, feds: Iterable[FederationResult]) -> Path:
    with io.StringIO(newline="") as fh:
        w = csv.writer(fh)
        w.writerow(ACCURACY_COLUMNS)
        for fed in feds:
            for rnd, acc in fed.curve:
                w.writerow(["/".join(fed.key), fed.label, _cell(fed.seed), rnd, repr(float(acc))])
        return atomic_write_text(Path(path), fh.getvalue())


def read_accuracy_csv(path: Path) -> Dict[str, Tuple[Tuple[int, float], ...]]:
    """{fed_run: ((round, test accuracy), ...)} of an ``accuracy.csv``; {} when there is none."""
    path = Path(path)
    if not path.is_file():
        return {}
    out: Dict[str, List[Tuple[int, float]]] = {}
    with path.open(newline="") as fh:
        for i, line in enumerate(csv.DictReader(fh)):
            try:
                out.setdefault(line["fed_run"], []).append((int(line["round"]), float(line["test_acc"])))
            except (KeyError, TypeError, ValueError):
                raise SchemaError(f"{path}: line {i + 2} is not (fed_run, defense, seed, round, test_acc)") from None
    return {k: tuple(sorted(v)) for k, v in out.items()}
