"""Victims, the evaluator and the orchestration of ``attack.py``.

The three roles of the threat model stay apart: ``victim`` (and the federation's ``capture``) hold
private data and produce observations + ground truth in separate files; ``ggl.attack`` sees the
observations only; ``evaluate`` alone opens the ground truth and scores reconstructions.
"""
