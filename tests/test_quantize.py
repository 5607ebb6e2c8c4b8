"""The quantizer under audit: levels, error bound, unbiasedness, payload size."""
import pytest
import torch

from ggl.defenses.quantize import SCALE_BITS_PER_RANGE, quantize_update


def _update(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 8, generator=g), torch.randn(8, generator=g) * 5, torch.randn(3, 3, 3, generator=g) * 0.01]


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("range_mode", ["global", "per_tensor"])
def test_levels_fit_in_bits(bits, range_mode):
    out, _ = quantize_update(_update(), bits, "nearest", range_mode)
    groups = [torch.cat([t.flatten() for t in out])] if range_mode == "global" else [t.flatten() for t in out]
    for g in groups:
        assert torch.unique(g).numel() <= 2 ** bits


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_nearest_error_at_most_half_a_step(bits):
    tensors = _update(1)
    flat = torch.cat([t.flatten() for t in tensors])
    step = (flat.max() - flat.min()) / (2 ** bits - 1)
    out, _ = quantize_update(tensors, bits, "nearest", "global")
    err = (torch.cat([t.flatten() for t in out]) - flat).abs().max()
    assert err <= step / 2 + 1e-6
    # range ends are representable exactly (the corrected step puts a level on both)
    q = torch.cat([t.flatten() for t in out])
    assert torch.isclose(q.max(), flat.max()) and torch.isclose(q.min(), flat.min())


def test_stochastic_rounding_is_unbiased():
    x = [torch.linspace(-1, 1, 101)]
    gen = torch.Generator().manual_seed(0)
    mean = torch.stack([quantize_update(x, 2, "stochastic", "global", generator=gen)[0][0]
                        for _ in range(4000)]).mean(0)
    step = 2 / 3
    # mean of 4000 Bernoulli draws scaled by `step`: std <= step * 0.5 / sqrt(4000) ~ 0.0053
    assert (mean - x[0]).abs().max() < 0.03
    nearest = quantize_update(x, 2, "nearest", "global")[0][0]
    assert (nearest - x[0]).abs().max() > 0.3 * step  # nearest is biased: the test can tell them apart


def test_stochastic_rounding_is_seeded():
    a = quantize_update(_update(), 3, "stochastic", "global", generator=torch.Generator().manual_seed(5))[0]
    b = quantize_update(_update(), 3, "stochastic", "global", generator=torch.Generator().manual_seed(5))[0]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_payload_bits_counts_codes_and_scales():
    tensors = _update()
    n = sum(t.numel() for t in tensors)
    assert quantize_update(tensors, 4, "nearest", "global")[1] == 4 * n + SCALE_BITS_PER_RANGE
    assert quantize_update(tensors, 4, "nearest", "per_tensor")[1] == 4 * n + 3 * SCALE_BITS_PER_RANGE
    out, bits = quantize_update(tensors, 32)
    assert bits == 32 * n and all(torch.equal(a, b) for a, b in zip(out, tensors))


def test_constant_tensor_is_kept():
    out, _ = quantize_update([torch.full((5,), 0.25)], 2, "nearest", "per_tensor")
    assert torch.equal(out[0], torch.full((5,), 0.25))


# ------------------------------------------------------------------------------ the seed's grid
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_seed_grid_has_2_pow_bits_plus_one_levels_and_reproduces_the_formula(bits):
    from ggl.defenses.quantize import code_bits

    x = torch.linspace(-1.0, 3.0, 4097, dtype=torch.float64)  # dense enough to hit every level
    out, payload = quantize_update([x], bits, "nearest", "global", grid="seed")
    assert torch.unique(out[0]).numel() == 2 ** bits + 1  # one more level than `bits` bits carry
    lo, hi = -1.0, 3.0
    step = (hi - lo) / 2 ** bits  # the seed's formula, written out
    expected = torch.round((x - lo) / step) * step + lo
    assert torch.allclose(out[0], expected, rtol=0, atol=1e-12)
    assert code_bits(bits, "seed") == bits + 1  # ceil(log2(2**bits + 1)): stated honestly
    assert payload == (bits + 1) * x.numel() + SCALE_BITS_PER_RANGE
    # the project default keeps exactly 2**bits levels and `bits` bits
    default, default_bits = quantize_update([x], bits, "nearest", "global")
    assert torch.unique(default[0]).numel() == 2 ** bits and default_bits == bits * x.numel() + SCALE_BITS_PER_RANGE


def test_seed_grid_is_a_config_key_with_its_own_label():
    from ggl.defenses import parse_defense
    from ggl.core.errors import ConfigError

    q = parse_defense({"name": "quantize", "bits": 8, "grid": "seed"}, "defenses[0]")
    assert q.label == "q8-seedgrid" and parse_defense({"name": "quantize", "bits": 8}, "d").label == "q8"
    with pytest.raises(ConfigError, match=r"defenses\[0\]\.grid"):
        parse_defense({"name": "quantize", "grid": "paper"}, "defenses[0]")
