"""Names imported from whichever ``ggl`` is on the path: this checkout's, or an older commit's
(``bench_budget.py --today-at COMMIT`` runs this very script against the code of that commit, whose
modules lived elsewhere before the restructuring step: ``ggl.stats`` is now ``ggl.core.stats``, ...).

    paired = first("ggl.core.stats:paired", "ggl.stats:paired")
"""
from __future__ import annotations

import importlib


def first(*specs: str):
    """The object named by the first ``module:name`` spec that imports; ImportError naming all if none."""
    errors = []
    for spec in specs:
        module, name = spec.split(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            errors.append(f"{spec} ({exc})")
    raise ImportError("none of " + "; ".join(errors))
