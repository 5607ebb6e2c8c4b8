"""Soteria (Sun et al., CVPR 2021): prune the gradient of the representation layer (``{name: soteria}``).

The representation r is the input of one linear layer (``layer``; default: the model's last linear
layer, whose input is the penultimate representation). On the client's own data X, feature f gets the
score ||r_f|| / ||dr_f/dX||, the paper's measure of how much perturbing f changes a reconstruction
(norms over the client's batch; official code sums per-image ratios). The ``percent``% features with
the largest scores, floor(percent / 100 * F) of them, are pruned: their columns of that layer's
weight update are zeroed. The rest of the update is sent unchanged and in the same format (bits
unchanged). A feature whose r and dr/dX are both zero (dead) scores 0.

The adaptive attacker uses the observed mask, as official GGL does against Soteria.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ggl.defenses.base import Defense, check_percent, observed_mask, register, share_count
from ggl.core.errors import ConfigError, UserError


def linear_layers(model: nn.Module) -> List[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def representation_layer(model: nn.Module, layer: Optional[str], key: str) -> str:
    names = linear_layers(model)
    if layer is None and names:
        return names[-1]
    if layer not in names:
        raise ConfigError(f"config key '{key}.layer' = {layer!r} is not a linear layer of the model "
                          f"(linear layers: {', '.join(names) or 'none'})")
    return layer


def soteria_scores(model: nn.Module, params: Dict[str, Tensor], x: Tensor, layer: str) -> Tensor:
    """(F,) ||r_f|| / ||dr_f/dX|| of the input r (B, F) of ``layer`` over the batch x (B, C, H, W)."""
    captured = {}
    hook = dict(model.named_modules())[layer].register_forward_pre_hook(
        lambda module, args: captured.__setitem__("r", args[0]))
    x = x.detach().to(next(iter(params.values())).dtype).requires_grad_(True)
    try:
        with torch.enable_grad():
            functional_call(model, ({k: v.detach() for k, v in params.items()}, dict(model.named_buffers())), (x,))
    finally:
        hook.remove()
    r = captured["r"].reshape(x.shape[0], -1)
    grad_sq = torch.empty(r.shape[1], dtype=r.dtype, device=r.device)
    for f in range(r.shape[1]):  # one backward pass per feature (measured faster than batching them)
        # d(sum_b r[b, f]) / dx: image b only moves its own r[b, f], so this holds every image's gradient
        (g,) = torch.autograd.grad(r[:, f].sum(), x, retain_graph=True)
        grad_sq[f] = g.pow(2).sum()
    r_norm, g_norm = r.detach().norm(dim=0), grad_sq.sqrt()
    inf = torch.full_like(r_norm, float("inf"))
    return torch.where(g_norm > 0, r_norm / g_norm.clamp_min(1e-300), torch.where(r_norm > 0, inf, 0 * r_norm))


def soteria_keep(scores: Tensor, percent: float) -> Tensor:
    """(F,) bool: False for the floor(percent/100 * F) largest scores (ties: the lower index first)."""
    k = share_count(percent, scores.numel())
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep[order[:k]] = False
    return keep


@register
class Soteria(Defense):
    """``percent``: share of the representation's features pruned, in [0, 100); ``layer``: the linear
    layer whose input is the representation (a module name such as ``classifier.3``; null = the last)."""
    name: str = "soteria"
    percent: float = 60.0
    layer: Optional[str] = None

    norm_preserving = True

    def check(self, key: str) -> None:
        check_percent(key, self.percent)

    @property
    def label(self) -> str:
        return f"soteria{self.percent:g}" + (f"-{self.layer}" if self.layer else "")

    def setup(self, model, key):
        representation_layer(model, self.layer, key)  # a wrong layer fails before training, not per client
        return None

    def transform(self, tensors, update):
        data = getattr(update, "private", None)
        if data is None:
            raise UserError("defence 'soteria' needs the client's data (ClientUpdate.private), which "
                            "ggl.fl.client.train_client attaches; build the update with it")
        layer = representation_layer(data.model, self.layer, "soteria")
        i = list(update.names).index(f"{layer}.weight")
        if share_count(self.percent, tensors[i].shape[1]) == 0:
            return list(tensors), None
        keep = soteria_keep(soteria_scores(data.model, data.params, data.x, layer), self.percent)
        out = list(tensors)
        out[i] = tensors[i] * keep.to(device=tensors[i].device, dtype=tensors[i].dtype)[None, :]
        return out, None

    def attack_model(self):
        return observed_mask()
