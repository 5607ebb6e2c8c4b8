"""Where a benchmark writes: ``runs/benchmarks/<name>/`` by default (ignored by git), a given ``--out``
otherwise; into the repository's ``reports/`` (the shipped, committed results) only with ``--out`` plus
``--overwrite``, and never over an earlier benchmark's files without ``--overwrite`` (as ``ggl report``)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
REPORTS = REPO / "reports"


def output_folder(name: str, out: Optional[str], overwrite: bool, files: Sequence[str]) -> Path:
    """The folder to write into; a refusal raises ``SystemExit`` with one line (exit code 2)."""
    folder = Path(out).expanduser().resolve() if out else REPO / "runs" / "benchmarks" / name
    if folder.exists() and not folder.is_dir():
        raise SystemExit(_error(f"--out '{folder}' is a file; give a folder"))
    if not overwrite and (folder == REPORTS or REPORTS in folder.parents):
        raise SystemExit(_error(f"--out '{out}' is inside reports/ (the committed results): add --overwrite "
                                f"to replace them on purpose"))
    existing = [f for f in files if (folder / f).exists()]
    if existing and not overwrite:
        raise SystemExit(_error(f"--out '{folder}' already holds {', '.join(existing)}; give another folder or "
                                f"add --overwrite"))
    return folder


def _error(msg: str) -> int:
    import sys

    print(f"error: {msg}", file=sys.stderr)
    return 2
