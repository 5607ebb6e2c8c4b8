"""The attacker's GAN prior: ``GANModule`` (training), ``load_prior`` (the attack's entry point).

    from ggl.gan import load_prior, DEFAULT_PRIOR      # = ggl.gan.prior.load_prior
    G = load_prior(DEFAULT_PRIOR, channels=1, image_size=32)
    images = G(z, y)                                   # (N, C, 32, 32) in [0, 1]

Names are resolved lazily so that ``ggl.config`` (which imports ``ggl.gan.schema``) stays light.
"""
from __future__ import annotations

_PRIOR_NAMES = ("load_prior", "DEFAULT_PRIOR", "PriorGenerator", "save_prior", "prior_state", "build_generator")


def __getattr__(name: str):
    if name in _PRIOR_NAMES:
        from ggl.gan import prior

        return getattr(prior, name)
    if name == "GANModule":
        from ggl.gan.module import GANModule

        return GANModule
    raise AttributeError(f"module 'ggl.gan' has no attribute {name!r}")
