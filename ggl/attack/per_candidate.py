"""Per-candidate FedSGD gradients in one ordinary backward pass (no ``vmap``), for plain conv nets.

``vmap(grad(loss))`` computes a convolution's per-candidate weight gradient as a grouped convolution, a
slow CPU kernel for the attacked nets' small layers. Without batch statistics candidates do not
interact, so one batched forward and backward of the summed loss gives each candidate's own ``delta``
at every layer's output, and candidate p's weight gradient is its input patches (a strided view) times
``delta``: one ``bmm`` per layer. The same numbers in another summation order; ``evaluation: batched``
uses it where ``supports(model)`` holds (LeNet, the CNN), ``vmap`` elsewhere (ResNet's GroupNorm,
local-update probes); differentiable in the images, so the Adam phase uses it too. ``factored=True``
leaves linear layers' weight gradients as factors (``OuterSum``: ``delta^T @ inputs``) for a loss that
needs only inner products and norms (the matching losses without a defence to replay).
"""
from __future__ import annotations

import copy
import functools
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# parameter-free modules that act on each image alone
_PER_IMAGE = (nn.Sigmoid, nn.ReLU, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Softplus, nn.MaxPool2d,
              nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity)


def supports(model: nn.Module) -> bool:
    """Whether every parameter lives in a plain Conv2d or Linear and every other module acts per image."""
    if any(True for _ in model.buffers()):
        return False
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
                return False
        elif isinstance(module, nn.Linear) or isinstance(module, _PER_IMAGE):
            continue
        elif list(module.parameters(recurse=False)) or not list(module.children()):
            return False  # a parametrised layer it does not know, or an unknown leaf
    return True


class PerCandidateGradients:
    """``(x (P, B, C, H, W), y (B,)) -> per-candidate gradients of the mean cross-entropy, each (P, *shape)``."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        if next(model.parameters()).device.type == "cpu":
            # a channels-last copy (the model is fixed for an observation): oneDNN's faster layout for these
            # convolutions and poolings, and the patches below come out of it without a layout copy
            # (the gain: benchmarks/README.md)
            model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        self.model = model
        self.layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        by_id = {id(p): n for n, p in model.named_parameters()}
        self.names = list(names)
        self._param_names = {id(m): (by_id[id(m.weight)], by_id[id(m.bias)] if m.bias is not None else None)
                             for m in self.layers}

    def __call__(self, x: Tensor, y: Tensor, factored: bool = False) -> Optional[Tuple[Tensor, ...]]:
        """The gradients (linear weights' as ``OuterSum`` when ``factored``); None when the forward did not
        call every layer exactly once (a layer applied twice or skipped has no one input per candidate:
        the caller then uses ``vmap``)."""
        p, b = x.shape[:2]
        outer = torch.is_grad_enabled() and x.requires_grad
        seen: List[Tuple[nn.Module, Tensor, Tensor]] = []
        hooks = [m.register_forward_hook(lambda m, inp, out: seen.append((m, inp[0], out))) for m in self.layers]
        try:
            with torch.enable_grad():
                flat = x.flatten(0, 1)
                if not flat.requires_grad:
                    flat = flat.detach().requires_grad_(True)
                logits = self.model(flat)
        finally:
            for h in hooks:
                h.remove()
        if sorted(id(m) for m, _, _ in seen) != sorted(id(m) for m in self.layers):
            return None
        with torch.enable_grad():
            # each candidate's loss is the mean over its B images, as the client's
            loss = F.cross_entropy(logits, y.repeat(p), reduction="sum") / b
            deltas = torch.autograd.grad(loss, [out for _, _, out in seen], create_graph=outer)
        grads: Dict[str, Tensor] = {}
        for (layer, inp, _), delta in zip(seen, deltas):
            w_name, b_name = self._param_names[id(layer)]
            if not outer:
                inp = inp.detach()
            if isinstance(layer, nn.Conv2d):
                grads[w_name], bias = _conv_grads(layer, inp, delta, p, b)
            else:
                grads[w_name], bias = _linear_grads(inp, delta, p, factored)
            if b_name is not None:
                grads[b_name] = bias
        return tuple(grads[n] for n in self.names)


class OuterSum:
    """P weight gradients ``delta[p]^T @ inputs[p]`` (each (out, in)) kept as their factors, delta (P, R, out)
    and inputs (P, R, in), R = the rows the layer saw per candidate. What a matching loss needs of them
    comes from R x R Gram matrices and one product with the target, in float64: ``|t|^2 - 2 <t, g> + |g|^2``
    cancels where t is close to g, which is where the search goes."""

    def __init__(self, delta: Tensor, inputs: Tensor):
        self.delta, self.inputs = delta, inputs
        self.dtype = delta.dtype

    def dense(self) -> Tensor:
        """The gradients themselves, (P, out, in)."""
        return torch.bmm(self.delta.transpose(1, 2), self.inputs)

    @functools.cached_property
    def _float64(self) -> Tuple[Tensor, Tensor]:
        """delta and inputs in float64, converted once for ``inner`` and ``sq_norm``."""
        return self.delta.double(), self.inputs.double()

    def inner(self, target: Tensor) -> Tensor:
        """(P,) float64 <t_p, target> for a target (out, in)."""
        d, a = self._float64
        return ((a @ target.to(torch.float64).T) * d).sum((1, 2))  # a @ target^T: (P, R, out)

    def sq_norm(self) -> Tensor:
        """(P,) float64 |t_p|^2 = sum of (delta delta^T) * (inputs inputs^T)."""
        d, a = self._float64
        return (d @ d.transpose(1, 2) * (a @ a.transpose(1, 2))).sum((1, 2))


def _linear_grads(inp: Tensor, delta: Tensor, p: int, factored: bool = False) -> Tuple[Tensor, Tensor]:
    a = inp.reshape(p, -1, inp.shape[-1])          # (P, B * rows, in)
    d = delta.reshape(p, -1, delta.shape[-1])      # (P, B * rows, out)
    weight = OuterSum(d, a)
    return (weight if factored else weight.dense()), d.sum(1)


def _conv_grads(conv: nn.Conv2d, inp: Tensor, delta: Tensor, p: int, b: int) -> Tuple[Tensor, Tensor]:
    (ph, pw), (sh, sw), (dh, dw), (kh, kw) = conv.padding, conv.stride, conv.dilation, conv.kernel_size
    n, c_in = inp.shape[:2]
    c_out, ho, wo = delta.shape[1:]
    d = delta.reshape(p, b, c_out, ho * wo).transpose(1, 2).reshape(p, c_out, b * ho * wo)
    # the patches, copied out of a strided view of the padded input; the copy is fastest with the longer
    # contiguous run: a patch row (kw taps x channels, channels-last) or an output row (wo, channels-first)
    channels_last = kw * c_in > wo
    padded = F.pad(inp, (pw, pw, ph, ph))
    padded = padded.contiguous(memory_format=torch.channels_last) if channels_last else padded.contiguous()
    s_n, s_c, s_h, s_w = padded.stride()
    if channels_last and sh == 1 and b == 1:
        # stride 1: tap row i of output row u reads padded row u + i * dh, so the rows of patches differ only
        # by a shift: copy each padded row's patches once (rows[n, r, v, j, c] = padded[n, c, r, v * sw + j * dw],
        # a third of the full patches' size on LeNet) and take tap row i as a slice, one product per tap row
        rows = padded.as_strided((n, padded.shape[2], wo, kw, c_in), (s_n, s_h, s_w * sw, s_w * dw, s_c))
        rows = rows.reshape(p, -1, kw * c_in)
        grad_w = torch.stack([torch.bmm(d, rows[:, i * dh * wo:(i * dh + ho) * wo]) for i in range(kh)], 2)
        grad_w = grad_w.view(p, c_out, kh, kw, c_in).permute(0, 1, 4, 2, 3)
    elif channels_last:  # patches[n, u, v, i, j, c] = padded[n, c, u * sh + i * dh, v * sw + j * dw]
        patches = padded.as_strided((n, ho, wo, kh, kw, c_in), (s_n, s_h * sh, s_w * sw, s_h * dh, s_w * dw, s_c))
        patches = patches.reshape(p, b * ho * wo, kh * kw * c_in)
        grad_w = torch.bmm(d, patches).view(p, c_out, kh, kw, c_in).permute(0, 1, 4, 2, 3)
    else:  # patches[n, c, i, j, u, v], the same entries
        patches = padded.as_strided((n, c_in, kh, kw, ho, wo), (s_n, s_c, s_h * dh, s_w * dw, s_h * sh, s_w * sw))
        patches = patches.reshape(p, b, c_in * kh * kw, ho * wo).transpose(1, 2).reshape(p, c_in * kh * kw, -1)
        grad_w = torch.bmm(d, patches.transpose(1, 2)).view(p, *conv.weight.shape)
    return grad_w, d.sum(2)
