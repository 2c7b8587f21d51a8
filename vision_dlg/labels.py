"""Labels read off the last layer's gradient (no optimisation).

For softmax cross-entropy averaged over a batch of B, the gradient of the last linear layer's bias is
``g = (1/B) Σ_i (p_i − y_i)``: with one image (iDLG, Zhao et al. 2020) the only negative entry is the
label. With a batch, every label present has ``g_k ≈ p̄ − n_k / B`` (at the start of training the
softmax ``p`` is close to uniform), so the negative entries are the labels present and
``n_k ≈ B (p̄ − g_k)`` their counts, ``p̄`` estimated from the entries of the absent classes (the
bias-gradient count of LLG, Wainakh et al. 2022). Without a bias, iDLG's rule on the weight gradient is
used: with non-negative features (sigmoid), the row sum of the label's row is the only negative one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from nlp_dlg.engine.errors import GradientMismatchError

logger = logging.getLogger(__name__)


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The name and module of the model's last ``nn.Linear`` (the classifier)."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise GradientMismatchError("the model has no linear classifier: labels cannot be read off its gradient")
    return found[-1]


def class_signal(gradients: Mapping[str, torch.Tensor], model: nn.Module) -> torch.Tensor:
    """``(K,)`` on the CPU: the bias gradient of the classifier, or the row sums of its weight gradient."""
    name, layer = last_linear(model)
    key = f"{name}.bias" if layer.bias is not None else f"{name}.weight"
    if key not in gradients:
        raise GradientMismatchError(f"the gradient lacks {key!r}: labels cannot be read off it")
    g = gradients[key].detach().double().cpu()  # K numbers: read on the CPU, whatever the device
    return g if g.ndim == 1 else g.sum(1)


def labels_are_exact(gradients: Mapping[str, torch.Tensor], model: nn.Module, batch_size: int) -> bool:
    """Whether :func:`infer_labels` is exact: an absent class has ``g_k = mean_i p_ik > 0``, so the negative
    entries are present classes; ``batch_size`` of them means every image has its own class."""
    return int((class_signal(gradients, model) < 0).sum()) == batch_size


def infer_labels(gradients: Mapping[str, torch.Tensor], model: nn.Module, batch_size: int) -> torch.Tensor:
    """``(B,)`` labels on the CPU, sorted (their order inside the batch is not in the gradient)."""
    g = class_signal(gradients, model)
    if batch_size == 1:
        return g.argmin().reshape(1)
    present = (g < 0).nonzero().flatten()
    if len(present) == 0:
        present = g.argmin().reshape(1)
    absent = g[g >= 0]
    p_bar = float(absent.median()) if len(absent) else 0.0
    raw = (batch_size * (p_bar - g[present])).clamp_min(1.0)                      # estimated counts
    counts = raw.floor().long().clamp_min(1)
    if len(present) > batch_size:                                                 # keep the most negative
        keep = g[present].argsort()[:batch_size]
        present, counts, raw = present[keep], torch.ones(batch_size, dtype=torch.long), raw[keep]
    while int(counts.sum()) < batch_size:                                         # largest remainders first
        counts[(raw - counts).argmax()] += 1
    while int(counts.sum()) > batch_size:
        counts[torch.where(counts > 1, raw - counts, torch.full_like(raw, float("inf"))).argmin()] -= 1
    labels = present.repeat_interleave(counts)
    logger.info("labels from the classifier gradient: %s", labels.tolist())
    return labels


def classifier_rank(gradients: Mapping[str, torch.Tensor], model: nn.Module, rtol: float = 1e-6) -> int:
    """The numerical rank of the classifier's weight gradient ``(1/B) Σ_i (p_i − y_i) h_iᵀ``: at most the number of
    images B (and K − 1, the rows ``p_i − y_i`` summing to zero). ``rtol`` sits between float32's rounding (singular
    values ~1e-8 of the largest for a rank-1 gradient) and what LeNet's images of one class leave (~1e-5)."""
    name, _ = last_linear(model)
    g = gradients.get(f"{name}.weight")
    if g is None or g.ndim != 2:
        return 0
    s = torch.linalg.svdvals(g.detach().double().cpu())
    return int((s > rtol * s[0]).sum()) if len(s) and float(s[0]) > 0 else 0


def check_batch_claim(gradients: Mapping[str, torch.Tensor], model: nn.Module, batch_size: int) -> bool:
    """Warn (and return True) when the gradient shows fewer images than the ``batch_size`` a file claims: the
    classifier's weight gradient has a rank below the claim (and below K − 1) and the bias shows no more classes
    than that rank.

    A claim larger than the truth cannot be refused: B copies of one image give exactly one image's gradient.
    Where the features of different images coincide (an eval-mode ResNet at initialisation), the rank is 1 for
    any batch, but the bias then still shows each class present; so only a rank that also bounds the classes
    shown is taken as a sign. It usually means a smaller batch, whose extra dummy images are unconstrained."""
    name, layer = last_linear(model)
    rank = classifier_rank(gradients, model)
    shown = int((class_signal(gradients, model) < 0).sum())
    if 0 < rank < min(batch_size, layer.out_features - 1) and shown <= rank:
        logger.warning("the gradient shows %d image(s) (its classifier's rank), not the %d its metadata claims: "
                       "either the batch is smaller (the extra reconstructions are then noise) or its images share "
                       "a class and look alike", rank, batch_size)
        return True
    return False
