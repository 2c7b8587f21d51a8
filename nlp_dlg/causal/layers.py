"""Where a decoder's layers read their inputs, found by running the model once with hooks, so that any Hugging Face
decoder works without naming its parameters: the blocks are the ``ModuleList`` of ``config.num_hidden_layers``
modules; a block's first projections are the first linear maps (``nn.Linear`` or GPT-2's ``Conv1D``) called in it
whose weight gradient is shared and not zero, with every other such map reading the same input (GPT-2's
``c_attn``; LLaMA's ``q_proj``, ``k_proj``, ``v_proj``; with LoRA, where only adapters are shared and ``B`` starts
at zero so ``A``'s gradient is zero, the ``lora_B`` maps, which read ``A x``); the head is
``get_output_embeddings()`` and the final norm is the module whose output it reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nlp_dlg.engine.errors import ConfigError
from nlp_dlg.engine.span import Span, SpanUnavailable, input_span


def _cached(cache: Any) -> int:
    return 0 if cache is None else int(cache.get_seq_length())


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted input is seen."""


def _is_projection(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


@dataclass(frozen=True)
class Projection:
    """A linear map reading a layer's input: its weight's parameter name and whether the weight is stored
    ``(in, out)`` (GPT-2's Conv1D) rather than ``(out, in)``."""

    name: str
    module: nn.Module
    transposed: bool

    def gradient(self, gradients: Mapping[str, torch.Tensor]) -> torch.Tensor:
        g = gradients[self.name]
        return g.T if self.transposed else g                                        # (out, in)


class DecoderLayers:
    """A decoder's layer inputs, spans and head, found on ``model`` by one probe forward pass."""

    def __init__(self, model: nn.Module, gradients: Mapping[str, torch.Tensor] | None = None) -> None:
        self.model = model
        self.shared = None if gradients is None else {n for n, g in gradients.items() if bool(g.detach().any())}
        layers = int(getattr(model.config, "num_hidden_layers", 0))
        found = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == layers]
        if not found:
            raise ConfigError(f"{type(model).__name__}: no list of its {layers} blocks found")
        self.blocks = found[0]
        names = {m: n for n, m in model.named_modules()}
        seen: list[list[tuple[nn.Module, torch.Tensor]]] = [[], []]     # the calls in blocks 0 and 1, in order
        self._probe([m.register_forward_pre_hook(lambda m, args, calls=calls: calls.append((m, args[0])))
                     for block, calls in zip(self.blocks[:2], seen) for m in block.modules() if _is_projection(m)])
        self.projections = [self._first_projections(calls, names) for calls in seen[:len(self.blocks[:2])]]

    def _probe(self, hooks: list[Any]) -> None:
        """One forward pass of a two-token probe with ``hooks`` in place (removed after)."""
        probe = torch.tensor([[0, 1]], device=self.model.get_input_embeddings().weight.device)
        try:
            with torch.no_grad():
                self.model(input_ids=probe, attention_mask=torch.ones_like(probe))
        finally:
            for h in hooks:
                h.remove()

    def _first_projections(self, seen: list[tuple[nn.Module, torch.Tensor]],
                           names: Mapping[nn.Module, str]) -> list[Projection]:
        """Of a block's projection calls ``seen`` in the probe: the first shared one, and those reading its input."""
        if self.shared is not None:           # only maps whose gradient the file holds, and not all zero
            seen = [(m, x) for m, x in seen if f"{names[m]}.weight" in self.shared]
        if not seen:
            raise SpanUnavailable(f"{type(self.model).__name__}: no linear map of its first blocks has a shared, "
                                  "non-zero gradient")
        first = seen[0][1]
        return [Projection(f"{names[m]}.weight", m, type(m).__name__ == "Conv1D")
                for m, x in seen if x is first or (x.shape == first.shape and torch.equal(x, first))]

    def inputs(self, input_ids: torch.Tensor | None, layer: int, attention_mask: torch.Tensor | None = None, *,
               inputs_embeds: torch.Tensor | None = None, **forward: Any) -> torch.Tensor:
        """``(B, T, H)``: what layer ``layer``'s first projections read for ``input_ids`` (or ``inputs_embeds``); the
        forward pass stops there."""
        box: list[torch.Tensor] = []

        def grab(module: nn.Module, args: tuple[Any, ...]) -> None:
            box.append(args[0])
            raise _Stop

        given = {"input_ids": input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
        if attention_mask is None:                 # every position is a token (no padding in a probe)
            width = (given.get("input_ids", inputs_embeds)).shape[1] + _cached(forward.get("cache"))
            attention_mask = torch.ones(len(given.get("input_ids", inputs_embeds)), width, dtype=torch.long,
                                        device=self.model.get_input_embeddings().weight.device)
        hook = self.projections[layer][0].module.register_forward_pre_hook(grab)
        try:
            with torch.no_grad():
                self.model(**given, attention_mask=attention_mask, **forward)
        except _Stop:
            pass
        finally:
            hook.remove()
        return box[0]

    def extension_inputs(self, prefixes: torch.Tensor,
                         candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(F, C, H)``: layer 1's input at the position after each prefix ``(F, p)`` when candidate ``c`` follows;
        and ``(F, H)``, its input at each prefix's last position (None for empty prefixes).

        Under the causal mask that input depends on the prefix and the candidate only; the prefix runs once
        through layer 0 into a key/value cache that every candidate reuses (only the new position is computed)."""
        from transformers import DynamicCache

        f, c = prefixes.shape[0], len(candidates)
        if prefixes.shape[1] == 0:
            return self.inputs(candidates[:, None], 1)[:, 0].expand(f, -1, -1), None
        cache = DynamicCache(config=self.model.config)
        last = self.inputs(prefixes, 1, cache=cache, use_cache=True)[:, -1]   # fills layer 0's cache
        cache.layers[0].batch_repeat_interleave(c)
        ids = candidates.repeat(f)[:, None]                                         # (F * C, 1)
        x = self.inputs(ids, 1, cache=cache, use_cache=True)[:, -1]     # (F * C, H)
        return x.reshape(f, c, -1), last

    def span(self, gradients: Mapping[str, torch.Tensor], layer: int, *, max_rank: int) -> Span:
        """The span of layer ``layer``'s inputs, from its first projections' weight gradients."""
        if layer >= len(self.projections):
            raise SpanUnavailable(f"the model has {len(self.blocks)} block(s): no layer {layer + 1} to check against")
        missing = [p.name for p in self.projections[layer] if p.name not in gradients]
        if missing:
            raise SpanUnavailable(f"the gradient lacks {', '.join(missing)}: no span check")
        return input_span([p.gradient(gradients) for p in self.projections[layer]], max_rank=max_rank,
                          what=f"layer {layer}")

    def head_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's input ``(B, T, H)`` (the final norm's output) and the next-token probabilities ``(B, T, V)``."""
        box: list[torch.Tensor] = []
        head = self.model.get_output_embeddings()
        hook = head.register_forward_pre_hook(lambda m, args: box.append(args[0]))
        try:
            with torch.no_grad():
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        finally:
            hook.remove()
        return box[0], logits.double().softmax(-1)

    def final_norm(self) -> tuple[str, nn.Module] | None:
        """The name and module of the norm whose output the head reads (None when there is none)."""
        outputs: list[tuple[str, torch.Tensor]] = []
        head_in: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda m, a, out, n=n: outputs.append((n, out)))
                 for n, m in self.model.named_modules() if "norm" in type(m).__name__.lower()]
        hooks.append(self.model.get_output_embeddings().register_forward_pre_hook(lambda m, a: head_in.append(a[0])))
        self._probe(hooks)
        modules = dict(self.model.named_modules())
        for name, out in reversed(outputs):
            if out.shape == head_in[0].shape and torch.equal(out, head_in[0]):
                return name, modules[name]
        return None
