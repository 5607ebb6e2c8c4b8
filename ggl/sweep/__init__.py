"""The privacy-utility sweep: defence settings -> federations with audit captures -> GGL attacks.

    python -m ggl.sweep configs/sweep_defenses.yaml [key=value ...] [--list]     # the grid, locally
    python -m ggl.sweep configs/sweep_defenses.yaml --one key=value ...           # one grid point

The sweep file is W&B Sweeps syntax (``method: grid``; ``parameters`` with ``value:``/``values:``), so
``wandb sweep <file>`` + ``wandb agent <id>`` run the same grid across machines: the agent runs the
file's ``command``, i.e. ``--one`` with the point's parameters as ``key=value`` (``${args_no_hyphens}``).
Locally every grid point runs in this process, one after the other (or, with `workers=N`, in N worker
processes of `torch_threads` threads each, a point per process at a time), behind one progress bar with an
estimate of the time left.

One grid point (a *setting*) = one federation (``fed_config`` + ``fed.<key>`` overrides + the point's
``defenses``), with audit captures, then one attack per attacker in ``attackers`` (``attack_config``
+ ``attack.<key>`` overrides, ``attack.source`` = that federation's run folder). ``seed``,
``output_dir`` and ``logger.<key>`` go to both jobs. Runs are written to
``<output_dir>/fed-<setting>/`` and ``<output_dir>/attack-<setting>[-adaptive]/`` as usual.

Nothing is recomputed: a job whose ``results.json`` holds the very config it would run (logging
aside) and is complete is skipped; a federation stopped part-way resumes from its last checkpoint.
So a stopped sweep continues where it stopped, and changing a key re-runs only what it changes.
"""
from __future__ import annotations

import argparse
import ast
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ggl.core.errors import ConfigError, UserError
from ggl.audit.reid import HEADLINE
from ggl.report.collect import collect
from ggl.report.points import build_points, chance_level
from ggl.report.tables import most_leakage

ATTACKERS = ("non-adaptive", "adaptive")
SHARED_KEYS = ("seed", "output_dir")           # parameters given to both jobs as they are
SHARED_PREFIXES = ("logger.",)
SWEEP_KEYS = ("defenses", "fed_config", "attack_config", "attackers", "torch_threads", "workers")
W_AND_B_TOP_KEYS = {"apiVersion", "kind", "controller", "description", "program", "job", "image_uri", "entity",
                    "project", "method", "command", "name", "run_cap", "metric", "metrics", "scheduler",
                    "early_terminate", "parameters"}
# environment the W&B agent sets for its one run; the jobs' own W&B runs must not inherit it
AGENT_ENV = ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH")
# config keys that do not change a job's results (compared when deciding whether a job is done)
_IGNORED_TOP = {"logger", "resume"}
_IGNORED_NESTED = {("trainer", "enable_progress_bar"), ("attack", "progress")}


# ---------------------------------------------------------------------------------------------
# the sweep file


def _value_text(v: Any) -> str:
    """A parameter value as a ``key=value`` override text (strings as written; the rest as YAML/JSON)."""
    return v if isinstance(v, str) else json.dumps(v)


def parse_arg_value(raw: str) -> Any:
    """A value from ``key=value`` (W&B writes Python literals: ``[{'name': 'sign'}]``, ``True``, ``None``)."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        pass
    from omegaconf import OmegaConf

    try:  # YAML a user typed: [0], true, {name: sign}
        node = OmegaConf.create({"v": OmegaConf.from_dotlist([f"v={raw}"])["v"]})
        return OmegaConf.to_container(node)["v"]
    except Exception:
        return raw


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"sweep argument '{item}' must look like key=value (e.g. fed.fl.rounds=5)")
        key, raw = item.split("=", 1)
        out[key.strip()] = parse_arg_value(raw)
    return out


def _check_parameter_name(key: str, where: str) -> None:
    if key in SWEEP_KEYS or key in SHARED_KEYS or key.startswith(SHARED_PREFIXES) \
            or key.startswith("fed.") or key.startswith("attack."):
        return
    import difflib

    near = difflib.get_close_matches(key, list(SWEEP_KEYS + SHARED_KEYS), n=1, cutoff=0.6)
    hint = f"did you mean '{near[0]}'?" if near else \
        "use fed.<key> (federation), attack.<key> (attack), seed, output_dir, logger.<key>, " + ", ".join(SWEEP_KEYS)
    raise ConfigError(f"{where}: unknown sweep parameter '{key}'; {hint}")


def load_sweep(path: str | Path) -> Tuple[dict, Dict[str, List[Any]]]:
    """(the file as read, {parameter: [values]}) after checking it is a W&B grid sweep we can run."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"sweep file '{path}' not found (e.g. configs/sweep_defenses.yaml)")
    try:
        doc = yaml.safe_load(p.read_text())  # the parser `wandb sweep` uses
    except yaml.YAMLError as exc:
        raise ConfigError(f"sweep file '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"sweep file '{path}' must hold a mapping (a W&B sweep config)")
    extra = sorted(set(doc) - W_AND_B_TOP_KEYS)
    if extra:
        raise ConfigError(f"sweep file '{path}': top-level key '{extra[0]}' is not W&B sweep syntax "
                          f"(allowed: {', '.join(sorted(W_AND_B_TOP_KEYS))}); put settings under 'parameters'")
    if doc.get("method") != "grid":
        raise ConfigError(f"sweep file '{path}': 'method' must be grid (every setting once), not {doc.get('method')!r}")
    params = doc.get("parameters")
    if not isinstance(params, dict) or "defenses" not in params:
        raise ConfigError(f"sweep file '{path}' needs 'parameters' with a 'defenses' entry (the settings)")
    grid: Dict[str, List[Any]] = {}
    for key, spec in params.items():
        where = f"sweep file '{path}', parameters.{key}"
        _check_parameter_name(key, f"sweep file '{path}'")
        if not isinstance(spec, dict) or len(set(spec) & {"value", "values"}) != 1 or set(spec) - {"value", "values"}:
            raise ConfigError(f"{where} must have exactly one of 'value:' (a constant) or 'values:' (a grid axis)")
        if "values" in spec:
            if not isinstance(spec["values"], list) or not spec["values"]:
                raise ConfigError(f"{where}.values must be a non-empty list")
            grid[key] = list(spec["values"])
        else:
            grid[key] = [spec["value"]]
    return doc, grid


# ---------------------------------------------------------------------------------------------
# grid points and their jobs


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
class Point:
    params: Dict[str, Any]
    setting: str
    fed: Job = None
    attacks: List[Job] = field(default_factory=list)


def expand(grid: Dict[str, List[Any]]) -> List[Dict[str, Any]]:
    """Every combination of the grid's values (in file order), as {parameter: value}."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _split(params: Dict[str, Any]) -> Tuple[List[str], List[str]]:
    fed, attack = [], []
    for key, value in params.items():
        if key in SWEEP_KEYS:
            continue
        if key in SHARED_KEYS or key.startswith(SHARED_PREFIXES):
            fed.append(f"{key}={_value_text(value)}")
            attack.append(f"{key}={_value_text(value)}")
        elif key.startswith("fed."):
            fed.append(f"{key[4:]}={_value_text(value)}")
        elif key.startswith("attack."):
            attack.append(f"{key}={_value_text(value)}")
    return fed, attack


def make_point(params: Dict[str, Any], seeds_vary: bool = False) -> Point:
    from ggl.config import load_config
    from ggl.defenses import defenses_label

    for key in params:
        _check_parameter_name(key, "sweep")
    chain = params.get("defenses")
    if not isinstance(chain, list):
        raise ConfigError(f"sweep parameter 'defenses' = {chain!r} must be a list of defences ([] for none)")
    fed_over, attack_over = _split(params)
    fed_over.append(f"defenses={json.dumps(chain)}")
    fed_file = params.get("fed_config", "fed_fp32.yaml")
    cfg = load_config(fed_file, fed_over)  # checks every key and the chain now, before anything runs
    setting = defenses_label(cfg.defenses) + (f"-s{cfg.seed}" if seeds_vary else "")
    fed_name = f"fed-{setting}"
    fed_over.append(f"name={fed_name}")
    point = Point(params=params, setting=setting)
    point.fed = Job("fed", setting, fed_name, fed_file, fed_over, cost=float(cfg.fl.rounds))
    if not cfg.audit.rounds:
        raise ConfigError(f"sweep setting '{setting}': the federation captures nothing to attack; set "
                          f"fed.audit.rounds (e.g. [0])")
    attackers = params.get("attackers", ["non-adaptive"])
    attackers = [attackers] if isinstance(attackers, str) else list(attackers)
    if any(a not in ATTACKERS for a in attackers):  # portfolio names: one attack job runs them all
        point.attacks.append(_portfolio_job(attackers, chain, setting, cfg, params, attack_over))
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
        from ggl.attack.search import search_units

        point.attacks.append(Job("attack", setting, name, params.get("attack_config", "attack.yaml"), over,
                                 attacker=attacker, cost=float(images_attacked(cfg, acfg) * search_units(acfg.attack))))
    return point


def portfolio_for(names: Sequence[str], chain: Sequence[dict], setting: str) -> List[str]:
    """The portfolio attackers worth running on ``chain``: an adaptive attacker that models nothing of it
    (no defence; unbiased randomness, whose expectation is the identity) would repeat its non-adaptive
    twin's search, so it is left out when the twin is listed; an adaptive one on a defence it has no model
    of is an error. ``ggl-eot`` on a deterministic chain stays: it refuses with its reason, recorded."""
    from ggl.attack.attackers import check_portfolio, get_attacker

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


def _portfolio_job(names: Sequence[str], chain: Sequence[dict], setting: str, cfg, params: Dict[str, Any],
                   attack_over: List[str]) -> Job:
    """One attack job running the attacker portfolio (``attack.attackers``) on the setting's captures."""
    if any(a in ATTACKERS for a in names):
        raise ConfigError(f"sweep parameter 'attackers' = {list(names)}: give either {' / '.join(ATTACKERS)} "
                          f"or portfolio attacker names (ggl/attack/attackers), not both")
    from ggl.attack.attackers import build_portfolio
    from ggl.config import load_config

    keep = portfolio_for(names, chain, setting)
    name = f"attack-{setting}"
    over = attack_over + [f"attack.attackers={json.dumps(keep)}", f"name={name}"]
    acfg = load_config(params.get("attack_config", "attack.yaml"), over)
    units = sum(a.units(acfg.attack) for a in build_portfolio(keep, dict(acfg.attack.attacker_options or {})))
    return Job("attack", setting, name, params.get("attack_config", "attack.yaml"), over, attacker="portfolio",
               cost=float(images_attacked(cfg, acfg) * units))


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
    from ggl.defenses import parse_defense

    return any(parse_defense(dict(d), f"defenses[{i}]").attack_model().changes_search for i, d in enumerate(chain))


def check_adaptive(chain: Sequence[dict], setting: str) -> None:
    """An adaptive attacker on a defence it has no model of is an error, never a silent non-adaptive run."""
    from ggl.defenses import NONE, parse_defense

    for i, d in enumerate(chain):
        defense = parse_defense(dict(d), f"defenses[{i}]")
        model = defense.attack_model()
        if model.kind == NONE:
            raise ConfigError(f"sweep setting '{setting}': the adaptive attacker has no model of defence "
                              f"'{defense.label}' ({model.reason}); drop 'adaptive' from 'attackers'")


def plan(grid: Dict[str, List[Any]], seeds_vary: Optional[bool] = None) -> List[Point]:
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
    """The keys that define a run's experiment (``ggl.runs.resume.EXPERIMENT_KEYS`` of its task: a GAN or attack
    key added to a federation's config does not make its runs "not done"), less progress bars."""
    from ggl.runs.resume import experiment

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
    from ggl.config import load_config, to_container

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
    from ggl.config import load_config, to_container

    cfg = load_config(job.config_file, job.overrides + [f"attack.source={source}"])
    want = comparable(to_container(cfg))
    for run in _runs_of(cfg.output_dir, job.name):
        res = _read_results(run / "results.json")
        if res is not None and "wall_seconds" in res and comparable(res.get("config") or {}) == want:
            return run
    return None


# ---------------------------------------------------------------------------------------------
# running


def _job_env():
    """The jobs' own W&B runs must not attach to the agent's sweep run (they have their own ids)."""
    from ggl.core.environ import without_env

    return without_env(AGENT_ENV)


def run_fed(job: Job) -> Path:
    from ggl.config import load_config
    from ggl.jobs.federation import run_federation

    over = list(job.overrides) + ([f"resume={job.resume_dir}"] if job.resume_dir else [])
    cfg = load_config(job.config_file, over)
    res = run_federation(cfg)
    # the folder as find_fed names it (a resumed run reports it resolved), so the attacks' configs
    # (attack.source) are the same whether the federation ran now or in an earlier, stopped sweep
    return Path(cfg.output_dir) / job.name / Path(res["run_dir"]).name


def run_attack(job: Job, source: Path) -> Path:
    import torch

    from ggl.jobs.attack import run_attack_cli
    from ggl.config import load_config

    threads = torch.get_num_threads()
    cfg = load_config(job.config_file, job.overrides + [f"attack.source={source}"])
    try:  # the attack sets torch's thread count for the process; the next federation gets it back
        res = run_attack_cli(cfg)
    finally:
        torch.set_num_threads(threads)
    return Path(cfg.output_dir) / job.name / Path(res["run_dir"]).name


class Progress:
    """One bar over all jobs; the time left is measured: seconds per FL round and per attack search
    unit (image x generation), per kind of job, from the jobs run so far (not from skipped ones),
    times the work left of that kind."""

    def __init__(self, jobs: List[Job], enabled: bool = True, workers: int = 1):
        from tqdm.auto import tqdm

        self.workers = max(1, int(workers))  # jobs of that many points run side by side
        self.left: Dict[str, float] = {}
        self.spent: Dict[str, List[float]] = {}  # [seconds, units] per kind of job
        for j in jobs:
            self.left.setdefault(self.kind(j), 0.0)
            self.spent.setdefault(self.kind(j), [0.0, 0.0])
            if j.done_dir is None:
                self.left[self.kind(j)] += j.cost
        done = sum(j.done_dir is not None for j in jobs)
        self.bar = tqdm(total=len(jobs), initial=done, unit="job", disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} jobs [{elapsed}{postfix}]")
        self._post("")

    @staticmethod
    def kind(job: Job) -> str:
        """Rates are kept apart where they differ: an adaptive search step costs 1.5-4x a non-adaptive one."""
        return job.kind if job.kind == "fed" else f"attack-{job.attacker}"

    def eta(self) -> Optional[float]:
        total = 0.0
        for kind, units in self.left.items():
            if units <= 0:
                continue
            seconds, done = self.spent[kind]
            if done <= 0:
                return None
            total += units * seconds / done
        return total / self.workers

    def _post(self, current: str) -> None:
        eta = self.eta()
        left = "time left: ? (after the first job of each kind)" if eta is None else f"time left ~{_hms(eta)}"
        self.bar.set_postfix_str(f"{current} | {left}" if current else left)

    def start(self, job: Job) -> None:
        self._post(f"{job.kind} {job.name}")

    def finish(self, job: Job, seconds: float) -> None:
        kind = self.kind(job)
        self.spent[kind][0] += seconds
        self.spent[kind][1] += job.cost
        self.left[kind] = max(0.0, self.left[kind] - job.cost)
        self.bar.update(1)
        self._post("")

    def skip(self, job: Job) -> None:
        """A job that will not run (found done, or its federation failed): no work left, no rate."""
        self.left[self.kind(job)] = max(0.0, self.left[self.kind(job)] - job.cost)
        self.bar.update(1)
        self._post("")

    def write(self, msg: str) -> None:
        self.bar.write(msg, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def mark_done(points: List[Point]) -> None:
    """Fill ``done_dir``/``resume_dir`` of every job from what is on disk."""
    for p in points:
        p.fed.done_dir, p.fed.resume_dir = find_fed(p.fed)
        for a in p.attacks:
            a.done_dir = find_attack(a, p.fed.done_dir) if p.fed.done_dir else None


def _run_point(p: Point, write, start=None, done=None) -> List[Tuple[Job, str, float]]:
    """Run the jobs of one grid point not done yet, in order: [(job, status, seconds)], status "ran",
    "failed", "skipped" (done before the sweep) or "found" (found done once its federation resumed),
    each also handed to ``done`` as it is known. A failing job is reported with ``write`` and its
    setting's later jobs fail."""
    out: List[Tuple[Job, str, float]] = []

    def emit(job: Job, status: str, seconds: float = 0.0) -> None:
        out.append((job, status, seconds))
        if done is not None:
            done(job, status, seconds)

    for job in [p.fed] + p.attacks:
        found = False
        if job.kind == "attack" and job.done_dir is None and p.fed.done_dir is not None:
            job.done_dir = find_attack(job, p.fed.done_dir)  # its federation was resumed just now
            found = job.done_dir is not None
        if job.done_dir is not None:
            emit(job, "found" if found else "skipped")
            continue
        if job.kind == "attack" and p.fed.done_dir is None:  # its federation failed
            emit(job, "failed")
            continue
        if start:
            start(job)
        t0 = time.perf_counter()
        try:
            with _job_env():
                if job.kind == "fed":
                    what = f"resuming {job.resume_dir}" if job.resume_dir else "starting"
                    write(f"[sweep] federation {job.name}: {what}")
                    job.done_dir = run_fed(job)
                else:
                    write(f"[sweep] attack {job.name} on {p.fed.done_dir}")
                    job.done_dir = run_attack(job, p.fed.done_dir)
        except UserError as exc:
            write(f"[sweep] {job.kind} {job.name} failed: {exc}")
            emit(job, "failed")
            continue
        except Exception as exc:  # one broken setting must not lose the others
            write(f"[sweep] {job.kind} {job.name} failed: {type(exc).__name__}: {exc}")
            emit(job, "failed")
            continue
        emit(job, "ran", time.perf_counter() - t0)
    return out


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _worker_point(p: Point) -> Tuple[Point, List[Tuple[str, str, float]]]:
    """A grid point in a worker process; jobs come back by name (the parent holds its own Job objects)."""
    done = _run_point(p, lambda msg: print(msg, file=sys.stderr, flush=True))
    return p, [(job.name, status, seconds) for job, status, seconds in done]


def run_points(points: List[Point], progress: bool = True, workers: int = 1) -> dict:
    """Run every job not done yet; a failing job is reported and its setting's later jobs skipped.

    ``workers`` > 1: grid points (independent of each other) run in that many worker processes of
    ``torch_threads`` threads each (1 if unset), e.g. two one-thread processes on 2 cores instead of
    one two-thread process; a point's own jobs still run in order (its attacks need its federation)."""
    mark_done(points)
    threads = points[0].params.get("torch_threads") if points else None
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    jobs = [j for p in points for j in [p.fed] + p.attacks]
    bar = Progress(jobs, enabled=progress, workers=workers if len(points) > 1 else 1)
    summary = {"ran": [], "skipped": [], "failed": [], "wall_seconds": 0.0}
    clock = time.perf_counter()

    def record(job: Job, status: str, seconds: float) -> None:
        summary["skipped" if status == "found" else status].append(job.name)
        if status == "ran":
            bar.finish(job, seconds)
        elif status in ("failed", "found"):
            bar.skip(job)

    try:
        if workers > 1 and len(points) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            ctx = multiprocessing.get_context("spawn")  # no forked torch thread pools
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                     initargs=(int(threads or 1),)) as pool:
                futures = {pool.submit(_worker_point, p): p for p in points}
                for fut in as_completed(futures):
                    p = futures[fut]
                    try:
                        done_point, done = fut.result()
                    except Exception as exc:  # the worker itself died
                        bar.write(f"[sweep] setting {p.setting} failed: {type(exc).__name__}: {exc}")
                        for job in [p.fed] + p.attacks:
                            if job.done_dir is None:
                                record(job, "failed", 0.0)
                        continue
                    by_name = {j.name: j for j in [done_point.fed] + done_point.attacks}
                    for job in [p.fed] + p.attacks:
                        name_status = next((d for d in done if d[0] == job.name), None)
                        if name_status is None:
                            continue
                        job.done_dir = by_name[job.name].done_dir
                        record(job, name_status[1], name_status[2])
        else:
            for p in points:
                _run_point(p, bar.write, bar.start, record)
    finally:
        bar.close()
        summary["wall_seconds"] = time.perf_counter() - clock
    return summary


def results_of(points: List[Point]) -> list:
    """The report's points (``ggl.report.points.Point``: same pairing, statistics) of the finished jobs."""
    folders = [d for p in points for d in [p.fed.done_dir] + [a.done_dir for a in p.attacks] if d]
    return build_points(collect(folders).pairs) if folders else []


def output_root(points: List[Point]) -> Optional[Path]:
    """The folder holding the sweep's runs (``<output_dir>`` of ``<output_dir>/<name>/<timestamp>``)."""
    roots = {Path(d).parent.parent for p in points for d in [p.fed.done_dir] + [a.done_dir for a in p.attacks] if d}
    return next(iter(roots)) if len(roots) == 1 else None


def _log_agent_run(point: Point) -> None:
    """Under ``wandb agent``: the sweep's own run (the agent's WANDB_RUN_ID) gets the setting's numbers."""
    import wandb

    run = wandb.init(config={k: v for k, v in point.params.items()}, job_type="sweep-point",
                     name=point.setting, tags=["sweep", point.setting])
    try:
        found = results_of([point])
        summary = {"setting": point.setting}
        grids = {}
        for r in found:
            grid = r.images.parent / "grid.png" if r.images is not None else None
            if grid is not None and grid.is_file():
                grids[f"reconstructions/{r.key.attacker}"] = wandb.Image(str(grid))
        if grids:
            run.log(grids)
        for r in found:  # one prefix per attacker (and worst case) and round: rounds never overwrite each other
            prefix = r.key.attacker + (f"/round{r.key.round}" if r.key.round is not None else "")
            summary["test_acc"] = r.fed.test_acc
            summary["uplink_bits_per_round"] = r.fed.bits_per_round
            summary[f"{prefix}/n_images"] = r.n_images
            summary[f"{prefix}/reid_chance"] = chance_level(r.pairs)
            for key in ("psnr", "ssim", "lpips", HEADLINE, "best_baseline_psnr", "leakage_psnr"):
                ci = r.ci(key)
                if ci is not None:
                    summary.update({f"{prefix}/{key}_mean": ci.mean, f"{prefix}/{key}_ci_low": ci.low,
                                    f"{prefix}/{key}_ci_high": ci.high})
        run.summary.update({k: v for k, v in summary.items() if v is not None})
    finally:
        run.finish()


def finish_line(summary: dict, points: List[Point]) -> str:
    """One line: what ran, where the output went, the key numbers, the next command."""
    line = (f"sweep: {len(summary['ran'])} jobs run, {len(summary['skipped'])} skipped (done before), "
            f"{len(summary['failed'])} failed, {summary['wall_seconds']:.0f} s"
            + (f"; failed: {', '.join(summary['failed'])}" if summary["failed"] else ""))
    root = output_root(points)
    if root is None:
        return line
    found = results_of(points)
    return f"{line} -> {root} ({len(found)} points){most_leakage(found)}; next: python -m ggl.report {root}"


# ---------------------------------------------------------------------------------------------
# entry point


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ggl.sweep", description=__doc__.splitlines()[0],
                                 epilog="e.g. python -m ggl.sweep configs/sweep_defenses.yaml fed.fl.rounds=5")
    ap.add_argument("sweep", help="a W&B grid sweep file, e.g. configs/sweep_defenses.yaml")
    ap.add_argument("overrides", nargs="*", help="parameter=value; a grid parameter given one value runs only it")
    ap.add_argument("--one", action="store_true", help="run one grid point (what `wandb agent` calls): every "
                    "grid parameter must be given one value")
    ap.add_argument("--list", action="store_true", help="list the settings and what is done; run nothing")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_intermixed_args(argv)  # the agent puts --one between the file and the key=values
    try:
        _, grid = load_sweep(args.sweep)
        seeds_vary = len(grid.get("seed", [0])) > 1
        for key, value in parse_overrides(args.overrides).items():
            _check_parameter_name(key, "command line")
            grid[key] = [value]
        if args.one:
            multi = [k for k, v in grid.items() if len(v) != 1]
            if multi:
                raise ConfigError(f"--one runs one grid point: give one value for {', '.join(multi)} "
                                  f"(e.g. defenses=[])")
        workers = grid.get("workers", [1])[0]
        if not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"sweep parameter 'workers' = {workers} must be >= 1")
        points = plan(grid, seeds_vary)
        if args.list:
            mark_done(points)
            for p in points:
                jobs = [p.fed] + p.attacks
                state = ", ".join(f"{j.name}: {'done' if j.done_dir else 'resume' if j.resume_dir else 'to run'}"
                                  for j in jobs)
                print(f"{p.setting}: {state}")
            return 0
        summary = run_points(points, progress=not args.no_progress, workers=workers)
        if args.one and os.environ.get("WANDB_SWEEP_ID") and not summary["failed"]:
            _log_agent_run(points[0])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue (finished jobs are skipped)", file=sys.stderr)
        return 130
    print(finish_line(summary, points))
    return 1 if summary["failed"] else 0

