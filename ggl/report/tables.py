"""The report's text: the column lists, the rows of the worst-case, every-attacker and comparison tables,
``privacy_utility.md`` and the finish line's key number."""
from __future__ import annotations

import re
from datetime import datetime
from typing import Dict, List, Optional, Sequence

from ggl.audit.baselines import BASELINES
from ggl.audit.tidy import spreadsheet_safe
from ggl.audit.reid import HEADLINE
from ggl.audit.truth import IMAGES_FILE
from ggl.core.stats import MeanCI, fmt
from ggl.report import decomposition
from ggl.report.collect import Collected
from ggl.report.figures import rows_left_out
from ggl.report.points import (Pair, Point, ci, chance_level, comparisons, contrast, mean, measured_pairs,
                               strongest_baseline, wins_text, worst_cases)

CSV_FILE = "per_image.csv"
TABLE_COLUMNS = ["setting", "round", "probe", "attacker", "test acc", "acc at round", "PSNR (dB)", "SSIM",
                 "re-id top-1 (chance)", "re-id MRR (chance)", "LPIPS", "label acc", "best label-only PSNR (dB)",
                 "PSNR leakage (dB)", "re-id leakage", "n images", "seeds", "uplink bits / round", "compression",
                 "DP ε (δ)", "rounds", "dataset"]
HEADLINE_COLUMNS = ["setting", "round", "probe", "test acc", "acc at round", "worst-case PSNR (dB)", "SSIM",
                    "re-id top-1 (chance)", "best label-only PSNR (dB)", "PSNR leakage (dB)", "re-id leakage",
                    "won by (victims, PSNR)", "ggl-l2 non-adaptive PSNR (dB)", "n images", "compression"]
COMPARE_COLUMNS = ["comparison", "metric", "n pairs", "mean difference [95% CI]", "Wilcoxon p", "Cohen's d_z",
                   "rank-biserial"]
MRR_KEY = "reid_rr_feature_class"


# bidirectional-text controls (LRE..RLO, LRI..PDI, LRM/RLM): they make a label read other than it is
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f]")
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def plain(text: str) -> str:
    """Text for a markdown line: bidi controls dropped, control characters (newline, tab, CR) as spaces."""
    return _CONTROL.sub(" ", _BIDI.sub("", str(text)))


def label(text: Optional[str]) -> str:
    """A label read from runs or a CSV (setting, attacker, probe, dataset), as a table cell: plain and
    spreadsheet-safe (a formula-leading label gets a leading single quote)."""
    return "–" if text is None else spreadsheet_safe(plain(text).strip())


def fmt_ci(c: Optional[MeanCI], spec: str = ".2f") -> str:
    return "–" if c is None else c.fmt(spec)


def _bits(v: Optional[float]) -> str:
    if v is None:
        return "–"
    for unit, scale in (("Gbit", 1e9), ("Mbit", 1e6), ("kbit", 1e3)):
        if v >= scale:
            return f"{v / scale:.2f} {unit}"
    return f"{v:.0f} bit"


def _top1(pairs: Sequence[Pair]) -> str:
    top1 = ci(pairs, HEADLINE)
    return "–" if top1 is None else f"{top1.fmt()} ({fmt(chance_level(pairs, 'top1'), '.3f')})"


def _best_baseline(pairs: Sequence[Pair]) -> str:
    best = strongest_baseline(pairs, "psnr")
    return fmt_ci(ci(pairs, "best_baseline_psnr")) + (f" ({best.replace('_', ' ')})" if best else "")


def _round(p: Point) -> str:
    return "–" if p.key.round is None else str(p.key.round)


def _compression(p: Point) -> str:
    return fmt(p.fed.compression_ratio, ".1f") + ("×" if p.fed.compression_ratio is not None else "")


def table_rows(points: List[Point]) -> List[List[str]]:
    """Every point (each attacker, and each worst case) with all its numbers."""
    out = []
    for p in points:
        mrr, eps = p.ci(MRR_KEY), p.fed.epsilon
        out.append([
            label(p.key.defense), _round(p), label(p.key.probe), label(p.key.attacker), fmt(p.fed.test_acc, ".3f"),
            fmt(p.fed.round_test_acc, ".3f"), fmt_ci(p.ci("psnr")), fmt_ci(p.ci("ssim"), ".3f"),
            _top1(p.pairs), "–" if mrr is None else f"{mrr.fmt()} ({fmt(chance_level(p.pairs, 'rr'), '.3f')})",
            fmt_ci(p.ci("lpips"), ".3f"), fmt(mean(rec.batch_label_acc for rec, _ in p.pairs), ".0%"),
            _best_baseline(p.pairs), fmt_ci(p.ci("leakage_psnr")), fmt_ci(p.ci(f"leakage_{HEADLINE}")),
            str(p.n_images), str(len(p.seeds)) if p.seeds else "–", _bits(p.fed.bits_per_round), _compression(p),
            f"{eps[0]:.3g} ({eps[1]:g})" if eps else "–",
            str(p.fed.rounds) if p.fed.rounds is not None else "–", label(p.key.dataset)])
    return out


def headline_rows(points: List[Point]) -> List[List[str]]:
    """Per setting, round and probe: the worst case over the attackers (``ggl.report.points``)."""
    out = []
    for p in worst_cases(points):
        other = contrast(points, p)
        out.append([
            label(p.key.defense), _round(p), label(p.key.probe), fmt(p.fed.test_acc, ".3f"),
            fmt(p.fed.round_test_acc, ".3f"),
            fmt_ci(p.ci("psnr")), fmt_ci(p.ci("ssim"), ".3f"), _top1(p.pairs), _best_baseline(p.pairs),
            fmt_ci(p.ci("leakage_psnr")), fmt_ci(p.ci(f"leakage_{HEADLINE}")),
            label(wins_text(p) if p.worst_case else p.key.attacker),
            fmt_ci(other.ci("psnr")) if other else "–", str(p.n_images), _compression(p)])
    return out


def comparison_rows(points: List[Point]) -> List[List[str]]:
    return [[label(name), label(what), str(res.n), res.ci.fmt(".2f"), f"{res.p_value:.2g}", fmt(res.cohens_dz, ".2f"),
             f"{res.rank_biserial:.2f}"] for name, what, res in comparisons(points)]


def md_table(columns: List[str], cells: List[List[str]]) -> List[str]:
    def row(c: List[str]) -> str:  # a "|" inside a cell would split it
        return "| " + " | ".join(plain(x).replace("|", "\\|") for x in c) + " |"
    return [row(columns), "|" + "---|" * len(columns)] + [row(c) for c in cells]


INTRO = ("Utility: the federation's final test accuracy on its full test split. Privacy: how well GGL "
         "reconstructs the victim's images from the captured update, against the originals (higher = more "
         "leakage). Every score is the mean over the attacked images with its 95% bootstrap CI in brackets "
         "(seeds pooled). Re-identification: the share of reconstructions whose nearest private image of the "
         "same class, in the feature space of a classifier trained on the public split, is the victim (chance "
         "in brackets: 1 / the class's private images). Label-only baselines (what the label alone gives): "
         "the prior's class mean, the public split's class mean, a random prior sample; leakage = the attack's "
         "score minus the best of them on the same image.")
WORST_CASE_INTRO = ("Per defence setting, round (the global model after that many rounds; 0 = untrained) and probe: "
                    "per victim, the best reconstruction of any attacker that ran (on each metric); `won by` counts "
                    "the victims each attacker won on PSNR. The last columns show the non-adaptive L2 GGL attacker "
                    "alone, for contrast. `acc at round` is the test accuracy of the model the victims' updates were "
                    "computed at (– at round 0: untrained, not evaluated).")


def markdown(collected: Collected, points: List[Point], command: str, seconds: float) -> str:
    c = collected
    lines = ["# Privacy–utility report", "",
             f"`{command}` — {c.n_feds} federation runs, {c.n_attacks} attacked settings "
             f"read from {c.n_files} results files ({datetime.now():%Y-%m-%d %H:%M}, {seconds:.1f} s). "
             f"Per-image data: [`{CSV_FILE}`]({CSV_FILE}) (`python -m ggl.report --from-csv {CSV_FILE}` rebuilds "
             f"this table and the figure from it).", "",
             "![privacy vs utility](privacy_utility.png)", "", INTRO, ""]
    lines += ["## The worst case per setting and round", "", WORST_CASE_INTRO, ""]
    lines += md_table(HEADLINE_COLUMNS, headline_rows(points))
    if decomposition.seeded(points):
        lines += ["", "With several search seeds per victim this worst case is the best of every run of every "
                      "attacker, which grows with the number of runs; the answer per threat model below takes "
                      "the best of a fixed number of attackers, and the selection section shows the difference."]
    lines += decomposition.sections(points, md_table)
    lines += ["", "![leakage and accuracy over rounds](leakage_vs_round.png)", "", "## Every attacker", ""]
    lines += md_table(TABLE_COLUMNS, table_rows(points))
    cmp_rows = comparison_rows(points)
    if cmp_rows:
        lines += ["", "Paired comparisons on the same victims (difference of means, Wilcoxon signed-rank "
                      "two-sided, effect sizes):", ""]
        lines += md_table(COMPARE_COLUMNS, cmp_rows)
    lines += _notes(c, points) + ["", "![reconstructions](reconstructions.png)", ""]
    return "\n".join(_BIDI.sub("", x) for x in lines)  # no label read from a run or CSV reorders the text


def _notes(c: Collected, points: List[Point]) -> List[str]:
    lines = []
    band = {b: ci(measured_pairs(points), f"baseline_{b}_psnr") for b in BASELINES}
    shown = [f"{b.replace('_', ' ')} {m.fmt()} dB" for b, m in band.items() if m is not None]
    if shown:
        lines += ["", "Label-only baselines over all attacked images, PSNR: " + "; ".join(shown) + "."]
    victims = {(p.key.round, p.key.probe, p.victims) for p in points if p.victims}
    if len(victims) > len({(p.key.round, p.key.probe) for p in points if p.victims}):
        lines += ["", f"Note: the settings attacked {len(victims)} different sets of victim images "
                      f"(different audit configs); rows are not the same images."]
    if c.superseded:
        lines += ["", f"{c.superseded} older attack result(s) of a setting and attacker already shown "
                      f"were left out (the newest run wins; point the report at one sweep's folder to compare "
                      f"like with like)."]
    faulty = [f"{p.key.defense} ({p.kind}): {p.fed.faults}" for p in points if p.fed.faults]
    if faulty:
        lines += ["", "**Warning:** these points' federations dropped failed clients or rejected updates, so their "
                      "accuracy is not the defence's alone (see each run's results.json `final`): "
                      + "; ".join(faulty) + "."]
    if any(p.fed.test_acc is None for p in points):
        lines += ["", "Rows with test acc `–`: attacks whose federation run was not found under the folder "
                      "(fresh victims, or a moved/deleted federation); they are not plotted."]
    if c.feds_alone:
        lines += ["", "Federations without an attack yet: " + ", ".join(
            f"{f.label} (`{f.dir}`, acc {f.test_acc:.3f})" for f in c.feds_alone) + "."]
    if c.skipped:
        lines += ["", "Skipped results.json files:", ""] + [f"- `{p}`: {why}" for p, why in c.skipped]
    if any(rec.metrics.get("lpips") is None for p in points for rec, _ in p.pairs):
        lines += ["", "LPIPS `–`: not computed when the attack ran, because its backbone's ImageNet weights were "
                      "not in torch hub's cache (nothing downloads at run time; `attack.lpips_net` in "
                      "configs/attack.yaml names the file and where it goes). Each attack's results.json "
                      "`summary` gives the reason."]
    blind = unmodelled(points)
    if blind:
        lines += ["", "**No attacker that models the defence ran on:** " + ", ".join(blind) + ". Every attacker "
                      "there matched the update as if it were undefended, so a low score is what such attackers "
                      "reach, not the defence's protection: add one that models it (ggl-l2-adaptive, the grid "
                      "attackers, ggl-eot) before reading a drop as protection."]
    no_images = [f"{p.key.defense}" + (f" round {p.key.round}" if p.key.round is not None else "")
                 for p in rows_left_out(points)]
    if no_images:
        lines += ["", f"Not in the reconstructions figure (the {IMAGES_FILE} of their attack runs is not here, or is "
                      f"unreadable or of another size; rerun those attacks): " + ", ".join(no_images) + "."]
    return lines


def unmodelled(points: Sequence[Point]) -> List[str]:
    """'<setting> round <r>' of each defended setting and round that no attacker modelling the defence
    (an adaptive, grid or EOT attacker: a record with ``adaptive``) attacked: its worst case is blind to the
    defence (clipping looked protective this way when the portfolio had no attacker that models it)."""
    seen: Dict[tuple, bool] = {}
    for p in points:
        if p.key.defense == "fp32" or p.kind == "portfolio":
            continue
        where = (p.key.defense, p.key.round, p.key.probe, p.key.dataset)
        seen[where] = seen.get(where, False) or any(rec.adaptive for rec, _ in p.pairs)
    return [f"{d}" + (f" round {r}" if r is not None else "") for (d, r, *_), modelled in seen.items()
            if not modelled]


def most_leakage(points: Sequence[Point]) -> str:
    """'; most leakage: <point> PSNR <mean [CI]> dB over the best label-only baseline (n), re-id vs
    chance', or '' when no point has a leakage score: the key number of a finish line."""
    worst = None
    for p in worst_cases(points):
        leak = p.ci("leakage_psnr")
        if leak is not None and (worst is None or leak.mean > worst[1].mean):
            worst = (p, leak)
    if worst is None:
        return ""
    p, leak = worst
    reid = p.ci(HEADLINE)
    where = f" round {p.key.round}" if p.key.round is not None else ""
    return (f"; most leakage: {p.key.defense}{where} {p.key.attacker} PSNR {leak.fmt()} dB over the best label-only "
            f"baseline (n = {p.n_images})"
            + (f", re-id top-1 {reid.mean:.2f} (chance {fmt(chance_level(p.pairs), '.3f')})" if reid is not None
               else ""))
