"""The span of a linear layer's inputs, read off its weight gradient (the observation behind DAGER, Petrov et al.,
NeurIPS 2024): for ``y = W x`` applied at every position, ``∂L/∂W = Σ_t δ_t x_tᵀ``, so every input ``x_t`` whose
``δ_t`` is not zero lies in the row space of the gradient. Testing a candidate input against that span tells
whether it fed the layer. Linear algebra only: the tasks say which layers and which candidates."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nlp_dlg.engine.errors import GradientMismatchError

logger = logging.getLogger(__name__)

MIN_SPAN_GAP = 10.0       # a span's smallest kept singular value stands this factor above the next one


class SpanUnavailable(GradientMismatchError):
    """The span check cannot work on this gradient (missing, zero, full rank, or noise fills the rank)."""


@dataclass(frozen=True)
class Span:
    """An orthonormal basis of a layer's inputs, read off its weight gradients."""

    basis: torch.Tensor            # (H, r) float64, orthonormal columns
    singular_values: torch.Tensor  # all singular values, descending, relative to the largest

    @property
    def rank(self) -> int:
        return self.basis.shape[1]

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``‖x − P x‖ / ‖x‖`` per row of ``x (…, H)``: 0 inside the span, ~1 far from it; 1 for a zero vector,
        which lies in every span and so says nothing (e.g. a padding token's zero embedding)."""
        x = x.to(self.basis.device).double()
        # ‖x − P x‖² = ‖x‖² − ‖Bᵀx‖² (one product; in float64 a residual of 1e-8 of ‖x‖ is still resolved)
        square = (x * x).sum(-1)
        outside = (square - (x @ self.basis).square().sum(-1)).clamp_min(0)
        return torch.where(square > 0, (outside / square.clamp_min(1e-300)).sqrt(), torch.ones_like(square))


def input_span(gradients: Sequence[torch.Tensor], *, max_rank: int, rank: int | None = None,
               what: str = "the layer") -> Span:
    """The span of the inputs of the linear maps whose weight gradients ``(out, in)`` are given (stacked).

    The rank is the largest gap in the singular values among the first ``max_rank``; it must be at least
    ``MIN_SPAN_GAP``, else noise fills the rank or more inputs fed the layer than it has dimensions. A known
    ``rank`` skips the gap test.
    """
    stacked = torch.cat([g.detach().double() for g in gradients])                  # (sum of out, in)
    _, s, vh = torch.linalg.svd(stacked, full_matrices=False)
    hidden = stacked.shape[1]
    if not bool(torch.isfinite(s).all()) or float(s[0]) == 0.0:
        raise SpanUnavailable(f"{what}: the gradient is zero or not finite")
    rel = s / s[0]
    if rank is not None:
        return Span(vh[:min(rank, hidden - 1)].T.contiguous(), rel)
    top = min(max_rank, hidden - 1, len(rel) - 1)
    ratios = rel[:top] / rel[1:top + 1].clamp_min(1e-300)                           # ratios[i] = σ_i / σ_(i+1)
    rank = int(ratios.argmax()) + 1
    if float(ratios[rank - 1]) < MIN_SPAN_GAP:
        raise SpanUnavailable(f"{what}: no gap in the singular values of its gradient (largest "
                              f"{float(ratios.max()):.3g}x at {rank}): noise fills the rank or more inputs fed it "
                              f"than its {hidden} dimensions")
    logger.debug("%s span: rank %d, gap %.3g", what, rank, float(ratios[rank - 1]))
    return Span(vh[:rank].T.contiguous(), rel)
