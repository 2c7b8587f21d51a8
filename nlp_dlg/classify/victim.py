"""The classification victim: labelled sentences, tokenized, padded, and the gradient of the model's own mean
cross-entropy, shared as a gradient file (never the text or the labels)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nlp_dlg.engine.errors import InputDataError
from nlp_dlg.engine.observation import GradientObservation
from nlp_dlg.engine.victim import loss_gradients, shared_metadata

TASK = "classification"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledBatch:
    """The private truth of one batch: sentences, ids ``(B, T)``, mask, labels ``(B,)``."""

    sentences: tuple[str, ...]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def classification_gradient(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                            *, train_mode: bool = False) -> dict[str, torch.Tensor]:
    """The gradient of the classifier's mean cross-entropy, per named parameter, on the model's device."""
    device = model.get_input_embeddings().weight.device
    return loss_gradients(model, lambda: model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                               labels=labels.to(device)).loss, train_mode=train_mode)


def capture_classification(model: Any, tokenizer: Any, sentences: Sequence[str], labels: Sequence[int], *,
                           batch_size: int = 1, max_length: int = 128, model_info: dict[str, Any],
                           tokenizer_name: str | None = None) -> list[tuple[GradientObservation, LabelledBatch]]:
    """One gradient observation per batch of labelled ``sentences`` (in input order), with its private truth."""
    if len(labels) != len(sentences) or not sentences:
        raise InputDataError(f"labels: expected one per sentence ({len(sentences)}), got {len(labels)}")
    classes = model.config.num_labels
    if any(not isinstance(y, int) or not 0 <= y < classes for y in labels):
        raise InputDataError(f"labels: expected integers in [0, {classes}), got {list(labels)}")
    out = []
    for b, start in enumerate(range(0, len(sentences), batch_size)):
        chunk = tuple(sentences[start:start + batch_size])
        enc = tokenizer(list(chunk), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        truth = LabelledBatch(chunk, enc["input_ids"], enc["attention_mask"],
                              torch.tensor(labels[start:start + batch_size]))
        grads = classification_gradient(model, truth.input_ids, truth.attention_mask, truth.labels)
        meta = shared_metadata(TASK, toolkit="nlp_dlg", model_info=model_info, batch_size=len(chunk),
                               batch_index=b, train_mode=False, defense=None)
        meta["tokenizer"] = tokenizer_name
        out.append((GradientObservation(grads, meta), truth))
        logger.info("captured batch %d: %d labelled sentence(s)", b, len(chunk))
    return out
