"""``attack.py``: victims (fresh, or captured by a federation) -> GGL attack -> evaluator -> outputs.

Outputs in ``runs/<name>/<timestamp>/``:

* ``results.json``: ``{"config", "settings", "per_image", "summary": {<setting>: {...}}}``; each
  defence setting also has its own ``<setting>/results.json`` with ``{"config", "per_image",
  "summary": {"psnr_mean", "psnr_std", "ssim_mean", "lpips_mean", "label_acc",
  "baseline_psnr_mean", "n_images", "wall_seconds", ...}}``;
* ``grid.png``: originals over the reconstructions of each setting (one column per image) and the
  prior-only baseline; ``<setting>/grid.png`` per setting;
* ``<setting>/images.pt``: the same images as tensors (``IMAGES_FILE``: originals, reconstructions,
  prior-only, each (N, C, H, W) in [0, 1]), from which ``ggl.report`` composes its figure;
* one W&B run per setting (offline by default), all in one group, opened before its searches and
  streaming the loss curve, the best reconstruction so far and the progress (``ggl.audit.live``);
* ``captures/`` (fresh mode): the observations and, separately, the ground truth.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ggl.allocator import retain_freed_memory
from ggl.attack import attack, check_prior_fits, search_units
from ggl.attack.observation import Observation
from ggl.audit.evaluate import Evaluator, summarize
from ggl.audit.live import LiveAttackRun
from ggl.audit.truth import IMAGES_FILE, OBS_DIR, TRUTH_DIR, find_captures
from ggl.audit.victim import probe_kind
from ggl.errors import UserError
from ggl.seeding import derived_seed
from ggl.results import add_records
from ggl.atomic import atomic_write_text
from ggl.tracking import Stopwatch, create_run_dir, point_latest, write_json

Captures = Dict[str, List[Tuple[Path, Path]]]


# ---------------------------------------------------------------------------------------------
# inputs


def load_attack_prior(path: str, trusted_generators=()):
    """The GAN prior of ``attack.prior`` (``ggl.gan.prior.load_prior``); relative paths are tried
    from the working directory, then from the repository root. Its generator class must be ggl's own
    or one of ``attack.trusted_generators`` (checked before anything is imported)."""
    from ggl.config import REPO_ROOT
    from ggl.gan.prior import load_prior

    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        p = REPO_ROOT / p
    return load_prior(str(p), trusted_generators=tuple(trusted_generators or ()))


def defense_settings(cfg) -> List[Tuple[str, list]]:
    """[(label, defence chain)] to attack side by side (``attack.defenses``, else ``defenses``)."""
    from ggl.defenses.specs import defenses_label

    chains = cfg.attack.defenses if cfg.attack.defenses is not None else [list(cfg.defenses)]
    out, seen = [], {}
    for chain in chains:
        label = defenses_label(chain)
        seen[label] = seen.get(label, 0) + 1
        out.append((label if seen[label] == 1 else f"{label}-{seen[label]}", list(chain)))
    return out


def source_captures(source: str) -> Captures:
    """Captures under a federation run folder (``runs/<fed>/latest``), its ``audit/`` folder, a
    capture folder, or one observation file."""
    p = Path(source).expanduser()
    if not p.exists():
        raise UserError(f"attack source '{source}' does not exist; give a federation run folder such as "
                        f"runs/fed_q4/latest")
    if p.is_file():
        if p.suffix != ".pt":
            raise UserError(f"attack source '{source}' is neither a run folder nor an observation file (.pt)")
        root = p.parent.parent.parent if p.parent.parent.name == OBS_DIR else p.parent
        return {p.parent.name: [(p, root / TRUTH_DIR / p.name)]}
    for root in (p / "audit", p / "captures", p, p.parent.parent if p.parent.name == OBS_DIR else None):
        if root is not None and root.is_dir():
            caps = find_captures(root)
            if p.parent.name == OBS_DIR and root == p.parent.parent:
                caps = {k: v for k, v in caps.items() if k == p.name}
            if caps:
                return caps
    raise UserError(f"attack source '{source}' holds no audit captures (looked for "
                    f"{p}/audit/{OBS_DIR}/<setting>/*.pt); run the federation with audit.rounds=[...] first")


def _run_name(cfg) -> str:
    if cfg.name:
        return cfg.name
    if cfg.attack.source:
        src = Path(cfg.attack.source).expanduser().resolve()
        fed = src.parent.name if src.is_dir() and src.parent.name not in ("", "runs") else src.name
        return f"attack_{fed}"
    source = getattr(cfg, "_source", None)
    return Path(source).stem if source else "attack"


def _validate(captures: Captures, G, trusted=()) -> Dict[Path, Observation]:
    """Load every observation, check it against its architecture and the prior, before any search."""
    loaded = {}
    for pairs in captures.values():
        for obs_path, _ in pairs:
            obs = Observation.load(obs_path)
            obs.build_model(source=f"observation '{obs_path}'", trusted=trusted)
            check_prior_fits(G, obs, source=f"observation '{obs_path}'")
            loaded[obs_path] = obs
    return loaded


# ---------------------------------------------------------------------------------------------
# outputs


def save_grid(path: Path, originals: torch.Tensor, rows: List[Tuple[str, torch.Tensor]]) -> Path:
    """Originals on top, then one row per (title, images); one column per image."""
    from ggl.plots import image_rows_png

    return image_rows_png(path, [("original", originals)] + rows)


def _fmt(v, spec=".2f"):
    return "n/a" if v is None else format(v, spec)


# ---------------------------------------------------------------------------------------------
# the job


def _attackers(a) -> List[Tuple[str, object]]:
    """(setting suffix, attacker) pairs: the portfolio of ``attack.attackers``, or today's one GGL
    attacker (``attack.loss``, ``attack.adaptive``) when it is null."""
    if a.attackers is None:
        return [("-adaptive" if a.adaptive else "", None)]
    from ggl.attack.attackers import build_portfolio

    return [(f"@{att.name}", att) for att in build_portfolio(list(a.attackers), dict(a.attacker_options or {}))]


def _units(attacker, a) -> int:
    return search_units(a) if attacker is None else attacker.units(a)


def _attacker_name(attacker, a) -> str:
    return attacker.name if attacker is not None else f"ggl-{a.loss}" + ("-adaptive" if a.adaptive else "")


def _attacker_models(attacker, a) -> str:
    """What of the defence the attacker models: none | adaptive | eot (``Attacker.models``)."""
    if attacker is not None:
        return attacker.models
    return "adaptive" if a.adaptive else "none"


def run_attack_cli(cfg, prior=None) -> dict:
    """``python attack.py``: returns the results dict (also written to ``results.json``)."""
    from tqdm.auto import tqdm

    from ggl.config import to_container, to_yaml

    clock = Stopwatch()
    a = cfg.attack
    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    retain_freed_memory()  # a generation's trial updates reuse the last one's memory (ggl/allocator.py)
    captures: Optional[Captures] = source_captures(a.source) if a.source else None
    G = prior if prior is not None else load_attack_prior(a.prior, a.trusted_generators)

    name = _run_name(cfg)
    run_dir = create_run_dir(cfg.output_dir, name)
    try:  # a set-up error leaves no orphan folder and does not move `latest`
        atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
        config = to_container(cfg)
        if captures is None:
            from ggl.audit.victim import fresh_captures

            captures = fresh_captures(cfg, defense_settings(cfg), run_dir / "captures")
        if a.max_observations:
            captures = {k: v[:a.max_observations] for k, v in captures.items()}
        # user models a capture may name: attack.trusted_models, and the config's own model.name
        trusted = [*a.trusted_models, cfg.model.name]
        observations = _validate(captures, G, trusted)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    point_latest(run_dir)

    evaluator = Evaluator()
    settings = [(label, suffix, attacker) for label in captures for suffix, attacker in _attackers(a)]
    group = cfg.logger.group or f"{name}-{run_dir.name}"
    total = sum(len(captures[label]) * _units(attacker, a) for label, _, attacker in settings)
    bar = tqdm(total=total, desc="GGL", unit="gen", disable=not a.progress, dynamic_ncols=True, file=sys.stderr)
    results = {"config": config, "settings": [], "per_image": [], "summary": {}, "refused": {}}
    originals, grid_rows, baseline_row = None, [], None
    try:
        for label, suffix, attacker in settings:
            setting = label + suffix
            first = observations[captures[label][0][0]]
            reason = attacker.refusal(first) if attacker is not None else None
            if reason:  # e.g. EOT on a deterministic defence: recorded, not fatal to the portfolio
                print(f"{setting}: skipped ({reason})", file=sys.stderr)
                results["refused"][setting] = reason
                bar.update(len(captures[label]) * _units(attacker, a))
                continue
            results["settings"].append(setting)
            setting_clock = Stopwatch()
            rows, truths, recons, bases = [], [], [], []
            chain = observations[captures[label][0][0]].defenses  # what the clients really applied
            live = LiveAttackRun(cfg, run_dir / setting, name, group, setting, config, chain,
                                 len(captures[label]), search_units(a))
            try:
                for k, (obs_path, truth_path) in enumerate(captures[label]):
                    obs = observations[obs_path]
                    bar.set_postfix_str(f"{setting} {obs.obs_id}", refresh=False)
                    given = evaluator.true_labels(truth_path) if a.true_labels else None  # ABLATION ONLY
                    seed = derived_seed(cfg.seed, 0x6617, k)
                    model = obs.build_model(trusted=trusted)
                    if attacker is None:
                        res = attack(obs, G, a, seed, labels=given, tick=bar.update, model=model,
                                     watch=live.watcher(k, obs.obs_id))
                    else:
                        res = attacker.run(obs, G, a, seed, labels=given, tick=bar.update, model=model)
                    img_rows, truth, recon, base = evaluator.evaluate(truth_path, obs.obs_id, res.images, res.labels,
                                                                      G, model, seed)
                    for r in img_rows:
                        r.update({"setting": setting, "attacker_name": _attacker_name(attacker, a),
                                  "attacker_models": _attacker_models(attacker, a), "probe_kind": probe_kind(obs),
                                  "loss": res.loss, "evaluations": res.evaluations,
                                  "search_seconds": res.seconds,
                                  "labels_given": "true labels (ablation)" if a.true_labels else "inferred"})
                    rows += img_rows
                    truths.append(truth), recons.append(recon), bases.append(base)
                summary = summarize(rows, setting_clock.seconds, evaluator.lpips.reason)
                if a.true_labels:
                    summary["label_acc_note"] = "attack.true_labels=true: the attacker was given the true labels (ablation)"
                truth_all, recon_all, base_all = torch.cat(truths), torch.cat(recons), torch.cat(bases)
                originals = truth_all if originals is None else originals
                baseline_row = base_all if baseline_row is None else baseline_row
                title = f"{setting}\n{_fmt(summary['psnr_mean'], '.1f')} dB"
                grid_rows.append((title, recon_all))
                setting_dir = run_dir / setting
                grid = save_grid(setting_dir / "grid.png", truth_all,
                                 [(title, recon_all), (f"prior only\n{_fmt(summary['baseline_psnr_mean'], '.1f')} dB", base_all)])
                torch.save({k: v.detach().cpu().clamp(0, 1) for k, v in (("originals", truth_all), ("reconstructions", recon_all),
                                                                        ("prior_only", base_all))},
                           setting_dir / IMAGES_FILE)
                write_json(setting_dir / "results.json", {"config": {**config, "setting": setting}, "per_image": rows,
                                                          "summary": summary})
                results["per_image"] += rows
                results["summary"][setting] = summary
                write_json(run_dir / "results.json", add_records(results))
            except BaseException:
                live.abort()
                raise
            live.finish(summary, grid, setting)
    finally:
        bar.close()
    if originals is not None:
        base_title = f"prior only\n{_fmt(results['summary'][results['settings'][0]]['baseline_psnr_mean'], '.1f')} dB"
        save_grid(run_dir / "grid.png", originals, grid_rows + [(base_title, baseline_row)])
    results["wall_seconds"] = clock.seconds
    write_json(run_dir / "results.json", add_records(results))
    for setting, s in results["summary"].items():
        print(f"{setting}: PSNR {_fmt(s['psnr_mean'])} +- {_fmt(s['psnr_std'])} dB, SSIM {_fmt(s['ssim_mean'], '.3f')}, "
              f"LPIPS {_fmt(s['lpips_mean'], '.3f')}, label acc {s['label_acc']:.0%} | prior-only baseline "
              f"PSNR {_fmt(s['baseline_psnr_mean'])} dB, SSIM {_fmt(s['baseline_ssim_mean'], '.3f')} "
              f"({s['n_images']} images, {s['wall_seconds']:.0f} s)")
    if evaluator.lpips.reason:
        print(f"LPIPS: null ({evaluator.lpips.reason})")
    print(f"done in {clock.seconds:.0f} s -> {run_dir}")
    results["run_dir"] = str(run_dir)
    return results
