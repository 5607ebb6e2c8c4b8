"""FedAvg timings, each measured in one run of this script.

    python benchmarks/bench_fedavg.py [--config fed_q4.yaml] [--rounds 5] [--ddp] [--resume] [key=value ...]

Always: seconds per round and the quantizer's share of it (every call the QuantizeUpdates callback
makes is timed), ending with `quantizer_share: <percent>`.
--ddp: rounds per second with 1 and with 2 processes (CPU, gloo) through the real CLI.
--resume: wall time of N rounds straight vs N/2, stop, resume to N (the resume overhead).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback

import ggl.defenses.quantize as defense_quantize  # the transform looks up quantize_update here at call time
from ggl.config import load_config
from ggl.jobs.federation import run_federation

REPO = Path(__file__).resolve().parent.parent


class RoundTimer(Callback):
    def __init__(self):
        self.seconds = []

    def on_train_epoch_start(self, trainer, module):
        self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        self.seconds.append(time.perf_counter() - self._t)


def quantizer_share(config: str, rounds: int, overrides: list) -> None:
    spent = []
    original = defense_quantize.quantize_update

    def timed_quantize(*a, **kw):
        t = time.perf_counter()
        out = original(*a, **kw)
        spent.append(time.perf_counter() - t)
        return out

    defense_quantize.quantize_update = timed_quantize
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(config, [f"fl.rounds={rounds}", f"fl.eval_every={rounds}", "logger.mode=disabled",
                                       f"output_dir={tmp}", "trainer.enable_progress_bar=false"] + overrides)
            timer = RoundTimer()
            run_federation(cfg, extra_callbacks=[timer])
    finally:
        defense_quantize.quantize_update = original
    steady = timer.seconds[1:] or timer.seconds  # the first round pays one-off warm-up costs
    per_round = sum(steady) / len(steady)
    q_per_round = sum(spent) / len(timer.seconds)
    print(f"config: {config}  rounds: {rounds}  clients/round: {len(spent) // len(timer.seconds)}")
    print(f"seconds_per_round: {per_round:.3f}")
    print(f"quantizer_seconds_per_round: {q_per_round:.4f}")
    print(f"quantizer_share: {100 * q_per_round / per_round:.2f}%")


def _cli(tmp: Path, config: str, args: list) -> dict:
    cmd = [sys.executable, str(REPO / "train.py"), "--config", config, f"output_dir={tmp}", "logger.mode=disabled",
           "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "name=bench", *args]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=tmp, stdout=subprocess.DEVNULL)
    res = json.loads((tmp / "bench" / "latest" / "results.json").read_text())
    res["process_seconds"] = time.perf_counter() - start
    return res


def ddp_rounds_per_second(config: str, rounds: int, overrides: list) -> None:
    rates = {}
    for n in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            extra = [f"trainer.devices={n}"] + (["trainer.strategy=ddp"] if n > 1 else [])
            res = _cli(Path(tmp), config, [f"fl.rounds={rounds}", f"fl.eval_every={rounds}", *extra, *overrides])
            rates[n] = rounds / res["wall_seconds"]
            print(f"processes: {n}  rounds_per_second: {rates[n]:.3f}  test_acc: {res['final']['test_acc']:.4f}")
    print(f"ddp_speedup_2_vs_1: {rates[2] / rates[1]:.2f}")


def resume_overhead(config: str, rounds: int, overrides: list) -> None:
    half = max(1, rounds // 2)
    common = [f"fl.eval_every={half}", *overrides]
    with tempfile.TemporaryDirectory() as tmp:
        straight = _cli(Path(tmp), config, [f"fl.rounds={rounds}", *common])
    with tempfile.TemporaryDirectory() as tmp:
        first = _cli(Path(tmp), config, [f"fl.rounds={half}", *common])
        resumed = _cli(Path(tmp), config, [f"fl.rounds={rounds}", f"resume={Path(tmp) / 'bench' / 'latest'}", *common])
    both = first["process_seconds"] + resumed["process_seconds"]
    print(f"straight: training {straight['wall_seconds']:.2f} s, process {straight['process_seconds']:.2f} s")
    print(f"stopped+resumed: training {resumed['wall_seconds']:.2f} s (as recorded in results.json), "
          f"processes {both:.2f} s (includes a second start-up)")
    print(f"same_final_accuracy: {straight['final']['test_acc'] == resumed['final']['test_acc']}")
    print(f"resume_overhead_training: {100 * (resumed['wall_seconds'] / straight['wall_seconds'] - 1):+.1f}%")
    print(f"resume_overhead_process: {100 * (both / straight['process_seconds'] - 1):+.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="fed_q4.yaml")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ddp", action="store_true", help="also measure 1 vs 2 processes")
    ap.add_argument("--resume", action="store_true", help="also measure the resume overhead")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.ddp:
        ddp_rounds_per_second(args.config, args.rounds, args.overrides)
    if args.resume:
        resume_overhead(args.config, args.rounds, args.overrides)
    quantizer_share(args.config, args.rounds, args.overrides)


if __name__ == "__main__":
    main()
