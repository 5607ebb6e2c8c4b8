"""The three recipes, each a function ``cfg -> results dict`` that reads top to bottom:
``federation.run_federation``, ``gan.run_gan``, ``attack.run_attack``."""
