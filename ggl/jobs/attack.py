"""``attack.py``: victims (fresh, or captured by a federation) -> attacker portfolio -> evaluator -> records.

``run_attack(cfg)`` writes ``runs/<name>/<timestamp>/``: ``results.json`` (``ggl.records/2``: ``config``,
``federation``, ``settings``, ``records``, ``summary``, ``refused``), ``grid.png``, per setting
``<setting>/grid.png`` and ``<setting>/images.pt``, ``captures/`` (fresh mode), and one W&B run per
setting (``ggl.jobs.live``). The files: docs/reference.md, section "Attack", **Outputs**.
"""
from __future__ import annotations

import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from ggl.attack import attack, check_prior_fits, search_seeds, search_units
from ggl.attack.attackers import build_portfolio
from ggl.attack.attackers.base import with_keys
from ggl.attack.observation import Observation
from ggl.audit.evaluate import Evaluator, summarize
from ggl.audit.records import RECORDS_FORMAT, FederationRef, ImageRecord
from ggl.audit.truth import IMAGES_FILE, OBS_DIR, TRUTH_DIR, find_captures
from ggl.audit.victim import fresh_captures, probe_kind
from ggl.config import to_container, to_yaml
from ggl.core.allocator import retain_freed_memory
from ggl.core.atomic import atomic_write_text
from ggl.core.errors import UserError
from ggl.core.plots import image_rows_png
from ggl.core.seeding import derived_seed
from ggl.core.shipped import shipped
from ggl.core.stats import fmt
from ggl.defenses import defenses_label
from ggl.gan.prior import load_prior
from ggl.jobs.live import LiveAttackRun
from ggl.runs.folder import check_latest_link, create_run_dir, point_latest
from ggl.runs.artifacts import (CAPTURES, MODEL, captures_artifact_name, draft, federation_dir,
                                 prior_artifact_name, study_group)
from ggl.runs.logger import Stopwatch, resolve_logger, tag, write_json

Captures = Dict[str, List[Tuple[Path, Path]]]


# ---------------------------------------------------------------------------------------------
# inputs


def prior_path(path: str) -> Path:
    """``attack.prior`` as a path: relative paths are tried from the working directory, then from the
    checkout, then from the installed package (the shipped ``checkpoints/``, ``ggl.core.shipped``)."""
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists():
        p = shipped(p) or p
    return p


def load_attack_prior(path: str, trusted_generators=()):
    """The GAN prior of ``attack.prior`` (``ggl.gan.prior.load_prior``; path: ``prior_path``). Its generator
    class must be ggl's own or one of ``attack.trusted_generators`` (checked before anything is imported)."""
    return load_prior(str(prior_path(path)), trusted_generators=tuple(trusted_generators or ()))


def defense_settings(cfg) -> List[Tuple[str, list]]:
    """[(label, defence chain)] to attack side by side (``attack.defenses``, else ``defenses``)."""
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
    check_latest_link(p)
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
        check_latest_link(Path(cfg.attack.source))  # before resolving it: a loop or a link to elsewhere is refused
        src = Path(cfg.attack.source).expanduser().resolve()
        fed = src.parent.name if src.is_dir() and src.parent.name not in ("", "runs") else src.name
        return f"attack_{fed}"
    source = getattr(cfg, "_source", None)
    return Path(source).stem if source else "attack"


def _trusted(cfg) -> list:
    """User models a capture may name: attack.trusted_models, and the config's own model.name."""
    return [*cfg.attack.trusted_models, cfg.model.name]


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
# the attackers


def _attackers(a) -> List[Tuple[str, object]]:
    """(setting suffix, attacker) pairs: the portfolio of ``attack.attackers``, or the one GGL attacker of
    ``attack.loss`` / ``attack.adaptive`` (None, setting ``<label>`` or ``<label>-adaptive``) when it is null."""
    if a.attackers is None:
        return [("-adaptive" if a.adaptive else "", None)]
    return [(f"@{att.name}", att) for att in build_portfolio(list(a.attackers), dict(a.attacker_options or {}))]


def _units(attacker, a) -> int:
    """Progress units of one victim: every search seed's search."""
    return (search_units(a) if attacker is None else attacker.units(a)) * a.search_seeds


def _attacker_name(attacker, a) -> str:
    return attacker.name if attacker is not None else f"ggl-{a.loss}" + ("-adaptive" if a.adaptive else "")


def _wandb_tags(label: str, attacker, a, observations) -> list:
    """The W&B tags of one setting's run: its defence, attacker and the rounds of its captures."""
    rounds = sorted({o.round for o in observations})
    return [tag("defense", label), tag("attacker", _attacker_name(attacker, a))] + [tag("round", r) for r in rounds]


def _wandb_inputs(a, prior_given: bool) -> list:
    """Makers of the artifacts every setting's run uses: the federation's captures and the prior."""
    makers = []
    fed = federation_dir(a.source) if a.source else None
    if fed is not None:
        makers.append(lambda: draft(captures_artifact_name(fed), CAPTURES, folder=fed / "audit"))
    if not prior_given and prior_path(a.prior).is_file():
        makers.append(lambda: draft(prior_artifact_name(prior_path(a.prior)), MODEL, [prior_path(a.prior)]))
    return makers


def _tags(cfg, label: str, setting: str, attacker, obs) -> dict:
    """The job's fields of an ``ImageRecord``: what it attacked and with what, from the objects it holds."""
    a = cfg.attack
    models = attacker.models if attacker is not None else ("adaptive" if a.adaptive else "none")
    return {"setting": setting, "defense": label, "attacker": _attacker_name(attacker, a), "adaptive": models != "none",
            "seed": cfg.seed, "federation": FederationRef.from_source(a.source), "probe": probe_kind(obs)}


# ---------------------------------------------------------------------------------------------
# one setting: every capture of a defence through one attacker


def _attack_one(cfg, attacker, obs, truth_path: Path, k: int, G, evaluator: Evaluator, tick, watch):
    """(seed, model, results): one result per search seed (``attack.search_seeds``), the first at the
    victim's own seed. Latent searches batch their seeds (``run_search``); an attacker that does not
    (Inverting Gradients) runs once per further seed."""
    a = cfg.attack
    given = evaluator.true_labels(truth_path) if a.true_labels else None  # ABLATION ONLY
    seed = derived_seed(cfg.seed, 0x6617, k)
    model = obs.build_model(trusted=_trusted(cfg))
    if attacker is None:
        res = attack(obs, G, a, seed, labels=given, tick=tick, model=model, watch=watch)
    else:
        res = attacker.run(obs, G, a, seed, labels=given, tick=tick, model=model)
    runs = res.runs or [res]
    if len(runs) < a.search_seeds:
        one = with_keys(a, search_seeds=1)
        runs += [attacker.run(obs, G, one, s, labels=given, tick=tick, model=model)
                 for s in search_seeds(seed, a.search_seeds)[len(runs):]]
    return seed, model, runs


def attack_setting(cfg, label: str, setting: str, attacker, pairs, observations, G, evaluator: Evaluator,
                   bar, live: LiveAttackRun) -> Tuple[List[ImageRecord], Dict[str, torch.Tensor], dict]:
    """(records, {originals, reconstructions, prior_only}, summary) of one setting: every victim's record
    once per search seed (``search.index``); the images are the first search's."""
    clock = Stopwatch()
    records, images = [], {"originals": [], "reconstructions": [], "prior_only": []}
    for k, (obs_path, truth_path) in enumerate(pairs):
        obs = observations[obs_path]
        bar.set_postfix_str(f"{setting} {obs.obs_id}", refresh=False)
        seed, model, runs = _attack_one(cfg, attacker, obs, truth_path, k, G, evaluator, bar.update,
                                        live.watcher(k, obs.obs_id))
        for index, (s, res) in enumerate(zip(search_seeds(seed, len(runs)), runs)):
            search = {"seed": s, "index": index, "loss": res.loss, "evaluations": res.evaluations,
                      "seconds": res.seconds}
            recs, truth, recon, base = evaluator.evaluate(truth_path, obs.obs_id, res.images, res.labels, G, model,
                                                          seed, {**_tags(cfg, label, setting, attacker, obs),
                                                                 "search": search})
            records += recs
            if index == 0:
                for key, x in zip(images, (truth, recon, base)):
                    images[key].append(x)
    summary = summarize([r for r in records if r.search.get("index", 0) == 0], clock.seconds,
                        evaluator.lpips.reason, evaluator.reid_note)
    if cfg.attack.true_labels:
        summary["label_acc_note"] = "attack.true_labels=true: the attacker was given the true labels (ablation)"
    return records, {k: torch.cat(v) for k, v in images.items()}, summary


def write_setting(setting_dir: Path, setting: str, images: Dict[str, torch.Tensor], summary: dict) -> Path:
    """``<setting>/images.pt`` and ``<setting>/grid.png`` (originals over the reconstructions and the
    prior-only baseline); returns the grid."""
    setting_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu().clamp(0, 1) for k, v in images.items()}, setting_dir / IMAGES_FILE)
    return image_rows_png(setting_dir / "grid.png", [
        ("original", images["originals"]), (_title(setting, summary), images["reconstructions"]),
        (f"prior only\n{fmt(summary['baseline_psnr_mean'], '.1f')} dB", images["prior_only"])])


def _title(setting: str, summary: dict) -> str:
    return f"{setting}\n{fmt(summary['psnr_mean'], '.1f')} dB"


# ---------------------------------------------------------------------------------------------
# the job


def prepare(cfg, G, name: str) -> Tuple[Path, dict, Captures, Dict[Path, Observation]]:
    """The run folder, the config as written, the captures (``attack.source``'s or fresh victims') and
    every observation, validated before any search; a set-up error leaves no folder behind."""
    a = cfg.attack
    captures: Optional[Captures] = source_captures(a.source) if a.source else None
    run_dir = create_run_dir(cfg.output_dir, name)
    try:  # a set-up error leaves no orphan folder and does not move `latest`
        atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
        config = to_container(cfg)
        if captures is None:
            captures = fresh_captures(cfg, defense_settings(cfg), run_dir / "captures")
        if a.max_observations:
            captures = {k: v[:a.max_observations] for k, v in captures.items()}
        observations = _validate(captures, G, _trusted(cfg))
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir, config, captures, observations  # `latest` moves once results.json exists (_write_results)


def _write_results(run_dir: Path, results: dict) -> None:
    """``results.json``, then ``latest`` -> this run: a run that fails before its first results never
    becomes ``latest`` (``attack.source=.../latest`` or a report would meet a folder with nothing to read)."""
    write_json(run_dir / "results.json", results)
    if not (run_dir.parent / "latest").resolve() == run_dir.resolve():
        point_latest(run_dir)


def _bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="GGL", unit="gen", disable=not enabled, dynamic_ncols=True, file=sys.stderr)


def run_attack(cfg, prior=None) -> dict:
    """``python attack.py``: returns the results dict (also written to ``results.json``)."""
    clock, a = Stopwatch(), cfg.attack
    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    retain_freed_memory()  # a generation's trial updates reuse the last one's memory (ggl/core/allocator.py)
    G = prior if prior is not None else load_attack_prior(a.prior, a.trusted_generators)
    name = _run_name(cfg)
    tracking = resolve_logger(cfg.logger)  # before the folder: a bad W&B setting leaves none
    run_dir, config, captures, observations = prepare(cfg, G, name)
    settings = [(label, label + suffix, attacker) for label in captures for suffix, attacker in _attackers(a)]
    ref = FederationRef.from_source(a.source)
    results = {"config": config, "federation": asdict(ref) if ref else None, "records_format": RECORDS_FORMAT,
               "settings": [], "records": [], "summary": {}, "refused": {}}
    evaluator, grid_rows, first = Evaluator(lpips_net=cfg.attack.lpips_net), [], None
    group = study_group(a.source) or f"{name}-{run_dir.name}"  # the federation's (a study), else this run's
    inputs = _wandb_inputs(a, prior is not None)
    bar = _bar(sum(len(captures[label]) * _units(att, a) for label, _, att in settings), a.progress)
    try:
        for label, setting, attacker in settings:
            pairs = captures[label]
            reason = attacker.refusal(observations[pairs[0][0]]) if attacker is not None else None
            if reason:  # e.g. EOT on a deterministic defence: recorded, not fatal to the portfolio
                print(f"{setting}: skipped ({reason})", file=sys.stderr)
                results["refused"][setting] = reason
                bar.update(len(pairs) * _units(attacker, a))
                continue
            chain = observations[pairs[0][0]].defenses  # what the clients really applied
            live = LiveAttackRun(cfg, tracking, run_dir / setting, name, group, setting, config, chain, len(pairs),
                                 search_units(a), _wandb_tags(label, attacker, a, [observations[o] for o, _ in pairs]),
                                 inputs)
            try:
                records, images, summary = attack_setting(cfg, label, setting, attacker, pairs, observations, G,
                                                          evaluator, bar, live)
                grid = write_setting(run_dir / setting, setting, images, summary)
                results["settings"].append(setting)
                results["records"] += [r.to_json() for r in records]
                results["summary"][setting] = summary
                _write_results(run_dir, results)
            except BaseException:
                live.abort()
                raise
            live.finish(summary, grid, setting)
            first = first or (images, summary)
            grid_rows.append((_title(setting, summary), images["reconstructions"]))
    except KeyboardInterrupt as exc:  # Ctrl-C: the hint names this run; a run with nothing finished is removed
        exc.run_dir, exc.kept = run_dir, bool(results["settings"])
        if not exc.kept:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        bar.close()
    if first is not None:
        image_rows_png(run_dir / "grid.png", [("original", first[0]["originals"])] + grid_rows + [
            (f"prior only\n{fmt(first[1]['baseline_psnr_mean'], '.1f')} dB", first[0]["prior_only"])])
    results["wall_seconds"] = clock.seconds
    _write_results(run_dir, results)
    _print_summary(results, evaluator, clock, run_dir)
    results["run_dir"] = str(run_dir)
    return results


def _print_summary(results: dict, evaluator: Evaluator, clock: Stopwatch, run_dir: Path) -> None:
    for setting, s in results["summary"].items():
        print(f"{setting}: PSNR {fmt(s['psnr_mean'])} +- {fmt(s['psnr_std'])} dB, SSIM {fmt(s['ssim_mean'], '.3f')}, "
              f"LPIPS {fmt(s['lpips_mean'], '.3f')}, label acc {s['label_acc']:.0%} | prior-only baseline "
              f"PSNR {fmt(s['baseline_psnr_mean'])} dB, SSIM {fmt(s['baseline_ssim_mean'], '.3f')} "
              f"({s['n_images']} images, {s['wall_seconds']:.0f} s)")
    if evaluator.lpips.reason:
        print(f"LPIPS: null ({evaluator.lpips.reason})")
    print(f"done in {clock.seconds:.0f} s -> {run_dir}")


