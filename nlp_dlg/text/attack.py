"""The attacker: reconstruct sentences from one masked-LM gradient observation.

Methods:

* ``span`` (default): the analytic leakage of :mod:`nlp_dlg.text.analytic` (tokens from the first
  attention layer's span, sentences certified by the second layer's, labels placed from the head's
  gradient) combined with DLG: when the analytics cannot certify every sentence (train-mode dropout,
  noise, more tokens than the hidden size, a missing gradient), the gradient matching below takes over,
  started from the analytic guess where there is one, with the padding (attention mask) its sentence
  lengths give. A batch with some sentences certified is *peeled*: their share of the gradient is removed
  and the others are attacked as a batch of their own (smaller spans, cheaper matching); without
  peeling, the matching holds the certified sentences fixed. Output: the original sentences, masked
  words filled in.
* ``dlg``: DLG's gradient matching (dummy embeddings + soft labels + nearest-token decoding, L-BFGS)
  with priors read off the gradient itself: sequence length, label words and the token set
  (:mod:`nlp_dlg.text.priors`), and cosine distance by default. ``use_priors=False`` with ``l2`` is the
  paper's algorithm as written, kept for comparison.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from transformers import BertForMaskedLM, PreTrainedTokenizerBase

from nlp_dlg.engine.device import model_device
from nlp_dlg.engine.distance import CERTIFY_DISTANCE, certificate_distance
from nlp_dlg.engine.errors import ConfigError
from nlp_dlg.engine.matcher import GradientMatcher, StepRecord
from nlp_dlg.engine.observation import GradientObservation, as_gradient
from nlp_dlg.engine.peel import remove_share
from nlp_dlg.text.analytic import (
    SpanUnavailable,
    attention_input_span,
    label_known_sentences,
    nearest_tokens,
    place_labels,
    position_candidates,
    search_sentences,
)
from nlp_dlg.text.config import METHODS, TextAttackConfig
from nlp_dlg.text.plugin import MaskedLMPlugin
from nlp_dlg.text.priors import MaskedLMPriors, infer_priors
from nlp_dlg.text.steps import Reconstruction, TextCallback, TextStep
from nlp_dlg.text.task import TASK, decode_text, masked_lm_gradient

__all__ = ["METHODS", "AnalyticGuess", "MaskedLMAttack", "Reconstruction", "TextAttackConfig", "TextCallback",
           "TextStep", "decode_text"]

logger = logging.getLogger(__name__)
T = TypeVar("T")
NEAREST_MARGIN = 2.0     # an inexact one-sentence guess stands when each position's nearest token is this much nearer


@dataclass(frozen=True)
class AnalyticGuess:
    """What the span checks and the analytic labels give for one batch."""

    ids: torch.Tensor             # (B, T) the original sentences: labelled positions show their words
    inputs: torch.Tensor          # (B, T) the input ids the model saw ([MASK] where masked), padded
    mask: torch.Tensor            # (B, T) attention mask: each sentence's length
    labels: torch.Tensor          # (B, T) the label word at each labelled position, -100 elsewhere
    rows_certified: torch.Tensor  # (B,) bool: this sentence's input fits the second layer's span exactly
    certified: bool               # the whole guess gives the observed gradient back
    distance: float               # gradient cosine distance of the guess
    unambiguous: bool             # an inexact one-sentence guess whose nearest tokens stand out
    interrupted: bool = False     # Ctrl-C stopped the sentence search: the sentences found so far


class MaskedLMAttack:
    """Reconstruct the sentences behind masked-LM gradients.

    Args:
        model: the model the gradient was computed on (eval mode).
        tokenizer: its tokenizer.
        config: method and engine options.
        callbacks: text callbacks, called every ``config.log_every`` steps with the decoded texts.

    Example:
        >>> attack = MaskedLMAttack(model, tokenizer)  # doctest: +SKIP
        >>> recs = attack.attack(observation, generator=torch.Generator().manual_seed(0))  # doctest: +SKIP
        >>> recs[0].reconstruction  # doctest: +SKIP
    """

    def __init__(self, model: BertForMaskedLM, tokenizer: PreTrainedTokenizerBase,
                 config: TextAttackConfig | None = None, *, callbacks: Sequence[TextCallback] = ()) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config or TextAttackConfig()
        self.callbacks = tuple(callbacks)

    def _batch_size(self, observation: GradientObservation) -> int:
        task = observation.metadata.get("task", TASK)
        if task != TASK:
            raise ConfigError(f"gradient task: expected {TASK!r}, got {task!r}")
        batch_size = int(observation.metadata.get("batch_size", 1))
        if batch_size <= 0:
            raise ConfigError(f"batch_size in gradient metadata: expected a positive integer, got {batch_size}")
        return batch_size

    def plugin_for(self, observation: GradientObservation, *, priors: MaskedLMPriors | None = None,
                   guess: AnalyticGuess | None = None) -> MaskedLMPlugin:
        """The engine plugin for one observation (priors read off its gradient unless given). With an
        analytic ``guess`` the matching starts from its input ids, with its padding, and keeps its certified
        sequences fixed."""
        batch_size = self._batch_size(observation)
        priors = priors or infer_priors(observation.gradients, self.model, batch_size)
        tok = self.tokenizer
        # Every BERT input starts with [CLS]; a single sequence has no padding, so it ends with [SEP].
        boundary = (tok.cls_token_id, tok.sep_token_id if batch_size == 1 else None)
        start = {} if guess is None else {
            "initial_ids": guess.inputs, "attention_mask": guess.mask if batch_size > 1 else None,
            "frozen_rows": guess.rows_certified, "pad_id": tok.pad_token_id}
        return MaskedLMPlugin(self.model, priors, batch_size, use_priors=self.config.use_priors, boundary=boundary,
                              matched_blocks=self.config.matched_blocks(), **start)

    def attack(self, observation: GradientObservation, *, generator: torch.Generator,
               batch: int | None = None) -> list[Reconstruction]:
        """Reconstruct every sequence of the observed batch, on the model's device (``generator``: CPU)."""
        observation.check_shapes({n: p.shape for n, p in self.model.named_parameters()})
        # a FedAvg weight delta becomes its mean gradient; the tensors go where the model is
        observation = as_gradient(observation).to(model_device(self.model))
        batch = int(observation.metadata.get("batch_index", 0)) if batch is None else batch
        batch_size = self._batch_size(observation)
        priors = infer_priors(observation.gradients, self.model, batch_size)
        guess = None
        if self.config.method == "span":  # the config refuses span without priors
            started = time.perf_counter()
            try:
                guess = self._analytic(observation, priors, batch_size, generator)
            except KeyboardInterrupt:   # no candidate yet: the batch is reported, empty and interrupted
                logger.warning("batch %d: interrupted during the span checks, before any candidate", batch)
                return [Reconstruction(batch, i, (), "", float("nan"), 0, 0, time.perf_counter() - started,
                                       self.config.method, interrupted=True) for i in range(batch_size)]
            done = None if guess is None else self._from_guess(observation, guess, priors, generator, batch, started)
            if done is not None:
                return done
        return self._match(observation, priors, generator, batch, guess)

    def _from_guess(self, observation: GradientObservation, guess: AnalyticGuess, priors: MaskedLMPriors,
                    generator: torch.Generator, batch: int, started: float) -> list[Reconstruction] | None:
        """The sentences the analytic guess settles: all of them (certified, or one unambiguous noisy sentence),
        or the certified ones with the rest attacked on the peeled gradient; None: gradient matching follows."""
        seconds = time.perf_counter() - started
        texts = [decode_text(self.tokenizer, row.tolist()) for row in guess.ids]
        record = StepRecord(0, 0, 0, guess.distance, guess.distance, seconds, {})
        for cb in self.callbacks:
            cb(TextStep(record, tuple(texts), guess.ids))
        known = self._known(guess, texts, batch, seconds)
        if guess.interrupted:   # Ctrl-C in the sentence search: what it found, no matching after it
            return [dataclasses.replace(r, interrupted=True, certified=r.certified and guess.certified) for r in known]
        if guess.certified or guess.unambiguous:
            if guess.certified:
                logger.info("batch %d: every sentence certified by the span checks (%.1fs, gradient cosine distance "
                            "%.2g)", batch, seconds, guess.distance)
            else:
                logger.warning("batch %d: noisy gradient (cosine distance %.2g to the guess): every position's "
                               "nearest token is unambiguous, kept as it is (not certified)", batch, guess.distance)
            return [dataclasses.replace(r, certified=guess.certified) for r in known]
        kept, batch_size = int(guess.rows_certified.sum()), len(guess.rows_certified)
        if kept == batch_size:   # every sentence fits the spans, yet the guess's gradient is not the observed one
            logger.warning("batch %d: every sentence fits the attention spans but the guess's own gradient is not the "
                           "observed one (cosine distance %.2g: a scaled or altered gradient?): the sentences are "
                           "kept, not certified", batch, guess.distance)
            return [dataclasses.replace(r, certified=False) for r in known]
        if kept and self.config.peel:
            logger.info("batch %d: %d of %d sentence(s) certified; their share of the gradient removed, the other "
                        "%d attacked on the rest", batch, kept, batch_size, batch_size - kept)
            others = iter(self.attack(self._peel(observation, guess, priors), generator=generator, batch=batch))
            known = self._known(guess, texts, batch, time.perf_counter() - started)
            return [known[i] if bool(held) else dataclasses.replace(next(others), index=i)
                    for i, held in enumerate(guess.rows_certified)]
        logger.warning("batch %d: the span checks certified %d of %d sentence(s): gradient matching from the analytic "
                       "guess%s", batch, kept, batch_size, ", the certified ones held fixed" if kept else "")
        return None

    def _known(self, guess: AnalyticGuess, texts: Sequence[str], batch: int, seconds: float) -> list[Reconstruction]:
        """The guess's sentences as reconstructions (certified where their rows are)."""
        return [Reconstruction(batch, i, tuple(row.tolist()), text, guess.distance, 0, 0, seconds, self.config.method,
                               certified=bool(held))
                for i, (row, text, held) in enumerate(zip(guess.ids, texts, guess.rows_certified))]

    def _peel(self, observation: GradientObservation, guess: AnalyticGuess,
              priors: MaskedLMPriors) -> GradientObservation:
        """The gradient of the batch's uncertified sentences alone.

        The masked-LM loss is the mean over the batch's M labelled positions and the sentences of a batch
        do not interact, so the batch gradient is ``Σ_b (m_b / M) g_b`` with ``g_b`` sentence b's own gradient
        over its ``m_b`` labels. The certified sentences (labels placed by :func:`label_known_sentences`) give
        their share exactly, in one pass: their own batch's mean loss is ``Σ_b m_b g_b / Σ_b m_b``. What is left,
        rescaled to the remaining labels, is the gradient of the other sentences as a batch of their own: smaller
        spans, fewer candidates, cheaper matching."""
        rows = guess.rows_certified.nonzero().flatten()
        labels = guess.labels[rows]
        removed = int((labels != -100).sum())
        own = masked_lm_gradient(self.model, guess.inputs[rows], guess.mask[rows], labels)
        rest = remove_share(observation.gradients, own, removed / priors.num_labelled)
        # a gradient now (a FedAvg delta was converted before): no "update" to convert again
        metadata = {k: v for k, v in observation.metadata.items() if k != "update"}
        metadata["batch_size"] = len(guess.rows_certified) - len(rows)
        return GradientObservation(rest, metadata)

    def _analytic(self, observation: GradientObservation, priors: MaskedLMPriors, batch_size: int,
                  generator: torch.Generator) -> AnalyticGuess | None:
        """The span checks and analytic labels, or None where the checks cannot work (logged): the input ids
        (:meth:`_inputs`), the labels placed on them (:meth:`_labels`), and the certificate, the guess's own
        gradient compared with the observed one."""
        grads = observation.gradients
        found = self._inputs(grads, priors, batch_size, generator)
        labelled = None if found is None else self._labels(grads, *found[:3], priors)
        if found is None or labelled is None:
            return None
        (inputs, mask, rows_certified, unambiguous, interrupted), (labels, misfit) = found, labelled
        ids = torch.where(labels != -100, labels, inputs)
        distance = certificate_distance(masked_lm_gradient(self.model, inputs, mask, labels), grads)
        # the certificate: the guess, fed to the model, gives the observed gradient back
        certified = distance < CERTIFY_DISTANCE
        logger.info("span check: label misfit %.2g, gradient cosine distance %.2g", misfit, distance)
        return AnalyticGuess(ids, inputs, mask, labels, rows_certified | certified, certified, distance,
                             unambiguous and not certified, interrupted)

    def _inputs(self, grads: Mapping[str, torch.Tensor], priors: MaskedLMPriors, batch_size: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool, bool] | None:
        """``(input ids, attention mask, certified rows, unambiguous, interrupted)`` from the exact span checks
        (``interrupted``: Ctrl-C stopped the sentence search) or, for one sentence whose gradient is not exact
        (noise, quantisation, pruning, dropout; its span still has rank T), the nearest token per position,
        ``unambiguous`` when each stands out by ``NEAREST_MARGIN``. None where neither works."""
        exact, why = _unless_unavailable(self._exact_guess, grads, priors, batch_size, generator)
        if exact is not None:
            inputs, mask, rows, interrupted = exact
            return inputs, mask, rows, False, interrupted
        if batch_size == 1:
            logger.warning("span check: %s; one sentence: taking the nearest token to the rank-%d span at each "
                           "position (an inexact gradient?)", why, priors.sequence_length)
            nearest, why = _unless_unavailable(self._nearest_guess, grads, priors)
            if nearest is not None:
                return (*nearest, False)
        logger.warning("span check unavailable (%s): gradient matching only", why)
        return None

    def _nearest_guess(self, grads: Mapping[str, torch.Tensor],
                       priors: MaskedLMPriors) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        length, device = priors.sequence_length, model_device(self.model)
        span1 = attention_input_span(grads, self.model, 0, length, rank=length)
        ids, margin = nearest_tokens(self.model, span1, priors.token_set, length)
        ids[0], ids[-1] = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        inner = margin[1:-1]
        unambiguous = bool(len(inner) == 0 or float(inner.min()) >= NEAREST_MARGIN)
        logger.info("nearest tokens: smallest margin %.3g (%s)", float(inner.min()) if len(inner) else float("inf"),
                    "unambiguous" if unambiguous else "ambiguous: gradient matching follows")
        return (ids[None].to(device), torch.ones(1, length, dtype=torch.long, device=device),
                torch.zeros(1, dtype=torch.bool, device=device), unambiguous)

    def _labels(self, grads: Mapping[str, torch.Tensor], inputs: torch.Tensor, mask: torch.Tensor,
                rows_certified: torch.Tensor, priors: MaskedLMPriors) -> tuple[torch.Tensor, float] | None:
        """Labels placed on the guess from the head's gradient, and their misfit; None where they cannot be.
        With only some sentences certified the wrong ones skew the whole-batch solution: the certified ones are
        labelled apart (:func:`label_known_sentences`)."""
        partly = bool(rows_certified.any()) and not bool(rows_certified.all())
        placed, why = _unless_unavailable(place_labels, self.model, grads, inputs, mask, priors)
        if placed is None and not partly:
            logger.warning("span check unavailable (%s): gradient matching only", why)
            return None
        if not partly:
            return placed
        labels = placed[0] if placed is not None else torch.full_like(inputs, -100)
        if placed is None:
            logger.warning("labels of the whole guess: %s", why)
        known, why = _unless_unavailable(label_known_sentences, self.model, grads, inputs[rows_certified],
                                         mask[rows_certified], priors)
        if known is None:
            logger.warning("span check unavailable (%s): gradient matching only", why)
            return None
        labels[rows_certified] = known[0]
        return labels, known[1]

    def _exact_guess(self, grads: Mapping[str, torch.Tensor], priors: MaskedLMPriors, batch_size: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """Sentences from the exact span checks: ``(input ids (B, T), attention mask (B, T), certified (B,),
        interrupted)``."""
        tok, length, device = self.tokenizer, priors.sequence_length, model_device(self.model)
        span1 = attention_input_span(grads, self.model, 0, batch_size * length)
        candidates = position_candidates(self.model, span1, priors.token_set, length)
        logger.info("span check: rank %d; candidates per position %s", span1.rank, [len(c) for c in candidates])
        span2 = attention_input_span(grads, self.model, 1, batch_size * length)
        search = search_sentences(self.model, span2, candidates, batch_size, cls_id=tok.cls_token_id,
                                  sep_id=tok.sep_token_id, generator=generator, peel_later=self.config.peel)
        sentences = search.result()
        if not sentences:
            raise SpanUnavailable("no sentence fits the attention spans")
        logger.info("span check: %d/%d sentence(s) fit the second layer", sum(s.certified for s in sentences),
                    batch_size)
        certified = [s.certified for s in sentences] + [False] * (batch_size - len(sentences))
        sentences += sentences[-1:] * (batch_size - len(sentences))     # stand-ins, never certified
        inputs = torch.full((batch_size, length), tok.pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros(batch_size, length, dtype=torch.long, device=device)
        for i, s in enumerate(sentences):
            inputs[i, :len(s.token_ids)] = torch.tensor(s.token_ids, device=device)
            mask[i, :len(s.token_ids)] = 1
        return inputs, mask, torch.tensor(certified, device=device), search.interrupted

    def _match(self, observation: GradientObservation, priors: MaskedLMPriors, generator: torch.Generator,
               batch: int, guess: AnalyticGuess | None) -> list[Reconstruction]:
        plugin = self.plugin_for(observation, priors=priors, guess=guess)
        every, steps = self.config.log_every, self.config.matching.steps
        patience = self.config.patience
        seen = {"texts": None, "same": 0}

        def on_step(record: StepRecord) -> bool:
            logged = record.step % every == 0 or record.step == steps
            if not (patience or (logged and self.callbacks)):
                return False
            ids = plugin.decode(record.candidate)
            texts = [decode_text(self.tokenizer, row.tolist()) for row in ids]
            seen["same"] = seen["same"] + 1 if texts == seen["texts"] else 0
            seen["texts"] = texts
            stop = bool(patience) and seen["same"] >= patience
            if logged or stop:
                event = TextStep(record, tuple(texts), ids)
                stop = any([bool(cb(event)) for cb in self.callbacks]) or stop
            return stop

        matcher = GradientMatcher(plugin, self.config.matching, callbacks=[on_step])
        result = matcher.run(observation.gradients, generator=generator)
        ids = plugin.decode(result.leaves)
        held = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
        if guess is not None:
            held = guess.rows_certified
            ids[held] = guess.ids[held]           # the certified sentences, their labels placed analytically
        texts = [decode_text(self.tokenizer, row.tolist()) for row in ids]
        for i, text in enumerate(texts):
            if not text.strip():
                logger.warning("batch %d, sequence %d: the matching decoded only special tokens (an empty "
                               "reconstruction; gradient distance %.3g)", batch, i, result.distance)
        return [Reconstruction(batch, i, tuple(row.tolist()), text, result.distance, result.steps,
                               result.total_evaluations, result.seconds, self.config.method, result.interrupted,
                               certified=bool(held[i]))
                for i, (row, text) in enumerate(zip(ids, texts))]


def _unless_unavailable(fn: Callable[..., T], *args: Any) -> tuple[T | None, str | None]:
    """``(fn(*args), None)``, or ``(None, why)`` where the span checks cannot work on this gradient: the one place
    where the analytics' :class:`SpanUnavailable` becomes a value the attack's stages branch on."""
    try:
        return fn(*args), None
    except SpanUnavailable as exc:
        return None, str(exc)
