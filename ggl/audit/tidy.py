"""The tidy CSVs: ``per_image.csv``, one row per attacked image (an ``ImageRecord`` and its federation's
numbers, under a header that does not change), and ``accuracy.csv``, each federation's test accuracy per
round. Text cells are spreadsheet-safe; a cut or edited file is one line naming the row."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ggl.audit.baselines import BASELINES
from ggl.audit.metrics import METRICS
from ggl.audit.records import FED_COLUMNS, GALLERY_KEYS, FederationResult, ImageRecord, SchemaError
from ggl.core.atomic import atomic_write_text


ID_COLUMNS = ("setting", "defense", "attacker", "attacker_name", "adaptive", "seed", "fed_seed", "search_seed",
              "dataset", "model", "round",
              "round_test_acc", "probe_kind", "probe", "victim_id", "image", "label", "label_pred", "batch_label_acc",
              "fed_run", "images")


def csv_columns() -> List[str]:
    cols = list(dict.fromkeys(ID_COLUMNS + FED_COLUMNS))
    cols += [*METRICS, *GALLERY_KEYS]  # METRICS: ggl.audit.metrics' table, read at call time
    cols += [f"baseline_{b}_{m}" for b in BASELINES for m in METRICS]
    cols += [f"leakage_{m}" for m in METRICS]
    return cols


FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as the start of a formula


def spreadsheet_safe(text: str) -> str:
    """Text a spreadsheet shows as text: one leading single quote before a formula-leading cell (=, +, -, @,
    tab, CR), as spreadsheet-safe CSV writers do. Numbers are not text and never pass through here."""
    return "'" + text if text.startswith(FORMULA_LEADS) else text


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, int):
        return str(v)
    return spreadsheet_safe(str(v))


def write_csv(path: Path, rows: Iterable[Tuple[ImageRecord, Optional[FederationResult]]],
              relative_to: Optional[Path] = None) -> Path:
    """One line per (record, its federation) under the ``csv_columns()`` header; written atomically. ``images``
    paths are relative to ``relative_to`` (the folder the CSV ends up in; default: ``path``'s folder)."""
    path = Path(path)
    columns = csv_columns()
    with io.StringIO(newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for rec, fed in rows:
            flat = rec.to_row(fed, Path(relative_to) if relative_to is not None else path.parent)
            w.writerow([_cell(flat.get(c)) for c in columns])
        return atomic_write_text(path, fh.getvalue())


def read_csv(path: Path) -> List[Tuple[ImageRecord, Optional[FederationResult]]]:
    """The (record, federation numbers or None) pairs of a tidy CSV written by ``write_csv``."""
    path = Path(path)
    lines = _dict_rows(path)
    need = {"setting", "attacker", "psnr", "test_acc"}
    curves = read_accuracy_csv(path.parent / ACCURACY_FILE)
    out = []
    for i, line in enumerate(lines):
        missing = need - set(line)
        if missing:
            raise SchemaError(f"{path}: not a ggl per-image CSV (no column {sorted(missing)[0]!r})")
        if None in line or None in line.values():  # DictReader's marks of a row longer / shorter than the header
            header = [k for k in line if k is not None]
            cells = sum(line[k] is not None for k in header) + len(line.get(None) or [])
            raise SchemaError(f"{path}: line {i + 2} has {cells} cells, the header {len(header)}: the file is cut "
                              f"short or edited; fix or drop that line")

        def f(key: str) -> Optional[float]:
            v = line.get(key, "")
            try:
                x = float(v) if v != "" else None
            except ValueError:
                raise SchemaError(f"{path}: line {i + 2}, column {key!r} = {v!r} is not a number") from None
            if x is not None and not math.isfinite(x):  # ggl writes no nan/inf (results are strict JSON)
                raise SchemaError(f"{path}: line {i + 2}, column {key!r} = {v!r} is not a finite number (an empty "
                                  f"cell is no score)")
            return x

        def n(key: str) -> Optional[int]:
            v = f(key)
            if v is not None and not (math.isfinite(v) and v == int(v)):
                raise SchemaError(f"{path}: line {i + 2}, column {key!r} = {line.get(key)!r} is not a whole number")
            return None if v is None else int(v)

        rec = ImageRecord.from_row(line, path.parent, f, n)
        out.append((rec, _fed_of_row(line, rec, curves, f, n)))
    return out


def _dict_rows(path: Path) -> List[Dict[str, str]]:
    """The CSV's rows as dicts; an unreadable, binary or oversized file is a one-line ``SchemaError``."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: a spreadsheet's byte-order mark
            return list(csv.DictReader(fh))
    except OSError as exc:
        raise SchemaError(f"{path}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{path}: not UTF-8 text (byte {exc.start}); give the per-image CSV the report "
                          f"wrote") from None
    except csv.Error as exc:
        raise SchemaError(f"{path}: not a readable CSV ({str(exc).splitlines()[0][:120]})") from None


def _fed_of_row(line: Dict[str, str], rec: ImageRecord, curves: dict, f, n) -> Optional[FederationResult]:
    """The federation numbers a CSV line carries (its accuracy curve from ``accuracy.csv`` when there)."""
    acc, round_acc = f("test_acc"), f("round_test_acc")
    if acc is None:
        return None
    curve = curves.get(line.get("fed_run") or "", ())
    if not curve and round_acc is not None and rec.round is not None:  # no accuracy.csv beside it
        curve = ((rec.round, round_acc),)
    return FederationResult(key=rec.federation.key if rec.federation else ("", ""), dir="", label=rec.defense,
                            test_acc=acc, curve=tuple(curve), bits_per_round=f("bits_per_round"),
                            compression_ratio=f("compression_ratio"), rounds=n("rounds"),
                            dataset=line.get("dataset") or None, model=line.get("model") or None,
                            seed=n("fed_seed") if line.get("fed_seed") else rec.seed,
                            epsilon=f("epsilon"), delta=f("delta"), faults=n("faults") or 0)


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
