"""workers=2: the sweep's grid points run in two worker processes and give the very results of one process."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from _attack_fixtures import one_torch_thread  # noqa: F401
from ggl.sweep.main import main

TINY = Path(__file__).resolve().parent.parent / "configs" / "sweep_tiny.yaml"


def _per_image(out: Path) -> dict:
    rows = {}
    for res in sorted(out.glob("attack-*/latest/results.json")):
        for r in json.loads(res.read_text())["records"]:
            rows[(res.parent.parent.name, r["capture_id"], r["image"])] = (r["metrics"]["psnr"], r["search"]["loss"])
    return rows


@pytest.mark.usefixtures("one_torch_thread")
def test_two_worker_processes_give_the_results_of_one(tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([str(TINY), f"output_dir={one}", "--no-progress"]) == 0
    assert "5 jobs run, 0 skipped" in capsys.readouterr().out
    assert main([str(TINY), f"output_dir={two}", "workers=2", "--no-progress"]) == 0
    assert "5 jobs run, 0 skipped" in capsys.readouterr().out
    a, b = _per_image(one), _per_image(two)
    assert len(a) == 6 and a == b  # 3 attacks x 2 images, bit for bit (same seed, one thread each)
    assert main([str(TINY), f"output_dir={two}", "workers=2", "--no-progress"]) == 0  # done: nothing reruns
    assert "0 jobs run, 5 skipped" in capsys.readouterr().out


def test_workers_below_one_is_one_line_exit_2(tmp_path, capsys):
    assert main([str(TINY), f"output_dir={tmp_path}", "workers=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "workers" in err[0]
