"""The victim: one image-classification training step's gradient, shared as a gradient observation.

The observation holds the gradient of every named parameter (mean cross-entropy over the batch) and what
a participant legitimately shares about it: how to rebuild the model and a checksum of its weights, the
task, the batch size, the input shape, the mode. Never the images or their labels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nlp_dlg.engine.defense import Defense, parse_defense
from nlp_dlg.engine.errors import ConfigError, InputDataError
from nlp_dlg.engine.observation import GradientObservation
from nlp_dlg.engine.victim import defend, shared_metadata
from vision_dlg.task import TASK, image_gradient

__all__ = ["TASK", "VisionBatch", "capture_images", "image_gradient", "observation_metadata"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VisionBatch:
    """Ground truth of one captured batch (kept in memory, never written to a gradient file)."""

    index: int
    images: torch.Tensor    # (B, C, S, S) in [0, 1]
    labels: torch.Tensor    # (B,)


def observation_metadata(model_info: dict[str, Any], *, batch_size: int, batch_index: int, train_mode: bool,
                         defense: Defense | None = None) -> dict[str, Any]:
    """What a participant shares about one image gradient (never the images or their labels)."""
    return shared_metadata(TASK, toolkit="vision_dlg", model_info=model_info, batch_size=batch_size,
                           batch_index=batch_index, train_mode=train_mode, defense=defense)


def capture_images(model: nn.Module, images: torch.Tensor, labels: Sequence[int] | torch.Tensor, *,
                   batch_size: int = 1, model_info: dict[str, Any], train_mode: bool = False,
                   defense: str | None = None, defense_generator: torch.Generator | None = None
                   ) -> list[tuple[GradientObservation, VisionBatch]]:
    """One gradient observation per batch of ``images (N, C, S, S)`` (in input order).

    Args:
        model: the victim classifier.
        images: the private images, floats in [0, 1].
        labels: their classes, ``0 <= label < num_classes``.
        batch_size: images per gradient.
        model_info: :func:`vision_dlg.models.model_metadata` (how the attacker rebuilds the model).
        train_mode: compute the gradient in train mode (batch norm on batch statistics).
        defense: a defence applied before the gradient leaves (:mod:`nlp_dlg.engine.defense`).
        defense_generator: draws the defence's noise (a fresh unpredictable one when None).

    Returns:
        ``(observation, ground_truth)`` per batch; only the observation is meant to be shared.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ConfigError(f"batch_size: expected a positive integer, got {batch_size!r}")
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    if images.ndim != 4:
        raise InputDataError(f"images: expected (N, C, S, S), got shape {tuple(images.shape)}")
    if len(labels) != len(images):
        raise InputDataError(f"labels: expected one per image ({len(images)}), got {len(labels)}")
    classes = int(model_info.get("num_classes", 0))
    bad = [int(v) for v in labels if not 0 <= int(v) < classes]
    if bad:
        raise InputDataError(f"labels: expected integers in [0, {classes}), got {bad[:3]}")
    expected = (model_info.get("channels"), model_info.get("image_size"), model_info.get("image_size"))
    if tuple(images.shape[1:]) != expected:
        raise InputDataError(f"images: expected shape (N, {expected[0]}, {expected[1]}, {expected[2]}), "
                             f"got {tuple(images.shape)}")
    if not bool(torch.isfinite(images).all()):
        raise InputDataError("images: contain NaN or Inf")
    parsed = parse_defense(defense)
    out = []
    for index, start in enumerate(range(0, len(images), batch_size)):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        grads = defend(parsed, image_gradient(model, x, y, train_mode=train_mode), generator=defense_generator,
                       per_example=lambda x=x, y=y: [image_gradient(model, x[i:i + 1], y[i:i + 1],
                                                                    train_mode=train_mode) for i in range(len(x))])
        meta = observation_metadata(model_info, batch_size=len(x), batch_index=index, train_mode=train_mode,
                                    defense=parsed)
        out.append((GradientObservation(grads, meta), VisionBatch(index, x.clone(), y.clone())))
        logger.info("captured batch %d: %d image(s)", index, len(x))
    return out
