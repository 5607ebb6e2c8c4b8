"""The three recipes, each ``run(cfg) -> dict``: federation, gan, attack."""
