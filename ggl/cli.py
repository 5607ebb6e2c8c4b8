"""Command-line front ends of train.py and attack.py: parse, load the config, dispatch, report errors.

A ``UserError`` (bad config, missing file or data) prints one line on stderr and exits with code 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Optional

from ggl.errors import UserError

USAGE_OVERRIDES = "overrides as key=value, e.g. fl.rounds=50 trainer.devices=2 trainer.strategy=ddp"


def _parse(argv: Optional[List[str]], prog: str, default_config: Optional[str], description: str):
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=USAGE_OVERRIDES)
    parser.add_argument("--config", "-c", default=default_config,
                        help="YAML file, or a bare name in configs/ (e.g. fed_q4.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value")
    return parser.parse_args(argv)


def _run(fn: Callable[[], object]) -> int:
    try:
        fn()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: results so far are in the run folder", file=sys.stderr)
        return 130
    return 0


def train_main(argv: Optional[List[str]] = None) -> int:
    args = _parse(argv, "train.py", None, "Train a federation (task: fedavg) or a GAN prior (task: gan).")
    if args.config is None:
        print("error: --config is required, e.g. python train.py --config fed_q4.yaml", file=sys.stderr)
        return 2

    def go():
        from ggl.config import load_config

        cfg = load_config(args.config, args.overrides)
        if cfg.task == "fedavg":
            from ggl.fl.run import run_federation

            res = run_federation(cfg)
            final = res["final"]
            print(f"done: test_acc={final['test_acc']:.4f} rounds={final['rounds']} "
                  f"uplink_bits_per_round={final['uplink_bits_per_round']:.0f} "
                  f"compression_ratio={final['compression_ratio']:.2f} -> {res['run_dir']}")
        elif cfg.task == "gan":
            from ggl.gan.run import run_gan

            run_gan(cfg)
        else:
            raise UserError(f"config key 'task' = {cfg.task!r}: train.py runs 'fedavg' or 'gan'; "
                            f"attacks run with attack.py")
    return _run(go)


def attack_main(argv: Optional[List[str]] = None) -> int:
    args = _parse(argv, "attack.py", "attack.yaml", "Run the GGL attack (default config: configs/attack.yaml).")

    def go():
        from ggl.audit.run import run_attack_cli
        from ggl.config import load_config

        overrides = [f"attack.{o}" if o.startswith("source=") else o for o in args.overrides]
        run_attack_cli(load_config(args.config, overrides))
    return _run(go)
