"""The report's figures: ``FIGURES`` lists them, each one function ``(points, feds, path, metric) -> Path | None``
(None: nothing to draw, the file is removed) whose data comes from a separate plain-data function
(``privacy_utility_data``, ``leakage_vs_round_data``, ``reconstruction_rows``), so tests pin what is drawn.
Adding a plot = one function + one ``FIGURES`` entry.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ggl.audit.records import FederationResult
from ggl.audit.reid import HEADLINE
from ggl.core.plots import _pyplot, image_rows_png, save_figure
from ggl.core.safe_load import safe_load
from ggl.core.stats import MeanCI, fmt
from ggl.defenses import defense_family
from ggl.report.points import Point, ci, chance_level, contrast, mean, measured_pairs, victim_key, worst_cases

# --metric -> (per-image key, axis label, number format)
PLOT_METRICS = {"psnr": ("psnr", "attack PSNR (dB)", ".2f"), "ssim": ("ssim", "attack SSIM", ".3f"),
                "reid": (HEADLINE, "re-identification top-1 (feature space, same-class private images)", ".2f")}


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


def _ci_dict(c: Optional[MeanCI]) -> Optional[dict]:
    return None if c is None else {"mean": c.mean, "low": c.low, "high": c.high}


def privacy_utility_data(points: List[Point], metric: str = "psnr") -> dict:
    """What ``privacy_utility.png`` plots, as plain data (no matplotlib): the settings in legend order,
    the families (panel columns) and rounds (panel rows), the baseline band and chance line, and per
    panel its points: setting, family, round, x (dodged accuracy), acc, y (mean, low, high) and marker
    ("head": the worst case, big; "contrast": the non-adaptive L2 attacker alone, small hollow)."""
    key, ylabel, _ = PLOT_METRICS[metric]
    heads = [p for p in worst_cases(points) if p.fed.test_acc is not None and p.ci(key) is not None]
    contrasts = [c for c in (contrast(points, p) for p in heads if p.worst_case) if c is not None]
    plotted = heads + [c for c in contrasts if c.ci(key) is not None]
    families = list(dict.fromkeys(defense_family(p.key.defense) for p in plotted
                                  if p.key.defense != "fp32")) or ["fp32"]
    rounds = sorted({p.key.round for p in plotted}, key=lambda x: -1 if x is None else x) or [None]
    labels = list(dict.fromkeys(p.key.defense for p in plotted))
    all_pairs = [pair for p in heads for pair in p.pairs]
    band = ci(all_pairs, f"best_baseline_{key}")
    accs = [p.fed.test_acc for p in plotted]
    width = 0.012 * max(max(accs, default=1) - min(accs, default=0), 0.05)
    ch = chance_level(all_pairs, "top1") if metric == "reid" else None
    panels = []
    for rnd in rounds:
        for family in families:
            members = [p for p in plotted if p.key.round == rnd and
                       (defense_family(p.key.defense) == family or p.key.defense == "fp32")]
            xs = dodge([p.fed.test_acc for p in members], width)
            marks = [{"setting": p.key.defense, "family": defense_family(p.key.defense), "round": p.key.round,
                      "x": x, "acc": p.fed.test_acc, "y": _ci_dict(p.ci(key)),
                      "marker": "head" if any(p is h for h in heads) else "contrast"} for x, p in zip(xs, members)]
            panels.append({"round": rnd, "family": family, "points": marks})
    return {"metric": metric, "ylabel": ylabel, "labels": labels, "families": families, "rounds": rounds,
            "band": _ci_dict(band), "chance": ch, "panels": panels,
            "n_images": sorted({p.n_images for p in heads}), "seeds": sorted({len(p.seeds) for p in heads})}


def privacy_utility(points: List[Point], feds: Sequence[FederationResult], path: Path,
                    metric: str = "psnr") -> Path:
    """Worst case per setting (big markers) and the non-adaptive L2 GGL attacker (small hollow) vs the
    final test accuracy; one column of panels per defence family, one row per round
    (the data: ``privacy_utility_data``)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    data = privacy_utility_data(points, metric)
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
    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)
    return path


LEAKAGE_PANELS = (("psnr", "worst-case PSNR (dB)"), (HEADLINE, "worst-case re-identification top-1"))


def leakage_vs_round_data(points: List[Point], feds: Sequence[FederationResult]) -> Optional[dict]:
    """What ``leakage_vs_round.png`` plots, as plain data, or None when no point has a round: the settings
    (line order); per leakage panel (PSNR, re-identification) each setting's points (round, x = the round
    shifted sideways, y mean/low/high) and the baseline band or chance line; the accuracy curves."""
    heads = [p for p in worst_cases(points) if p.key.round is not None]
    if not heads:
        return None
    settings = list(dict.fromkeys(p.key.defense for p in heads))
    panels = []
    for key, label in LEAKAGE_PANELS:
        series = []
        for s in settings:
            pts = sorted((p for p in heads if p.key.defense == s and p.key.probe == heads[0].key.probe),
                         key=lambda p: p.key.round)
            cis = [(p.key.round, p.ci(key)) for p in pts]
            cis = [(x, c) for x, c in cis if c is not None]
            if not cis:
                continue
            series.append({"setting": s, "points": [
                {"round": x, "x": x + 0.08 * (settings.index(s) - (len(settings) - 1) / 2), "y": _ci_dict(c)}
                for x, c in cis]})
        band = ch = None
        if key == "psnr":
            band = _ci_dict(ci([pair for p in heads for pair in p.pairs], "best_baseline_psnr"))
        else:
            ch = chance_level([pair for p in heads for pair in p.pairs], "top1")
        panels.append({"key": key, "label": label, "series": series, "band": band, "chance": ch})
    accuracy = []
    for s in settings:
        curves = [f.curve for f in feds if f.label == s and f.curve]
        if curves:
            xs = [r for r, _ in curves[0]]
            accuracy.append({"setting": s, "rounds": xs, "acc": [mean(dict(c).get(x) for c in curves) for x in xs]})
    return {"settings": settings, "panels": panels, "accuracy": accuracy}


def leakage_vs_round(points: List[Point], feds: Sequence[FederationResult], path: Path,
                     metric: str = "psnr") -> Optional[Path]:
    """Three panels over FL rounds, one line per setting: the worst-case PSNR and re-identification
    top-1 (mean, 95% CI) at each attacked round, and the federation's test accuracy curve
    (the data: ``leakage_vs_round_data``)."""
    from matplotlib.ticker import MaxNLocator

    data = leakage_vs_round_data(points, feds)
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
    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)
    return path


def _load_images(path: Optional[Path]) -> Optional[dict]:
    if path is None or not Path(path).is_file():
        return None
    try:
        images = safe_load(path, "report images")  # weights_only, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says
        return {k: images[k].float().clamp(0, 1) for k in ("originals", "reconstructions", "prior_only")}
    except Exception as exc:  # a damaged file costs its row in the figure, not the report
        print(f"skipped {path}: {str(exc).splitlines()[0][:120]}", file=sys.stderr)
        return None


def _row_title(p: Point) -> str:
    psnr, reid = p.ci("psnr"), p.ci(HEADLINE)
    return (f"{p.key.defense}, {p.key.attacker}: {fmt(psnr.mean if psnr else None, '.1f')} dB"
            + (f", re-id {reid.mean:.2f}" if reid is not None else ""))


MAX_VICTIMS_SHOWN = 16  # columns of reconstructions.png per round (all victims are in the CSV and the table)


def _image_positions(points: Sequence[Point]) -> Dict[str, Dict[tuple, int]]:
    """images.pt file -> {(capture id, image): position}: an attack writes one setting's images in the
    order of its captures (capture ids sort in round and batch order), each capture's images in order."""
    keys: Dict[str, set] = {}
    for rec, _ in measured_pairs(points):
        if rec.images:
            keys.setdefault(rec.images, set()).add((rec.capture_id or "", rec.image))
    return {f: {k: i for i, k in enumerate(sorted(ks))} for f, ks in keys.items()}


def reconstruction_rows(points: List[Point], max_victims: int = MAX_VICTIMS_SHOWN,
                        left_out: Optional[List[Point]] = None) -> List[Tuple[str, Any]]:
    """(title, images) rows of the reconstructions figure, per attacked round: the victims' originals,
    then one row per setting (its worst case over the attackers: each victim's best reconstruction,
    or its one attacker's; titled with the mean PSNR and re-identification), in table order; the
    prior-only images last. Images come from each record's attack ``images.pt``; a setting whose files
    are missing, unreadable or of another size is left out (appended to ``left_out``; the markdown names it)."""
    import torch

    positions = _image_positions(points)
    cache: Dict[str, Optional[dict]] = {}

    def tile(rec, kind: str):
        if not rec.images:
            return None
        if rec.images not in cache:
            images = _load_images(Path(rec.images))
            n = len(positions.get(rec.images, {}))
            cache[rec.images] = images if images is not None and images[kind].shape[0] == n else None
        images = cache[rec.images]
        return None if images is None else images[kind][positions[rec.images][(rec.capture_id or "", rec.image)]]

    heads = worst_cases(points)
    rounds = list(dict.fromkeys(sorted((p.key.round for p in heads), key=lambda x: -1 if x is None else x)))
    labelled: List[Tuple[str, torch.Tensor]] = []
    for rnd in rounds:
        members = [p for p in heads if p.key.round == rnd]
        block, victims, originals, prior = [], None, None, None
        for p in members:
            recs = {victim_key(rec): rec for rec, _ in p.pairs}
            if victims is None:
                victims = list(recs)[:max_victims]
            tiles = [tile(recs[v], "reconstructions") if v in recs else None for v in victims]
            if not tiles or any(t is None for t in tiles):
                if left_out is not None:
                    left_out.append(p)
                continue
            if originals is None:
                originals = torch.stack([tile(recs[v], "originals") for v in victims])
                base = p.ci("baseline_prior_sample_psnr")
                prior = (f"prior only: {fmt(base.mean if base else None, '.1f')} dB",
                         torch.stack([tile(recs[v], "prior_only") for v in victims]))
            block.append((_row_title(p), torch.stack(tiles)))
        if block:
            where = "" if len(rounds) == 1 or rnd is None else f", round {rnd}"
            labelled += [(f"original{where}", originals)] + block + [prior]
    return labelled


def rows_left_out(points: List[Point], max_victims: int = MAX_VICTIMS_SHOWN) -> List[Point]:
    """The rows (each setting's worst case, or its one attacker, per round) that ``reconstruction_rows`` leaves
    out, decided by the very code that draws the figure."""
    out: List[Point] = []
    reconstruction_rows(points, max_victims, left_out=out)
    return out


def victim_titles(points: List[Point], max_victims: int = MAX_VICTIMS_SHOWN) -> Optional[List[str]]:
    """Column titles (victim id and label) of the first round's victims, when every round shows the same
    number of them."""
    heads = worst_cases(points)
    if not heads:
        return None
    first = min(heads, key=lambda p: -1 if p.key.round is None else p.key.round)
    recs = [rec for rec, _ in first.pairs][:max_victims]
    return [f"#{rec.victim_index}" + (f" ({rec.label})" if rec.label is not None else "") for rec in recs]


def reconstructions(points: List[Point], feds: Sequence[FederationResult], path: Path,
                    metric: str = "psnr") -> Optional[Path]:
    """``reconstruction_rows`` as one labelled figure, victims as columns."""
    labelled = reconstruction_rows(points)
    if not labelled:
        return None
    cols = victim_titles(points)
    rounds = {p.key.round for p in worst_cases(points)}
    if len(rounds) > 1 or (cols is not None and len(cols) != max(len(images) for _, images in labelled)):
        cols = None  # each round attacked other victims: the titles would name only the first round's
    n = max(len(images) for _, images in labelled)
    return image_rows_png(path, labelled, f"GGL reconstructions per defence setting, worst case over the attackers "
                                          f"({n} victims per round as columns; row title: mean PSNR, "
                                          f"re-identification top-1 over all victims)", columns=cols)


@dataclass(frozen=True)
class Figure:
    file: str
    draw: Callable[..., Optional[Path]]   # (points, feds, path, metric) -> the file, or None: nothing to draw


FIGURES = [Figure("privacy_utility.png", privacy_utility), Figure("leakage_vs_round.png", leakage_vs_round),
           Figure("reconstructions.png", reconstructions)]


def draw_figures(points: List[Point], feds: Sequence[FederationResult], out: Path, metric: str) -> None:
    """Every figure of ``FIGURES`` into ``out``; one with nothing to draw leaves no file of other runs behind."""
    for figure in FIGURES:
        path = out / figure.file
        if figure.draw(points, feds, path, metric) is None and path.exists():
            path.unlink()
