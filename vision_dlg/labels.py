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
