"""ggl.audit.records on what the attack job really writes: its per-image rows become typed records (with the
federation they came from), the report reads them, and the CSV gives back the same records."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from _attack_fixtures import TinyPrior, one_torch_thread  # noqa: F401
from ggl.cli import attack_main
from ggl.report import collect
from ggl.audit.records import ImageRecord, SchemaError, add_records, read_attack_records, read_csv, write_csv

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_attack_rows_become_records_that_round_trip_through_json_and_csv(tmp_path, monkeypatch):
    monkeypatch.setattr("ggl.jobs.attack.load_attack_prior", lambda path, *_: TinyPrior())
    assert attack_main([f"output_dir={tmp_path / 'runs'}", "logger.mode=disabled", "data.name=digits",
                        "audit.num_images=2", "attack.optimizer=cmaes", "attack.generations=2",
                        "attack.population=6", "attack.progress=false"]) == 0
    path = Path(tmp_path / "runs" / "attack" / "latest").resolve() / "results.json"
    data = add_records(json.loads(path.read_text()))  # what ggl.jobs.attack writes once it calls add_records
    path.write_text(json.dumps(data))
    recs = read_attack_records(path, json.loads(path.read_text()))
    assert [(r.setting, r.attacker, r.image) for r in recs] == [("fp32", "non-adaptive", 0), ("fp32", "non-adaptive", 0),
                                                               ("q4", "non-adaptive", 0), ("q4", "non-adaptive", 0)]
    rows = data["per_image"]
    for rec, row in zip(recs, rows):
        assert rec.victim_id == row["dataset_index"] and rec.label == row["label_true"] and rec.probe == row["observation"]
        assert rec.metrics["psnr"] == row["psnr"] and rec.metrics["reid_top1_pixel_class"] == row["reid_top1_pixel_class"]
        assert set(rec.baselines) == {"prior_mean", "public_mean", "prior_sample"}
        assert rec.leakage["psnr"] == pytest.approx(row["leakage_psnr"])
        assert rec.images and Path(rec.images).is_file()
    assert ImageRecord.from_json(recs[0].to_json(), "x") == recs[0]
    found = collect([path.parent])
    assert [(p["setting"], p["n_images"]) for p in found["rows"]] == [("fp32", 2), ("q4", 2)]
    csv_path = write_csv(tmp_path / "out" / "per_image.csv", found["pairs"])
    back = [rec for rec, _ in read_csv(csv_path)]
    for a, (b, _) in zip(back, found["pairs"]):
        assert a.metrics == b.metrics and a.baselines == b.baselines and a.leakage == b.leakage
        assert (a.setting, a.victim_id, a.label, a.round, a.probe) == (b.setting, b.victim_id, b.label, b.round, b.probe)
        assert Path(a.images).resolve() == Path(b.images).resolve()


def test_a_record_with_an_unknown_field_or_a_text_score_is_one_line_naming_it(tmp_path):
    good = ImageRecord("q4", "q4", "non-adaptive", False, 0, 0, "o", 1, 0, 3, 3, 1.0, {"psnr": 12.0}).to_json()
    path = tmp_path / "results.json"
    for bad, msg in (({**good, "colour": 1}, "records[0] has unknown fields ['colour']"),
                     ({**good, "metrics": {"psnr": "high"}}, "records[0].metrics.psnr = 'high' is not a number")):
        with pytest.raises(SchemaError) as err:
            read_attack_records(path, {"config": {"attack": {}}, "records": [bad]})
        assert str(err.value) == f"{path}: {msg}"
