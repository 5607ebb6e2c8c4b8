"""Seconds per FL round and the quantizer's share of it, measured in one run.

    python benchmarks/bench_fedavg.py [--config fed_q4.yaml] [--rounds 5] [key=value ...]

Times every round (Trainer epoch) and, inside it, every call of the quantizer that the
QuantizeUpdates callback makes; prints both and ends with `quantizer_share: <percent>`.
"""
from __future__ import annotations

import argparse
import tempfile
import time

from lightning.pytorch.callbacks import Callback

import ggl.fl.callbacks as fl_callbacks
from ggl.config import load_config
from ggl.fl.run import run_federation


class RoundTimer(Callback):
    def __init__(self):
        self.seconds = []

    def on_train_epoch_start(self, trainer, module):
        self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        self.seconds.append(time.perf_counter() - self._t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="fed_q4.yaml")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    spent = []
    original = fl_callbacks.quantize_update

    def timed_quantize(*a, **kw):
        t = time.perf_counter()
        out = original(*a, **kw)
        spent.append(time.perf_counter() - t)
        return out

    fl_callbacks.quantize_update = timed_quantize
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, [f"fl.rounds={args.rounds}", f"fl.eval_every={args.rounds}",
                                        "logger.mode=disabled", f"output_dir={tmp}",
                                        "trainer.enable_progress_bar=false"] + args.overrides)
        timer = RoundTimer()
        run_federation(cfg, extra_callbacks=[timer])
    steady = timer.seconds[1:] or timer.seconds  # the first round pays one-off warm-up costs
    per_round = sum(steady) / len(steady)
    q_per_round = sum(spent) / len(timer.seconds)
    print(f"config: {args.config}  rounds: {args.rounds}  clients/round: {len(spent) // len(timer.seconds)}")
    print(f"seconds_per_round: {per_round:.3f}")
    print(f"quantizer_seconds_per_round: {q_per_round:.4f}")
    print(f"quantizer_share: {100 * q_per_round / per_round:.2f}%")


if __name__ == "__main__":
    main()
