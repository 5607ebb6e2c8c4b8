"""The report's W&B run (``python -m ggl.report ... --wandb offline|online``).

It logs the points table, a per-image table with numbers (not formatted text) and, where the attack's
``images.pt`` is still there, the original and reconstructed image of each row; the figures; the
report's files as a ``report`` artifact; and declares each attack setting it read (an ``attack``
artifact, ``ggl.runs.artifacts``) as its input, so W&B shows captures -> attack -> report.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ggl.audit.tidy import csv_columns
from ggl.core.errors import UserError
from ggl.core.safe_load import safe_load
from ggl.report.points import Point, measured_pairs
from ggl.report.tables import TABLE_COLUMNS, table_rows
from ggl.runs.artifacts import (ATTACK, ATTACK_FILES, REPORT, artifact_name, attack_artifact_name, draft, log_output,
                                use_input)
from ggl.runs.logger import LoggerConfig, resolve_logger

IMAGE_COLUMNS = ("original", "reconstruction")


def _images_of(pairs) -> Dict[Tuple[str, int], tuple]:
    """(images.pt path, record position) -> (original, reconstruction) tensors, where the file matches."""
    by_file = defaultdict(list)
    for rec, _ in pairs:
        if rec.images:
            by_file[rec.images].append(rec)
    out = {}
    for path, recs in by_file.items():
        try:
            blob = safe_load(path, "report images")  # weights_only, whatever the environment says
        except UserError:  # missing, cut or not ours: no image columns for these records
            continue
        recs = sorted(recs, key=lambda r: (r.round if r.round is not None else -1, r.capture_id or "", r.image))
        if len(blob.get("originals", ())) != len(recs):  # not the records' images: no image columns
            continue
        for k, rec in enumerate(recs):
            out[(path, id(rec))] = (blob["originals"][k], blob["reconstructions"][k])
    return out


def per_image_table(points: List[Point], out: Path):
    """A ``wandb.Table``: the per-image CSV's columns as numbers (None where missing), plus image columns."""
    import wandb

    pairs = measured_pairs(points)
    columns = csv_columns()
    images = _images_of(pairs)
    rows = []
    for rec, fed in pairs:
        row = rec.to_row(fed, out)
        pics = images.get((rec.images, id(rec)))
        rows.append([row.get(c) for c in columns] +
                    ([wandb.Image(x.float().clamp(0, 1)) for x in pics] if pics else [None, None]))
    return wandb.Table(columns=columns + list(IMAGE_COLUMNS), data=rows, allow_mixed_types=True)


def log_report(points: List[Point], out: Path, mode: str, project: Optional[str], files=()) -> None:
    import wandb

    tracking = resolve_logger(LoggerConfig(mode=mode, project=project))
    if not tracking.enabled:
        return
    run = wandb.init(**tracking.init_kwargs(), job_type="report", name="privacy-utility-report", dir=str(out),
                     tags=["report"])
    try:
        for setting_dir in sorted({Path(p.images).parent for p in points if p.images is not None}):
            use_input(run, draft(attack_artifact_name(setting_dir), ATTACK, [setting_dir / f for f in ATTACK_FILES]))
        run.log({"privacy_utility/table": wandb.Table(columns=TABLE_COLUMNS, data=table_rows(points)),
                 "privacy_utility/per_image": per_image_table(points, out),
                 "privacy_utility/plot": wandb.Image(str(out / "privacy_utility.png"))})
        if (out / "reconstructions.png").is_file():
            run.log({"privacy_utility/reconstructions": wandb.Image(str(out / "reconstructions.png"))})
        log_output(run, draft(artifact_name("report", out.resolve().name), REPORT, [out / f for f in files]))
    finally:
        run.finish()
