"""Which parameters sit at the bottom of a network: its input layers and its first K repeated blocks.

Gradient matching needs the gradients of the parameters it compares, and each one it compares costs its
part of the distance and of the double backward. The parameters below the first blocks see the input
most directly; a stack of repeated blocks (a transformer's layers, a ResNet's stages) is found as the
``nn.ModuleList`` holding the most parameters, so no architecture's parameter names are assumed.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from nlp_dlg.engine.errors import ConfigError


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """``(name, list)`` of the model's largest ``nn.ModuleList`` by parameter count, or None when it has none."""
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        return None
    return max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))


def leading_parameters(model: nn.Module, params: Mapping[str, torch.Tensor],
                       blocks: int | None) -> dict[str, torch.Tensor]:
    """The entries of ``params`` (named as in ``model.named_parameters()``) registered before the model's block
    list or inside its first ``blocks`` blocks, in order; everything after the blocks (final norms, heads) is
    left out. ``blocks=None``: ``params`` unchanged."""
    if blocks is None:
        return dict(params)
    if blocks < 0:
        raise ConfigError(f"blocks: expected a non-negative integer or None, got {blocks!r}")
    found = block_list(model)
    if found is None:
        raise ConfigError("the model has no list of repeated blocks (nn.ModuleList): match every parameter")
    prefix, layers = found
    kept = {f"{prefix}.{i}." for i in range(min(blocks, len(layers)))}
    order = [name for name, _ in model.named_parameters()]
    first_block = next(i for i, name in enumerate(order) if name.startswith(prefix + "."))
    keep = set(order[:first_block]) | {n for n in order if any(n.startswith(k) for k in kept)}
    chosen = {n: p for n, p in params.items() if n in keep}
    if not chosen:
        raise ConfigError(f"no matched parameter below block {blocks} of {prefix!r}")
    return chosen
