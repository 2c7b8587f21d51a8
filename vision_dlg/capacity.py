"""How many pixels a gradient can determine at most: a count made before any attack.

The classifier's gradient ``∂L/∂W = Σ_b (p_b − y_b) h_bᵀ / B`` and ``∂L/∂b`` are functions of the B feature
vectors ``h_b`` it reads (F numbers each; ``p_b`` is computed from ``h_b``). Every other parameter's gradient is
one number per parameter. So however the pixels vary, the gradient moves in at most ``B·F + P_rest`` directions:
when the batch has more pixels than that (``B·C·S·S``), a set of other batches of that dimension gives the same
gradient to first order, and only a prior (total variation, a box) chooses among them. The attack logs it.

DLG's LeNet at 32x32 (F = 768, P_rest = 8,136) determines 3 images at most: a batch of 4 (12,288 pixels) meets
a bound of 11,208, and its images come back blurred near 29 dB (benchmarks/results/vision_restarts.jsonl). At 64x64
(F = 3,072) not even one image (12,288 pixels, bound 11,208).

Fewer unknowns than pixels: a colour image stored as JPEG stores it, a full-resolution grey level and two
colour-difference planes on a coarser grid (:func:`chroma_for` picks the finest grid the bound admits; the image
plugin's ``chroma``). A grey image loses nothing there; a colour photo loses its finest colour detail. Where that
detail matters (the attack's polish tells from the distance alone), the attack frees every pixel's colour again,
with a prior of its own on the colour planes to choose what the gradient cannot see (``ImageAttack._finer_colour``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from vision_dlg.labels import last_linear

logger = logging.getLogger(__name__)
# The bound is necessary, not sufficient: near it the matching is poorly conditioned. LeNet, 8 grey faces at 32x32
# in one gradient (bound 14,280): colour subsampled 2-fold (12,288 unknowns, 0.86 of the bound) 30.8-33.0 dB,
# 4-fold (9,216, 0.65) 35.8-38.0 dB (benchmarks/results/vision_restarts.jsonl, 2026-12-07). :func:`chroma_for`
# keeps this headroom.
HEADROOM = 0.75


@dataclass(frozen=True)
class Capacity:
    """Pixels of the batch against the most directions its gradient can move in."""

    pixels: int
    bound: int
    unknowns: int | None = None     # numbers the attack solves for, where fewer than the pixels (None: the pixels)

    @property
    def solved_for(self) -> int:
        """The numbers the attack solves for: the unknowns where set, else the pixels."""
        return self.pixels if self.unknowns is None else self.unknowns

    @property
    def determined(self) -> bool:
        """Whether the gradient can pin every unknown down (necessary, not sufficient)."""
        return self.solved_for <= self.bound


def chroma_side(side: int, chroma: int) -> int:
    """The side of the colour grid that ``chroma``-fold subsampling of a ``side``-pixel image keeps."""
    return -(-side // chroma)


def image_unknowns(image_shape: tuple[int, int, int], chroma: int = 1, terms: int = 0) -> int:
    """Numbers per image with the colour subsampled ``chroma``-fold, ``S·S + 2·⌈S/chroma⌉²`` for 3 channels, or
    held in ``terms`` DCT terms per plane, ``S·S + 2·terms``; else (or at ``chroma`` 1) every pixel."""
    channels, height, width = image_shape
    if channels == 3 and terms:
        return height * width + 2 * terms
    if channels != 3 or chroma == 1:
        return channels * height * width
    return height * width + 2 * chroma_side(height, chroma) * chroma_side(width, chroma)


def gradient_capacity(model: nn.Module, image_shape: tuple[int, int, int], batch_size: int,
                      *, chroma: int = 1, terms: int = 0) -> Capacity:
    """The batch's pixel count, the bound ``min(P, B·F + P_rest)`` on the gradient's degrees of freedom, and with
    the colour subsampled ``chroma``-fold (or in ``terms`` DCT terms per plane) the numbers the attack solves for."""
    name, layer = last_linear(model)
    head = {f"{name}.weight", f"{name}.bias"}
    params = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    rest = sum(k for n, k in params.items() if n not in head)
    channels, height, width = image_shape
    bound = min(sum(params.values()), batch_size * layer.in_features + rest)
    unknowns = batch_size * image_unknowns(image_shape, chroma, terms) if chroma != 1 or terms else None
    return Capacity(batch_size * channels * height * width, bound, unknowns)


def chroma_for(model: nn.Module, image_shape: tuple[int, int, int], batch_size: int) -> int:
    """The finest colour subsampling (1, 2, 4, ... up to one colour per image) that leaves a batch of 3-channel
    images at most ``HEADROOM`` of the gradient's bound in unknowns; the coarsest where none does, and 1 for other
    channel counts."""
    channels, side, _ = image_shape
    if channels != 3:
        return 1
    factor = 1
    while factor < side:
        cap = gradient_capacity(model, image_shape, batch_size, chroma=factor)
        if cap.solved_for <= HEADROOM * cap.bound:
            break
        factor *= 2
    return min(factor, side)


def warn_if_undetermined(model: nn.Module, image_shape: tuple[int, int, int], batch_size: int,
                         *, chroma: int = 1) -> Capacity:
    """:func:`gradient_capacity`, logged as a warning when the gradient cannot determine every unknown (as
    information where only the colour subsampling makes them few enough)."""
    cap = gradient_capacity(model, image_shape, batch_size, chroma=chroma)
    if cap.unknowns is not None:
        log = logger.info if cap.determined else logger.warning
        log("the gradient moves in at most %d directions for the batch's %d pixels: colour subsampled %d-fold, "
            "%d unknowns (%s)", cap.bound, cap.pixels, chroma, cap.unknowns,
            "determined" if cap.determined else "still too many: a prior chooses among the images that match")
    elif not cap.determined:
        logger.warning("the gradient moves in at most %d directions for the batch's %d pixels: it cannot determine "
                       "the images, a prior chooses among those that match (expect blur; fewer images, or a model "
                       "with more parameters, would be determined)", cap.bound, cap.pixels)
    return cap
