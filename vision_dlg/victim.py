"""The victim: one image-classification training step's gradient, shared as a gradient observation.

The observation holds the gradient of every named parameter (mean cross-entropy over the batch) and what
a participant legitimately shares about it: how to rebuild the model and a checksum of its weights, the
task, the batch size, the input shape, the mode. Never the images or their labels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nlp_dlg import __version__
from nlp_dlg.engine.defense import Defense, parse_defense
from nlp_dlg.engine.errors import ConfigError, InputDataError
from nlp_dlg.engine.observation import GradientObservation

logger = logging.getLogger(__name__)

TASK = "image-classification"


@dataclass(frozen=True)
class VisionBatch:
    """Ground truth of one captured batch (kept in memory, never written to a gradient file)."""

    index: int
    images: torch.Tensor    # (B, C, S, S) in [0, 1]
    labels: torch.Tensor    # (B,)


@contextmanager
def victim_mode(model: nn.Module, *, train: bool) -> Iterator[None]:
    """Run ``model`` in the victim's mode: ``train`` puts batch norm on the batch's statistics, as in a
    training step, else eval. Forward passes in train mode move batch norm's running statistics: the buffers
    and the mode are restored on exit, so the weights (and their checksum) stay those the file names."""
    was_training = model.training
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model.train(train)
    try:
        yield
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])


def image_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                   train_mode: bool = False) -> dict[str, torch.Tensor]:
    """Gradients of the mean cross-entropy of ``model`` on ``images (B, C, S, S)`` with ``labels (B,)``,
    per named parameter. The model's mode and buffers are restored (:func:`victim_mode`)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with victim_mode(model, train=train_mode):
        loss = F.cross_entropy(model(images), labels)
        grads = torch.autograd.grad(loss, [p for _, p in named])
    return {n: g.detach().clone() for (n, _), g in zip(named, grads)}


def contrast_sensitivity(model: nn.Module, image_shape: tuple[int, int, int], batch_size: int, num_classes: int,
                         *, train_mode: bool, seed: int = 0) -> float:
    """How much the gradient sees a batch's contrast: ``|g(x/2) - g(x)| / |g(x') - g(x)|`` for random batches
    ``x``, ``x'`` in [0.25, 0.75] and random labels (L2 over every parameter's gradient).

    Near 0 where batch norm on the batch's statistics follows a bias-free first layer (a train-mode ResNet-20:
    5.5e-4 to 1.1e-3 at 16x16 and 32x32, batches 1 to 8; its eval mode and LeNet: 0.62 to 2.1;
    ``benchmarks/bench_contrast.py``): the attacker's prior must then not act on the contrast, which the
    matching cannot hold. Runs in the victim's mode (:func:`victim_mode`); draws from its own generator,
    seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    x, other = (0.25 + 0.5 * torch.rand(2, batch_size, *image_shape, generator=generator)).unbind(0)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
    base, halved, moved = (image_gradient(model, batch, labels, train_mode=train_mode) for batch in (x, x / 2, other))

    def gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
        return math.sqrt(sum(float((a[n] - b[n]).double().pow(2).sum()) for n in a))

    return gap(halved, base) / max(gap(moved, base), torch.finfo(torch.float64).tiny)


def observation_metadata(model_info: dict[str, Any], *, batch_size: int, batch_index: int, train_mode: bool,
                         defense: Defense | None = None) -> dict[str, Any]:
    """What a participant shares about one image gradient (never the images or their labels)."""
    return {"toolkit": "vision_dlg", "toolkit_version": __version__, "task": TASK, "model": model_info,
            "batch_size": batch_size, "batch_index": batch_index, "loss_reduction": "mean",
            "mode": "train" if train_mode else "eval", "defense": None if defense is None else defense.metadata()}


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
    if parsed is not None and defense_generator is None:
        defense_generator = torch.Generator()
        defense_generator.seed()
    out = []
    for index, start in enumerate(range(0, len(images), batch_size)):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        grads = image_gradient(model, x, y, train_mode=train_mode)
        if parsed is not None:
            per_example = ([image_gradient(model, x[i:i + 1], y[i:i + 1], train_mode=train_mode) for i in range(len(x))]
                           if parsed.needs_per_example else None)
            grads = parsed.apply(grads, generator=defense_generator, per_example=per_example)
        meta = observation_metadata(model_info, batch_size=len(x), batch_index=index, train_mode=train_mode,
                                    defense=parsed)
        out.append((GradientObservation(grads, meta), VisionBatch(index, x.clone(), y.clone())))
        logger.info("captured batch %d: %d image(s)", index, len(x))
    return out
