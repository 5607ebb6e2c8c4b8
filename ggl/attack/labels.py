"""Label inference from the last layer's update (the attacker's first step).

For ``logits = W h + b`` under cross-entropy, ``db_i = p_i - [i == y]`` and ``dW_i = (p_i - [i == y]) h``:
with non-negative features ``h`` (sigmoid, ReLU) only the true label's row is negative.

* batch 1 — iDLG (Zhao et al., 2020): the row whose sum is the most negative;
* batch > 1 — count-based (after LLG, Wainakh et al., 2022): ``n_i ~= B (mean p_i - db_i)``, the mean
  softmax ``p`` from the observed model on probe images drawn from the prior (uniform without probes);
  counts rounded to sum to ``B``, each class with a negative signal keeping one image; without a bias,
  the weight-row sums with the mean feature sum. A weight delta (``~ -lr * steps * gradient``) is
  rescaled by that factor first. Quantized updates keep the sign structure well enough at 2-4 bits.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from ggl.attack.observation import Observation


def last_layer(obs: Observation) -> Tuple[Tensor, Optional[Tensor]]:
    """(weight update (classes, features), bias update (classes,) or None) of the last linear layer."""
    w_idx = max((i for i, t in enumerate(obs.update) if t.dim() == 2 and t.shape[0] == obs.num_classes),
                default=None)
    if w_idx is None:
        raise ValueError(f"no last linear layer with {obs.num_classes} rows in the update")
    w = obs.update[w_idx].float()
    b = None
    if w_idx + 1 < len(obs.update):
        cand = obs.update[w_idx + 1]
        if cand.dim() == 1 and cand.shape[0] == obs.num_classes:
            b = cand.float()
    return w, b


def _gradient_scale(obs: Observation) -> float:
    """update ~= scale * (gradient of the first step); 1 for a gradient, ~ -lr * effective steps for a delta."""
    if obs.kind == "gradient":
        return 1.0
    m, k = obs.momentum, max(1, obs.local_steps)
    eff = sum((1 - m ** (t + 1)) / (1 - m) if m > 0 else 1.0 for t in range(k))
    return -obs.lr * eff


def infer_labels(obs: Observation, model: Optional[nn.Module] = None,
                 probes: Optional[Tensor] = None) -> Tensor:
    """The labels of the ``obs.batch_size`` images behind an update (sorted for batch > 1)."""
    w, b = last_layer(obs)
    scale = _gradient_scale(obs)
    w, b = w / scale, (b / scale if b is not None else None)
    if obs.batch_size == 1:
        score = w.sum(1) + (b if b is not None else 0.0)
        return score.argmin().view(1)
    return _count_based(w, b, obs.batch_size, model, probes)


@torch.no_grad()
def _probe_stats(model: Optional[nn.Module], probes: Optional[Tensor], num_classes: int) -> Tuple[Tensor, Tensor, Tensor]:
    """(mean softmax p (C,), mean p_i * feature-sum (C,), mean feature-sum ()) over the probe images."""
    if model is None or probes is None or len(probes) == 0:
        p = torch.full((num_classes,), 1.0 / num_classes)
        return p, p.clone(), torch.tensor(1.0)
    feats: List[Tensor] = []
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    handle = last.register_forward_hook(lambda mod, inp, out: feats.append(inp[0].detach()))
    try:
        probs = torch.softmax(model(probes).float(), dim=1)
    finally:
        handle.remove()
    s = feats[0].flatten(1).sum(1)
    return probs.mean(0), (probs * s[:, None]).mean(0), s.mean()


def _count_based(w: Tensor, b: Optional[Tensor], batch: int, model, probes) -> Tensor:
    num_classes = w.shape[0]
    p_mean, ps_mean, s_mean = _probe_stats(model, probes, num_classes)
    if b is not None:
        signal = b                                   # = mean_b p_bi - n_i / B
        est = batch * (p_mean - signal)
    else:
        signal = w.sum(1)                            # ~= mean_b p_bi s_b - n_i s / B
        est = batch * (ps_mean - signal) / s_mean.clamp_min(1e-12)
    est = est.clamp_min(0)
    counts = torch.floor(est).long()
    present = signal < 0
    counts = torch.where(present & (counts == 0), torch.ones_like(counts), counts)
    remainder = est - counts.float()
    while counts.sum() < batch:                      # largest remainder first
        i = int(remainder.argmax())
        counts[i] += 1
        remainder[i] -= 1.0
    while counts.sum() > batch:                      # drop the weakest evidence first
        floor = torch.where(present, 1, 0)
        if not bool((counts > floor).any()):
            floor = torch.zeros_like(floor)
        cand = torch.where(counts > floor, est - counts.float(), torch.full_like(est, float("inf")))
        i = int(cand.argmin())
        counts[i] -= 1
    return torch.repeat_interleave(torch.arange(num_classes), counts)
