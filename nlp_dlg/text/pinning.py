"""Where a batch's tokens sit, from the embedding gradients of a BERT-family encoder (the LayerNorm identity).

The embedding block computes ``x = LN(z)`` with ``z = E_v + P_p + T_0`` for token ``v`` at position ``p``.
LayerNorm's Jacobian ``diag(γ)/σ · (I − 11ᵀ/H − ẑẑᵀ/H)`` (``ẑ`` the normalised ``z``) vanishes on ``1`` and on
``ẑ``, so the gradient ``e = ∂L/∂z`` reaching the sum is orthogonal to ``z − mean(z)``. Two gradient rows add
these up:

* the word-embedding row of ``v`` is the sum of ``e`` over ``v``'s occurrences: when every occurrence of ``v`` is
  at one position ``p``, the row is orthogonal to the centred ``z(v, p)``, and (generically) to no other
  position's. Such a token is *pinned* to ``p``; a token at two or more positions is *free*;
* the position-embedding row of ``p`` is the sum of ``e`` over the batch's tokens at ``p``: less the rows of the
  tokens pinned there, what stays is the free tokens' share. Zero: no free token sits at ``p``; orthogonal to
  one free token's centred ``z(v, p)``: that token is the only free one at ``p``.

This needs the word-embedding gradient to have an input side only (a classifier; not a masked-LM head tied to
the embeddings, whose rows also carry the head's gradient), and an exact gradient: under noise nothing is
pinned and every candidate stays. On the pretrained MiniLM encoder with 8 Rotten Tomatoes reviews, each of the 88
tokens that sit at one position is pinned to it, the runner-up position at least 457x less orthogonal, and the
candidates per position fall from 77.4 (span test alone) to 14.9, every true pair kept (``benchmarks/bench_pinning.py``,
rows in ``benchmarks/results/pinning.jsonl``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nlp_dlg.text.priors import parameter_name

logger = logging.getLogger(__name__)

PIN_COSINE = 1e-6     # |cos| between a gradient row and a centred embedding sum below which they count as orthogonal
PIN_MARGIN = 100.0    # the runner-up position of a pinned token is at least this much less orthogonal
EMPTY_SHARE = 1e-5    # a position row this small (relative) after the pinned tokens' rows: no free token there


@dataclass(frozen=True)
class Pins:
    """Per token of the batch: the one position it sits at, or ``None`` (free: at two or more positions)."""

    tokens: torch.Tensor              # (K,) token ids
    positions: list[int | None]       # per token
    free_at: list[torch.Tensor | None]  # per position: the free tokens there when the rows say so, else None

    def allowed(self, position: int) -> torch.Tensor:
        """The tokens that may sit at ``position``: those pinned there and the free ones the rows leave."""
        pinned = [t for t, p in zip(self.tokens.tolist(), self.positions) if p == position]
        known = self.free_at[position]
        free = known.tolist() if known is not None else [t for t, p in zip(self.tokens.tolist(), self.positions)
                                                          if p is None]
        return torch.tensor(pinned + free, dtype=torch.long, device=self.tokens.device)


def _centred_sums(model: Any, tokens: torch.Tensor, length: int) -> torch.Tensor:
    """``z(v, p) − mean`` for every token and position ``< length``: ``(K, L, H)`` float64."""
    emb = model.bert.embeddings
    with torch.no_grad():
        z = (emb.word_embeddings.weight[tokens][:, None] + emb.position_embeddings.weight[:length][None]
             + emb.token_type_embeddings.weight[0]).double()
    return z - z.mean(-1, keepdim=True)


def _cosines(rows: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
    """``|cos|`` between each row ``(K, H)`` and its token's sums ``(K, L, H)``: ``(K, L)``."""
    dots = (sums @ rows.unsqueeze(-1)).squeeze(-1).abs()
    return dots / (sums.norm(dim=-1) * rows.norm(dim=-1, keepdim=True)).clamp_min(1e-300)


def pin_tokens(model: Any, gradients: Mapping[str, torch.Tensor], tokens: torch.Tensor, length: int) -> Pins:
    """The position of every token of ``tokens`` that sits at one position only, and the free tokens per position
    where the position rows name them (see the module's docstring)."""
    emb = model.bert.embeddings
    word = gradients[parameter_name(model, emb.word_embeddings.weight)]
    rows = word.double()[tokens.to(word.device)].to(tokens.device)
    sums = _centred_sums(model, tokens, length)
    cos = _cosines(rows, sums)
    two = cos.topk(min(2, length), dim=1, largest=False).values
    pinned = (two[:, 0] < PIN_COSINE) & ((two[:, -1] > PIN_MARGIN * two[:, 0]) | (length == 1))
    best = cos.argmin(1)
    positions = [int(best[i]) if bool(pinned[i]) else None for i in range(len(tokens))]
    share = gradients[parameter_name(model, emb.position_embeddings.weight)].double()[:length].to(tokens.device).clone()
    whole = share.norm(dim=-1)
    for i, p in enumerate(positions):
        if p is not None:
            share[p] -= rows[i]
    free = (~pinned).nonzero().flatten()
    free_at: list[torch.Tensor | None] = []
    for p in range(length):
        if float(share[p].norm()) <= EMPTY_SHARE * float(whole[p]):
            free_at.append(tokens[:0])
            continue
        c = _cosines(share[p].expand(len(free), -1), sums[free, p:p + 1])[:, 0]
        named = free[c < PIN_COSINE]
        free_at.append(tokens[named] if len(named) == 1 else None)
    logger.debug("embedding rows pin %d of %d token(s); free tokens named at %d of %d position(s)",
                 int(pinned.sum()), len(tokens), sum(f is not None for f in free_at), length)
    return Pins(tokens, positions, free_at)


def narrow_candidates(candidates: Sequence[torch.Tensor], pins: Pins) -> list[torch.Tensor]:
    """``candidates`` per position (from the span test) less the tokens the embedding rows place elsewhere,
    in the given order."""
    return [c[torch.isin(c, pins.allowed(p).to(c.device))] for p, c in enumerate(candidates)]
