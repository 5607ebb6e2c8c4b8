"""Plumbing that knows no domain: errors and the entry points' wrapper, value checks and bounds, one
``Registry`` for every extension point, plugin loading, the shipped files, seeding, atomic writes, safe
loading, the environment, the allocator, statistics and image plots."""
