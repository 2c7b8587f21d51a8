"""The causal-LM victim: batches of private text, tokenized with the decoder's tokenizer, right-padded, and the
gradient of the next-token loss, shared as a gradient file (never the text or its ids)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from nlp_dlg.causal.task import TASK, causal_lm_gradient
from nlp_dlg.engine.errors import InputDataError
from nlp_dlg.engine.observation import GradientObservation
from nlp_dlg.engine.victim import shared_metadata

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CausalBatch:
    """The private truth of one batch: its sentences and their ids ``(B, T)`` and mask (right-padded)."""

    sentences: tuple[str, ...]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def capture_causal(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sentences: Sequence[str], *,
                   batch_size: int = 1, max_length: int = 64, model_info: dict[str, Any],
                   tokenizer_name: str | None = None, train_mode: bool = False
                   ) -> list[tuple[GradientObservation, CausalBatch]]:
    """One gradient observation per batch of ``sentences`` (in input order), with its private truth."""
    if isinstance(sentences, str) or not sentences or not all(isinstance(s, str) and s.strip() for s in sentences):
        raise InputDataError("sentences: expected a non-empty sequence of non-empty strings")
    out = []
    for b, start in enumerate(range(0, len(sentences), batch_size)):
        chunk = tuple(sentences[start:start + batch_size])
        enc = tokenizer(list(chunk), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        if bool((enc["attention_mask"].sum(1) < 2).any()):
            raise InputDataError(f"batch {b}: a sentence of fewer than 2 tokens has nothing to predict")
        truth = CausalBatch(chunk, enc["input_ids"], enc["attention_mask"])
        grads = causal_lm_gradient(model, truth.input_ids, truth.attention_mask, train_mode=train_mode)
        meta = shared_metadata(TASK, toolkit="nlp_dlg", model_info=model_info, batch_size=len(chunk), batch_index=b,
                               train_mode=train_mode, defense=None)
        meta["tokenizer"] = tokenizer_name
        out.append((GradientObservation(grads, meta), truth))
        logger.info("captured batch %d: %d sentence(s), %d tokens at most", b, len(chunk), truth.input_ids.shape[1])
    return out
