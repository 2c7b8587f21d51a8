"""How many pixels a gradient can determine at most: a count made before any attack.

The classifier's gradient ``∂L/∂W = Σ_b (p_b − y_b) h_bᵀ / B`` and ``∂L/∂b`` are functions of the B feature
vectors ``h_b`` it reads (F numbers each; ``p_b`` is computed from ``h_b``). Every other parameter's gradient is
one number per parameter. So however the pixels vary, the gradient moves in at most ``B·F + P_rest`` directions:
when the batch has more pixels than that (``B·C·S·S``), a set of other batches of that dimension gives the same
gradient to first order, and only a prior (total variation, a box) chooses among them. The attack logs it.

DLG's LeNet at 32x32 (F = 768, P_rest = 8,136) determines 3 images at most: a batch of 4 (12,288 pixels) meets
a bound of 11,208, and its images come back blurred near 29 dB (benchmarks/results/vision_restarts.jsonl). At 64x64
(F = 3,072) not even one image (12,288 pixels, bound 11,208).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from vision_dlg.labels import last_linear

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Capacity:
    """Pixels of the batch against the most directions its gradient can move in."""

    pixels: int
    bound: int

    @property
    def determined(self) -> bool:
        """Whether the gradient can pin every pixel down (necessary, not sufficient)."""
        return self.pixels <= self.bound


def gradient_capacity(model: nn.Module, image_shape: tuple[int, int, int], batch_size: int) -> Capacity:
    """The batch's pixel count and the bound ``min(P, B·F + P_rest)`` on the gradient's degrees of freedom."""
    name, layer = last_linear(model)
    head = {f"{name}.weight", f"{name}.bias"}
    params = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    rest = sum(k for n, k in params.items() if n not in head)
    channels, height, width = image_shape
    bound = min(sum(params.values()), batch_size * layer.in_features + rest)
    return Capacity(batch_size * channels * height * width, bound)


def warn_if_undetermined(model: nn.Module, image_shape: tuple[int, int, int], batch_size: int) -> Capacity:
    """:func:`gradient_capacity`, logged as a warning when the gradient cannot determine every pixel."""
    cap = gradient_capacity(model, image_shape, batch_size)
    if not cap.determined:
        logger.warning("the gradient moves in at most %d directions for the batch's %d pixels: it cannot determine "
                       "the images, a prior chooses among those that match (expect blur; fewer images, or a model "
                       "with more parameters, would be determined)", cap.bound, cap.pixels)
    return cap
