"""Readers of the attack results written before ``ggl.records/2``: the one place older formats appear.

``ggl.records/1`` (records under their old field names), ``per_image``-only files (rows, no records)
and pre-records files (whose ``baseline_<metric>`` was the random prior sample and whose rows lack
``batch_label_acc``). ``read_attack_records`` reads every format, this version's included. Nothing
here is ever written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from ggl.audit.baselines import BASELINES, leakage
from ggl.audit.metrics import METRICS
from ggl.audit.records import (GALLERY_KEYS, RECORDS_FORMAT, FederationRef, ImageRecord,
                               SchemaError, integer, num, parse_records)

# ggl.records/1 field -> its ggl.records/2 name
RENAMED_1 = {"probe": "capture_id", "victim_id": "victim_index", "probe_kind": "probe"}


def read_attack_records(path: Path, data: dict) -> List[ImageRecord]:
    """The records of an attack's results.json of any format (``SchemaError``, one line naming the
    file, when none fits); each record without ``images`` gets ``<run>/<setting>/images.pt`` if it exists."""
    config = data.get("config") if isinstance(data.get("config"), dict) else None
    if config is None or not isinstance(config.get("attack"), dict):
        raise SchemaError(f"{path}: an attack result needs a 'config' with an 'attack' section")
    settings = data.get("settings") if isinstance(data.get("settings"), list) else None
    if "records" in data and data.get("records_format") == RECORDS_FORMAT:
        recs = parse_records(path, data)
    else:
        try:
            recs = _records_1(data) if "records" in data else _from_rows(data, config, settings)
        except SchemaError as exc:
            raise SchemaError(f"{path}: {exc}") from None
    if settings is not None:
        recs = [r for r in recs if r.setting in settings]
    base_dir = Path(path).parent
    for r in recs:
        if r.images is None and (base_dir / r.setting / "images.pt").is_file():
            r.images = str(base_dir / r.setting / "images.pt")
    return recs


def _records_1(data: dict) -> List[ImageRecord]:
    """``ggl.records/1``: the same records under their old names (``attacker`` was the kind, ``attacker_name``
    the portfolio name, None = the L2 GGL attacker)."""
    if not isinstance(data["records"], list):
        raise SchemaError("'records' is not a list")
    out = []
    for i, blob in enumerate(data["records"]):
        if not isinstance(blob, dict):
            raise SchemaError(f"records[{i}] is not an object")
        blob = {RENAMED_1.get(k, k): v for k, v in blob.items()}
        adaptive = bool(blob.get("adaptive"))
        blob["attacker"] = blob.pop("attacker_name", None) or ("ggl-l2-adaptive" if adaptive else "ggl-l2")
        out.append(ImageRecord.from_json(blob, f"records[{i}]"))
    return out


def _from_rows(data: dict, config: dict, settings: Optional[list]) -> List[ImageRecord]:
    """Records from a file's ``per_image`` rows (no ``records``)."""
    fed = FederationRef.from_json(data.get("federation"), "federation") if data.get("federation") \
        else FederationRef.from_source(config["attack"].get("source"))
    rows = data.get("per_image")
    if not isinstance(rows, list) or not rows:
        raise SchemaError("no 'records' and no 'per_image' rows (written by a version before per-image "
                          "scores; rerun the attack)")
    default = config.get("setting") or (settings[0] if settings and len(settings) == 1 else None)
    recs = [record_from_row(r, {**config, "setting": (r.get("setting") if isinstance(r, dict) else None) or default},
                            fed, what=f"per_image[{i}]") for i, r in enumerate(rows)]
    summary = data.get("summary") if isinstance(data.get("summary"), dict) else {}
    for r in recs:  # rows of the oldest files lack their batch's label accuracy: the summary has it
        s = summary.get(r.setting) if settings is not None else summary
        if r.batch_label_acc is None and isinstance(s, dict):
            r.batch_label_acc = num(s.get("label_acc"), f"summary[{r.setting}].label_acc")
    return recs


def _defense_of(setting: str, adaptive: bool) -> str:
    """The defence label of an attack setting: ``q4@ggl-eot`` (portfolio) or ``q4-adaptive`` -> ``q4``."""
    if "@" in setting:
        return setting.split("@", 1)[0]
    return setting[:-len("-adaptive")] if adaptive and setting.endswith("-adaptive") else setting


def _baselines(row: dict, what: str) -> Dict[str, Dict[str, Optional[float]]]:
    base: Dict[str, Dict[str, Optional[float]]] = {}
    for b in BASELINES:
        scores = {k: num(row.get(f"baseline_{b}_{k}"), f"{what}.baseline_{b}_{k}") for k in METRICS
                  if f"baseline_{b}_{k}" in row}
        if scores:
            base[b] = scores
    if not base:  # a pre-records row: its baseline_<metric> is the random prior sample
        old = {k: num(row.get(f"baseline_{k}"), f"{what}.baseline_{k}") for k in METRICS if f"baseline_{k}" in row}
        if old:
            base["prior_sample"] = old
    return base


def record_from_row(row: dict, config: dict, federation: Optional[FederationRef], images: Optional[str] = None,
                    what: str = "per_image") -> ImageRecord:
    """An ``ImageRecord`` from one ``per_image`` row of an older attack results.json."""
    if not isinstance(row, dict):
        raise SchemaError(f"{what} is not an object")
    attack = config.get("attack") if isinstance(config.get("attack"), dict) else {}
    models = row.get("attacker_models")  # a portfolio row says what its attacker models
    adaptive = bool(attack.get("adaptive")) if models is None else models != "none"
    name = row.get("attacker_name")
    if name is not None and not isinstance(name, str):
        raise SchemaError(f"{what}.attacker_name = {name!r} is not a string")
    setting = row.get("setting") or config.get("setting") or "?"
    metrics = {k: num(row.get(k), f"{what}.{k}") for k in (*METRICS, *GALLERY_KEYS) if k in row}
    if "psnr" not in metrics:
        raise SchemaError(f"{what} has no 'psnr'")
    base = _baselines(row, what)
    leak = {k: leakage(k, v, {b: s.get(k) for b, s in base.items()}) for k, v in metrics.items()
            if k not in GALLERY_KEYS}
    return ImageRecord(
        setting=setting, defense=_defense_of(setting, adaptive),
        attacker=name or ("ggl-l2-adaptive" if adaptive else "ggl-l2"), adaptive=adaptive,
        seed=integer(config.get("seed"), "config.seed"), round=integer(row.get("round"), f"{what}.round"),
        capture_id=row.get("observation"),
        victim_index=integer(row.get("dataset_index"), f"{what}.dataset_index"),
        image=integer(row.get("image"), f"{what}.image") or 0,
        label=integer(row.get("label_true"), f"{what}.label_true"),
        label_pred=integer(row.get("label_pred"), f"{what}.label_pred"),
        batch_label_acc=num(row.get("batch_label_acc"), f"{what}.batch_label_acc"),
        metrics=metrics, baselines=base, leakage=leak, federation=federation, images=images,
        probe=row.get("probe_kind"))
