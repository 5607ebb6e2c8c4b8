"""Command-line front ends: ``ggl train | attack | sweep | report`` (``main``), and train.py / attack.py
(``train_main``, ``attack_main``; also ``ggl-train`` / ``ggl-attack``): parse, load the config, dispatch.

A ``UserError`` (bad config, missing file or data) prints one line on stderr and exits with code 2.
Ctrl-C prints one line saying how to resume (or rerun) and exits with code 130. Hints name the command
the user ran (``ggl.core.shipped.PROG``: ``ggl train ...`` under ``ggl``, else ``python train.py ...``).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import List, Optional

from ggl.config import available_configs, config_task, load_config, resolve_config_path
from ggl.core import shipped
from ggl.core.errors import EXIT_USER_ERROR, guarded
from ggl.core.shipped import command
from ggl.jobs.attack import run_attack
from ggl.jobs.federation import run_federation
from ggl.jobs.gan import run_gan
from ggl.report.build import main as report_main
from ggl.runs.trainer import apply_torch_threads
from ggl.sweep.main import main as sweep_main

TRAIN_OVERRIDES = "overrides as key=value, e.g. fl.rounds=50 trainer.devices=2 trainer.strategy=ddp"
ATTACK_OVERRIDES = "overrides as key=value, e.g. attack.generations=50 seed=3 source=runs/fed_q4/latest"

TRAIN_EXAMPLES = [("--config fed_q4.yaml", "a federation, 4-bit quantized updates"),
                  ("--config fed_q4.yaml fl.rounds=50 seed=3", "overrides as key=value"),
                  ("--config fed_q4.yaml resume=runs/fed_q4/latest", "continue a stopped run"),
                  ("--config gan_mnist.yaml", "the GAN prior of the attack")]
ATTACK_EXAMPLES = [("", "fresh victims, configs/attack.yaml"),
                   ("--config attack_adaptive.yaml", "another attack config"),
                   ("source=runs/fed_q4/latest", "attack a federation's audit captures"),
                   ("attack.generations=20 audit.num_images=2", "")]
COMMANDS = {"train": "train a federation (task: fedavg) or a GAN prior (task: gan)",
            "attack": "run the GGL attack (fresh victims, or a federation's audit captures)",
            "sweep": "run a privacy-utility sweep (a grid of defences; --point I / --commands for clusters)",
            "report": "build the privacy-utility report (table + figures) from runs or a per-image CSV"}


def _examples(job: str, rows) -> str:
    lines = [f"{command(job)} {args}".rstrip() for args, _ in rows]
    width = max(len(line) for line, (_, note) in zip(lines, rows) if note) + 4
    return "examples:\n" + "\n".join(f"  {line.ljust(width)}{note}".rstrip() for line, (_, note) in zip(lines, rows))


def _configs_epilog(tasks: tuple) -> str:
    try:
        names = [n for n in available_configs() if config_task(resolve_config_path(n)) in tasks]
    except Exception:  # --help must work even if a config file is broken
        names = []
    return "configs (a bare name is looked up in configs/): " + (", ".join(names) or "none found")


def _parse(argv: Optional[List[str]], prog: str, default_config: Optional[str], description: str,
           examples: str, tasks: tuple):
    # the config list is only built for --help (it reads every config file)
    wants_help = any(a in ("-h", "--help") for a in (sys.argv[1:] if argv is None else argv))
    usage = ATTACK_OVERRIDES if "attack" in tasks else TRAIN_OVERRIDES
    job = "attack" if "attack" in tasks else "train"
    epilog = f"{usage}\n\n{_examples(job, examples)}" + (f"\n\n{_configs_epilog(tasks)}" if wants_help else "")
    prog = command(prog) if shipped.PROG else f"{prog}.py"
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    example = "attack.yaml" if "attack" in tasks else "fed_q4.yaml"
    parser.add_argument("--config", "-c", default=default_config,
                        help=f"YAML file, or a bare name in configs/ (e.g. {example})")
    parser.add_argument("overrides", nargs="*", help="key=value")
    return parser.parse_args(argv)


def _command(job: str, config: Optional[str], overrides: List[str], resume: Optional[str] = None) -> str:
    """The command line that reruns this job (with ``resume=`` replaced when given)."""
    words = command(job).split() + (["--config", config] if config else [])
    words += [o for o in overrides if not (resume is not None and o.startswith("resume="))]
    if resume is not None:
        words.append(f"resume={resume}")
    return shlex.join(words)


def train_main(argv: Optional[List[str]] = None) -> int:
    args = _parse(argv, "train", None, "Train a federation (task: fedavg) or a GAN prior (task: gan).",
                  TRAIN_EXAMPLES, ("fedavg", "gan"))
    if args.config is None:
        print(f"error: --config is required, e.g. {command('train')} --config fed_q4.yaml", file=sys.stderr)
        return EXIT_USER_ERROR

    def go():
        cfg = load_config(args.config, args.overrides, tasks=("fedavg", "gan"))
        apply_torch_threads(cfg.torch_threads)
        if cfg.task == "fedavg":

            res = run_federation(cfg)
            final = res["final"]
            print(f"done: test_acc={final['test_acc']:.4f} rounds={final['rounds']} "
                  f"uplink_bits_per_round={final['uplink_bits_per_round']:.0f} "
                  f"compression_ratio={final['compression_ratio']:.2f} -> {res['run_dir']}")
        else:
            run_gan(cfg)

    def interrupted(exc: KeyboardInterrupt) -> str:
        run_dir = getattr(exc, "run_dir", None)
        if run_dir is None:
            return f"interrupted before training started; start again with: {_command('train', args.config, args.overrides)}"
        if not (Path(run_dir) / "checkpoints" / "last.ckpt").is_file():
            return (f"interrupted before the first checkpoint of {run_dir}; nothing to resume, start again with: "
                    f"{_command('train', args.config, args.overrides)}")
        return f"interrupted; resume with: {_command('train', args.config, args.overrides, resume=str(run_dir))}"
    return guarded(go, interrupted)


def attack_main(argv: Optional[List[str]] = None) -> int:
    args = _parse(argv, "attack", "attack.yaml", "Run the GGL attack (default config: configs/attack.yaml).",
                  ATTACK_EXAMPLES, ("attack",))
    overrides = [f"attack.{o}" if o.startswith("source=") else o for o in args.overrides]
    state = {}

    def go():
        cfg = state["cfg"] = load_config(args.config, overrides, tasks=("attack",))
        apply_torch_threads(cfg.torch_threads)
        run_attack(cfg)

    def interrupted(exc: KeyboardInterrupt) -> str:
        again = _command("attack", args.config, args.overrides)
        cfg = state.get("cfg")
        if cfg is None:
            return f"interrupted; start again with: {again}"
        run_dir = getattr(exc, "run_dir", None)
        if run_dir is None or not getattr(exc, "kept", False):
            return f"interrupted before any setting finished (nothing kept); start again with: {again}"
        return (f"interrupted; an attack does not resume: the settings it finished are in {run_dir}/results.json; "
                f"start again with: {again}")
    return guarded(go, interrupted)


def main(argv: Optional[List[str]] = None) -> int:
    """``ggl COMMAND [args]``: the subcommand gets the rest of the command line, as its own main would."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="ggl", description="Audit FL privacy defences against Generative "
                                 "Gradient Leakage.", epilog="'ggl COMMAND --help' shows a command's options")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    ns = ap.parse_args(argv[:1])  # --help, a missing or unknown command: argparse's message, exit 0 / 2
    shipped.PROG = "ggl"
    rest = argv[1:]
    mains = {"train": train_main, "attack": attack_main, "sweep": sweep_main, "report": report_main}
    return mains[ns.command](rest)
