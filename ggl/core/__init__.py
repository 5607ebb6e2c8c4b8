"""Plumbing that knows no domain: errors, checks, seeding, atomic writes, safe loading, the
environment, the allocator, statistics and image plots."""
