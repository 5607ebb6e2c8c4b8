"""The batched search's copy of the generator: the same function with cheaper CPU kernels.

Three swaps, each the same arithmetic in another order (the gains: ``benchmarks/README.md``):

* a transposed convolution to few channels (the image layer: 32 -> 1) as one matmul and a ``fold``;
* the other transposed convolutions on channels-last inputs (oneDNN's faster layout for them);
* an eval-mode (conditional) batch norm folded into one per-class scale and shift (one ``addcmul``).

Only CPU copies change; on a GPU the generator is used as it is. The one-at-a-time reference loop
(``evaluation: loop``) keeps the original generator, so the batched-vs-loop test checks these kernels
too (in float64, where both orders agree to ~1e-15). Modules this file does not know stay untouched.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ggl.models.gan import ConditionalBatchNorm2d

# out_channels up to which the matmul + fold form beats PyTorch's kernel (measured: benchmarks/README.md)
FOLD_MAX_OUT_CHANNELS = 4


def for_batched_search(generator: nn.Module, device: torch.device) -> nn.Module:
    """A copy of a frozen, eval-mode ``generator`` with the swaps above (the generator itself on a GPU)."""
    if torch.device(device).type != "cpu" or generator.training:
        return generator
    fast = copy.deepcopy(generator)
    for parent in list(fast.modules()):
        for name, child in list(parent.named_children()):
            swapped = _swap(child)
            if swapped is not None:
                setattr(parent, name, swapped)
    return fast


def _swap(module: nn.Module):
    if isinstance(module, nn.ConvTranspose2d) and _plain(module):
        return _FoldConvTranspose2d(module) if module.out_channels <= FOLD_MAX_OUT_CHANNELS \
            else _ChannelsLast(module)
    if isinstance(module, ConditionalBatchNorm2d) and module.bn.running_var is not None:
        return _FoldedConditionalNorm(module)
    return None


def _plain(conv: nn.ConvTranspose2d) -> bool:
    return conv.groups == 1 and conv.padding_mode == "zeros" and not any(conv.output_padding)


class _FoldConvTranspose2d(nn.Module):
    """conv_transpose2d as matmul (input channels -> output channels x kernel taps) + fold."""

    def __init__(self, conv: nn.ConvTranspose2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        c = self.conv
        n, _, h, w = x.shape
        kh, kw = c.kernel_size
        out_hw = [(size - 1) * s - 2 * p + d * (k - 1) + 1
                  for size, s, p, d, k in zip((h, w), c.stride, c.padding, c.dilation, (kh, kw))]
        cols = torch.matmul(c.weight.flatten(1).t(), x.reshape(n, x.shape[1], h * w))
        out = F.fold(cols, out_hw, (kh, kw), dilation=c.dilation, padding=c.padding, stride=c.stride)
        return out if c.bias is None else out + c.bias.view(1, -1, 1, 1)


class _ChannelsLast(nn.Module):
    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.contiguous(memory_format=torch.channels_last))


class _FoldedConditionalNorm(nn.Module):
    """Eval-mode (conditional) batch norm as x * scale[y] + shift[y]."""

    def __init__(self, norm: ConditionalBatchNorm2d):
        super().__init__()
        bn = norm.bn
        with torch.no_grad():
            inv_std = torch.rsqrt(bn.running_var + bn.eps)
            gain = bn.weight if bn.affine else torch.ones_like(inv_std)
            bias = bn.bias if bn.affine else torch.zeros_like(inv_std)
            scale, shift = (gain * inv_std)[None], (bias - bn.running_mean * gain * inv_std)[None]
            if norm.num_classes:  # h = bn(x) * g[y] + b[y]
                scale, shift = scale * norm.gain.weight, shift * norm.gain.weight + norm.bias.weight
        self.conditional = bool(norm.num_classes)
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: Tensor, y=None) -> Tensor:
        scale = self.scale[y] if self.conditional else self.scale
        shift = self.shift[y] if self.conditional else self.shift
        return torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None])
