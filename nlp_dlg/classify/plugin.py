"""The classification plugin of the engine (the paper's matching on an encoder classifier): dummy input embeddings
``(B, T, H)`` and soft labels ``(B, K)`` over the classes; the loss is the cross-entropy against the soft labels.
The word-embedding matrix is not matched (its gradient's input side cannot come from dummy embeddings). Decoding:
each position's first-layer input ``LayerNorm(word + position + type)`` against the candidates' (the batch's token
set, read off the word-embedding gradient), each candidate shown at least once; the label from the soft label."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from nlp_dlg.engine.device import randn
from nlp_dlg.text.analytic import embedding_output
from nlp_dlg.text.plugin import covering_assignment
from nlp_dlg.text.priors import parameter_name


class ClassificationPlugin:
    """Engine plugin for classification gradients of ``batch_size`` sequences of ``length`` tokens."""

    def __init__(self, model: Any, *, batch_size: int, length: int, candidates: torch.Tensor) -> None:
        self.model, self.batch_size, self.length = model, batch_size, length
        self.embedding = model.get_input_embeddings().weight.detach()              # (V, H)
        self.candidates = candidates.to(self.embedding.device)                      # (C,)
        self._word = parameter_name(model, model.get_input_embeddings().weight)
        with torch.no_grad():
            grid = self.embedding[self.candidates][:, None].expand(-1, length, -1)  # (C, T, H)
            self._options = embedding_output(model, grid, torch.arange(length, device=self.embedding.device))

    def matched_parameters(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if n != self._word}

    def init_leaves(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        device, (b, t, h) = self.embedding.device, (self.batch_size, self.length, self.embedding.shape[1])
        return {"inputs_embeds": randn(b, t, h, generator=generator, device=device) * float(self.embedding.std()),
                "label_logits": randn(b, self.model.config.num_labels, generator=generator, device=device)}

    def task_loss(self, leaves: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logp = self.model(inputs_embeds=leaves["inputs_embeds"]).logits.log_softmax(-1)    # (B, K)
        return -(leaves["label_logits"].softmax(-1) * logp).sum(-1).mean()

    def project(self, leaves: Mapping[str, torch.Tensor]) -> None:
        return None

    def decode(self, leaves: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``(B, T)`` (nearest candidate per position, every candidate at least once: each is some
        position's input, :func:`~nlp_dlg.text.plugin.covering_assignment`) and labels ``(B,)``."""
        with torch.no_grad():
            x = embedding_output(self.model, leaves["inputs_embeds"],
                                 torch.arange(self.length, device=self.embedding.device))   # (B, T, H)
            dist = torch.cdist(x.transpose(0, 1), self._options.transpose(0, 1))           # (T, B, C)
            flat = dist.transpose(0, 1).reshape(-1, len(self.candidates))                 # (B·T, C)
            every = torch.ones(len(self.candidates), dtype=torch.bool, device=flat.device)
            ids = self.candidates[covering_assignment(flat, every)].view(self.batch_size, self.length)
        return ids, leaves["label_logits"].argmax(-1)
