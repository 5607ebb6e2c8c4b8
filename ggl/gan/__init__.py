"""The attacker's GAN prior: ``ggl.gan.module.GANModule`` trains it on public data,
``ggl.gan.prior.load_prior`` loads it for the attack, ``ggl.gan.quality`` measures it.

    from ggl.gan.prior import load_prior, DEFAULT_PRIOR
    G = load_prior(DEFAULT_PRIOR, channels=1, image_size=32)
    images = G(z, y)                                   # (N, C, 32, 32) in [0, 1]
"""
