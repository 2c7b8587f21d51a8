"""What a masked-LM gradient gives away before any optimisation (priors for DLG).

* Sequence length: rows of the position-embedding gradient past the last position are exactly zero.
* Labels: the decoder bias gradient is ``Σ_t (softmax_t − onehot(y_t)) / M`` over the M labelled
  positions. Softmax entries are positive, so a negative entry is a label word; ``−b_v ≈ count_v / M``.
* Token set: the word-embedding gradient is non-zero (input side) on rows of tokens the batch holds.
  With BERT's tied decoder every row also gets a dense decoder-side part in the span of the labelled
  positions' hidden states: projected out first, then the rows standing above the noise floor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from transformers import BertForMaskedLM

from nlp_dlg.engine.errors import GradientMismatchError

logger = logging.getLogger(__name__)

MIN_GAP = 4.0  # a token-set row stands at least this factor above the noise floor
SPAN_ROWS = 4096   # rows outside the batch's tokens sampled to estimate the decoder side's span (token_set)


@dataclass(frozen=True)
class MaskedLMPriors:
    """Priors read off one masked-LM gradient; every tensor lives on the device of the gradient it was read from.

    Attributes:
        sequence_length: tokens per sequence, [CLS] and [SEP] included.
        token_set: candidate token ids for the input positions, sorted; the whole vocabulary when the
            gradient shows no clear set (``token_set_found`` False).
        label_ids: the distinct label (masked) words, sorted.
        label_counts: how often each label word occurs.
        num_labelled: M, the number of labelled positions in the batch.
        token_set_found: whether the token set was read off the gradient.
    """

    sequence_length: int
    token_set: torch.Tensor
    label_ids: torch.Tensor
    label_counts: torch.Tensor
    num_labelled: int
    token_set_found: bool


def parameter_name(model: torch.nn.Module, tensor: torch.Tensor) -> str:
    """The name under which ``model.named_parameters()`` lists ``tensor``."""
    for name, p in model.named_parameters():
        if p is tensor:
            return name
    raise KeyError("tensor is not a parameter of the model")


def sequence_length(position_grad: torch.Tensor, *, margin: float = 5.0) -> int:
    """Last non-zero row of the position-embedding gradient, plus one.

    Clean, the rows past the sequence are exactly zero. With noise on the gradient (a defence) they are
    not: the smallest row norm is the noise floor, and a row counts when it stands ``margin`` times above
    it (a sequence filling every position is then cut short)."""
    norms = position_grad.norm(dim=1)                                             # (P,)
    floor = float(norms.min())
    live = (norms > max(float(norms.max()) * 1e-6, margin * floor)).nonzero().flatten()
    if len(live) == 0:
        raise GradientMismatchError("no row of the position-embedding gradient stands out (all zero, or under "
                                    "the noise floor): no sequence length")
    return int(live.max()) + 1


def label_words(bias_grad: torch.Tensor, max_labels: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(label_ids, counts, M)`` from the decoder bias gradient.

    Clean, the negative entries are exactly the label words (about ``−count/M``; the others are
    ``+p/M``, tiny). With noise on the gradient (a defence) many entries turn negative: when there are
    more than ``max_labels`` (at most one label per token), the labels are the negative entries above the
    largest jump among the ``max_labels + 1`` most negative ones."""
    neg = (bias_grad < 0).nonzero().flatten()
    if len(neg) == 0:
        raise GradientMismatchError("the decoder bias gradient has no negative entry: no labelled token")
    if max_labels is not None and len(neg) > max_labels:
        weight, order = (-bias_grad[neg].double()).sort(descending=True)
        top = weight[:max_labels + 1]
        cut = int((top[:-1] / top[1:].clamp_min(1e-30)).argmax()) + 1
        logger.warning("%d negative decoder-bias entries for at most %d labels (noise?): keeping the %d above "
                       "the largest jump", len(neg), max_labels, cut)
        neg = neg[order[:cut]].sort().values
    weight = -bias_grad[neg].double()                                             # ≈ count_v / M
    m = max(1, round(1.0 / float(weight.min())))
    counts = (weight * m).round().clamp_min(1).long()
    if int(counts.sum()) != m:
        logger.debug("label counts sum to %d, not %d: using the sum", int(counts.sum()), m)
        m = int(counts.sum())
    if max_labels is not None and m > max_labels:
        raise GradientMismatchError(f"the decoder bias gradient implies {m} labelled positions, more than the "
                                    f"{max_labels} tokens of the batch: the gradient is too noisy for the label prior")
    return neg, counts, m


def token_set(word_grad: torch.Tensor, max_size: int, num_labelled: int = 0) -> tuple[torch.Tensor, bool]:
    """Rows whose norm is ``MIN_GAP`` times the noise floor or more, once the decoder side is taken out.

    With BERT's tied decoder every row ``v`` of the word-embedding gradient holds a decoder-side part
    ``Σ_t (p_tv − y_tv) h_t / M``: a combination of the ``M`` labelled positions' final hidden states, so
    all rows outside the batch's tokens lie in one ``≤ M``-dimensional span. That span is estimated from
    the rows outside the ``2 · max_size`` largest (surely not input tokens) and projected out, which leaves
    the input side alone: exactly zero outside the batch's tokens (on a pretrained encoder the decoder side
    can otherwise dwarf input rows). The batch holds at most ``max_size`` distinct tokens, so the residual
    ranked ``max_size + 1`` is surely outside the set: its norm is the floor.
    """
    grad = word_grad.double()
    if max_size >= len(grad):
        return torch.arange(len(grad), device=grad.device), False
    if num_labelled > 0:
        rest = torch.ones(len(grad), dtype=torch.bool, device=grad.device)
        rest[grad.norm(dim=1).topk(min(2 * max_size, len(grad) - 1)).indices] = False
        # every outside row is a combination of the same <= M states with positive weights (a softmax): an evenly
        # spread sample of SPAN_ROWS of them spans what they all span, at a fraction of the product's cost
        outside = rest.nonzero().flatten()
        sample = grad[outside[torch.linspace(0, len(outside) - 1, min(SPAN_ROWS, len(outside)),
                                             device=grad.device).long()]]
        values, vectors = torch.linalg.eigh(sample.T @ sample)                      # ascending
        values, vectors = values.flip(0), vectors.flip(1)
        rank = int((values > values[0] * 1e-12).sum()) if float(values[0]) > 0 else 0
        basis = vectors[:, :min(rank, num_labelled, grad.shape[1] - 1)]
        grad = grad - (grad @ basis) @ basis.T
    norms = grad.norm(dim=1)                                                         # (V,)
    floor = float(norms.topk(max_size + 1).values[-1])
    chosen = (norms > MIN_GAP * floor).nonzero().flatten() if floor > 0 else (norms > 0).nonzero().flatten()
    if len(chosen) == 0 or len(chosen) > max_size:
        logger.warning("no clear token set in the word-embedding gradient (%d rows above %.0fx the floor): "
                       "decoding over the whole vocabulary", len(chosen), MIN_GAP)
        return torch.arange(len(norms), device=norms.device), False
    return chosen, True


def infer_priors(gradients: Mapping[str, torch.Tensor], model: BertForMaskedLM, batch_size: int) -> MaskedLMPriors:
    """Read the priors of a masked-LM gradient (see the module docstring)."""
    emb = model.bert.embeddings
    names = {
        "position": parameter_name(model, emb.position_embeddings.weight),
        "word": parameter_name(model, emb.word_embeddings.weight),
        "bias": parameter_name(model, model.cls.predictions.bias),
    }
    for role, name in names.items():
        if name not in gradients:
            raise GradientMismatchError(f"the gradient lacks {name!r} ({role}); cannot read priors")
    length = sequence_length(gradients[names["position"]])
    labels, counts, m = label_words(gradients[names["bias"]], max_labels=batch_size * length)
    tokens, found = token_set(gradients[names["word"]], batch_size * length + len(labels), m)
    if found:  # a label word replaced by [MASK] everywhere has no input-side row: keep it a candidate anyway
        tokens = torch.cat([tokens, labels]).unique()
    logger.info("priors: sequence length %d, %d labelled position(s) of %d distinct word(s), "
                "token set of %d%s", length, m, len(labels), len(tokens), "" if found else " (whole vocabulary)")
    return MaskedLMPriors(length, tokens, labels, counts, m, found)
