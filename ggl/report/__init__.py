"""The privacy-utility report: federation runs (utility) paired with the attacks on their captures (privacy).

    python -m ggl.report runs/sweep_defenses [--out DIR [--overwrite]] [--metric psnr|ssim|reid] [--wandb ...]
    python -m ggl.report --from-csv reports/per_image.csv [--out DIR [--overwrite]] [--metric ...]

Reads every ``results.json`` under the folders (never the network), pairs each attack with the
federation whose captures it attacked (the attack's recorded ``federation``; older files: its
``attack.source`` path), and writes to ``--out`` (default: ``report/`` beside the runs or the CSV; an
existing report is replaced only with ``--overwrite``):

* ``per_image.csv``: one row per attacked image (``ggl.audit.records``: setting, attacker, round, victim id,
  label, every metric, every label-only baseline's scores, leakage, its federation's numbers). Every
  number of the table and of ``privacy_utility.png`` is computed from it alone; ``--from-csv``
  rebuilds them from it;
* ``privacy_utility.md``: per point (defence setting x round x probe x attacker, seeds pooled) the mean
  and 95% bootstrap CI over the attacked images (``ggl.core.stats``) of PSNR, SSIM, re-identification, the
  best label-only baseline and the leakage over it; first the worst case per setting and round (the
  best attacker per victim, ``ggl.report.worst_case``, with who won), then every attacker; then paired
  comparisons on the same victims;
* ``privacy_utility.png``: x = the federation's final test accuracy, y = the ``--metric`` (PSNR, SSIM
  or re-identification top-1) of each setting's worst case with 95% CI bars (small hollow markers: the
  non-adaptive L2 attacker alone), one panel per defence family (fp32 in each as the reference) and
  round, points at the same accuracy spread sideways; the band = the strongest label-only baseline's CI;
* ``leakage_vs_round.png``: the worst case's PSNR and re-identification per attacked round beside each
  federation's test-accuracy curve (``accuracy.csv``: one row per federation and evaluated round);
* ``reconstructions.png``: per round, the victims as columns; the originals, then one titled row per
  setting (each victim's winning reconstruction), then the prior-only images, from each attack's
  ``<setting>/images.pt``.

When several runs of one (setting, attacker, dataset, model, seed) exist, the newest attack wins. A
``results.json`` that cannot be read or lacks its fields is reported by path and skipped.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ggl.audit.baselines import BASELINES
from ggl.audit.reid import HEADLINE, chance
from ggl.audit.truth import IMAGES_FILE
from ggl.audit.records import (ACCURACY_FILE, FederationRef, FederationResult, ImageRecord, SchemaError,
                         read_attack_records, read_csv, write_accuracy_csv, write_csv)
from ggl.core.stats import MeanCI, mean_ci, paired
from ggl.core.safe_load import safe_load

CSV_FILE = "per_image.csv"
FILES = ("privacy_utility.png", "privacy_utility.md", "reconstructions.png", "leakage_vs_round.png", CSV_FILE,
         ACCURACY_FILE)
# --metric -> (per-image key, axis label, number format)
PLOT_METRICS = {"psnr": ("psnr", "attack PSNR (dB)", ".2f"), "ssim": ("ssim", "attack SSIM", ".3f"),
                "reid": (HEADLINE, "re-identification top-1 (feature space, same-class private images)", ".2f")}
BOOTSTRAP_SEED = 0

Pair = Tuple[ImageRecord, Optional[FederationResult]]


# ---------------------------------------------------------------------------------------------
# reading


def _results_files(roots: Iterable[Path]) -> List[Path]:
    """Every results.json under the roots (not through symlinks such as ``latest``), each once."""
    out, seen = [], set()
    for root in roots:
        root = Path(root)
        if root.is_file():
            candidates = [root]
        else:
            candidates = []
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                dirnames[:] = sorted(d for d in dirnames if d != "wandb" and not d.startswith("."))
                if "results.json" in filenames:
                    candidates.append(Path(dirpath) / "results.json")
        for c in candidates:
            key = c.resolve()
            if key not in seen:
                seen.add(key)
                out.append(c)
    return out


def _kind(data: dict) -> Optional[str]:
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    if "final" in data or config.get("task") == "fedavg":
        return "fed"
    if "summary" in data or "records" in data or config.get("task") == "attack":
        return "attack"
    return None  # GAN runs and other jobs: not part of this report


def collect(roots: Sequence[Path]) -> dict:
    """Read the results under ``roots``, pair attacks with federations, keep the newest attack of each
    (setting, attacker, dataset, model, seed), and group the images into points:
    {"rows" (the points), "pairs" (record, federation), "feds_alone", "skipped", "ignored", ...}."""
    feds: Dict[Tuple[str, str], FederationResult] = {}
    attacks: List[Tuple[Path, List[ImageRecord]]] = []
    skipped: List[Tuple[str, str]] = []
    ignored = 0
    files = _results_files(roots)
    loaded, tops = [], set()
    for path in files:
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            skipped.append((str(path), f"cannot be read as JSON ({str(exc).splitlines()[0][:120]})"))
            continue
        loaded.append((path, data))
        if isinstance(data.get("settings"), list):
            tops.add(path.parent.resolve())
    for path, data in loaded:
        kind = _kind(data)
        try:
            if kind == "fed":
                fed = FederationResult.from_json(path, data)
                feds[fed.key] = fed
            elif kind == "attack":
                if "settings" not in data and path.parent.parent.resolve() in tops:
                    continue  # a per-setting copy of an attack run already read as a whole
                attacks.append((path, read_attack_records(path, data)))
            else:
                ignored += 1
        except SchemaError as exc:
            msg = str(exc)
            skipped.append((str(path), msg[len(f"{path}: "):] if msg.startswith(f"{path}: ") else msg))
    latest_by_name: Dict[str, FederationResult] = {}
    for key, fed in sorted(feds.items()):
        latest_by_name[key[0]] = fed

    def fed_of(ref: Optional[FederationRef]) -> Optional[FederationResult]:
        if ref is None:
            return None
        return feds.get(ref.key) or (latest_by_name.get(ref.name) if ref.stamp == "latest" else None)

    # one unit per (attack run, setting); the newest unit of each key wins
    units: Dict[tuple, Tuple[tuple, List[Pair]]] = {}
    superseded, n_attacks, paired_feds = 0, 0, set()
    for path, recs in attacks:
        by_setting: Dict[str, List[ImageRecord]] = {}
        for r in recs:
            by_setting.setdefault(r.setting, []).append(r)
        for setting, group in by_setting.items():
            n_attacks += 1
            fed = fed_of(group[0].federation)
            key = (group[0].defense, group[0].attacker_id, fed.dataset if fed else None, fed.model if fed else None,
                   group[0].seed)
            stamp = (path.parent.name, str(path.parent))
            if key in units:
                superseded += 1
                if units[key][0] >= stamp:
                    continue
            units[key] = (stamp, [(r, fed) for r in group])
    pairs: List[Pair] = []
    for _, unit in units.values():
        pairs += unit
        if unit and unit[0][1] is not None:
            paired_feds.add(unit[0][1].key)
    points = build_points(pairs)
    pairs = measured_pairs(points)  # in table order: the CSV follows the table
    feds_alone = [f for k, f in sorted(feds.items()) if k not in paired_feds]
    return {"rows": points, "pairs": pairs, "feds": [feds[k] for k in sorted(paired_feds)], "feds_alone": feds_alone, "skipped": skipped, "ignored": ignored,
            "superseded": superseded, "n_feds": len(feds), "n_attacks": n_attacks, "n_files": len(files)}


# ---------------------------------------------------------------------------------------------
# points and their statistics (from records alone: the CSV holds everything used here)


def _values(pairs: Sequence[Pair], key: str) -> List[Optional[float]]:
    return [r.metric(key) for r, _ in pairs]


def _ci(pairs: Sequence[Pair], key: str) -> Optional[MeanCI]:
    return mean_ci(_values(pairs, key), seed=BOOTSTRAP_SEED)


def _mean(values: Iterable[Optional[float]]) -> Optional[float]:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    return sum(v) / len(v) if v else None


def build_points(pairs: Sequence[Pair]) -> List[dict]:
    """Group images into points (defence setting x attacker x round x probe x dataset x model; seeds
    pooled), add the worst case over the attacker portfolio per (setting, round, probe)
    (``ggl.report.worst_case``), in table order: dataset, best test accuracy first, setting, round, attacker."""
    from ggl.report.worst_case import worst_case_points

    groups: Dict[tuple, List[Pair]] = {}
    for rec, fed in pairs:
        key = (rec.defense, rec.attacker_id, rec.attacker, rec.round, rec.probe_kind,
               fed.dataset if fed else None, fed.model if fed else None)
        groups.setdefault(key, []).append((rec, fed))
    points = []
    for (defense, name, attacker, rnd, probe, dataset, model), group in groups.items():
        group = sorted(group, key=lambda p: (p[0].seed if p[0].seed is not None else -1, p[0].round or 0,
                                             p[0].probe or "", p[0].image))
        feds = list({f.key: f for _, f in group if f is not None}.values())
        first = feds[0] if feds else None
        points.append({
            "setting": defense, "attacker": attacker, "attacker_name": name, "round": rnd, "probe": probe,
            "derived": False, "dataset": dataset, "model": model, "pairs": group,
            "seeds": sorted({r.seed for r, _ in group if r.seed is not None}),
            "test_acc": _mean(f.test_acc for f in feds) if feds else None,
            "bits_per_round": first.bits_per_round if first else None,
            "compression_ratio": first.compression_ratio if first else None,
            "epsilon": (first.epsilon, first.delta) if first and first.epsilon is not None else None,
            "rounds": first.rounds if first else None,
            "faults": sum(f.faults for f in feds),
            "images": next((Path(r.images) for r, _ in group if r.images), None),
            "round_test_acc": _mean(f.accuracy_at(rnd) for f in feds) if feds and rnd is not None else None,
            "n_images": len(group), "victims": tuple((r.seed, r.victim_id) for r, _ in group)})
    return sorted(points + worst_case_points(points), key=_row_order)


def measured_pairs(points: Sequence[dict]) -> List[Pair]:
    """The attacked images of the points (not the derived worst-case records): what the CSV holds."""
    return [p for point in points if not point.get("derived") for p in point["pairs"]]


# table order of the attackers: the worst case first, then the portfolio's own order
ATTACKER_ORDER = ("best per victim", "ggl-l2", "ggl-l2-adaptive", "ggl-cosine", "ggl-cosine-adaptive", "ggl-eot",
                  "inverting-gradients", "inverting-gradients-adaptive")


def _attacker_rank(name: str) -> tuple:
    return (ATTACKER_ORDER.index(name), "") if name in ATTACKER_ORDER else (len(ATTACKER_ORDER), name)


def _row_order(row: dict) -> tuple:
    acc = row["test_acc"]
    return (row["dataset"] or "", -(acc if acc is not None else -1.0), row["setting"], row["probe"] or "",
            row["round"] if row["round"] is not None else -1, _attacker_rank(row["attacker_name"]))


def worst_case_rows(rows: Sequence[dict]) -> List[dict]:
    """Per (setting, round, probe, dataset, model): its worst-case point where several attackers ran,
    else its one attacker's point, in table order."""
    from ggl.report.worst_case import point_key

    derived = {point_key(r) for r in rows if r.get("derived")}
    return [r for r in rows if r.get("derived") or point_key(r) not in derived]


def strongest_baseline(pairs: Sequence[Pair], metric: str) -> Optional[str]:
    """The label-only baseline with the best mean ``metric`` over these images."""
    from ggl.audit.baselines import direction

    means = {b: _mean(r.baselines.get(b, {}).get(metric) for r, _ in pairs) for b in BASELINES}
    means = {b: m for b, m in means.items() if m is not None}
    if not means:
        return None
    sign = direction(metric) or 1
    return max(means, key=lambda b: sign * means[b])


def chance_level(pairs: Sequence[Pair], kind: str = "top1", gallery: str = "class") -> Optional[float]:
    return _mean(chance(kind, r.metrics[f"reid_gallery_{gallery}"]) for r, _ in pairs
                 if r.metrics.get(f"reid_gallery_{gallery}") is not None)


# ---------------------------------------------------------------------------------------------
# the table


def _fmt(v: Any, spec: str = ".2f", none: str = "–") -> str:
    return none if v is None else format(v, spec)


def _fmt_ci(ci: Optional[MeanCI], spec: str = ".2f") -> str:
    return "–" if ci is None else ci.fmt(spec)


def _bits(v: Optional[float]) -> str:
    if v is None:
        return "–"
    for unit, scale in (("Gbit", 1e9), ("Mbit", 1e6), ("kbit", 1e3)):
        if v >= scale:
            return f"{v / scale:.2f} {unit}"
    return f"{v:.0f} bit"


TABLE_COLUMNS = ["setting", "round", "probe", "attacker", "test acc", "acc at round", "PSNR (dB)", "SSIM",
                 "re-id top-1 (chance)", "re-id MRR (chance)", "LPIPS", "label acc", "best label-only PSNR (dB)",
                 "PSNR leakage (dB)", "re-id leakage", "n images", "seeds", "uplink bits / round", "compression",
                 "DP ε (δ)", "rounds", "dataset"]
HEADLINE_COLUMNS = ["setting", "round", "probe", "test acc", "acc at round", "worst-case PSNR (dB)", "SSIM",
                    "re-id top-1 (chance)", "best label-only PSNR (dB)", "PSNR leakage (dB)", "re-id leakage",
                    "won by (victims, PSNR)", "ggl-l2 non-adaptive PSNR (dB)", "n images", "compression"]
MRR_KEY = "reid_rr_feature_class"


def _top1(pairs: Sequence[Pair]) -> str:
    top1 = _ci(pairs, HEADLINE)
    return "–" if top1 is None else f"{top1.fmt()} ({_fmt(chance_level(pairs, 'top1'), '.3f')})"


def _best_baseline(pairs: Sequence[Pair]) -> str:
    best = strongest_baseline(pairs, "psnr")
    return _fmt_ci(_ci(pairs, "best_baseline_psnr")) + (f" ({best.replace('_', ' ')})" if best else "")


def _round(r: dict) -> str:
    return "–" if r["round"] is None else str(r["round"])


def table_rows(rows: List[dict]) -> List[List[str]]:
    """Every point (each attacker, and each worst case) with all its numbers."""
    out = []
    for r in rows:
        pairs = r["pairs"]
        mrr = _ci(pairs, MRR_KEY)
        out.append([
            r["setting"], _round(r), r["probe"] or "–", r["attacker_name"], _fmt(r["test_acc"], ".3f"),
            _fmt(r.get("round_test_acc"), ".3f"), _fmt_ci(_ci(pairs, "psnr")), _fmt_ci(_ci(pairs, "ssim"), ".3f"),
            _top1(pairs), "–" if mrr is None else f"{mrr.fmt()} ({_fmt(chance_level(pairs, 'rr'), '.3f')})",
            _fmt_ci(_ci(pairs, "lpips"), ".3f"), _fmt(_mean(rec.batch_label_acc for rec, _ in pairs), ".0%"),
            _best_baseline(pairs), _fmt_ci(_ci(pairs, "leakage_psnr")), _fmt_ci(_ci(pairs, f"leakage_{HEADLINE}")),
            str(r["n_images"]), str(len(r["seeds"])) if r["seeds"] else "–", _bits(r["bits_per_round"]),
            _fmt(r["compression_ratio"], ".1f") + ("×" if r["compression_ratio"] is not None else ""),
            f"{r['epsilon'][0]:.3g} ({r['epsilon'][1]:g})" if r.get("epsilon") else "–",
            str(r["rounds"]) if r["rounds"] is not None else "–", r["dataset"] or "–"])
    return out


def _contrast(rows: Sequence[dict], r: dict) -> Optional[dict]:
    """The non-adaptive L2 GGL point of ``r``'s setting, round and probe (the attacker of earlier reports)."""
    from ggl.report.worst_case import point_key

    return next((o for o in rows if not o.get("derived") and o["attacker_name"] == "ggl-l2"
                 and point_key(o) == point_key(r)), None)


def headline_rows(rows: List[dict]) -> List[List[str]]:
    """Per setting, round and probe: the worst case over the attackers (``ggl.report.worst_case``)."""
    from ggl.report.worst_case import wins_text

    out = []
    for r in worst_case_rows(rows):
        pairs = r["pairs"]
        contrast = _contrast(rows, r)
        out.append([
            r["setting"], _round(r), r["probe"] or "–", _fmt(r["test_acc"], ".3f"), _fmt(r.get("round_test_acc"), ".3f"),
            _fmt_ci(_ci(pairs, "psnr")), _fmt_ci(_ci(pairs, "ssim"), ".3f"), _top1(pairs), _best_baseline(pairs),
            _fmt_ci(_ci(pairs, "leakage_psnr")), _fmt_ci(_ci(pairs, f"leakage_{HEADLINE}")),
            wins_text(r) if r.get("derived") else r["attacker_name"],
            _fmt_ci(_ci(contrast["pairs"], "psnr")) if contrast else "–", str(r["n_images"]),
            _fmt(r["compression_ratio"], ".1f") + ("×" if r["compression_ratio"] is not None else "")])
    return out


COMPARE_COLUMNS = ["comparison", "metric", "n pairs", "mean difference [95% CI]", "Wilcoxon p", "Cohen's d_z",
                   "rank-biserial"]
COMPARE_METRICS = (("psnr", "PSNR (dB)"), (HEADLINE, "re-id top-1"))


def _aligned(a: Sequence[Pair], b: Sequence[Pair], key_a: str, key_b: str) -> Tuple[List[float], List[float]]:
    """Values of two image sets on their common victims (seed, round, victim id, image)."""
    def index(pairs):
        return {(r.seed, r.round, r.victim_id, r.image): r for r, _ in pairs if r.victim_id is not None}

    ia, ib = index(a), index(b)
    common = [k for k in ia if k in ib]
    va = [ia[k].metric(key_a) for k in common]
    vb = [ib[k].metric(key_b) for k in common]
    keep = [i for i in range(len(common)) if va[i] is not None and vb[i] is not None]
    return [float(va[i]) for i in keep], [float(vb[i]) for i in keep]


def _label(r: dict) -> str:
    rnd = f" round {r['round']}" if r["round"] is not None else ""
    return f"{r['setting']}{rnd} {r['attacker_name']}"


def comparisons(rows: List[dict]) -> List[Tuple[str, str, Any]]:
    """(comparison, metric label, ggl.core.stats.Paired) on the same victims: each setting's worst case (or its
    one attacker) against the best label-only baseline (does it leak?); each defence's worst case against
    no defence's at the same round (does the defence reduce leakage?); and, in runs without a portfolio,
    the adaptive against the non-adaptive attacker."""
    out = []
    heads = worst_case_rows(rows)
    for r in heads:
        for key, label in COMPARE_METRICS:
            res = paired(*_aligned(r["pairs"], r["pairs"], key, f"best_baseline_{key}"), seed=BOOTSTRAP_SEED)
            if res is not None:
                out.append((f"{_label(r)} − best label-only baseline", label, res))
    ref = {(r["round"], r["probe"], r["dataset"]): r for r in heads if r["setting"] == "fp32"}
    for r in heads:
        other = ref.get((r["round"], r["probe"], r["dataset"]))
        if other is None or other is r:
            continue
        for key, label in COMPARE_METRICS:
            res = paired(*_aligned(r["pairs"], other["pairs"], key, key), seed=BOOTSTRAP_SEED)
            if res is not None:
                out.append((f"{_label(r)} − fp32 {other['attacker_name']} (round {_round(r)})", label, res))
    # what modelling the defence buys: adaptive vs non-adaptive L2, and EOT vs the expectation attacker
    by_key = {(r["setting"], r["attacker_name"], r["round"], r["probe"], r["dataset"]): r for r in rows
              if not r.get("derived")}
    several_rounds = len({r["round"] for r in rows}) > 1
    for r in rows:
        if r.get("derived") or r["attacker_name"] not in MODELLING_PAIRS:
            continue
        for base in MODELLING_PAIRS[r["attacker_name"]]:
            other = by_key.get((r["setting"], base, r["round"], r["probe"], r["dataset"]))
            if other is not None:
                break
        else:
            continue
        name = (f"{r['setting']}: adaptive − non-adaptive" if r["attacker_name"] == "ggl-l2-adaptive"
                else f"{r['setting']}: {r['attacker_name']} − {base}")
        name += f" (round {r['round']})" if several_rounds else ""
        for key, label in COMPARE_METRICS:
            res = paired(*_aligned(r["pairs"], other["pairs"], key, key), seed=BOOTSTRAP_SEED)
            if res is not None:
                out.append((name, label, res))
    return out


# attacker -> the attacker it is compared with on the same victims (the first one that ran): what
# modelling the defence adds (the expectation attacker of a randomised defence is ggl-l2: E[q(u)] = u)
MODELLING_PAIRS = {"ggl-l2-adaptive": ("ggl-l2",), "ggl-eot": ("ggl-l2-adaptive", "ggl-l2")}


def comparison_rows(rows: List[dict]) -> List[List[str]]:
    return [[name, label, str(res.n), res.ci.fmt(".2f"), f"{res.p_value:.2g}", _fmt(res.cohens_dz, ".2f"),
             f"{res.rank_biserial:.2f}"] for name, label, res in comparisons(rows)]


def _md_table(columns: List[str], cells: List[List[str]]) -> List[str]:
    return (["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            + ["| " + " | ".join(c) + " |" for c in cells])


def markdown(found: dict, command: str, seconds: float) -> str:
    rows = found["rows"]
    pairs = found["pairs"]
    lines = ["# Privacy–utility report", "",
             f"`{command}` — {found.get('n_feds', 0)} federation runs, {found.get('n_attacks', 0)} attacked settings "
             f"read from {found.get('n_files', 0)} results files ({datetime.now():%Y-%m-%d %H:%M}, {seconds:.1f} s). "
             f"Per-image data: [`{CSV_FILE}`]({CSV_FILE}) (`python -m ggl.report --from-csv {CSV_FILE}` rebuilds "
             f"this table and the figure from it).", "",
             "![privacy vs utility](privacy_utility.png)", "",
             "Utility: the federation's final test accuracy on its full test split. Privacy: how well GGL "
             "reconstructs the victim's images from the captured update, against the originals (higher = more "
             "leakage). Every score is the mean over the attacked images with its 95% bootstrap CI in brackets "
             "(seeds pooled). Re-identification: the share of reconstructions whose nearest private image of the "
             "same class, in the feature space of a classifier trained on the public split, is the victim (chance "
             "in brackets: 1 / the class's private images). Label-only baselines (what the label alone gives): "
             "the prior's class mean, the public split's class mean, a random prior sample; leakage = the attack's "
             "score minus the best of them on the same image.", ""]
    lines += ["## The worst case per setting and round", "",
              "Per defence setting, round (the global model after that many rounds; 0 = untrained) and probe: "
              "per victim, the best reconstruction of any attacker that ran (on each metric); `won by` counts "
              "the victims each attacker won on PSNR. The last columns show the non-adaptive L2 GGL attacker "
              "alone, for contrast. `acc at round` is the test accuracy of the model the victims' updates were "
              "computed at (– at round 0: untrained, not evaluated).", ""]
    lines += _md_table(HEADLINE_COLUMNS, headline_rows(rows))
    lines += ["", "![leakage and accuracy over rounds](leakage_vs_round.png)", "",
              "## Every attacker", ""]
    lines += _md_table(TABLE_COLUMNS, table_rows(rows))
    cmp_rows = comparison_rows(rows)
    if cmp_rows:
        lines += ["", "Paired comparisons on the same victims (difference of means, Wilcoxon signed-rank "
                      "two-sided, effect sizes):", ""]
        lines += _md_table(COMPARE_COLUMNS, cmp_rows)
    band = {b: _ci(pairs, f"baseline_{b}_psnr") for b in BASELINES}
    shown = [f"{b.replace('_', ' ')} {ci.fmt()} dB" for b, ci in band.items() if ci is not None]
    if shown:
        lines += ["", "Label-only baselines over all attacked images, PSNR: " + "; ".join(shown) + "."]
    victims = {(r["round"], r["probe"], r["victims"]) for r in rows if r["victims"]}
    if len(victims) > len({(r["round"], r["probe"]) for r in rows if r["victims"]}):
        lines += ["", f"Note: the settings attacked {len(victims)} different sets of victim images "
                      f"(different audit configs); rows are not the same images."]
    if found.get("superseded"):
        lines += ["", f"{found['superseded']} older attack result(s) of a setting and attacker already shown "
                      f"were left out (the newest run wins; point the report at one sweep's folder to compare "
                      f"like with like)."]
    faulty = [f"{r['setting']} ({r['attacker']}): {r['faults']}" for r in rows if r.get("faults")]
    if faulty:
        lines += ["", "**Warning:** these points' federations dropped failed clients or rejected updates, so their "
                      "accuracy is not the defence's alone (see each run's results.json `final`): "
                      + "; ".join(faulty) + "."]
    if any(r["test_acc"] is None for r in rows):
        lines += ["", "Rows with test acc `–`: attacks whose federation run was not found under the folder "
                      "(fresh victims, or a moved/deleted federation); they are not plotted."]
    if found.get("feds_alone"):
        lines += ["", "Federations without an attack yet: " + ", ".join(
            f"{f.label} (`{f.dir}`, acc {f.test_acc:.3f})" for f in found["feds_alone"]) + "."]
    if found.get("skipped"):
        lines += ["", "Skipped results.json files:", ""] + [f"- `{p}`: {why}" for p, why in found["skipped"]]
    no_images = [f"{r['setting']} ({r['attacker']})" for r in rows if r["images"] is None or not r["images"].is_file()]
    if no_images:
        lines += ["", f"Not in the reconstructions figure (no {IMAGES_FILE} of their attack runs here; rerun those "
                      f"attacks): " + ", ".join(no_images) + "."]
    lines += ["", "![reconstructions](reconstructions.png)", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# figures


def defense_family(label: str) -> str:
    """'q4-stochastic-global' -> 'quantize', 'clip0.25+nm0.1' -> 'clip+noise', 'top0.01-ef' -> 'top-k'."""
    names = []
    for part in label.split("+"):
        for pattern, name in ((r"q\d", "quantize"), (r"clip", "clip"), (r"(nm|std)[\d.]", "noise"),
                              (r"top", "top-k"), (r"sign", "sign"), (r"fp32", "fp32")):
            if re.match(pattern, part):
                names.append(name)
                break
        else:
            names.append(re.sub(r"[\d.]+.*$", "", part) or part)
    return "+".join(dict.fromkeys(names))


def dodge(xs: Sequence[float], width: float) -> List[float]:
    """Spread points whose x lie within ``width`` of each other by ``width`` steps, centred on them."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    out = list(map(float, xs))
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] - xs[order[i]] < width:
            j += 1
        k = j - i + 1
        for pos, idx in enumerate(order[i:j + 1]):
            out[idx] = xs[idx] + (pos - (k - 1) / 2) * width
        i = j + 1
    return out


def _ci_dict(ci: Optional[MeanCI]) -> Optional[dict]:
    return None if ci is None else {"mean": ci.mean, "low": ci.low, "high": ci.high}


def privacy_utility_data(rows: List[dict], metric: str = "psnr") -> dict:
    """What ``privacy_utility.png`` plots, as plain data (no matplotlib): the settings in legend order,
    the families (panel columns) and rounds (panel rows), the baseline band and chance line, and per
    panel its points: setting, family, round, x (dodged accuracy), acc, y (mean, low, high) and marker
    ("head": the worst case, big; "contrast": the non-adaptive L2 attacker alone, small hollow)."""
    key, ylabel, _ = PLOT_METRICS[metric]
    heads = [r for r in worst_case_rows(rows) if r["test_acc"] is not None and _ci(r["pairs"], key) is not None]
    contrasts = [c for c in (_contrast(rows, r) for r in heads if r.get("derived")) if c is not None]
    plotted = heads + [c for c in contrasts if _ci(c["pairs"], key) is not None]
    families = list(dict.fromkeys(defense_family(r["setting"]) for r in plotted if r["setting"] != "fp32")) or ["fp32"]
    rounds = sorted({r["round"] for r in plotted}, key=lambda x: -1 if x is None else x) or [None]
    labels = list(dict.fromkeys(r["setting"] for r in plotted))
    all_pairs = [p for r in heads for p in r["pairs"]]
    band = mean_ci(_values(all_pairs, f"best_baseline_{key}"), seed=BOOTSTRAP_SEED)
    accs = [r["test_acc"] for r in plotted]
    width = 0.012 * max(max(accs, default=1) - min(accs, default=0), 0.05)
    ch = chance_level(all_pairs, "top1") if metric == "reid" else None
    panels = []
    for rnd in rounds:
        for family in families:
            members = [r for r in plotted if r["round"] == rnd and
                       (defense_family(r["setting"]) == family or r["setting"] == "fp32")]
            xs = dodge([r["test_acc"] for r in members], width)
            points = [{"setting": r["setting"], "family": defense_family(r["setting"]), "round": r["round"], "x": x,
                       "acc": r["test_acc"], "y": _ci_dict(_ci(r["pairs"], key)),
                       "marker": "head" if r in heads else "contrast"} for x, r in zip(xs, members)]
            panels.append({"round": rnd, "family": family, "points": points})
    return {"metric": metric, "ylabel": ylabel, "labels": labels, "families": families, "rounds": rounds,
            "band": _ci_dict(band), "chance": ch, "panels": panels,
            "n_images": sorted({r["n_images"] for r in heads}), "seeds": sorted({len(r["seeds"]) for r in heads})}


def plot_privacy_utility(rows: List[dict], path: Path, metric: str = "psnr") -> Path:
    """Worst case per setting (big markers) and the non-adaptive L2 GGL attacker (small hollow) vs the
    final test accuracy; one column of panels per defence family, one row per round
    (the data: ``privacy_utility_data``)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from ggl.core.plots import _pyplot

    data = privacy_utility_data(rows, metric)
    plt = _pyplot()
    families, rounds, labels = data["families"], data["rounds"], data["labels"]
    ncols = len(families)
    fig, axes = plt.subplots(len(rounds), ncols, figsize=(4.2 * ncols + 2.8, 3.6 * len(rounds) + 0.6), dpi=110,
                             squeeze=False, sharex=True, sharey=True)
    markers = "osD^vP*Xhp<>d8H"
    cmap = plt.get_cmap("tab20")
    style = {lab: (cmap((2 * i) % 20 + (2 * i // 20) % 2), markers[i % len(markers)]) for i, lab in enumerate(labels)}
    band, ch = data["band"], data["chance"]
    panels = iter(data["panels"])
    for i, rnd in enumerate(rounds):
        for ax, family in zip(axes[i], families):
            panel = next(panels)
            if band is not None:
                ax.axhspan(band["low"], band["high"], color="0.85", zorder=0)
                ax.axhline(band["mean"], color="0.55", lw=1, ls="--", zorder=1)
            if ch is not None:
                ax.axhline(ch, color="0.3", lw=1, ls=":", zorder=1)
            for pt in panel["points"]:
                y = pt["y"]
                color, marker = style[pt["setting"]]
                head = pt["marker"] == "head"
                ax.errorbar(pt["x"], y["mean"], yerr=[[y["mean"] - y["low"]], [y["high"] - y["mean"]]], fmt=marker,
                            ms=7 if head else 4.5, capsize=3 if head else 2, color=color,
                            mfc=color if head else "white", mec=color, mew=1.5 if head else 1, zorder=3 if head else 2,
                            alpha=1.0 if head else 0.8)
            where = "" if rnd is None else (f", round {rnd}" + (" (untrained)" if rnd == 0 else ""))
            ax.set_title(f"{family}{where}", fontsize=9)
            ax.set_xlabel("final test accuracy (same accuracy: spread sideways)", fontsize=8)
            ax.grid(alpha=0.3)
        axes[i, 0].set_ylabel(data["ylabel"], fontsize=8)
    handles = [Line2D([], [], ls="", marker=style[lab][1], color=style[lab][0], ms=7, label=lab) for lab in labels]
    handles += [Line2D([], [], ls="", marker="o", color="0.3", ms=7, label="worst case: best attacker per victim"),
                Line2D([], [], ls="", marker="o", color="0.3", mfc="white", ms=4.5,
                       label="non-adaptive L2 GGL alone (contrast)"),
                Patch(color="0.85", label="strongest label-only baseline (95% CI)")]
    if metric == "reid":
        handles.append(Line2D([], [], color="0.3", ls=":", label="chance"))
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    n, seeds = data["n_images"], data["seeds"]
    fig.suptitle(f"Privacy vs utility under GGL (mean, 95% bootstrap CI; n = {', '.join(map(str, n)) or '–'} images, "
                 f"{', '.join(map(str, seeds)) or '–'} seed(s) per point): higher = more leakage, right = better "
                 f"model", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 2.6 / fig.get_figwidth(), 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


LEAKAGE_PANELS = (("psnr", "worst-case PSNR (dB)"), (HEADLINE, "worst-case re-identification top-1"))


def leakage_vs_round_data(rows: List[dict], feds: Sequence[FederationResult]) -> Optional[dict]:
    """What ``leakage_vs_round.png`` plots, as plain data, or None when no point has a round: the settings
    (line order); per leakage panel (PSNR, re-identification) each setting's points (round, x = the round
    shifted sideways, y mean/low/high) and the baseline band or chance line; the accuracy curves."""
    heads = [r for r in worst_case_rows(rows) if r["round"] is not None]
    if not heads:
        return None
    settings = list(dict.fromkeys(r["setting"] for r in heads))
    panels = []
    for key, label in LEAKAGE_PANELS:
        series = []
        for s in settings:
            pts = sorted((r for r in heads if r["setting"] == s and r["probe"] == heads[0]["probe"]),
                         key=lambda r: r["round"])
            cis = [(r["round"], _ci(r["pairs"], key)) for r in pts]
            cis = [(x, c) for x, c in cis if c is not None]
            if not cis:
                continue
            series.append({"setting": s, "points": [
                {"round": x, "x": x + 0.08 * (settings.index(s) - (len(settings) - 1) / 2), "y": _ci_dict(c)}
                for x, c in cis]})
        band = ch = None
        if key == "psnr":
            band = _ci_dict(mean_ci(_values([p for r in heads for p in r["pairs"]], "best_baseline_psnr"),
                                    seed=BOOTSTRAP_SEED))
        else:
            ch = chance_level([p for r in heads for p in r["pairs"]], "top1")
        panels.append({"key": key, "label": label, "series": series, "band": band, "chance": ch})
    accuracy = []
    for s in settings:
        curves = [f.curve for f in feds if f.label == s and f.curve]
        if curves:
            xs = [r for r, _ in curves[0]]
            accuracy.append({"setting": s, "rounds": xs, "acc": [_mean(dict(c).get(x) for c in curves) for x in xs]})
    return {"settings": settings, "panels": panels, "accuracy": accuracy}


def plot_leakage_vs_round(rows: List[dict], feds: Sequence[FederationResult], path: Path) -> Optional[Path]:
    """Three panels over FL rounds, one line per setting: the worst-case PSNR and re-identification
    top-1 (mean, 95% CI) at each attacked round, and the federation's test accuracy curve
    (the data: ``leakage_vs_round_data``)."""
    from matplotlib.ticker import MaxNLocator

    from ggl.core.plots import _pyplot

    data = leakage_vs_round_data(rows, feds)
    if data is None:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), dpi=110)
    cmap = plt.get_cmap("tab10")
    color = {s: cmap(i % 10) for i, s in enumerate(data["settings"])}
    for ax, panel in zip(axes[:2], data["panels"]):
        for line in panel["series"]:
            s, pts = line["setting"], line["points"]
            ax.errorbar([p["x"] for p in pts], [p["y"]["mean"] for p in pts],
                        yerr=[[p["y"]["mean"] - p["y"]["low"] for p in pts],
                              [p["y"]["high"] - p["y"]["mean"] for p in pts]],
                        marker="o", capsize=3, color=color[s], label=s)
        band = panel["band"]
        if band is not None:
            ax.axhspan(band["low"], band["high"], color="0.85", zorder=0, label="strongest label-only baseline")
        if panel["chance"] is not None:
            ax.axhline(panel["chance"], color="0.3", ls=":", label="chance")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round of the attacked update (global model after that many rounds)", fontsize=8)
        ax.set_ylabel(panel["label"], fontsize=8)
        ax.grid(alpha=0.3)
    ax = axes[2]
    for curve in data["accuracy"]:
        ax.plot(curve["rounds"], curve["acc"], marker=".", color=color[curve["setting"]], label=curve["setting"])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("rounds completed", fontsize=8)
    ax.set_ylabel("test accuracy", fontsize=8)
    ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Leakage (best attacker per victim) and utility over the federation's rounds", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _load_images(path: Optional[Path]) -> Optional[dict]:
    if path is None or not Path(path).is_file():
        return None
    import torch

    try:
        images = safe_load(path, "report images")  # weights_only, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says
        return {k: images[k].float().clamp(0, 1) for k in ("originals", "reconstructions", "prior_only")}
    except Exception as exc:  # a damaged file costs its row in the figure, not the report
        print(f"skipped {path}: {str(exc).splitlines()[0][:120]}", file=sys.stderr)
        return None


def _row_title(r: dict) -> str:
    psnr, reid = _ci(r["pairs"], "psnr"), _ci(r["pairs"], HEADLINE)
    return (f"{r['setting']}, {r['attacker_name']}: {_fmt(psnr.mean if psnr else None, '.1f')} dB"
            + (f", re-id {reid.mean:.2f}" if reid is not None else ""))


MAX_VICTIMS_SHOWN = 16  # columns of reconstructions.png per round (all victims are in the CSV and the table)


def _image_positions(rows: Sequence[dict]) -> Dict[str, Dict[tuple, int]]:
    """images.pt file -> {(capture id, image): position}: an attack writes one setting's images in the
    order of its captures (capture ids sort in round and batch order), each capture's images in order."""
    keys: Dict[str, set] = {}
    for rec, _ in measured_pairs(rows):
        if rec.images:
            keys.setdefault(rec.images, set()).add((rec.probe or "", rec.image))
    return {f: {k: i for i, k in enumerate(sorted(ks))} for f, ks in keys.items()}


def reconstruction_rows(rows: List[dict], max_victims: int = MAX_VICTIMS_SHOWN) -> List[Tuple[str, Any]]:
    """(title, images) rows of the reconstructions figure, per attacked round: the victims' originals,
    then one row per setting (its worst case over the attackers: each victim's best reconstruction,
    or its one attacker's; titled with the mean PSNR and re-identification), in table order; the
    prior-only images last. Images come from each record's attack ``images.pt``; a setting whose files
    are missing is left out (the markdown names it)."""
    import torch

    from ggl.report.worst_case import victim_key

    positions = _image_positions(rows)
    cache: Dict[str, Optional[dict]] = {}

    def tile(rec, kind: str):
        if not rec.images:
            return None
        if rec.images not in cache:
            images = _load_images(Path(rec.images))
            n = len(positions.get(rec.images, {}))
            cache[rec.images] = images if images is not None and images[kind].shape[0] == n else None
        images = cache[rec.images]
        return None if images is None else images[kind][positions[rec.images][(rec.probe or "", rec.image)]]

    heads = worst_case_rows(rows)
    rounds = list(dict.fromkeys(sorted((r["round"] for r in heads), key=lambda x: -1 if x is None else x)))
    labelled: List[Tuple[str, torch.Tensor]] = []
    for rnd in rounds:
        members = [r for r in heads if r["round"] == rnd]
        block, victims, originals, prior = [], None, None, None
        for r in members:
            recs = {victim_key(rec): rec for rec, _ in r["pairs"]}
            if victims is None:
                victims = list(recs)[:max_victims]
            tiles = [tile(recs[v], "reconstructions") if v in recs else None for v in victims]
            if not tiles or any(t is None for t in tiles):
                continue
            if originals is None:
                originals = torch.stack([tile(recs[v], "originals") for v in victims])
                base = _ci(r["pairs"], "baseline_prior_sample_psnr")
                prior = (f"prior only: {_fmt(base.mean if base else None, '.1f')} dB",
                         torch.stack([tile(recs[v], "prior_only") for v in victims]))
            block.append((_row_title(r), torch.stack(tiles)))
        if block:
            where = "" if len(rounds) == 1 or rnd is None else f", round {rnd}"
            labelled += [(f"original{where}", originals)] + block + [prior]
    return labelled


def victim_titles(rows: List[dict], max_victims: int = MAX_VICTIMS_SHOWN) -> Optional[List[str]]:
    """Column titles (victim id and label) of the first round's victims, when every round shows the same
    number of them."""
    heads = worst_case_rows(rows)
    if not heads:
        return None
    first = min(heads, key=lambda r: -1 if r["round"] is None else r["round"])
    recs = [rec for rec, _ in first["pairs"]][:max_victims]
    return [f"#{rec.victim_id}" + (f" ({rec.label})" if rec.label is not None else "") for rec in recs]


def plot_reconstructions(rows: List[dict], path: Path) -> Optional[Path]:
    """``reconstruction_rows`` as one labelled figure, victims as columns."""
    from ggl.core.plots import image_rows_png

    labelled = reconstruction_rows(rows)
    if not labelled:
        return None
    cols = victim_titles(rows)
    rounds = {r["round"] for r in worst_case_rows(rows)}
    if len(rounds) > 1 or (cols is not None and len(cols) != max(len(images) for _, images in labelled)):
        cols = None  # each round attacked other victims: the titles would name only the first round's
    n = max(len(images) for _, images in labelled)
    return image_rows_png(path, labelled, f"GGL reconstructions per defence setting, worst case over the attackers "
                                          f"({n} victims per round as columns; row title: mean PSNR, "
                                          f"re-identification top-1 over all victims)", columns=cols)


# ---------------------------------------------------------------------------------------------
# the job


def log_wandb(found: dict, out: Path, mode: str, project: str) -> None:
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(project=project, job_type="report", name="privacy-utility-report", mode=mode, dir=str(out),
                     tags=["report"])
    try:
        run.log({"privacy_utility/table": wandb.Table(columns=TABLE_COLUMNS, data=table_rows(found["rows"])),
                 "privacy_utility/plot": wandb.Image(str(out / "privacy_utility.png"))})
        if (out / "reconstructions.png").is_file():
            run.log({"privacy_utility/reconstructions": wandb.Image(str(out / "reconstructions.png"))})
    finally:
        run.finish()


def _write_outputs(found: dict, out: Path, command: str, clock: float, metric: str, csv: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if csv:
        write_csv(out / CSV_FILE, found["pairs"])
        write_accuracy_csv(out / ACCURACY_FILE, found.get("feds") or [])
    plot_privacy_utility(found["rows"], out / "privacy_utility.png", metric)
    rounds = plot_leakage_vs_round(found["rows"], found.get("feds") or [], out / "leakage_vs_round.png")
    if rounds is None and (out / "leakage_vs_round.png").exists():
        (out / "leakage_vs_round.png").unlink()
    recon = plot_reconstructions(found["rows"], out / "reconstructions.png")
    if recon is None and (out / "reconstructions.png").exists():
        (out / "reconstructions.png").unlink()  # never leave a figure of other runs behind
    (out / "privacy_utility.md").write_text(markdown(found, command, time.perf_counter() - clock))


def write_report(roots: Sequence[Path], out: Path, wandb_mode: str = "disabled", project: str = "ggl",
                 metric: str = "psnr") -> dict:
    clock = time.perf_counter()
    roots = [Path(r) for r in roots]
    for r in roots:
        if not r.exists():
            from ggl.core.errors import UserError

            raise UserError(f"'{r}' does not exist; give the folder of the runs, e.g. runs/sweep_defenses")
    found = collect(roots)
    for p, why in found["skipped"]:
        print(f"skipped {p}: {why}", file=sys.stderr)
    out = Path(out)
    _write_outputs(found, out, f"python -m ggl.report {' '.join(str(r) for r in roots)}", clock, metric)
    if wandb_mode != "disabled":
        log_wandb(found, out, wandb_mode, project)
    found["seconds"] = time.perf_counter() - clock
    return found


def report_from_csv(csv_path: Path, out: Path, metric: str = "psnr") -> dict:
    """The table and the figures from a per-image CSV alone (the reconstructions figure also needs the
    images files its ``images`` column names, where they still exist)."""
    from ggl.core.errors import UserError

    clock = time.perf_counter()
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UserError(f"'{csv_path}' does not exist; give a per-image CSV written by the report "
                        f"(e.g. reports/{CSV_FILE})")
    try:
        pairs = read_csv(csv_path)
    except SchemaError as exc:
        raise UserError(str(exc)) from None
    rows = build_points(pairs)
    feds = list({f.key: f for _, f in pairs if f is not None}.values())
    found = {"rows": rows, "pairs": measured_pairs(rows), "feds": feds, "n_files": 1,
             "n_attacks": len(rows), "n_feds": len({f.key for _, f in pairs if f is not None})}
    out = Path(out)
    same = out.resolve() == csv_path.parent.resolve() and (out / CSV_FILE).resolve() == csv_path.resolve()
    _write_outputs(found, out, f"python -m ggl.report --from-csv {csv_path}", clock, metric, csv=not same)
    found["seconds"] = time.perf_counter() - clock
    return found


def most_leakage(rows: list) -> str:
    """'; most leakage: <point> PSNR <mean [CI]> dB over the best label-only baseline (n), re-id vs
    chance', or '' when no point has a leakage score: the key number of a finish line."""
    worst = None
    for r in worst_case_rows(rows):
        leak = _ci(r["pairs"], "leakage_psnr")
        if leak is not None and (worst is None or leak.mean > worst[1].mean):
            worst = (r, leak)
    if worst is None:
        return ""
    r, leak = worst
    reid = _ci(r["pairs"], HEADLINE)
    where = f" round {r['round']}" if r["round"] is not None else ""
    return (f"; most leakage: {r['setting']}{where} {r['attacker_name']} PSNR {leak.fmt()} dB over the best label-only "
            f"baseline (n = {r['n_images']})"
            + (f", re-id top-1 {reid.mean:.2f} (chance {_fmt(chance_level(r['pairs']), '.3f')})" if reid is not None else ""))


def finish_line(found: dict, out: Path, metric: str) -> str:
    """One line: where the output went, the key numbers, the next command."""
    rows = found["rows"]
    n = sorted({r["n_images"] for r in rows})
    key = most_leakage(rows)
    other = "reid" if metric != "reid" else "psnr"
    return (f"report: {len(rows)} points (n = {', '.join(map(str, n)) or '–'} images each, "
            f"{len(found.get('skipped', []))} files skipped) -> {out}/{{{','.join(FILES)}}}{key}; next: "
            f"python -m ggl.report --from-csv {out / CSV_FILE} --metric {other}")


def output_folder(roots: Sequence[str], from_csv: Optional[str], out: Optional[str], overwrite: bool) -> Path:
    """Where the report goes: ``--out``, or a ``report/`` folder beside the runs (or the CSV) it reads.

    Never replaces an existing report (e.g. the shipped ``reports/``) without ``--overwrite``; an empty
    or unreadable input is an error before anything is written.
    """
    from ggl.core.errors import UserError

    if from_csv is None:
        for r in roots:
            if not Path(r).exists():
                raise UserError(f"'{r}' does not exist; give the folder of the runs, e.g. runs/sweep_defenses")
        files = _results_files([Path(r) for r in roots])
        if not files:
            raise UserError(f"no results.json under {', '.join(map(str, roots))}; give the folder the sweep "
                            f"wrote, e.g. runs/sweep_defenses")
        if not any(_is_json_object(f) for f in files):
            raise UserError(f"none of the {len(files)} results.json under {', '.join(map(str, roots))} is "
                            f"readable JSON; give the folder the sweep wrote")
    if out is None:
        if from_csv is not None:
            out = str(Path(from_csv).parent / "report")
        elif len(roots) == 1 and Path(roots[0]).is_dir():
            out = str(Path(roots[0]) / "report")
        else:
            raise UserError("several inputs (or a file): name the report folder with --out <folder>")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out '{folder}' is a file; give a folder (it is created if missing)")
    existing = [f for f in FILES if (folder / f).exists()]
    if existing and not overwrite:
        raise UserError(f"--out '{folder}' already holds a report ({', '.join(existing)}); give another folder "
                        f"or add --overwrite to replace it")
    return folder


def _is_json_object(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text()), dict)
    except (OSError, ValueError):
        return False


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ggl.report", description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="*", help="folders of runs (searched recursively) or results.json files")
    ap.add_argument("--from-csv", default=None, metavar="CSV",
                    help=f"rebuild the table and figures from a per-image CSV ({CSV_FILE}) instead of runs")
    ap.add_argument("--out", default=None,
                    help="output folder (default: report/ beside the runs folder, or beside the CSV)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the report files already in --out (never done without this flag)")
    ap.add_argument("--metric", default="psnr", choices=sorted(PLOT_METRICS),
                    help="privacy axis of privacy_utility.png (default: psnr)")
    ap.add_argument("--wandb", default="disabled", choices=("disabled", "offline", "online"),
                    help="also log the table and figures to a W&B report run (default: disabled)")
    ap.add_argument("--project", default="ggl", help="W&B project of the report run")
    args = ap.parse_args(argv)
    from ggl.core.errors import UserError

    try:
        if args.from_csv is not None:
            if args.roots:
                raise UserError("give either run folders or --from-csv, not both")
            out = output_folder([], args.from_csv, args.out, args.overwrite)
            found = report_from_csv(Path(args.from_csv), out, args.metric)
        else:
            if not args.roots:
                raise UserError("give the folder of the runs (e.g. runs/sweep_defenses) or --from-csv <csv>")
            out = output_folder(args.roots, None, args.out, args.overwrite)
            found = write_report(args.roots, out, args.wandb, args.project, args.metric)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(finish_line(found, out, args.metric))
    return 0

