"""Image reconstruction quality: MSE, PSNR, SSIM (torchmetrics' functional SSIM), label accuracy, and
Hungarian pairing of reconstructions to references inside a batch (their order is not in the gradient)."""

from __future__ import annotations

import math

import torch
from scipy.optimize import linear_sum_assignment

from nlp_dlg.engine.errors import InputDataError


def _check(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise InputDataError(f"images: expected equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")


def mse(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean squared error of two images (any equal shape, values in [0, 1])."""
    _check(x, y)
    return float((x.double() - y.double()).pow(2).mean())


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for data range 1 (inf for identical images)."""
    err = mse(x, y)
    return math.inf if err == 0 else 10.0 * math.log10(1.0 / err)


def ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    """Structural similarity of two images ``(C, H, W)`` (Gaussian window 11, σ 1.5, data range 1)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check(x, y)
    kernel = min(11, x.shape[-1] - (1 - x.shape[-1] % 2))          # odd, at most the image side
    return float(structural_similarity_index_measure(x[None].double(), y[None].double(), data_range=1.0,
                                                     kernel_size=kernel))


def pair_images(reconstructed: torch.Tensor, references: torch.Tensor) -> list[int]:
    """For each reconstruction, the index of its reference (Hungarian pairing on MSE)."""
    cost = torch.cdist(reconstructed.flatten(1).double(), references.flatten(1).double()).pow(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    order = [0] * len(rows)
    for r, c in zip(rows, cols):
        order[r] = int(c)
    return order


def score_images(reconstructed: torch.Tensor, labels: torch.Tensor, references: torch.Tensor,
                 reference_labels: torch.Tensor) -> list[dict[str, float]]:
    """Per reconstruction (paired to its reference): ``mse``, ``psnr``, ``ssim``, ``label_correct``,
    ``reference_index``."""
    order = pair_images(reconstructed, references)
    return [{"reference_index": j, "mse": mse(x, references[j]), "psnr": psnr(x, references[j]),
             "ssim": ssim(x, references[j]), "label_correct": bool(int(lab) == int(reference_labels[j]))}
            for x, lab, j in zip(reconstructed, labels, order)]
