"""The shipped report (README's headline) is exactly what its committed per-image data says: every table
of reports/privacy_utility.md is rebuilt from reports/per_image.csv and reports/accuracy.csv alone."""
from __future__ import annotations

from pathlib import Path

from ggl.report.build import report_from_csv

REPORTS = Path(__file__).resolve().parent.parent / "reports"


def _tables(md: str) -> list:
    """Every markdown table of the report (the lines starting with '|'), in order."""
    return [line for line in md.splitlines() if line.startswith("|")]


def test_every_table_of_the_shipped_report_is_rebuilt_from_its_csv(tmp_path):
    found = report_from_csv(REPORTS / "per_image.csv", tmp_path)
    shipped = _tables((REPORTS / "privacy_utility.md").read_text())
    assert len(shipped) > 100 and _tables((tmp_path / "privacy_utility.md").read_text()) == shipped
    heads = [p for p in found.points if p.worst_case]
    # the evidence the README quotes: 7 settings x 2 rounds, >= 32 victims each, the portfolio's worst case
    assert len(heads) == 14 and {p.key.round for p in heads} == {0, 9} and min(p.n_images for p in heads) >= 32
