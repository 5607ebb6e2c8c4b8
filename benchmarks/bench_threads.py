"""Seconds per FL round of a small federation, idle and with every core busy, for the thread settings
a federation can run with, measured in one run of this script.

    python benchmarks/bench_threads.py [--rounds 3] [--busy N]

Settings: ``old`` (torch's default threads, the OpenMP runtime's default wait policy: the federation
before ``torch_threads`` and ggl's OMP_WAIT_POLICY), ``passive`` (same threads, OMP_WAIT_POLICY=PASSIVE:
ggl's default now), ``1thread`` (torch_threads=1). The wait policy is read once, when torch loads its
OpenMP runtime, so each policy runs in its own process; inside it the idle and busy measurements
alternate. ``--busy`` competitor processes spin in pure Python (default: one per core). On a machine
other people use, "idle" means "no competitor of ours": the load average is printed beside it.
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
import json, statistics, subprocess, sys, tempfile, time
import torch  # loads the OpenMP runtime with this process's environment
sys.path.insert(0, "benchmarks")  # cwd is the repository root
from bench_fedavg import RoundTimer
from ggl.config import load_config
from ggl.jobs.federation import run_federation

rounds, busy, thread_counts = int(sys.argv[1]), int(sys.argv[2]), [int(t) for t in sys.argv[3].split(",")]
default_threads = torch.get_num_threads()
out = {}
for threads in thread_counts:
    torch.set_num_threads(threads or default_threads)
    for load in ("idle", "busy"):
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy if load == "busy" else 0)]
        try:
            with tempfile.TemporaryDirectory() as tmp:
                cfg = load_config("fed_q4.yaml", [f"fl.rounds={rounds}", f"fl.eval_every={rounds}", "logger.mode=disabled",
                                                  f"output_dir={tmp}", "trainer.enable_progress_bar=false", "data.limit=1000",
                                                  "fl.local_epochs=1", "trainer.accelerator=cpu"])
                timer = RoundTimer()
                run_federation(cfg, extra_callbacks=[timer])
        finally:
            for h in hogs:
                h.kill()
                h.wait()
        steady = timer.seconds[1:] or timer.seconds  # the first round pays one-off warm-up costs
        out[f"{threads}/{load}"] = statistics.median(steady)
print(json.dumps(out))
"""


def run_child(policy: str | None, rounds: int, busy: int, threads: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", CHILD, str(rounds), str(busy), threads], env=env, cwd=REPO,
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"child failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--busy", type=int, default=os.cpu_count() or 1, help="competitor processes when busy")
    args = ap.parse_args()
    print(f"cores: {os.cpu_count()}, load average at start: {os.getloadavg()[0]:.1f} (other users' jobs count too)")
    start = time.perf_counter()
    # torch's OpenMP runtime is loaded before ggl (which would set PASSIVE): "old" really is the old default
    unset = run_child(None, args.rounds, args.busy, "0,1")
    passive = run_child("PASSIVE", args.rounds, args.busy, "0")
    med = {"old": (unset["0/idle"], unset["0/busy"]), "passive": (passive["0/idle"], passive["0/busy"]),
           "1thread": (unset["1/idle"], unset["1/busy"])}
    for name, (idle, busy) in med.items():
        print(f"{name:8s} idle {idle:.3f} s/round  busy {busy:.3f} s/round  busy/idle {busy / idle:.2f}x")
    for name in ("passive", "1thread"):
        print(f"{name}/old: idle {med[name][0] / med['old'][0]:.2f}x  busy {med[name][1] / med['old'][1]:.2f}x")
    print(f"load average at end: {os.getloadavg()[0]:.1f}; wall: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
