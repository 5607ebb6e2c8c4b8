"""ggl.audit.records on what the attack job really writes: typed records (ggl.records/2, with the federation
they came from) that round-trip through JSON, the report reads them, and the CSV gives back the same records."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from _attack_fixtures import TinyPrior, one_torch_thread  # noqa: F401
from ggl.cli import attack_main
from ggl.audit.legacy import read_attack_records
from ggl.audit.records import RECORDS_FORMAT, ImageRecord, SchemaError
from ggl.audit.tidy import read_csv, write_csv
from ggl.report.collect import collect
from ggl.report.points import build_points, measured_pairs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_attack_rows_become_records_that_round_trip_through_json_and_csv(tmp_path, monkeypatch):
    monkeypatch.setattr("ggl.jobs.attack.load_attack_prior", lambda path, *_: TinyPrior())
    assert attack_main([f"output_dir={tmp_path / 'runs'}", "logger.mode=disabled", "data.name=digits",
                        "audit.num_images=2", "attack.optimizer=cmaes", "attack.generations=2",
                        "attack.population=6", "attack.progress=false"]) == 0
    path = Path(tmp_path / "runs" / "attack" / "latest").resolve() / "results.json"
    data = json.loads(path.read_text())
    assert data["records_format"] == RECORDS_FORMAT and "per_image" not in data
    recs = read_attack_records(path, data)
    assert [(r.setting, r.attacker, r.adaptive, r.image) for r in recs] == [
        ("fp32", "ggl-l2", False, 0), ("fp32", "ggl-l2", False, 0), ("q4", "ggl-l2", False, 0), ("q4", "ggl-l2", False, 0)]
    for rec in recs:
        assert rec.victim_index is not None and rec.capture_id and rec.label is not None
        assert set(rec.baselines) == {"prior_mean", "public_mean", "prior_sample"}
        assert rec.leakage["psnr"] == pytest.approx(rec.metrics["psnr"] - rec.metric("best_baseline_psnr"))
        assert rec.images and Path(rec.images).is_file()
    assert ImageRecord.from_json(recs[0].to_json(), "x") == recs[0]
    points = build_points(collect([path.parent]).pairs)
    assert [(p.key.defense, p.n_images) for p in points] == [("fp32", 2), ("q4", 2)]
    pairs = measured_pairs(points)
    csv_path = write_csv(tmp_path / "out" / "per_image.csv", pairs)
    back = [rec for rec, _ in read_csv(csv_path)]
    for a, (b, _) in zip(back, pairs):
        assert a.metrics == b.metrics and a.baselines == b.baselines and a.leakage == b.leakage
        assert (a.setting, a.victim_index, a.label, a.round, a.capture_id, a.attacker) == \
            (b.setting, b.victim_index, b.label, b.round, b.capture_id, b.attacker)
        assert Path(a.images).resolve() == Path(b.images).resolve()


def test_a_record_with_an_unknown_field_or_a_text_score_is_one_line_naming_it(tmp_path):
    good = ImageRecord("q4", "q4", "ggl-l2", False, 0, 0, "o", 1, 0, 3, 3, 1.0, {"psnr": 12.0}).to_json()
    path = tmp_path / "results.json"
    for bad, msg in (({**good, "colour": 1}, "records[0] has unknown fields ['colour']"),
                     ({**good, "metrics": {"psnr": "high"}}, "records[0].metrics.psnr = 'high' is not a number")):
        with pytest.raises(SchemaError) as err:
            read_attack_records(path, {"config": {"attack": {}}, "records_format": RECORDS_FORMAT, "records": [bad]})
        assert str(err.value) == f"{path}: {msg}"
