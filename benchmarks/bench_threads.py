"""Seconds per FL round of a small federation, on an idle machine and with every core busy, for the
thread settings a federation can run with. Each setting runs in a fresh process (the OpenMP wait
policy is read once, when torch loads its OpenMP runtime); settings are interleaved so that load
from other users of the machine hits them alike.

    python benchmarks/bench_threads.py [--rounds 4] [--repeats 2] [--busy N]

Settings: ``old`` (torch's default threads, the OpenMP runtime's default wait policy: the federation's
behaviour before ``torch_threads``), ``passive`` (same threads, OMP_WAIT_POLICY=PASSIVE: ggl's new
default), ``1thread`` (torch_threads=1). ``--busy`` competitor processes spin in pure Python (default:
one per core). Prints s/round per setting and load, then the ratios busy/idle and setting/old.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, statistics, sys, tempfile, time
import torch  # loads the OpenMP runtime with this process's environment
threads = int(sys.argv[2])
if threads:
    torch.set_num_threads(threads)
from lightning.pytorch.callbacks import Callback
from ggl.config import load_config
from ggl.fl.run import run_federation

class RoundTimer(Callback):
    def __init__(self):
        self.seconds = []
    def on_train_epoch_start(self, trainer, module):
        self._t = time.perf_counter()
    def on_train_epoch_end(self, trainer, module):
        self.seconds.append(time.perf_counter() - self._t)

rounds = int(sys.argv[1])
with tempfile.TemporaryDirectory() as tmp:
    cfg = load_config("fed_q4.yaml", [f"fl.rounds={rounds}", f"fl.eval_every={rounds}", "logger.mode=disabled",
                                      f"output_dir={tmp}", "trainer.enable_progress_bar=false", "data.limit=2000",
                                      "fl.local_epochs=1", "trainer.accelerator=cpu"])
    timer = RoundTimer()
    run_federation(cfg, extra_callbacks=[timer])
steady = timer.seconds[1:] or timer.seconds  # the first round pays one-off warm-up costs
print(json.dumps({"s_per_round": statistics.median(steady), "threads": torch.get_num_threads()}))
"""

SETTINGS = {  # name -> (torch threads (0 = torch's default), OMP_WAIT_POLICY or None = unset)
    "old": (0, None),
    "passive": (0, "PASSIVE"),
    "1thread": (1, None),
}


def run_child(rounds: int, threads: int, policy: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", CHILD, str(rounds), str(threads)], env=env, cwd=REPO,
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"child failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["s_per_round"]


def spin() -> None:
    while True:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--busy", type=int, default=os.cpu_count() or 1, help="competitor processes when busy")
    args = ap.parse_args()
    print(f"cores: {os.cpu_count()}, load average at start: {os.getloadavg()[0]:.1f} (other users' jobs count too)")
    times = {(name, load): [] for name in SETTINGS for load in ("idle", "busy")}
    start = time.perf_counter()
    for _ in range(args.repeats):
        for load in ("idle", "busy"):
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy if load == "busy" else 0)]
            try:
                for name, (threads, policy) in SETTINGS.items():
                    times[(name, load)].append(run_child(args.rounds, threads, policy))
            finally:
                for h in hogs:
                    h.kill()
                    h.wait()
    med = {k: statistics.median(v) for k, v in times.items()}
    for name in SETTINGS:
        print(f"{name:8s} idle {med[(name, 'idle')]:.3f} s/round  busy {med[(name, 'busy')]:.3f} s/round  "
              f"busy/idle {med[(name, 'busy')] / med[(name, 'idle')]:.2f}x")
    for name in SETTINGS:
        if name != "old":
            print(f"{name}/old: idle {med[(name, 'idle')] / med[('old', 'idle')]:.2f}x  "
                  f"busy {med[(name, 'busy')] / med[('old', 'busy')]:.2f}x")
    print(f"wall: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
