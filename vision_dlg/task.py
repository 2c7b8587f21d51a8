"""The image-classification task itself, shared by the victim (who computes the gradient) and the attacker
(who recomputes it on a guess, and probes what the gradient can see): mean cross-entropy over the batch, in the
victim's mode. Neither side imports the other; both import this."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nlp_dlg.engine.device import model_device, rand, randint
from nlp_dlg.engine.victim import loss_gradients, model_mode

TASK = "image-classification"
victim_mode = model_mode  # the name the vision modules have always used


def image_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                   train_mode: bool = False) -> dict[str, torch.Tensor]:
    """Gradients of the mean cross-entropy of ``model`` on ``images (B, C, S, S)`` with ``labels (B,)``, per named
    trainable parameter, on the model's device. The model's mode and buffers are restored."""
    device = model_device(model)
    images, labels = images.to(device), labels.to(device)
    return loss_gradients(model, lambda: F.cross_entropy(model(images), labels), train_mode=train_mode,
                          trainable_only=True)


def contrast_sensitivity(model: nn.Module, image_shape: tuple[int, int, int], batch_size: int, num_classes: int,
                         *, train_mode: bool, seed: int = 0) -> float:
    """How much the gradient sees a batch's contrast: ``|g(x/2) - g(x)| / |g(x') - g(x)|`` for random batches
    ``x``, ``x'`` in [0.25, 0.75] and random labels (L2 over every parameter's gradient).

    Near 0 where batch norm on the batch's statistics follows a bias-free first layer (a train-mode ResNet-20:
    5.5e-4 to 1.1e-3 at 16x16 and 32x32, batches 1 to 8; its eval mode and LeNet: 0.62 to 2.1;
    ``benchmarks/bench_contrast.py``): the attacker's prior must then not act on the contrast, which the
    matching cannot hold. Runs in the victim's mode; draws on the CPU from its own generator, seeded with
    ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    device = model_device(model)
    x, other = (0.25 + 0.5 * rand(2, batch_size, *image_shape, generator=generator, device=device)).unbind(0)
    labels = randint(num_classes, batch_size, generator=generator, device=device)
    base, halved, moved = (image_gradient(model, batch, labels, train_mode=train_mode) for batch in (x, x / 2, other))

    def gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
        return math.sqrt(sum(float((a[n] - b[n]).double().pow(2).sum()) for n in a))

    return gap(halved, base) / max(gap(moved, base), torch.finfo(torch.float64).tiny)
