"""Image reconstruction quality: MSE, PSNR, SSIM (torchmetrics' functional SSIM), label accuracy, and
Hungarian pairing of reconstructions to references inside a batch (their order is not in the gradient).

Batch norm on the batch's statistics (a train-mode gradient) is blind to the batch's brightness and
contrast: ``score_images(..., fit=True)`` scores after the one least-squares map ``a·x + b`` (shared by the
whole batch) that the gradient cannot determine."""

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


def _standardise(x: torch.Tensor) -> torch.Tensor:
    flat = x.flatten(1).double()
    return (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-12)


def pair_images(reconstructed: torch.Tensor, references: torch.Tensor, *, fit: bool = False) -> list[int]:
    """For each reconstruction, the index of its reference (Hungarian pairing on MSE; with ``fit``, on the
    MSE of the standardised images, which ignores brightness and contrast)."""
    prepare = _standardise if fit else (lambda x: x.flatten(1).double())
    cost = torch.cdist(prepare(reconstructed), prepare(references)).pow(2).cpu().numpy()
    rows, cols = linear_sum_assignment(cost)
    order = [0] * len(rows)
    for r, c in zip(rows, cols):
        order[r] = int(c)
    return order


def fit_brightness_contrast(reconstructed: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """``a·reconstructed + b`` with the one ``(a, b)`` that brings the batch nearest (least squares) to its
    references, given in the same order, clamped to [0, 1]."""
    _check(reconstructed, references)
    x, y = reconstructed.flatten().double(), references.flatten().double()
    design = torch.stack([x, torch.ones_like(x)], 1)
    a, b = torch.linalg.lstsq(design, y[:, None]).solution.flatten().tolist()
    return (a * reconstructed + b).clamp(0, 1).to(reconstructed.dtype)


def score_images(reconstructed: torch.Tensor, labels: torch.Tensor, references: torch.Tensor,
                 reference_labels: torch.Tensor, *, fit: bool = False) -> list[dict[str, float]]:
    """Per reconstruction (paired to its reference): ``mse``, ``psnr``, ``ssim``, ``label_correct``,
    ``reference_index``. ``fit``: pair on standardised images and score after
    :func:`fit_brightness_contrast` (for train-mode gradients, whose batch norm hides both)."""
    reconstructed, labels, references, reference_labels = (t.detach().cpu() for t in (reconstructed, labels, references,
                                                                                       reference_labels))
    order = pair_images(reconstructed, references, fit=fit)
    if fit:
        reconstructed = fit_brightness_contrast(reconstructed, references[order])
    return [{"reference_index": j, "mse": mse(x, references[j]), "psnr": psnr(x, references[j]),
             "ssim": ssim(x, references[j]), "label_correct": bool(int(lab) == int(reference_labels[j]))}
            for x, lab, j in zip(reconstructed, labels, order)]
