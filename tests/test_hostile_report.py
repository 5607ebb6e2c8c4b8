"""Hostile report inputs and outputs (issue 23, round two): a full disk or an unwritable --out leaves all of
the previous report or none of a new one, in one line; formula cells and bidi controls of a CSV do not reach
the output CSV or the markdown as they came; a cut CSV is one line naming the row."""
from __future__ import annotations

import csv
import errno
import io
import os
import pathlib
from pathlib import Path

import pytest

import ggl.core.atomic as atomic
from ggl.report.build import main

REPORTS = Path(__file__).resolve().parent.parent / "reports"


def _small_csv(folder: Path, rows: int = 6, edit=None) -> Path:
    """The first ``rows`` rows of the shipped per-image CSV (``edit(row dict)`` may change them)."""
    with (REPORTS / "per_image.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        lines = [next(reader) for _ in range(rows)]
        header = reader.fieldnames
    for line in lines:
        if edit is not None:
            edit(line)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, header)
    w.writeheader()
    w.writerows(lines)
    (folder / "per_image.csv").write_text(buf.getvalue())
    return folder / "per_image.csv"


def _one_error_line(capsys) -> str:
    err = [x for x in capsys.readouterr().err.strip().splitlines() if not x.startswith("skipped ")]
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


def _leftovers(parent: Path) -> list:
    return [p.name for p in parent.iterdir() if "tmp" in p.name]


@pytest.mark.parametrize("failing", [2, 3])  # accuracy.csv, privacy_utility.png: midway through the report
@pytest.mark.parametrize("previous", [False, True])
def test_a_full_disk_midway_leaves_all_of_the_previous_report_or_nothing(tmp_path, monkeypatch, capsys, failing,
                                                                          previous):
    src = _small_csv(tmp_path / "in")
    out = tmp_path / "out"
    if previous:
        assert main(["--from-csv", str(src), "--out", str(out)]) == 0
    before = _snapshot(out)
    capsys.readouterr()
    opened = []

    class Full(io.FileIO):
        def write(self, data):  # half of it lands, then the disk is full
            if len(opened) == failing:
                super().write(bytes(data)[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(data)

    def full_open(path, mode="r", *a, **k):
        assert mode == "wb"
        opened.append(path)
        return Full(path, "w")
    monkeypatch.setattr(atomic, "open", full_open, raising=False)
    args = ["--from-csv", str(src), "--out", str(out)] + ["--overwrite"] * previous
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert f"cannot write the report into '{out}'" in line and "No space left on device" in line
    assert _snapshot(out) == before  # all of the previous report (or none of the new one)
    assert _leftovers(tmp_path) == [] and (not out.exists() or _leftovers(out) == [])


def test_a_read_only_out_is_one_line(tmp_path, capsys):
    src = _small_csv(tmp_path / "in")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as root: chmod does not make the folder read-only")
        assert main(["--from-csv", str(src), "--out", str(out)]) == 2
        assert f"cannot write the report into '{out}'" in _one_error_line(capsys)
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o755)


def test_an_unwritable_out_is_one_line_also_as_root(tmp_path, monkeypatch, capsys):
    """Root ignores chmod: the folder's creation is refused instead, as a read-only file system would."""
    src = _small_csv(tmp_path / "in")
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *a, **k):
        if self.name.startswith((".report", "report")):
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *a, **k)
    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    assert main(["--from-csv", str(src)]) == 2  # default --out: report/ beside the CSV
    line = _one_error_line(capsys)
    assert f"cannot write the report into '{src.parent / 'report'}'" in line and "Read-only" in line
    assert sorted(p.name for p in src.parent.iterdir()) == ["per_image.csv"]


HOSTILE = {"setting": "=cmd|' /C calc'!A0", "defense": "=HYPERLINK(\"http://x\",\"fp32\")",
           "attacker_name": "@SUM(1+1)", "dataset": "+digits", "model": "-lenet", "probe_kind": "\t=fedsgd",
           "probe": "\r=r0"}


def test_formula_cells_and_bidi_controls_do_not_reach_the_outputs(tmp_path, capsys):
    def edit(line):
        line.update(HOSTILE)
    src = _small_csv(tmp_path / "in", edit=edit)
    rows = list(csv.DictReader(src.open(newline="")))
    rows[1]["defense"] = rows[1]["setting"] = "fp32\u202egnp.exe\u2066x\u200f"
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    src.write_text(buf.getvalue())
    out = tmp_path / "out"
    assert main(["--from-csv", str(src), "--out", str(out)]) == 0
    written = list(csv.DictReader((out / "per_image.csv").open(newline="")))
    for line in written:
        for key in HOSTILE:
            assert not line[key].startswith(("=", "+", "-", "@", "\t", "\r")), (key, line[key])
        assert line["psnr"] == "" or float(line["psnr"]) == float(line["psnr"])  # numbers stay numbers
    assert {line["setting"] for line in written} >= {"'=cmd|' /C calc'!A0"}
    md = (out / "privacy_utility.md").read_text()
    table = [x for x in md.splitlines() if x.startswith("| ")]
    assert not [x for x in table if "| =" in x or "| @" in x or "| +" in x or "| -lenet" in x]
    assert "'=HYPERLINK" in md and not any(c in md for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068"
                                                               "\u2069\u200e\u200f")
    # the escaped CSV read again is written again unchanged (no quote piles up)
    again = tmp_path / "again"
    assert main(["--from-csv", str(out / "per_image.csv"), "--out", str(again)]) == 0
    assert [r["setting"] for r in csv.DictReader((again / "per_image.csv").open(newline=""))] == \
        [r["setting"] for r in written]


def test_a_cut_csv_is_one_line_naming_the_row(tmp_path, capsys):
    src = _small_csv(tmp_path / "in")
    data = src.read_text()
    src.write_text(data[: len(data) - len(data.splitlines()[-1]) // 2 - 1])  # the last row cut in half
    assert main(["--from-csv", str(src), "--out", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys)
    assert "line 7 has" in line and "cut short" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda f: f.write_text(""), "holds no rows"),
    (lambda f: f.write_text(f.read_text().splitlines()[0] + "\n"), "holds no rows"),
    (lambda f: f.write_bytes(f.read_bytes() + b"\xe9\xff\n"), "not UTF-8 text"),
    (lambda f: f.write_text(f.read_text().replace("\n", "\n" + "x" * 200000, 1)), "not a readable CSV"),
    (lambda f: f.write_text(f.read_text().splitlines()[0] + "\n" + f.read_text().splitlines()[1] + ",x,y\n"),
     "line 2 has"),
])
def test_other_broken_csvs_are_one_line(tmp_path, capsys, damage, message):
    src = _small_csv(tmp_path / "in")
    damage(src)
    assert main(["--from-csv", str(src), "--out", str(tmp_path / "out")]) == 2
    assert message in _one_error_line(capsys)


@pytest.mark.parametrize("column, value, message", [("round", "inf", "not a finite number"),
                                                    ("round", "2.5", "not a whole number"),
                                                    ("psnr", "nan", "not a finite number")])
def test_non_finite_or_fractional_cells_are_one_line(tmp_path, capsys, column, value, message):
    src = _small_csv(tmp_path / "in", edit=lambda line: line.update({column: value}))
    assert main(["--from-csv", str(src), "--out", str(tmp_path / "out")]) == 2
    assert f"line 2, column '{column}' = '{value}' is {message}" in _one_error_line(capsys)
