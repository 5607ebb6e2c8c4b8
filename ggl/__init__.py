"""ggl: audit federated-learning defences against Generative Gradient Leakage."""
import os as _os

# OpenMP threads that wait for work sleep instead of spinning, so a job on a machine whose cores
# others use degrades gracefully (ggl/trainer.py, benchmarks/bench_threads.py). The OpenMP runtime
# reads this when torch loads it: set here, before any ggl module imports torch. A user's value wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
