"""The causal-LM task itself, shared by the victim and the attacker: next-token cross-entropy averaged over every
predicted token of the batch (padding ignored), as transformers' causal LMs compute it; and how ids read as text."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from nlp_dlg.engine.victim import loss_gradients

TASK = "causal-lm"


def causal_lm_gradient(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                       train_mode: bool = False) -> dict[str, torch.Tensor]:
    """One participant's gradient of the mean next-token loss (``input_ids (B, T)``, right-padded; padded positions
    are neither predicted nor predict), per named trainable parameter, on the model's device."""
    device = model.get_input_embeddings().weight.device
    ids, mask = input_ids.to(device), attention_mask.to(device)
    labels = ids.masked_fill(mask == 0, -100)
    return loss_gradients(model, lambda: model(input_ids=ids, attention_mask=mask, labels=labels).loss,
                          train_mode=train_mode, trainable_only=True)


def decode_text(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """Plain text, special tokens (padding, end of text) stripped."""
    special = set(tokenizer.all_special_ids)
    return tokenizer.decode([int(i) for i in ids if int(i) not in special]).strip()
