"""The causal-LM plugin of the engine (the paper's matching, on a decoder): dummy input embeddings ``(B, T, H)``
and soft next-token labels ``(B, T − 1, K)``; the loss is the mean next-token cross-entropy against the soft
labels. The input embedding matrix is not matched (its observed gradient has an input side that dummy embeddings
cannot produce; for a tied head that is the head too). ``K`` is the token set the first layer's span shows
(with priors) or the whole vocabulary. Decoding: each position's first-layer input is compared with the
candidates' at that position (the layer's norm makes the embedding identifiable only up to scale); the last
token, which no layer reads, comes from the last soft label."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from nlp_dlg.causal.layers import DecoderLayers
from nlp_dlg.engine.device import randn


class CausalLMPlugin:
    """Engine plugin for causal-LM gradients of ``batch_size`` sequences of ``length`` tokens."""

    def __init__(self, model: torch.nn.Module, *, batch_size: int, length: int, candidates: torch.Tensor) -> None:
        self.model, self.batch_size, self.length = model, batch_size, length
        self.embedding = model.get_input_embeddings().weight.detach()              # (V, H)
        self.candidates = candidates.to(self.embedding.device)                      # (K,)
        self.layers = DecoderLayers(model)
        self._word = next(n for n, p in model.named_parameters() if p is model.get_input_embeddings().weight)
        with torch.no_grad():                                                       # (K, T, H) candidates' inputs
            grid = self.candidates[:, None].expand(-1, length)
            self._options = self.layers.inputs(grid, 0).double()

    def matched_parameters(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if n != self._word and p.requires_grad}

    def init_leaves(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        b, t, h = self.batch_size, self.length, self.embedding.shape[1]
        device = self.embedding.device
        embeds = randn(b, t, h, generator=generator, device=device) * float(self.embedding.std())   # (B, T, H)
        labels = randn(b, t - 1, len(self.candidates), generator=generator, device=device)          # (B, T-1, K)
        return {"inputs_embeds": embeds, "label_logits": labels}

    def task_loss(self, leaves: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits = self.model(inputs_embeds=leaves["inputs_embeds"]).logits[:, :-1]  # (B, T-1, V)
        logp = logits.log_softmax(-1)[..., self.candidates]                          # (B, T-1, K)
        return -(leaves["label_logits"].softmax(-1) * logp).sum(-1).mean()

    def project(self, leaves: Mapping[str, torch.Tensor]) -> None:
        return None

    def decode(self, leaves: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Token ids ``(B, T)``: the nearest candidate's first-layer input per position, the last from the label."""
        with torch.no_grad():
            x = self.layers.inputs(None, 0, inputs_embeds=leaves["inputs_embeds"]).double()  # (B, T, H)
            dist = torch.cdist(x.transpose(0, 1), self._options.transpose(0, 1))    # (T, B, K)
            ids = self.candidates[dist.argmin(-1)].transpose(0, 1).contiguous()     # (B, T)
            ids[:, -1] = self.candidates[leaves["label_logits"][:, -1].argmax(-1)]
        return ids
