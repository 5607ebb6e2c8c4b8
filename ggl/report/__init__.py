"""The privacy-utility report: federation runs (utility) paired with the attacks on their captures (privacy).

    python -m ggl.report runs/sweep_defenses [--out DIR [--overwrite]] [--metric psnr|ssim|reid] [--wandb ...]
    python -m ggl.report --from-csv reports/per_image.csv [--out DIR [--overwrite]] [--metric ...]

``collect`` (read and pair) -> ``points`` (statistics, worst case) -> ``tables`` and ``figures``;
``build`` writes them. The files and their columns: docs/findings.md, "The privacy-utility report".
"""
