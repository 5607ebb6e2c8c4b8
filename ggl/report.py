"""The privacy-utility report: federation runs (utility) paired with the attacks on their captures (privacy).

    python -m ggl.report runs/sweep_defenses [--out DIR [--overwrite]] [--metric psnr|ssim|reid] [--wandb ...]
    python -m ggl.report --from-csv reports/per_image.csv [--out DIR [--overwrite]] [--metric ...]

Reads every ``results.json`` under the folders (never the network), pairs each attack with the
federation whose captures it attacked (the attack's recorded ``federation``; older files: its
``attack.source`` path), and writes to ``--out`` (default: ``report/`` beside the runs or the CSV; an
existing report is replaced only with ``--overwrite``):

* ``per_image.csv``: one row per attacked image (``ggl.results``: setting, attacker, round, victim id,
  label, every metric, every label-only baseline's scores, leakage, its federation's numbers). Every
  number of the table and of ``privacy_utility.png`` is computed from it alone; ``--from-csv``
  rebuilds them from it;
* ``privacy_utility.md``: per point (defence setting x attacker, seeds pooled) the mean and 95%
  bootstrap CI over the attacked images (``ggl.stats``) of PSNR, SSIM, re-identification, the best
  label-only baseline and the leakage over it; then paired comparisons on the same victims;
* ``privacy_utility.png``: x = the federation's final test accuracy, y = the ``--metric`` (PSNR, SSIM
  or re-identification top-1) with 95% CI bars, one panel per defence family (fp32 in each as the
  reference), points at the same accuracy spread sideways; filled = non-adaptive attacker, hollow =
  adaptive; the band = the strongest label-only baseline's 95% CI;
* ``reconstructions.png``: the victims as columns; the originals, then one titled row per setting and
  attacker, then the prior-only images, from each attack's ``<setting>/images.pt``.

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
from ggl.results import (ATTACKERS, FederationRef, FederationResult, ImageRecord, SchemaError, read_attack_records,
                         read_csv, write_csv)
from ggl.stats import MeanCI, mean_ci, paired
from ggl.safe_load import safe_load

CSV_FILE = "per_image.csv"
FILES = ("privacy_utility.png", "privacy_utility.md", "reconstructions.png", CSV_FILE)
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
            key = (group[0].defense, group[0].attacker, fed.dataset if fed else None, fed.model if fed else None,
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
    pairs = [p for point in points for p in point["pairs"]]  # in table order: the CSV follows the table
    feds_alone = [f for k, f in sorted(feds.items()) if k not in paired_feds]
    return {"rows": points, "pairs": pairs, "feds_alone": feds_alone, "skipped": skipped, "ignored": ignored,
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
    """Group images into points (defence setting x attacker x dataset x model; seeds pooled), in table
    order: dataset, best test accuracy first, setting, non-adaptive before adaptive."""
    groups: Dict[tuple, List[Pair]] = {}
    for rec, fed in pairs:
        key = (rec.defense, rec.attacker, fed.dataset if fed else None, fed.model if fed else None)
        groups.setdefault(key, []).append((rec, fed))
    points = []
    for (defense, attacker, dataset, model), group in groups.items():
        group = sorted(group, key=lambda p: (p[0].seed if p[0].seed is not None else -1, p[0].round or 0,
                                             p[0].probe or "", p[0].image))
        feds = list({f.key: f for _, f in group if f is not None}.values())
        first = feds[0] if feds else None
        points.append({
            "setting": defense, "attacker": attacker, "dataset": dataset, "model": model, "pairs": group,
            "seeds": sorted({r.seed for r, _ in group if r.seed is not None}),
            "test_acc": _mean(f.test_acc for f in feds) if feds else None,
            "bits_per_round": first.bits_per_round if first else None,
            "compression_ratio": first.compression_ratio if first else None,
            "epsilon": (first.epsilon, first.delta) if first and first.epsilon is not None else None,
            "rounds": first.rounds if first else None,
            "faults": sum(f.faults for f in feds),
            "images": next((Path(r.images) for r, _ in group if r.images), None),
            "n_images": len(group), "victims": tuple((r.seed, r.victim_id) for r, _ in group)})
    return sorted(points, key=_row_order)


def _row_order(row: dict) -> tuple:
    acc = row["test_acc"]
    return (row["dataset"] or "", -(acc if acc is not None else -1.0), row["setting"],
            ATTACKERS.index(row["attacker"]))


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


TABLE_COLUMNS = ["setting", "attacker", "test acc", "PSNR (dB)", "SSIM", "re-id top-1 (chance)", "re-id MRR (chance)",
                 "LPIPS", "label acc", "best label-only PSNR (dB)", "PSNR leakage (dB)", "re-id leakage", "n images",
                 "seeds", "uplink bits / round", "compression", "DP ε (δ)", "rounds", "dataset"]
MRR_KEY = "reid_rr_feature_class"


def table_rows(rows: List[dict]) -> List[List[str]]:
    out = []
    for r in rows:
        pairs = r["pairs"]
        best = strongest_baseline(pairs, "psnr")
        top1, mrr = _ci(pairs, HEADLINE), _ci(pairs, MRR_KEY)
        out.append([
            r["setting"], r["attacker"], _fmt(r["test_acc"], ".3f"), _fmt_ci(_ci(pairs, "psnr")),
            _fmt_ci(_ci(pairs, "ssim"), ".3f"),
            "–" if top1 is None else f"{top1.fmt()} ({_fmt(chance_level(pairs, 'top1'), '.3f')})",
            "–" if mrr is None else f"{mrr.fmt()} ({_fmt(chance_level(pairs, 'rr'), '.3f')})",
            _fmt_ci(_ci(pairs, "lpips"), ".3f"), _fmt(_mean(rec.batch_label_acc for rec, _ in pairs), ".0%"),
            _fmt_ci(_ci(pairs, "best_baseline_psnr")) + (f" ({best.replace('_', ' ')})" if best else ""),
            _fmt_ci(_ci(pairs, "leakage_psnr")), _fmt_ci(_ci(pairs, f"leakage_{HEADLINE}")),
            str(r["n_images"]), str(len(r["seeds"])) if r["seeds"] else "–", _bits(r["bits_per_round"]),
            _fmt(r["compression_ratio"], ".1f") + ("×" if r["compression_ratio"] is not None else ""),
            f"{r['epsilon'][0]:.3g} ({r['epsilon'][1]:g})" if r.get("epsilon") else "–",
            str(r["rounds"]) if r["rounds"] is not None else "–", r["dataset"] or "–"])
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


def comparisons(rows: List[dict]) -> List[Tuple[str, str, Any]]:
    """(comparison, metric label, ggl.stats.Paired) on the same victims: each point against the best
    label-only baseline (does it leak?), and the adaptive against the non-adaptive attacker."""
    out = []
    for r in rows:
        for key, label in COMPARE_METRICS:
            res = paired(*_aligned(r["pairs"], r["pairs"], key, f"best_baseline_{key}"), seed=BOOTSTRAP_SEED)
            if res is not None:
                out.append((f"{r['setting']} {r['attacker']} − best label-only baseline", label, res))
    by_key = {(r["setting"], r["attacker"], r["dataset"]): r for r in rows}
    for r in rows:
        other = by_key.get((r["setting"], "non-adaptive", r["dataset"]))
        if r["attacker"] != "adaptive" or other is None:
            continue
        for key, label in COMPARE_METRICS:
            res = paired(*_aligned(r["pairs"], other["pairs"], key, key), seed=BOOTSTRAP_SEED)
            if res is not None:
                out.append((f"{r['setting']}: adaptive − non-adaptive", label, res))
    return out


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
    victims = {r["victims"] for r in rows if r["victims"]}
    if len(victims) > 1:
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


def plot_privacy_utility(rows: List[dict], path: Path, metric: str = "psnr") -> Path:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from ggl.plots import _pyplot

    key, ylabel, _ = PLOT_METRICS[metric]
    plt = _pyplot()
    plotted = [r for r in rows if r["test_acc"] is not None and _ci(r["pairs"], key) is not None]
    families = list(dict.fromkeys(defense_family(r["setting"]) for r in plotted if r["setting"] != "fp32")) or ["fp32"]
    ncols = min(3, len(families))
    nrows = -(-len(families) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols + 2.6, 3.9 * nrows + 0.6), dpi=110, squeeze=False,
                             sharey=True)
    labels = list(dict.fromkeys(r["setting"] for r in plotted))
    markers = "osD^vP*Xhp<>d8H"
    cmap = plt.get_cmap("tab20")
    style = {lab: (cmap((2 * i) % 20 + (2 * i // 20) % 2), markers[i % len(markers)]) for i, lab in enumerate(labels)}
    all_pairs = [p for r in plotted for p in r["pairs"]]
    band = mean_ci(_values(all_pairs, f"best_baseline_{key}"), seed=BOOTSTRAP_SEED)
    accs = [r["test_acc"] for r in plotted]
    width = 0.012 * max(max(accs, default=1) - min(accs, default=0), 0.05)
    for ax, family in zip(axes.flat, families):
        members = [r for r in plotted if defense_family(r["setting"]) == family or r["setting"] == "fp32"]
        xs = dodge([r["test_acc"] for r in members], width)
        if band is not None:
            ax.axhspan(band.low, band.high, color="0.85", zorder=0)
            ax.axhline(band.mean, color="0.55", lw=1, ls="--", zorder=1)
        if metric == "reid":
            ch = chance_level(all_pairs, "top1")
            if ch is not None:
                ax.axhline(ch, color="0.3", lw=1, ls=":", zorder=1)
        for x, r in zip(xs, members):
            ci = _ci(r["pairs"], key)
            color, marker = style[r["setting"]]
            hollow = r["attacker"] == "adaptive"
            ax.errorbar(x, ci.mean, yerr=[[ci.mean - ci.low], [ci.high - ci.mean]], fmt=marker, ms=7, capsize=3,
                        color=color, mfc="white" if hollow else color, mec=color, mew=1.5, zorder=3)
        ax.set_title(family, fontsize=9)
        ax.set_xlabel("final test accuracy (same accuracy: spread sideways)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(families):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)
    handles = [Line2D([], [], ls="", marker=style[lab][1], color=style[lab][0], ms=7, label=lab) for lab in labels]
    handles += [Line2D([], [], ls="", marker="o", color="0.3", ms=7, label="non-adaptive attacker (filled)"),
                Line2D([], [], ls="", marker="o", color="0.3", mfc="white", ms=7, label="adaptive attacker (hollow)"),
                Patch(color="0.85", label="strongest label-only baseline (95% CI)")]
    if metric == "reid":
        handles.append(Line2D([], [], color="0.3", ls=":", label="chance"))
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    n = sorted({r["n_images"] for r in plotted})
    seeds = sorted({len(r["seeds"]) for r in plotted})
    fig.suptitle(f"Privacy vs utility under GGL (mean, 95% bootstrap CI; n = {', '.join(map(str, n)) or '–'} images, "
                 f"{', '.join(map(str, seeds)) or '–'} seed(s) per point): higher = more leakage, right = better "
                 f"model", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 2.4 / fig.get_figwidth(), 0.95))
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
    return (f"{r['setting']}, {r['attacker']}: {_fmt(psnr.mean if psnr else None, '.1f')} dB"
            + (f", re-id {reid.mean:.2f}" if reid is not None else ""))


def reconstruction_rows(rows: List[dict]) -> List[Tuple[str, Any]]:
    """(title, images) rows of the reconstructions figure: the victims' originals, one row of
    reconstructions per setting and attacker (in table order, titled with its mean PSNR and
    re-identification), and the prior-only images last. An ``original`` row is repeated wherever the
    attacked victims change. Attacks without an images file are left out (the markdown names them)."""
    import torch

    labelled: List[Tuple[str, torch.Tensor]] = []
    shown, first = None, None
    for r in rows:
        images = _load_images(r["images"])
        if images is None:
            continue
        originals = images["originals"]
        if shown is None or shown.shape != originals.shape or not torch.equal(shown, originals):
            labelled.append(("original", originals))
            shown = originals
        first = first or (r, images)
        labelled.append((_row_title(r), images["reconstructions"]))
    if first is not None:
        base = _ci(first[0]["pairs"], "baseline_prior_sample_psnr")
        labelled.append((f"prior only: {_fmt(base.mean if base else None, '.1f')} dB", first[1]["prior_only"]))
    return labelled


def victim_titles(rows: List[dict]) -> Optional[List[str]]:
    """Column titles of the reconstructions figure (victim id and label) of the first row with images."""
    for r in rows:
        if _load_images(r["images"]) is not None:
            recs = [rec for rec, _ in r["pairs"]]
            return [f"#{rec.victim_id}" + (f" ({rec.label})" if rec.label is not None else "") for rec in recs]
    return None


def plot_reconstructions(rows: List[dict], path: Path) -> Optional[Path]:
    """``reconstruction_rows`` as one labelled figure, victims as columns."""
    from ggl.plots import image_rows_png

    labelled = reconstruction_rows(rows)
    if not labelled:
        return None
    cols = victim_titles(rows)
    if cols is not None and len(cols) != max(len(images) for _, images in labelled):
        cols = None
    return image_rows_png(path, labelled, "GGL reconstructions per defence setting and attacker (victims as "
                                          "columns; row title: mean PSNR, re-identification top-1)", columns=cols)


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
    plot_privacy_utility(found["rows"], out / "privacy_utility.png", metric)
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
            from ggl.errors import UserError

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
    from ggl.errors import UserError

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
    found = {"rows": rows, "pairs": [p for r in rows for p in r["pairs"]], "n_files": 1,
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
    for r in rows:
        leak = _ci(r["pairs"], "leakage_psnr")
        if leak is not None and (worst is None or leak.mean > worst[1].mean):
            worst = (r, leak)
    if worst is None:
        return ""
    r, leak = worst
    reid = _ci(r["pairs"], HEADLINE)
    return (f"; most leakage: {r['setting']} {r['attacker']} PSNR {leak.fmt()} dB over the best label-only "
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
    from ggl.errors import UserError

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
    from ggl.errors import UserError

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


if __name__ == "__main__":
    sys.exit(main())
