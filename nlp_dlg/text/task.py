"""The masked-LM task itself, shared by the victim (who computes the gradient) and the attacker (who
recomputes it on a guess): BERT's mean cross-entropy over the selected tokens, and how token ids read as text.
Neither side imports the other; both import this."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from nlp_dlg.engine.victim import loss_gradients

TASK = "masked-lm"


def masked_lm_gradient(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       labels: torch.Tensor, *, train_mode: bool = False) -> dict[str, torch.Tensor]:
    """One participant's gradient: mean masked-LM loss over the selected tokens (``labels`` != -100), per named
    parameter, on the model's device (the inputs are moved there)."""
    device = model.get_input_embeddings().weight.device
    return loss_gradients(model, lambda: model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                               labels=labels.to(device)).loss, train_mode=train_mode)


def decode_text(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """Plain text: special tokens stripped but ``[UNK]`` (a word the vocabulary lacks is shown, not dropped), word
    pieces merged."""
    special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    kept = [int(i) for i in ids if int(i) not in special]
    return tokenizer.decode(kept, clean_up_tokenization_spaces=True).strip()
