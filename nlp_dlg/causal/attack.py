"""Reconstruct text from a causal-LM gradient: ``span`` (exact, :mod:`nlp_dlg.causal.analytic`; where the span
test cannot work, :mod:`nlp_dlg.causal.pursuit` at batch 1 with LoRA, else gradient matching) or ``dlg`` (the
paper's matching, :mod:`nlp_dlg.causal.plugin`), with the decoded text reported at every logged step."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from nlp_dlg.causal.analytic import recover, token_candidates
from nlp_dlg.causal.config import CausalAttackConfig
from nlp_dlg.causal.layers import DecoderLayers
from nlp_dlg.causal.plugin import CausalLMPlugin
from nlp_dlg.causal.pursuit import recover_one
from nlp_dlg.causal.task import decode_text
from nlp_dlg.engine.matcher import GradientMatcher, StepRecord
from nlp_dlg.engine.span import SpanUnavailable
from nlp_dlg.text.steps import Reconstruction, TextStep

logger = logging.getLogger(__name__)
FALLBACK_LENGTH = 16     # dlg's sequence length where the span cannot give it


class CausalLMAttack:
    """Attack one causal-LM gradient observation with ``model`` (the weights it was computed on)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, config: CausalAttackConfig | None = None, *,
                 callbacks: Sequence[Callable[[TextStep], bool | None]] = ()) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.config = config or CausalAttackConfig()
        self.callbacks = tuple(callbacks)

    def attack(self, observation: Any, *, generator: torch.Generator, batch: int = 0) -> list[Reconstruction]:
        grads = observation.to(self.model.get_input_embeddings().weight.device).gradients
        size = int(observation.metadata.get("batch_size", 1))
        if self.config.method == "span":
            started = time.perf_counter()
            try:
                guess = recover(self.model, grads, batch_size=size, pad_id=self.tokenizer.pad_token_id,
                                max_positions=self.config.max_length)
            except SpanUnavailable as exc:
                if size != 1:
                    logger.warning("batch %d: the span test cannot work on this gradient (%s): gradient matching",
                                   batch, exc)
                else:
                    logger.warning("batch %d: the span test cannot work on this gradient (%s): pursuit", batch, exc)
                    found = self._pursued(grads, generator, batch)
                    if found is not None:
                        return found
            else:
                seconds = time.perf_counter() - started
                return [Reconstruction(batch, i, tuple(s), decode_text(self.tokenizer, s), guess.distance, 0, 0,
                                             seconds, "span", certified=guess.certified)
                        for i, s in enumerate(guess.sequences)]
        return self._matched(grads, size, generator, batch)

    def _pursued(self, grads: Any, generator: torch.Generator, batch: int) -> list[Reconstruction] | None:
        """Batch 1 without a span: :mod:`nlp_dlg.causal.pursuit` (None where the shared tensors do not allow it).
        The order search's rounds reach the callbacks as steps (round 0: the pursuit's sentence)."""
        every, started = self.config.log_every, time.perf_counter()

        def on_round(round_: int, ids: list[int], distance: float, evaluations: int) -> None:
            if round_ % every == 0 or round_ == self.config.pursuit.rounds:
                record = StepRecord(0, round_, evaluations, distance, distance, time.perf_counter() - started, {})
                step = TextStep(record, (decode_text(self.tokenizer, ids),), torch.tensor([ids]))
                for callback in self.callbacks:
                    callback(step)
        try:
            guess = recover_one(self.model, grads, pad_id=self.tokenizer.pad_token_id, generator=generator,
                                config=replace(self.config.pursuit, max_length=self.config.max_length),
                                on_round=on_round)
        except SpanUnavailable as exc:
            logger.warning("batch %d: no pursuit either (%s): gradient matching", batch, exc)
            return None
        return [Reconstruction(batch, 0, tuple(guess.sequence), decode_text(self.tokenizer, guess.sequence),
                               guess.distance, 0, guess.evaluations, guess.seconds, "pursuit",
                               certified=guess.certified)]

    def _shape(self, grads: Any, size: int) -> tuple[int, torch.Tensor]:
        """dlg's sequence length and candidate tokens: from the first layer's span, else a default length and
        the whole vocabulary."""
        vocab = self.model.get_input_embeddings().weight.shape[0]
        every = torch.arange(vocab)
        try:
            layers = DecoderLayers(self.model, grads)
            span = layers.span(grads, 0, max_rank=self.model.get_input_embeddings().weight.shape[1])
        except SpanUnavailable as exc:
            logger.info("no sequence length from the gradient (%s): %d tokens", exc, FALLBACK_LENGTH)
            return FALLBACK_LENGTH, every
        length = max(2, round(span.rank / size) + 1)
        if not self.config.use_priors:
            return length, every
        found = token_candidates(layers, span, max_positions=length)
        return length, torch.unique(torch.cat(found)).cpu() if found else every

    def _matched(self, grads: Any, size: int, generator: torch.Generator, batch: int) -> list[Reconstruction]:
        length, candidates = self._shape(grads, size)
        plugin = CausalLMPlugin(self.model, batch_size=size, length=length, candidates=candidates)
        matcher = GradientMatcher(plugin, self.config.matching, callbacks=[self._on_step(plugin)])
        result = matcher.run(grads, generator=generator)
        ids = plugin.decode(result.leaves)
        return [Reconstruction(batch, i, tuple(row.tolist()), decode_text(self.tokenizer, row.tolist()),
                                     result.distance, result.steps, result.total_evaluations, result.seconds, "dlg",
                                     result.interrupted)
                for i, row in enumerate(ids)]

    def _on_step(self, plugin: CausalLMPlugin) -> Callable[[StepRecord], bool]:
        every, steps = self.config.log_every, self.config.matching.steps

        def on_step(record: StepRecord) -> bool:
            if record.step % every and record.step != steps:
                return False
            ids = plugin.decode(record.candidate)
            event = TextStep(record, tuple(decode_text(self.tokenizer, r.tolist()) for r in ids), ids)
            return any([bool(cb(event)) for cb in self.callbacks])
        return on_step


