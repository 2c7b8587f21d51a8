"""The image plugin of the engine: dummy pixels and (soft or known) labels.

Leaves: ``images (B, C, S, S)``, drawn from a normal distribution (standard as in the DLG code, or of
``init_std``; with ``box``, these are the logits of the pixels: ``sigmoid`` keeps every pixel in (0, 1)),
and, when the labels are not known, label logits ``(B, K)`` (DLG's soft labels: the loss is the
cross-entropy against their softmax). With labels read off the gradient (iDLG, :mod:`vision_dlg.labels`)
only the pixels are optimised. Every parameter's gradient is matched. Optional prior: total variation of
the images (Inverting Gradients, Geiping et al. 2020) with weight ``tv`` (``regularizer``; the engine adds it
to the distance or scales the distance by it, ``MatchingConfig.prior``); with the colour in planes of its own
(``colour_tv``), one joint prior on the grey level and the colour (:func:`joint_total_variation`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nlp_dlg.engine.device import model_device, randn
from vision_dlg.capacity import chroma_side

LABEL_PEAK = 5.0  # logit added to an estimated label when soft labels start from it
IMAGE_LEAVES = ("images", "chroma", "colour")  # the leaves that hold pixels; the others (labels) carry over as they are
# Two directions orthogonal to grey (1, 1, 1)/√3, orthonormal: the colour a subsampled chroma leaf adds
CHROMA_BASIS = torch.tensor([[2 ** -0.5, -(2 ** -0.5), 0.0], [6 ** -0.5, 6 ** -0.5, -2 * 6 ** -0.5]])


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels of ``images (B, C, H, W)``."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    return dx + dy


def joint_total_variation(grey: torch.Tensor, colour: torch.Tensor, grey_weight: float,
                          colour_weight: float) -> torch.Tensor:
    """Total variation of a grey level ``(B, 1, H, W)`` and its colour planes ``(B, 2, H, W)`` together: per direction,
    the mean over neighbouring pixels of ``√(a²·Δgrey² + b²·mean(Δcolour²))`` (``a``, ``b``: the weights). Colour
    edges cost less where the grey level has one too, as a photo's colour changes mostly at the edges of its grey
    level (vectorial TV, Blomgren and Chan 1998)."""
    eps = 1e-8 * max(grey_weight, colour_weight) ** 2
    total = torch.zeros((), device=grey.device)
    for dim in (-1, -2):
        dg, dc = grey.diff(dim=dim)[:, 0], colour.diff(dim=dim)
        total = total + torch.sqrt(grey_weight ** 2 * dg ** 2 + colour_weight ** 2 * dc.pow(2).mean(1) + eps).mean()
    return total


@functools.lru_cache(maxsize=8)
def dct_basis(side: int, terms: int) -> torch.Tensor:
    """``(side², terms)``: the orthonormal 2-D DCT-II images of a ``side``-pixel square, flattened as columns, the
    ``terms`` of lowest frequency first (by ``k₁ + k₂``, then ``k₁``). Cached (every plugin variant of a batch
    holds the same one): callers must not write to it."""
    k = torch.arange(side, dtype=torch.float64)
    cosines = torch.cos(torch.pi * (k[None] + 0.5) * k[:, None] / side)               # (frequency, position)
    cosines = cosines / cosines.norm(dim=1, keepdim=True)
    pairs = sorted(((a, b) for a in range(side) for b in range(side)), key=lambda f: (f[0] + f[1], f[0]))[:terms]
    rows, columns = (torch.tensor(c, dtype=torch.long) for c in zip(*pairs))
    images = cosines[rows, :, None] * cosines[columns, None, :]                        # (terms, side, side)
    return images.reshape(terms, side * side).T.float().contiguous()


def _other_leaves(leaves: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The leaves that are not pixels (the soft labels, where learnt): a change of the pixels' form keeps them."""
    return {n: t for n, t in leaves.items() if n not in IMAGE_LEAVES}


class ImagePlugin:
    """Engine plugin for image-classification gradients.

    Args:
        model: the victim classifier (its mode is the caller's).
        batch_size: images in the observed batch.
        image_shape: ``(C, S, S)``.
        num_classes: K.
        labels: ``(B,)`` known labels (e.g. from :func:`vision_dlg.labels.infer_labels`), or None to
            optimise soft labels from random logits as DLG.
        learn_labels: with ``labels`` given, still optimise soft labels, starting from logits peaked on
            them (an estimate the matching may correct, e.g. batch label counts).
        tv: weight of the total-variation prior (0: none, as DLG), on the pixels or, with ``box``, on
            their logits.
        clamp: project the pixels into [0, 1] after each step.
        box: optimise pixel logits, the image being their sigmoid (pixels stay in (0, 1) without a
            projection, which L-BFGS tolerates badly). Unboxed pixels (DLG as published) let a batch's
            matching settle on images outside [0, 1] whose gradient equals the observed one.
        init_std: standard deviation of the initial dummy pixels or, with ``box``, pixel logits (1: DLG's
            standard normal).
        start: leaves to start from instead of a random draw (the polish after a prior, :class:`ImageAttack`).
        chroma: for 3-channel images, the colour subsampling factor (1: every pixel free). Above 1 the leaves
            are a full-resolution grey level (``images``, ``(B, 1, S, S)``) and two colour-difference planes
            on a grid ``chroma`` times coarser (``chroma``, bilinearly upsampled), as JPEG stores a photo: a
            grey image is exact, a batch has fewer unknowns than pixels.
        colour_terms: for 3-channel images, instead of the grid, each colour plane as its ``colour_terms``
            lowest-frequency 2-D DCT terms (``colour``, ``(B, 2, colour_terms)``; :func:`dct_basis`): as few
            unknowns as the grid's where the counts match, but more of a photo's colour for the same count
            (0: the grid, or every pixel at ``chroma`` 1; ``S·S``: every pixel's colour, in grey and colour planes).
        colour_tv: with ``colour_terms``, the prior weighs the grey level by ``tv`` and the colour planes by this,
            together (:func:`joint_total_variation`; a photo's colour is smoother than its grey level; 0: ``tv`` on
            the RGB planes).
    """

    def __init__(self, model: nn.Module, batch_size: int, image_shape: tuple[int, int, int], num_classes: int,
                 *, labels: torch.Tensor | None = None, learn_labels: bool = False, tv: float = 0.0,
                 clamp: bool = False, box: bool = False, init_std: float = 1.0,
                 start: Mapping[str, torch.Tensor] | None = None, chroma: int = 1, colour_terms: int = 0,
                 colour_tv: float = 0.0) -> None:
        self.model = model
        self.batch_size = batch_size
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        self.learn_labels = learn_labels or self.labels is None
        self.tv = float(tv)
        self.clamp = clamp
        self.box = box
        self.init_std = float(init_std)
        self.start = dict(start) if start is not None else None
        self.chroma = int(chroma) if self.image_shape[0] == 3 else 1
        self.colour_terms = int(colour_terms) if self.image_shape[0] == 3 else 0
        self.colour_tv = float(colour_tv) if self.colour_terms else 0.0
        self._params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.device = model_device(model)
        self._basis = dct_basis(self.image_shape[1], self.colour_terms).to(self.device) if self.colour_terms else None
        if self.labels is not None:
            self.labels = self.labels.to(self.device)

    def variant(self, **changes: Any) -> ImagePlugin:
        """This plugin with some of its options changed (``tv``, ``start``, ...)."""
        options = {"labels": self.labels, "learn_labels": self.learn_labels, "tv": self.tv, "clamp": self.clamp,
                   "box": self.box, "init_std": self.init_std, "start": self.start, "chroma": self.chroma,
                   "colour_terms": self.colour_terms, "colour_tv": self.colour_tv}
        return ImagePlugin(self.model, self.batch_size, self.image_shape, self.num_classes, **{**options, **changes})

    def matched_parameters(self) -> Mapping[str, torch.Tensor]:
        return self._params

    def init_leaves(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self.start is not None:
            return {n: t.detach().clone() for n, t in self.start.items()}
        # drawn on the CPU and moved: one seed gives the same start on every device
        channels, side, _ = self.image_shape
        if self.colour_terms:
            leaves = {"images": self.init_std * randn(self.batch_size, 1, side, side, generator=generator,
                                                      device=self.device),
                      "colour": self.init_std * randn(self.batch_size, 2, self.colour_terms, generator=generator,
                                                      device=self.device)}
        elif self.chroma == 1:
            leaves = {"images": self.init_std * randn(self.batch_size, *self.image_shape, generator=generator,
                                                      device=self.device)}
        else:
            coarse = chroma_side(side, self.chroma)
            leaves = {"images": self.init_std * randn(self.batch_size, 1, side, side, generator=generator,
                                                      device=self.device),
                      "chroma": self.init_std * randn(self.batch_size, 2, coarse, coarse, generator=generator,
                                                      device=self.device)}
        if self.learn_labels:
            logits = randn(self.batch_size, self.num_classes, generator=generator, device=self.device)
            if self.labels is not None:
                logits = logits + LABEL_PEAK * F.one_hot(self.labels, self.num_classes)
            leaves["labels"] = logits
        return leaves

    def planes(self, leaves: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The optimised planes at full resolution ``(B, C, S, S)``: pixels, or with ``box`` their logits."""
        if self._basis is not None:
            colour = leaves["colour"] @ self._basis.T                                # (B, 2, S·S)
        elif self.chroma == 1:
            return leaves["images"]
        else:
            colour = F.interpolate(leaves["chroma"], size=self.image_shape[1:], mode="bilinear",
                                   align_corners=False).flatten(2)
        rgb = CHROMA_BASIS.to(colour).T @ colour                                     # (B, 3, S·S)
        return leaves["images"] + rgb.view(-1, *self.image_shape)

    def with_colour_terms(self, leaves: Mapping[str, torch.Tensor], terms: int, **changes: Any) -> ImagePlugin:
        """This plugin with each colour plane in ``terms`` DCT terms, starting from the nearest such planes to those
        ``leaves`` stand for (the grey level kept, the colour projected; labels kept)."""
        planes = self.planes(leaves).detach()
        basis = dct_basis(self.image_shape[1], terms).to(planes)
        colour = CHROMA_BASIS.to(planes) @ planes.flatten(2)                         # (B, 2, S·S)
        start = {**_other_leaves(leaves), "images": planes.mean(1, keepdim=True), "colour": colour @ basis}
        return self.variant(colour_terms=terms, start=start, **changes)

    def images(self, leaves: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The dummy images ``(B, C, S, S)`` the leaves stand for."""
        planes = self.planes(leaves)
        return torch.sigmoid(planes) if self.box else planes

    def task_loss(self, leaves: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits = self.model(self.images(leaves))                                    # (B, K)
        if not self.learn_labels:
            return F.cross_entropy(logits, self.labels)
        soft = leaves["labels"].softmax(-1)                                          # (B, K)
        return -(soft * logits.log_softmax(-1)).sum(-1).mean()

    def project(self, leaves: Mapping[str, torch.Tensor]) -> None:
        if self.clamp and not self.box and self.chroma == 1:
            leaves["images"].clamp_(0, 1)

    def regularizer(self, leaves: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.tv == 0.0 and self.colour_tv == 0.0:
            return torch.zeros((), device=self.device)
        if self.colour_tv:
            colour = (leaves["colour"] @ self._basis.T).view(-1, 2, *self.image_shape[1:])
            return joint_total_variation(leaves["images"], colour, self.tv, self.colour_tv)
        # on the optimised leaves: the pixels, or with ``box`` their logits (smoothing the logits is the
        # stronger prior; measured on LeNet batch 4: 29 dB, against 20 dB with TV on the sigmoid pixels)
        return self.tv * total_variation(self.planes(leaves))

    def decode(self, leaves: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images (B, C, S, S) clipped to [0, 1], labels (B,))``."""
        images = self.images(leaves).detach().clamp(0, 1)
        labels = leaves["labels"].detach().argmax(-1) if self.learn_labels else self.labels
        return images, labels
