"""Victims, the evaluator and what they write (records, ground truth), around the attacker.

The three roles of the threat model stay apart: ``victim`` (and the federation's ``capture``) hold
private data and produce observations + ground truth in separate files; ``ggl.attack`` sees the
observations only; ``evaluate`` alone opens the ground truth and scores reconstructions.
"""
