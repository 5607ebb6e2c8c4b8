"""Benchmarks write under runs/ (git-ignored) by default; into reports/ only with --out plus --overwrite."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from _output import output_folder  # noqa: E402

FILES = ("budget.json", "budget.png", "curves.json")


def test_default_is_under_runs_and_ignored_by_git():
    folder = output_folder("bench_budget", None, False, FILES)
    assert folder == REPO / "runs" / "benchmarks" / "bench_budget"
    ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", str(folder / "budget.json")])
    assert ignored.returncode == 0  # git status stays clean


def test_reports_only_with_overwrite(capsys):
    with pytest.raises(SystemExit) as e:
        output_folder("bench_budget", str(REPO / "reports" / "budget"), False, FILES)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "inside reports/" in err[0] and "--overwrite" in err[0]
    assert output_folder("bench_budget", str(REPO / "reports" / "budget"), True, FILES) == REPO / "reports" / "budget"


def test_earlier_output_is_kept_without_overwrite(tmp_path, capsys):
    assert output_folder("x", str(tmp_path), False, FILES) == tmp_path.resolve()
    (tmp_path / "budget.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        output_folder("x", str(tmp_path), False, FILES)
    assert e.value.code == 2 and "already holds budget.json" in capsys.readouterr().err
    assert output_folder("x", str(tmp_path), True, FILES) == tmp_path.resolve()


def test_bench_budget_refuses_reports_before_any_work(capsys):
    spec = importlib.util.spec_from_file_location("bench_budget", REPO / "benchmarks" / "bench_budget.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit) as e:
        bench.main(["--out", str(REPO / "reports" / "budget")])
    assert e.value.code == 2 and "inside reports/" in capsys.readouterr().err
