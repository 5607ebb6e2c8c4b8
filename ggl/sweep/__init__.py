"""The privacy-utility sweep: defence settings -> federations with audit captures -> GGL attacks.

``python -m ggl.sweep <W&B grid sweep file> [key=value ...]`` runs the grid locally, a point at a time or
in worker processes; ``wandb sweep`` + ``wandb agent`` run the same file across machines (``--one``).
Runs go to ``<output_dir>/fed-<setting>/`` and ``<output_dir>/attack-<setting>[-adaptive]/``; a rerun skips
what is done and resumes a stopped federation. grid.py: the file; plan.py: points, jobs, done detection;
runner.py: running them; main.py: the command line.
"""
