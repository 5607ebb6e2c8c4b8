"""What a search can hold: its peak memory estimated from the shapes, against the memory free now.

One candidate of a batched evaluation holds its images, the model's activations for them (kept for the
per-candidate backward) and its trial update (the model's parameters: the update, the defence's copy and
the loss's temporary); a search that needs gradients (Adam, pixel-space attacks: double backprop) keeps
the graph of all that too. ``free_bytes``: ``torch.cuda.mem_get_info`` on a GPU, MemAvailable of
/proc/meminfo (else the free pages) on a CPU; a search may use ``SHARE`` of it. Without gradients the objective evaluates a population
in chunks that fit; with them a search that would not fit is refused in one line naming the key and the
largest value that fits (``check_fits``).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ggl.core.errors import ConfigError

SHARE = 0.5             # of the free memory one search may plan to use
GRAPH_FACTOR = 3        # a double-backprop evaluation keeps ~3x the tensors of a no-grad one
UPDATE_COPIES = 3       # trial update, the defence's output, the loss's difference


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def activation_numel(model: nn.Module, shape: tuple, device: torch.device) -> int:
    """Elements of every leaf module's output on one input of ``shape`` (B, C, H, W)."""
    total = [0]

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            total[0] += output.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        dtype = next(model.parameters()).dtype
        with torch.no_grad():
            model(torch.zeros(shape, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    return total[0]


def candidate_bytes(update_numel: int, image_numel: int, activations: int, element: int, grad: bool) -> int:
    """Peak bytes one candidate adds to a batched evaluation."""
    per = element * (UPDATE_COPIES * update_numel + 2 * activations + 2 * image_numel)
    return per * (GRAPH_FACTOR if grad else 1)


def fitting(per_candidate: int, device: torch.device) -> int:
    """How many candidates of ``per_candidate`` bytes one evaluation may hold at once."""
    return int(SHARE * free_bytes(device)) // max(1, per_candidate)


def check_fits(rows: int, per_candidate: int, device: torch.device, key: str, value: object = None) -> None:
    """Refuse, in one line naming ``key`` (= ``value``, default ``rows``), a search of ``rows`` candidates
    in one batch that will not fit."""
    most = fitting(per_candidate, device)
    if rows > most:
        free = free_bytes(device)
        fits = f"at most {most} fit" if most else "not even one candidate fits: lower it"
        raise ConfigError(f"config key '{key}' = {rows if value is None else value} needs about "
                          f"{rows * per_candidate / 2**30:.1f} GiB for its search ({per_candidate / 2**20:.1f} MiB "
                          f"per candidate), more than half the {free / 2**30:.1f} GiB free on {device.type}; {fits}")
