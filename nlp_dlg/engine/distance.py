"""Distances between a dummy gradient and the observed one, summed over all matched tensors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from nlp_dlg.engine.config import DISTANCES
from nlp_dlg.engine.errors import ConfigError

__all__ = ["CERTIFY_DISTANCE", "DISTANCES", "certificate_distance", "gradient_distance"]


def gradient_distance(
    dummy: Sequence[torch.Tensor],
    target: Sequence[torch.Tensor],
    kind: str = "l2",
    *,
    l1_weight: float = 1e-2,
) -> torch.Tensor:
    """Distance between two lists of gradient tensors.

    * ``l2``: ``Σ ||g' − g||²`` over every tensor (the paper's ``D``).
    * ``cosine``: ``1 − <g', g> / (|g'| |g|)`` on all tensors flattened into one vector
      (Inverting Gradients, LAMP); insensitive to the gradient's scale.
    * ``l2+l1``: ``Σ ||g' − g||² + l1_weight · Σ |g' − g|`` (TAG).
    * ``layer-l2``: ``Σ ||g' − g||² / ||g||²`` per tensor: every tensor weighs the same, however small its
      gradient (deep sigmoid networks pass ~1e-7 of the gradient to their first layers, which plain L2 and
      cosine then ignore).

    Returns a 0-dim tensor differentiable w.r.t. ``dummy``.
    """
    if len(dummy) != len(target):
        raise ConfigError(f"expected as many dummy as target gradients, got {len(dummy)} and {len(target)}")
    if not dummy:
        raise ConfigError("expected at least one gradient tensor to match, got none")
    if kind == "l2":
        return torch.stack([((a - b) ** 2).sum() for a, b in zip(dummy, target)]).sum()
    if kind == "cosine":
        dot = torch.stack([(a * b).sum() for a, b in zip(dummy, target)]).sum()
        na = torch.stack([(a * a).sum() for a in dummy]).sum()
        nb = torch.stack([(b * b).sum() for b in target]).sum()
        return 1.0 - dot / (na.sqrt() * nb.sqrt()).clamp_min(1e-20)
    if kind == "l2+l1":
        l2 = torch.stack([((a - b) ** 2).sum() for a, b in zip(dummy, target)]).sum()
        l1 = torch.stack([(a - b).abs().sum() for a, b in zip(dummy, target)]).sum()
        return l2 + l1_weight * l1
    if kind == "layer-l2":
        return torch.stack([((a - b) ** 2).sum() / (b * b).sum().clamp_min(1e-30)
                            for a, b in zip(dummy, target)]).sum()
    raise ConfigError(f"distance: expected one of {', '.join(DISTANCES)}, got {kind!r}")


CERTIFY_DISTANCE = 1e-4  # cosine distance between a guess's own gradient and the observed one: exact


def certificate_distance(guess: Mapping[str, torch.Tensor], observed: Mapping[str, torch.Tensor]) -> float:
    """The cosine distance between a guess's own gradient and the observed one, over the tensors the observation
    holds (a guess below :data:`CERTIFY_DISTANCE` gives the observed gradient back: it is certified)."""
    names = [n for n in observed if n in guess]
    return float(gradient_distance([guess[n] for n in names], [observed[n] for n in names], "cosine"))
