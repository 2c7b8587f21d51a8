"""Peeling: the gradient of a batch without the share of the examples already recovered.

A batch's mean loss is a weighted sum of its examples' own losses, and examples of a batch do not interact
(padding masked, no batch statistics), so the batch gradient is ``f g_known + (1 − f) g_rest`` where ``f`` is
the known examples' weight in the mean (their share of the labelled positions, or of the sentences) and
``g_known`` their own mean-loss gradient. What is left, divided by ``1 − f``, is the gradient of the other
examples as a batch of their own: fewer inputs, smaller spans, an easier search.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from nlp_dlg.engine.errors import ConfigError

PEEL_ROUNDING = 1e-5     # a peeled entry this small against the terms it was summed from is rounding: zero


def remove_share(gradients: Mapping[str, torch.Tensor], known: Mapping[str, torch.Tensor],
                 fraction: float) -> dict[str, torch.Tensor]:
    """``(g − fraction · known) / (1 − fraction)`` per parameter of ``gradients``, in float64, returned in float32.

    An entry left at float32 rounding of what was summed (what only the known examples touched, such as their
    tokens' embedding rows) is set to exactly zero, as in a batch that never held them. ``gradients`` is not
    changed. A ``fraction`` of 1 (nothing left that the loss saw) leaves what is left unscaled: rounding, zero."""
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"peeled share: expected a fraction in [0, 1], got {fraction}")
    scale = 1.0 / (1.0 - fraction) if fraction < 1.0 else 1.0
    rest = {}
    for name, g in gradients.items():
        left = g.to(torch.float64, copy=True)        # never the observation itself
        share = known[name].to(left.device).double().mul_(fraction)
        size = left.abs().add_(share.abs())          # the magnitude of what was summed, for the rounding
        left.sub_(share)
        left[left.abs() <= PEEL_ROUNDING * size] = 0.0
        rest[name] = left.mul_(scale).float()
    return rest
