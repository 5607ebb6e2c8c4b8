"""Grid points and their jobs, and what of them is done already.

One grid point (a *setting*) = one federation (``fed_config`` + ``fed.<key>`` overrides + the point's
``defenses``), with audit captures, then one attack per attacker in ``attackers`` (``attack_config`` +
``attack.<key>`` overrides), or one attack job running a portfolio of attacker names. A job whose
``results.json`` holds the very config it would run (logging aside) and is complete is done; a federation
stopped part-way is resumed from its last checkpoint.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ggl.attack.attackers import build_portfolio, check_portfolio, get_attacker
from ggl.attack.search import search_units
from ggl.config import experiment, load_config, to_container
from ggl.core.errors import ConfigError
from ggl.defenses import NONE, defenses_label, parse_chain
from ggl.sweep.grid import check_parameter_name, expand, job_overrides, value_text

ATTACKERS = ("non-adaptive", "adaptive")
# config keys that do not change a job's results (compared when deciding whether a job is done)
_IGNORED_TOP = {"logger", "resume"}
_IGNORED_NESTED = {("trainer", "enable_progress_bar"), ("attack", "progress")}


@dataclass
class Job:
    kind: str                   # "fed" | "attack"
    setting: str                # the defence label (fp32, q4, ...)
    name: str                   # run name -> <output_dir>/<name>/<timestamp>/
    config_file: str
    overrides: List[str]
    attacker: Optional[str] = None
    cost: float = 0.0           # work units: FL rounds (fed) or images x search units (attack)
    done_dir: Optional[Path] = None    # a finished run of exactly this job
    resume_dir: Optional[Path] = None  # a stopped federation of exactly this job (fed only)


@dataclass
class GridPoint:
    params: Dict[str, Any]
    setting: str
    fed: Job = None
    attacks: List[Job] = field(default_factory=list)


def make_point(params: Dict[str, Any], seeds_vary: bool = False) -> GridPoint:
    for key in params:
        check_parameter_name(key, "sweep")
    chain = params.get("defenses")
    if not isinstance(chain, list):
        raise ConfigError(f"sweep parameter 'defenses' = {chain!r} must be a list of defences ([] for none)")
    fed_over, attack_over = job_overrides(params)
    fed_over.append(f"defenses={json.dumps(chain)}")
    fed_file = params.get("fed_config", "fed_fp32.yaml")
    cfg = load_config(fed_file, fed_over)  # checks every key and the chain now, before anything runs
    setting = defenses_label(cfg.defenses) + (f"-s{cfg.seed}" if seeds_vary else "")
    fed_name = f"fed-{setting}"
    fed_over.append(f"name={fed_name}")
    point = GridPoint(params=params, setting=setting)
    point.fed = Job("fed", setting, fed_name, fed_file, fed_over, cost=float(cfg.fl.rounds))
    if not cfg.audit.rounds:
        raise ConfigError(f"sweep setting '{setting}': the federation captures nothing to attack; set "
                          f"fed.audit.rounds (e.g. [0])")
    attackers = params.get("attackers", ["non-adaptive"])
    attackers = [attackers] if isinstance(attackers, str) else list(attackers)
    if any(a not in ATTACKERS for a in attackers):  # portfolio names: one attack job per attacker
        point.attacks += _portfolio_jobs(attackers, chain, setting, cfg, params, attack_over)
        return point
    for attacker in attackers:
        if attacker not in ATTACKERS:
            raise ConfigError(f"sweep parameter 'attackers' = {attackers}: '{attacker}' is not one of "
                              f"{', '.join(ATTACKERS)}")
        if attacker == "adaptive":
            check_adaptive(chain, setting)
        if attacker == "adaptive" and "non-adaptive" in attackers and not adaptive_differs(chain):
            continue  # the adaptive attacker would run the very same search as the non-adaptive one
        name = f"attack-{setting}" + ("-adaptive" if attacker == "adaptive" else "")
        over = attack_over + [f"attack.adaptive={'true' if attacker == 'adaptive' else 'false'}", f"name={name}"]
        acfg = load_config(params.get("attack_config", "attack.yaml"), over)
        point.attacks.append(Job("attack", setting, name, params.get("attack_config", "attack.yaml"), over,
                                 attacker=attacker, cost=float(images_attacked(cfg, acfg) * search_units(acfg.attack))))
    return point


def portfolio_for(names: Sequence[str], chain: Sequence[dict], setting: str) -> List[str]:
    """The portfolio attackers worth running on ``chain``: an adaptive attacker that models nothing of it
    (no defence; unbiased randomness, whose expectation is the identity) would repeat its non-adaptive
    twin's search, so it is left out when the twin is listed; an adaptive one on a defence it has no model
    of is an error. ``ggl-eot`` on a deterministic chain stays: it refuses with its reason, recorded."""
    check_portfolio(list(names))
    keep = []
    for name in names:
        if get_attacker(name).models == "adaptive":
            check_adaptive(chain, setting)
            twin = name[:-len("-adaptive")] if name.endswith("-adaptive") else None
            if twin in names and not adaptive_differs(chain):
                continue
        keep.append(name)
    return keep


def _portfolio_jobs(names: Sequence[str], chain: Sequence[dict], setting: str, cfg, params: Dict[str, Any],
                    attack_over: List[str]) -> List[Job]:
    """One attack job per portfolio attacker (``attack.attackers: [name]``) on the setting's captures,
    ``attack-<setting>-<attacker>``: a stopped sweep loses at most the attacker it was running."""
    if any(a in ATTACKERS for a in names):
        raise ConfigError(f"sweep parameter 'attackers' = {list(names)}: give either {' / '.join(ATTACKERS)} "
                          f"or portfolio attacker names (ggl/attack/attackers), not both")
    jobs = []
    options = dict(params.get("attack.attacker_options") or {})
    seeds_of = _search_seeds_by_attacker(params, names)
    common = [o for o in attack_over if not o.startswith("attack.attacker_options=")]
    for attacker in portfolio_for(names, chain, setting):
        name = f"attack-{setting}-{attacker}"
        own = {attacker: options[attacker]} if attacker in options else {}  # the others' would warn "does nothing"
        over = common + [f"attack.attacker_options={value_text(own)}", f"attack.attackers={json.dumps([attacker])}",
                         f"name={name}"] + ([f"attack.search_seeds={seeds_of[attacker]}"] if attacker in seeds_of else [])
        acfg = load_config(params.get("attack_config", "attack.yaml"), over)
        units = build_portfolio([attacker], dict(acfg.attack.attacker_options or {}))[0].units(acfg.attack)
        jobs.append(Job("attack", setting, name, params.get("attack_config", "attack.yaml"), over,
                        attacker=attacker, cost=float(images_attacked(cfg, acfg) * units * acfg.attack.search_seeds)))
    return jobs


def _search_seeds_by_attacker(params: Dict[str, Any], names: Sequence[str]) -> Dict[str, int]:
    """``search_seeds_by_attacker: {name: S}``: attackers whose jobs run S search seeds instead of
    ``attack.search_seeds`` (the best-of-k control: k runs of one attacker)."""
    given = params.get("search_seeds_by_attacker") or {}
    if not isinstance(given, dict):
        raise ConfigError(f"sweep parameter 'search_seeds_by_attacker' = {given!r} must be a mapping "
                          f"{{attacker: number of search seeds}}")
    for name, n in given.items():
        if name not in names:
            raise ConfigError(f"sweep parameter 'search_seeds_by_attacker': '{name}' is not in 'attackers' "
                              f"({', '.join(names)})")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"sweep parameter 'search_seeds_by_attacker.{name}' = {n!r} must be a whole "
                              f"number >= 1")
    return dict(given)


def images_attacked(cfg, acfg) -> int:
    """Images one attack job of a setting attacks: every captured round's, at most ``attack.max_observations``
    observations of ``audit.batch_size`` images each."""
    images = len(set(cfg.audit.rounds)) * cfg.audit.num_images
    if acfg.attack.max_observations:
        images = min(images, acfg.attack.max_observations * cfg.audit.batch_size)
    return images


def adaptive_differs(chain: Sequence[dict]) -> bool:
    """False when the adaptive attacker models nothing of the chain (no defence; unbiased randomness, whose
    expectation it applies, is the identity), so its search is the non-adaptive one. Each defense says."""
    return any(d.attack_model().changes_search for d in parse_chain(chain))


def check_adaptive(chain: Sequence[dict], setting: str) -> None:
    """An adaptive attacker on a defence it has no model of is an error, never a silent non-adaptive run."""
    for defense in parse_chain(chain):
        model = defense.attack_model()
        if model.kind == NONE:
            raise ConfigError(f"sweep setting '{setting}': the adaptive attacker has no model of defence "
                              f"'{defense.label}' ({model.reason}); drop 'adaptive' from 'attackers'")


def plan(grid: Dict[str, List[Any]], seeds_vary: Optional[bool] = None) -> List[GridPoint]:
    """The grid's points. ``seeds_vary``: seed is a grid axis of the sweep file (settings get -s<seed>),
    also when one point of it is run (--one)."""
    if seeds_vary is None:
        seeds_vary = len(grid.get("seed", [0])) > 1
    points = [make_point(p, seeds_vary=seeds_vary) for p in expand(grid)]
    seen: Dict[str, int] = {}
    for p in points:
        seen[p.setting] = seen.get(p.setting, 0) + 1
        if seen[p.setting] > 1:
            raise ConfigError(f"sweep: two grid points are the same defence setting '{p.setting}'; every "
                              f"setting must be distinct (vary 'defenses', or 'seed' as a grid axis)")
    return points


# ---------------------------------------------------------------------------------------------
# what is done already


def comparable(config: dict) -> dict:
    """The keys that define a run's experiment (``experiment`` of its task: a GAN or attack key added to a
    federation's config does not make its runs "not done"), less progress bars."""
    out = {k: v for k, v in experiment(config).items() if k not in _IGNORED_TOP}
    for section, key in _IGNORED_NESTED:
        if isinstance(out.get(section), dict) and key in out[section]:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


def _read_results(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _runs_of(output_dir: str, name: str) -> List[Path]:
    """Run folders of ``<output_dir>/<name>/``, newest first (timestamps sort by name)."""
    parent = Path(output_dir) / name
    if not parent.is_dir():
        return []
    return sorted((d for d in parent.iterdir() if d.is_dir() and not d.is_symlink()), key=lambda d: d.name,
                  reverse=True)


def find_fed(job: Job) -> Tuple[Optional[Path], Optional[Path]]:
    """(finished run, stopped run to resume) of this federation job, if any."""
    cfg = load_config(job.config_file, job.overrides)
    want = comparable(to_container(cfg))
    for run in _runs_of(cfg.output_dir, job.name):
        res = _read_results(run / "results.json")
        if res is None or comparable(res.get("config") or {}) != want:
            continue
        if (res.get("final") or {}).get("rounds") == cfg.fl.rounds:
            return run, None
        if (run / "checkpoints" / "last.ckpt").is_file():
            return None, run
    return None, None


def find_attack(job: Job, source: Path) -> Optional[Path]:
    cfg = load_config(job.config_file, job.overrides + [f"attack.source={source}"])
    want = comparable(to_container(cfg))
    for run in _runs_of(cfg.output_dir, job.name):
        res = _read_results(run / "results.json")
        if res is not None and "wall_seconds" in res and comparable(res.get("config") or {}) == want:
            return run
    return None


def job_folder(job: Job) -> Path:
    """``<output_dir>/<name>/``: where the job's runs go (and its sweep lock, ``JOB_LOCK``)."""
    cfg = load_config(job.config_file, job.overrides)
    return Path(cfg.output_dir) / job.name


JOB_LOCK = ".sweep.lock"  # held while a sweep runs the job: a second sweep on the same folder waits for it


def mark_done(points: List[GridPoint]) -> None:
    """Fill ``done_dir``/``resume_dir`` of every job from what is on disk."""
    for p in points:
        p.fed.done_dir, p.fed.resume_dir = find_fed(p.fed)
        for a in p.attacks:
            a.done_dir = find_attack(a, p.fed.done_dir) if p.fed.done_dir else None
