"""Exact text and labels from a classification gradient on a BERT-family encoder.

* **Tokens and sentences** as for masked-LM (:mod:`nlp_dlg.text.analytic`): the sequence length from the rows of
  the position-embedding gradient, the batch's tokens from the rows of the word-embedding gradient (with no
  tied decoder it has an input side only), the first attention layer's span per position, and for a batch the
  second layer's span to assemble sentences. With no tied decoder the embedding rows also say where most tokens
  sit (:mod:`nlp_dlg.text.pinning`), which the span test alone cannot on a batch.
* **Labels.** The classifier ``z = W c + b`` on the pooled states ``c_b``: ``∂L/∂W = Σ_b (p_b − e_{y_b}) c_bᵀ / B``.
  With the sentences known, a forward pass gives every ``p_b`` and ``c_b``; ``B ∂L/∂W − Σ_b p_b c_bᵀ =
  −Σ_b e_{y_b} c_bᵀ`` gives each label by least squares.
* **Certificate.** The guess's own gradient is compared with the observed one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from nlp_dlg.classify.victim import classification_gradient
from nlp_dlg.engine.distance import CERTIFY_DISTANCE, certificate_distance
from nlp_dlg.engine.peel import remove_share
from nlp_dlg.engine.span import SpanUnavailable
from nlp_dlg.text.analytic import attention_input_span, position_candidates, search_sentences
from nlp_dlg.text.pinning import narrow_candidates, pin_tokens
from nlp_dlg.text.priors import parameter_name, sequence_length
from nlp_dlg.text.steps import padded_batch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledGuess:
    """Recovered sentences (token ids, unpadded), their labels, and the certificate."""

    sequences: list[list[int]]
    labels: list[int]
    certified: bool
    distance: float


def batch_tokens(gradients: Mapping[str, torch.Tensor], model: Any) -> tuple[int, torch.Tensor]:
    """The sequence length and the token ids of the batch (non-zero rows of the embedding gradients)."""
    emb = model.bert.embeddings
    length = sequence_length(gradients[parameter_name(model, emb.position_embeddings.weight)])
    rows = gradients[parameter_name(model, emb.word_embeddings.weight)].double().norm(dim=1)
    tokens = (rows > 1e-9 * float(rows.max())).nonzero().flatten()
    return length, tokens.to(emb.word_embeddings.weight.device)


def sentences_of(model: Any, tokenizer: Any, gradients: Mapping[str, torch.Tensor], batch_size: int,
                 generator: torch.Generator, *, peel: bool = True) -> list[list[int]]:
    """The batch's sentences from the attention spans (the nearest token per position for one sentence).

    ``peel``: where the search certifies some sentences of a batch but not all, their share of the gradient is
    removed (:func:`peel_sentence`) and the rest is searched as a batch of its own (as masked-LM peeling)."""
    length, tokens = batch_tokens(gradients, model)
    span1 = attention_input_span(gradients, model, 0, batch_size * length)
    candidates = narrow_candidates(position_candidates(model, span1, tokens, length),
                                   pin_tokens(model, gradients, tokens, length))
    logger.info("span check and embedding rows: rank %d; candidates per position %s", span1.rank,
                [len(c) for c in candidates])
    if batch_size == 1:
        if any(len(c) == 0 for c in candidates):
            raise SpanUnavailable("a position has no candidate token")
        return [[int(c[0]) for c in candidates]]
    span2 = attention_input_span(gradients, model, 1, batch_size * length)
    search = search_sentences(model, span2, candidates, batch_size, cls_id=tokenizer.cls_token_id,
                              sep_id=tokenizer.sep_token_id, generator=generator, peel_later=peel)
    certified = [list(s) for s in search.found][:batch_size]
    if peel and certified and len(certified) < batch_size and not search.interrupted:
        rest = dict(gradients)
        for i, sentence in enumerate(certified):
            rest = peel_sentence(model, rest, sentence, batch_size - i, tokenizer.pad_token_id)[0]
        logger.info("%d of %d sentence(s) certified; their share of the gradient removed, the other %d searched "
                    "on the rest", len(certified), batch_size, batch_size - len(certified))
        try:
            return certified + sentences_of(model, tokenizer, rest, batch_size - len(certified), generator, peel=peel)
        except SpanUnavailable as exc:        # the certified sentences stay; the rest as the whole search left it
            logger.warning("the peeled rest: %s; the best uncertified sentences of the whole batch's search instead",
                           exc)
            return [list(s.token_ids) for s in search.result()]
    found = search.result()
    if not found:
        raise SpanUnavailable("no sentence fits the attention spans")
    return [list(s.token_ids) for s in found]


def peel_sentence(model: Any, gradients: Mapping[str, torch.Tensor], sequence: list[int], batch_size: int,
                  pad_id: int) -> tuple[dict[str, torch.Tensor], int]:
    """The gradient of the batch of ``batch_size`` without the known ``sequence``, and the label that removes it.

    The mean cross-entropy gives each sentence the share ``1/B`` (:func:`nlp_dlg.engine.peel.remove_share`), but
    the sentence's gradient depends on its unknown label. Removed with the right one, what only that sentence
    touched is gone: its tokens' word-embedding rows drop to zero (with a wrong label the difference of the two
    labels' gradients stays in every one of them) and the first layer's span loses its positions; the label
    kept is the one that leaves the fewest non-zero embedding rows, then the lowest span rank."""
    embedding = parameter_name(model, model.get_input_embeddings().weight)
    device = model.get_input_embeddings().weight.device
    ids, mask = padded_batch([sequence], pad_id, device)
    length = sequence_length(gradients[parameter_name(model, model.bert.embeddings.position_embeddings.weight)])
    best: tuple[tuple[int, int], dict[str, torch.Tensor], int] | None = None
    for label in range(model.config.num_labels):
        own = classification_gradient(model, ids, mask, torch.tensor([label]))
        rest = remove_share(gradients, own, 1.0 / batch_size)
        rows = int((rest[embedding].norm(dim=1) > 0).sum())
        try:
            rank = attention_input_span(rest, model, 0, max(batch_size - 1, 1) * length).rank
        except SpanUnavailable:
            rank = length * batch_size
        logger.debug("peeling with label %d: %d embedding rows left, first-layer rank %d", label, rows, rank)
        if best is None or (rows, rank) < best[0]:
            best = ((rows, rank), rest, label)
    assert best is not None     # num_labels >= 1
    return best[1], best[2]


def labels_of(model: Any, gradients: Mapping[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor) -> list[int]:
    """Each sentence's label from the classifier's weight gradient, the sentences known."""
    head = model.classifier
    name = parameter_name(model, head.weight)
    pooled: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda m, args: pooled.append(args[0]))
    try:
        with torch.no_grad():
            p = model(input_ids=ids, attention_mask=mask).logits.double().softmax(-1)        # (B, K)
    finally:
        hook.remove()
    c = pooled[0].double()                                                                # (B, H)
    r = len(ids) * gradients[name].double() - p.T @ c                                     # (K, H) = −E C
    e = -r @ torch.linalg.pinv(c)                                                         # (K, B)
    return [int(y) for y in e.argmax(0)]


def recover(model: Any, tokenizer: Any, gradients: Mapping[str, torch.Tensor], *, batch_size: int,
            generator: torch.Generator, peel: bool = True) -> LabelledGuess:
    """Sentences, labels and the certificate of one classification gradient (``peel``: :func:`sentences_of`)."""
    sequences = sentences_of(model, tokenizer, gradients, batch_size, generator, peel=peel)
    ids, mask = padded_batch(sequences, tokenizer.pad_token_id, model.get_input_embeddings().weight.device)
    labels = labels_of(model, gradients, ids, mask)
    distance = certificate_distance(classification_gradient(model, ids, mask, torch.tensor(labels)), gradients)
    logger.info("labels %s; guess's gradient at cosine distance %.3g (%s)", labels, distance,
                "certified" if distance < CERTIFY_DISTANCE else "not certified")
    return LabelledGuess(sequences, labels, distance < CERTIFY_DISTANCE, distance)
