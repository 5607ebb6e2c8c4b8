"""The privacy-utility report: federation runs (utility) paired with the attacks on their captures (privacy).

    python -m ggl.report runs/sweep_defenses [--out reports] [--wandb disabled|offline|online]

Reads every ``results.json`` under the folder (never the network), pairs each attack with the
federation whose captures it attacked (``attack.source``), and writes to ``--out``:

* ``privacy_utility.png``: x = the federation's final test accuracy, y = mean attack PSNR with a std
  error bar (left) and SSIM (right); one marker per defence, filled = non-adaptive attacker, hollow =
  adaptive; the prior-only baseline (a random image of the inferred class from the same prior) as a
  horizontal band (mean +- std over the attacked images);
* ``privacy_utility.md``: the same numbers as a table, with n images, bits per round and compression;
* ``reconstructions.png``: the victims' originals, then one row of reconstructions per setting and
  attacker, then the prior-only images, from each attack's ``<setting>/images.pt``.

When several runs of one (setting, attacker, dataset, model) exist, the newest attack wins. A
``results.json`` that cannot be read or lacks its fields is reported by path and skipped. With
``--wandb online`` (or offline) the table and the figures are also logged to a W&B run (job type
``report``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ggl.audit.truth import IMAGES_FILE

ATTACKERS = ("non-adaptive", "adaptive")
FILES = ("privacy_utility.png", "privacy_utility.md", "reconstructions.png")


class Malformed(Exception):
    pass


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


def _num(value: Any, what: str, allow_none: bool = False) -> Optional[float]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise Malformed(f"{what} = {value!r} is not a number")
    return float(value)


def _fed_label(config: dict) -> str:
    from ggl.defenses.specs import defenses_label, parse_defense

    chain = config.get("defenses")
    if not isinstance(chain, list):
        raise Malformed("config.defenses is missing")
    try:
        return defenses_label([parse_defense(dict(d), f"defenses[{i}]") for i, d in enumerate(chain)])
    except Exception as exc:
        raise Malformed(f"config.defenses: {exc}") from None


def _read_fed(path: Path, data: dict) -> dict:
    final, config = data.get("final"), data.get("config")
    if not isinstance(final, dict) or not isinstance(config, dict):
        raise Malformed("a federation result needs 'final' and 'config' objects")
    fl = config.get("fl") if isinstance(config.get("fl"), dict) else {}
    rounds_done = final.get("rounds")
    if final.get("test_acc") is None:
        raise Malformed("final.test_acc is null (the federation has not been evaluated yet)")
    return {
        "key": (path.parent.parent.name, path.parent.name), "dir": path.parent, "label": _fed_label(config),
        "test_acc": _num(final.get("test_acc"), "final.test_acc"),
        "bits_per_round": _num(final.get("uplink_bits_per_round"), "final.uplink_bits_per_round", True),
        "compression_ratio": _num(final.get("compression_ratio"), "final.compression_ratio", True),
        "rounds": rounds_done, "rounds_planned": fl.get("rounds"),
        "dataset": (config.get("data") or {}).get("name"), "model": (config.get("model") or {}).get("name"),
        "seed": config.get("seed"), "epsilon": _epsilon(final.get("privacy")),
    }


def _epsilon(privacy: Any) -> Optional[Tuple[float, float]]:
    """(epsilon, delta) of a DP run (``final.privacy``), None without a DP guarantee."""
    if not isinstance(privacy, dict):
        return None
    eps, delta = privacy.get("epsilon"), privacy.get("delta")
    if not isinstance(eps, (int, float)) or not isinstance(delta, (int, float)):
        return None
    return float(eps), float(delta)


def _summary_fields(s: Any, what: str) -> dict:
    if not isinstance(s, dict):
        raise Malformed(f"{what} is not an object")
    out = {"psnr_mean": _num(s.get("psnr_mean"), f"{what}.psnr_mean"),
           "psnr_std": _num(s.get("psnr_std"), f"{what}.psnr_std", True),
           "ssim_mean": _num(s.get("ssim_mean"), f"{what}.ssim_mean", True),
           "lpips_mean": _num(s.get("lpips_mean"), f"{what}.lpips_mean", True),
           "label_acc": _num(s.get("label_acc"), f"{what}.label_acc", True),
           "baseline_psnr_mean": _num(s.get("baseline_psnr_mean"), f"{what}.baseline_psnr_mean", True),
           "baseline_ssim_mean": _num(s.get("baseline_ssim_mean"), f"{what}.baseline_ssim_mean", True),
           "n_images": s.get("n_images")}
    if not isinstance(out["n_images"], int) or out["n_images"] < 1:
        raise Malformed(f"{what}.n_images = {out['n_images']!r} is not a positive integer")
    return out


def _source_key(source: Any) -> Optional[Tuple[str, str]]:
    """(name, timestamp) of the federation run an attack's ``attack.source`` points into."""
    if not isinstance(source, str) or not source:
        return None
    p = Path(source).expanduser()
    if p.exists():
        p = p.resolve()
        for q in [p] + list(p.parents):  # the run folder holds the audit/ folder and results.json
            if (q / "results.json").is_file() and (q / "audit").is_dir():
                return q.parent.name, q.name
    parts = list(p.parts)
    if "audit" in parts:
        parts = parts[:parts.index("audit")]
    return (parts[-2], parts[-1]) if len(parts) >= 2 else None


def _read_attack(path: Path, data: dict) -> List[dict]:
    """One entry per attacked setting of an attack run."""
    config = data.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("attack"), dict):
        raise Malformed("an attack result needs a 'config' with an 'attack' section")
    adaptive = bool(config["attack"].get("adaptive"))
    per_image = data.get("per_image") if isinstance(data.get("per_image"), list) else []
    summary = data.get("summary")
    if isinstance(data.get("settings"), list):
        if not isinstance(summary, dict):
            raise Malformed("'summary' must map each setting to its numbers")
        settings = [(s, summary[s]) for s in data["settings"] if s in summary]  # a stopped run: those done
    else:
        name = config.get("setting") or next((r.get("setting") for r in per_image if isinstance(r, dict)), None)
        settings = [(name or "?", summary)]
    out = []
    for setting, s in settings:
        fields = _summary_fields(s, f"summary[{setting}]" if "settings" in data else "summary")
        rows = [r for r in per_image if isinstance(r, dict) and r.get("setting", setting) == setting]
        images = path.parent / setting / IMAGES_FILE
        label = setting[:-len("-adaptive")] if adaptive and setting.endswith("-adaptive") else setting
        out.append({**fields, "setting": label, "attacker": "adaptive" if adaptive else "non-adaptive",
                    "dir": path.parent, "stamp": path.parent.name,
                    "images": images if images.is_file() else None,
                    "source": _source_key(config["attack"].get("source")),
                    "victims": tuple(r.get("dataset_index") for r in rows),
                    "ssim_std": _std([r.get("ssim") for r in rows]),
                    "baseline_psnr": [r["baseline_psnr"] for r in rows if isinstance(r.get("baseline_psnr"), (int, float))],
                    "baseline_ssim": [r["baseline_ssim"] for r in rows if isinstance(r.get("baseline_ssim"), (int, float))],
                    "seed": config.get("seed")})
    return out


def _std(values: Sequence[Any]) -> Optional[float]:
    v = [float(x) for x in values if isinstance(x, (int, float))]
    if not v:
        return None
    m = sum(v) / len(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / len(v))


def _kind(data: dict) -> Optional[str]:
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    if "final" in data or config.get("task") == "fedavg":
        return "fed"
    if "summary" in data or config.get("task") == "attack":
        return "attack"
    return None  # GAN runs and other jobs: not part of this report


def collect(roots: Sequence[Path]) -> dict:
    """Read the results under ``roots`` and pair them: {"rows", "feds_alone", "skipped", "ignored", ...}."""
    feds: Dict[Tuple[str, str], dict] = {}
    attacks: List[dict] = []
    skipped: List[Tuple[str, str]] = []
    ignored = 0
    files = _results_files(roots)
    tops = set()
    loaded = []
    for path in files:
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise Malformed("not a JSON object")
        except (OSError, ValueError, Malformed) as exc:
            skipped.append((str(path), f"cannot be read as JSON ({str(exc).splitlines()[0][:120]})"))
            continue
        loaded.append((path, data))
        if isinstance(data.get("settings"), list):
            tops.add(path.parent.resolve())
    for path, data in loaded:
        kind = _kind(data)
        try:
            if kind == "fed":
                fed = _read_fed(path, data)
                feds[fed["key"]] = fed
            elif kind == "attack":
                if "settings" not in data and path.parent.parent.resolve() in tops:
                    continue  # a per-setting copy of an attack run already read as a whole
                attacks.extend(_read_attack(path, data))
            else:
                ignored += 1
        except Malformed as exc:
            skipped.append((str(path), str(exc)))
    latest_by_name: Dict[str, dict] = {}
    for key, fed in sorted(feds.items()):
        latest_by_name[key[0]] = fed
    # pair, then keep the newest attack of each (setting, attacker, dataset, model, seed)
    best: Dict[tuple, dict] = {}
    paired_feds = set()
    superseded = 0
    for a in attacks:
        src = a["source"]
        fed = None
        if src is not None:
            fed = feds.get(src) or (latest_by_name.get(src[0]) if src[1] == "latest" else None)
        row = dict(a)
        row.update({k: fed[k] if fed else None for k in ("test_acc", "bits_per_round", "compression_ratio",
                                                          "rounds", "dataset", "model", "epsilon")})
        row["fed_dir"] = fed["dir"] if fed else None
        if fed:
            paired_feds.add(fed["key"])
        key = (row["setting"], row["attacker"], row["dataset"], row["model"], row["seed"])
        if key in best:
            superseded += 1
        if key not in best or (row["stamp"], str(row["dir"])) > (best[key]["stamp"], str(best[key]["dir"])):
            best[key] = row
    rows = sorted(best.values(), key=_row_order)
    feds_alone = [f for k, f in sorted(feds.items()) if k not in paired_feds]
    return {"rows": rows, "feds_alone": feds_alone, "skipped": skipped, "ignored": ignored, "superseded": superseded,
            "n_feds": len(feds), "n_attacks": len(attacks), "n_files": len(files)}


def _row_order(row: dict) -> tuple:
    acc = row["test_acc"]
    return (row["dataset"] or "", -(acc if acc is not None else -1.0), row["setting"],
            ATTACKERS.index(row["attacker"]))


# ---------------------------------------------------------------------------------------------
# writing


def _fmt(v: Any, spec: str = ".2f", none: str = "–") -> str:
    return none if v is None else format(v, spec)


def _bits(v: Optional[float]) -> str:
    if v is None:
        return "–"
    for unit, scale in (("Gbit", 1e9), ("Mbit", 1e6), ("kbit", 1e3)):
        if v >= scale:
            return f"{v / scale:.2f} {unit}"
    return f"{v:.0f} bit"


def baseline_band(rows: List[dict], key: str) -> Optional[Tuple[float, float]]:
    """(mean, std) of the prior-only baseline over every attacked image (or over the runs' means)."""
    per_image = [v for r in rows for v in r[key]]
    if per_image:
        return sum(per_image) / len(per_image), _std(per_image) or 0.0
    means = [r[f"{key}_mean"] for r in rows if r.get(f"{key}_mean") is not None]
    if not means:
        return None
    return sum(means) / len(means), _std(means) or 0.0


def _label(row: dict, many_datasets: bool) -> str:
    return f"{row['setting']} ({row['dataset']})" if many_datasets else row["setting"]


def plot_privacy_utility(rows: List[dict], path: Path) -> Path:
    from ggl.plots import _pyplot

    plt = _pyplot()
    plotted = [r for r in rows if r["test_acc"] is not None]
    many = len({r["dataset"] for r in plotted}) > 1
    labels = list(dict.fromkeys(_label(r, many) for r in plotted))
    markers = "osD^vP*Xhp<>d8H"
    cmap = plt.get_cmap("tab20")
    # dark hues first (tab20 pairs a dark and a light shade of each hue), so neighbours in the legend differ
    style = {lab: (cmap((2 * i) % 20 + (2 * i // 20) % 2), markers[i % len(markers)]) for i, lab in enumerate(labels)}
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 5.2), dpi=110)
    panels = (("psnr", "attack PSNR (dB, mean ± std)", "psnr_std"), ("ssim", "attack SSIM (mean ± std)", "ssim_std"))
    for ax, (metric, ylabel, std_key) in zip(axes, panels):
        band = baseline_band(rows, f"baseline_{metric}")
        if band is not None:
            m, s = band
            ax.axhspan(m - s, m + s, color="0.85", zorder=0, label="prior-only baseline (mean ± std)")
            ax.axhline(m, color="0.55", lw=1, ls="--", zorder=1)
        for r in plotted:
            y = r[f"{metric}_mean"]
            if y is None:
                continue
            color, marker = style[_label(r, many)]
            hollow = r["attacker"] == "adaptive"
            ax.errorbar(r["test_acc"], y, yerr=r[std_key] or 0.0, fmt=marker, ms=8, capsize=3,
                        color=color, mfc="white" if hollow else color, mec=color, mew=1.6, zorder=3)
        ax.set_xlabel("federation's final test accuracy (utility)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], ls="", marker=style[lab][1], color=style[lab][0], ms=8, label=lab) for lab in labels]
    handles += [Line2D([], [], ls="", marker="o", color="0.3", ms=8, label="non-adaptive attacker (filled)"),
                Line2D([], [], ls="", marker="o", color="0.3", mfc="white", ms=8, label="adaptive attacker (hollow)"),
                Patch(color="0.85", label="prior-only baseline")]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(0.82, 0.5), fontsize=8, frameon=False)
    n = sorted({r["n_images"] for r in plotted})
    fig.suptitle(f"Privacy vs utility under GGL: higher = more leakage, right = better model "
                 f"(n = {', '.join(map(str, n)) or '–'} images per point)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.82, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _load_images(path: Optional[Path]) -> Optional[dict]:
    if path is None or not path.is_file():
        return None
    import torch

    try:
        images = torch.load(path, map_location="cpu", weights_only=True)
        return {k: images[k].float().clamp(0, 1) for k in ("originals", "reconstructions", "prior_only")}
    except Exception as exc:  # a damaged file costs its row in the figure, not the report
        print(f"skipped {path}: {str(exc).splitlines()[0][:120]}", file=sys.stderr)
        return None


def reconstruction_rows(rows: List[dict]) -> List[Tuple[str, Any]]:
    """(label, images) rows of the reconstructions figure: the victims' originals, one row of
    reconstructions per setting and attacker (in table order, labelled with its mean PSNR), and the
    prior-only images last. An ``original`` row is repeated wherever the attacked victims change.
    Attacks without an images file are left out (the markdown names them)."""
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
        labelled.append((f"{r['setting']}, {r['attacker']}: {_fmt(r['psnr_mean'], '.1f')} dB",
                         images["reconstructions"]))
    if first is not None:
        labelled.append((f"prior only: {_fmt(first[0].get('baseline_psnr_mean'), '.1f')} dB",
                         first[1]["prior_only"]))
    return labelled


def plot_reconstructions(rows: List[dict], path: Path) -> Optional[Path]:
    """``reconstruction_rows`` as one labelled figure."""
    from ggl.plots import image_rows_png

    labelled = reconstruction_rows(rows)
    if not labelled:
        return None
    return image_rows_png(path, labelled,
                          "GGL reconstructions per defence setting and attacker (dB: the row's mean PSNR)")


TABLE_COLUMNS = ["setting", "attacker", "test acc", "PSNR (dB)", "SSIM", "LPIPS", "label acc",
                 "prior-only PSNR (dB)", "n images", "uplink bits / round", "compression", "DP ε (δ)", "rounds",
                 "dataset"]


def table_rows(rows: List[dict]) -> List[List[str]]:
    out = []
    for r in rows:
        out.append([r["setting"], r["attacker"], _fmt(r["test_acc"], ".3f"),
                    f"{_fmt(r['psnr_mean'])} ± {_fmt(r['psnr_std'])}",
                    _fmt(r["ssim_mean"], ".3f") + (f" ± {r['ssim_std']:.3f}" if r["ssim_std"] is not None else ""),
                    _fmt(r["lpips_mean"], ".3f"), _fmt(r["label_acc"], ".0%"), _fmt(r["baseline_psnr_mean"]),
                    str(r["n_images"]), _bits(r["bits_per_round"]),
                    _fmt(r["compression_ratio"], ".1f") + ("×" if r["compression_ratio"] is not None else ""),
                    f"{r['epsilon'][0]:.3g} ({r['epsilon'][1]:g})" if r.get("epsilon") else "–",
                    str(r["rounds"]) if r["rounds"] is not None else "–", r["dataset"] or "–"])
    return out


def markdown(found: dict, roots: Sequence[Path], seconds: float) -> str:
    rows = found["rows"]
    lines = ["# Privacy–utility report", "",
             f"`python -m ggl.report {' '.join(str(r) for r in roots)}` — {found['n_feds']} federation runs, "
             f"{found['n_attacks']} attacked settings read from {found['n_files']} results.json files "
             f"({datetime.now():%Y-%m-%d %H:%M}, {seconds:.1f} s).", "",
             "![privacy vs utility](privacy_utility.png)", "",
             "Utility: the federation's final test accuracy on its full test split. Privacy: how well GGL "
             "reconstructs the victim's images from the captured update (PSNR/SSIM against the originals; "
             "higher = more leakage). The prior-only baseline is a random image of the inferred class from "
             "the same GAN prior: an attack at the baseline learned nothing from the update beyond the label.", ""]
    lines += ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows)]
    band = baseline_band(rows, "baseline_psnr")
    sband = baseline_band(rows, "baseline_ssim")
    if band:
        lines += ["", f"Prior-only baseline over all attacked images: PSNR {band[0]:.2f} ± {band[1]:.2f} dB"
                  + (f", SSIM {sband[0]:.3f} ± {sband[1]:.3f}" if sband else "") + "."]
    victims = {r["victims"] for r in rows if r["victims"]}
    if len(victims) > 1:
        lines += ["", f"Note: the settings attacked {len(victims)} different sets of victim images "
                      f"(different audit configs); rows are not the same images."]
    if found["superseded"]:
        lines += ["", f"{found['superseded']} older attack result(s) of a setting and attacker already shown "
                      f"were left out (the newest run wins; point the report at one sweep's folder to compare "
                      f"like with like)."]
    if any(r["test_acc"] is None for r in rows):
        lines += ["", "Rows with test acc `–`: attacks whose federation run was not found under the folder "
                      "(fresh victims, or a moved/deleted federation); they are not plotted."]
    if found["feds_alone"]:
        lines += ["", "Federations without an attack yet: " + ", ".join(
            f"{f['label']} (`{f['dir']}`, acc {f['test_acc']:.3f})" for f in found["feds_alone"]) + "."]
    if found["skipped"]:
        lines += ["", "Skipped results.json files:", ""] + [f"- `{p}`: {why}" for p, why in found["skipped"]]
    no_images = [f"{r['setting']} ({r['attacker']})" for r in rows if r["images"] is None]
    if no_images:
        lines += ["", f"Not in the reconstructions figure (their attack runs have no {IMAGES_FILE}; rerun those "
                      f"attacks): " + ", ".join(no_images) + "."]
    lines += ["", "![reconstructions](reconstructions.png)", ""]
    return "\n".join(lines)


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


def write_report(roots: Sequence[Path], out: Path, wandb_mode: str = "disabled", project: str = "ggl") -> dict:
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
    out.mkdir(parents=True, exist_ok=True)
    plot_privacy_utility(found["rows"], out / "privacy_utility.png")
    recon = plot_reconstructions(found["rows"], out / "reconstructions.png")
    if recon is None and (out / "reconstructions.png").exists():
        (out / "reconstructions.png").unlink()  # never leave a figure of other runs behind
    (out / "privacy_utility.md").write_text(markdown(found, roots, time.perf_counter() - clock))
    if wandb_mode != "disabled":
        log_wandb(found, out, wandb_mode, project)
    found["seconds"] = time.perf_counter() - clock
    return found


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ggl.report", description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="+", help="folders of runs (searched recursively) or results.json files")
    ap.add_argument("--out", default="reports", help="output folder (default: reports)")
    ap.add_argument("--wandb", default="disabled", choices=("disabled", "offline", "online"),
                    help="also log the table and figures to a W&B report run (default: disabled)")
    ap.add_argument("--project", default="ggl", help="W&B project of the report run")
    args = ap.parse_args(argv)
    from ggl.errors import UserError

    try:
        found = write_report(args.roots, Path(args.out), args.wandb, args.project)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {len(found['rows'])} points from {found['n_feds']} federations and {found['n_attacks']} "
          f"attacked settings ({len(found['skipped'])} files skipped) -> "
          f"{', '.join(str(Path(args.out) / f) for f in FILES)} ({found['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
