"""The attacker: reconstruct sentences from one masked-LM gradient observation.

Methods:

* ``span`` (default): the analytic leakage of :mod:`nlp_dlg.text.analytic` (tokens from the first
  attention layer's span, sentences certified by the second layer's, labels placed from the head's
  gradient) combined with DLG: when the analytics cannot certify every sentence (train-mode dropout,
  noise, more tokens than the hidden size, a missing gradient), the gradient matching below takes over,
  started from the analytic guess where there is one. Output: the original sentences, masked words
  filled in.
* ``dlg``: DLG's gradient matching (dummy embeddings + soft labels + nearest-token decoding, L-BFGS)
  with priors read off the gradient itself: sequence length, label words and the token set
  (:mod:`nlp_dlg.text.priors`), and cosine distance by default. ``use_priors=False`` with ``l2`` is the
  paper's algorithm as written, kept for comparison.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import BertForMaskedLM, PreTrainedTokenizerBase

from nlp_dlg.engine.distance import gradient_distance
from nlp_dlg.engine.errors import ConfigError
from nlp_dlg.engine.matcher import GradientMatcher, MatchingConfig, StepRecord
from nlp_dlg.engine.observation import GradientObservation, as_gradient
from nlp_dlg.text.analytic import (
    SpanUnavailable,
    assemble_batch,
    attention_input_span,
    nearest_tokens,
    place_labels,
    position_candidates,
)
from nlp_dlg.text.plugin import MaskedLMPlugin
from nlp_dlg.text.priors import MaskedLMPriors, infer_priors
from nlp_dlg.text.victim import TASK, masked_lm_gradient

logger = logging.getLogger(__name__)

METHODS = ("span", "dlg")
CERTIFY_DISTANCE = 1e-4  # cosine distance between the guess's own gradient and the observed one: exact
NEAREST_MARGIN = 2.0     # an inexact one-sentence guess stands when each position's nearest token is this much nearer


@dataclass(frozen=True)
class TextStep:
    """What a text callback sees: the engine's step record and the decoded candidate."""

    record: StepRecord
    texts: tuple[str, ...]      # plain text per sequence
    token_ids: torch.Tensor     # (B, T) decoded token ids


TextCallback = Callable[[TextStep], "bool | None"]
"""Called every ``log_every`` steps; returning True stops the restart."""


@dataclass(frozen=True)
class TextAttackConfig:
    """Attacker options.

    Args:
        method: ``span`` (analytic leakage + DLG) or ``dlg`` (gradient matching); see the module docstring.
        use_priors: read sequence length, labels and token set off the gradient (False: the paper as written).
        matching: the engine's options (optimizer, distance, steps, evaluation cap, restarts, schedule).
        log_every: decode and report every this many steps (and at step 0 and the last step).
        patience: stop once the decoded text of every sequence has stayed the same for this many steps
            (None: run all steps). The attacker needs no ground truth for this.
    """

    method: str = "span"
    use_priors: bool = True
    matching: MatchingConfig = field(default_factory=lambda: MatchingConfig(distance="cosine", max_evaluations=600))
    log_every: int = 1
    patience: int | None = None

    def __post_init__(self) -> None:
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience <= 0):
            raise ConfigError(f"patience: expected a positive integer or None, got {self.patience!r}")
        if self.method not in METHODS:
            raise ConfigError(f"method: expected one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "span" and not self.use_priors:
            raise ConfigError("use_priors=False (no priors) is the paper's plain DLG: use it with method 'dlg'")
        if not isinstance(self.log_every, int) or self.log_every <= 0:
            raise ConfigError(f"log_every: expected a positive integer, got {self.log_every!r}")


@dataclass(frozen=True)
class Reconstruction:
    """One reconstructed sequence."""

    batch: int
    index: int
    token_ids: tuple[int, ...]
    reconstruction: str
    loss: float
    iterations: int
    evaluations: int
    seconds: float
    method: str
    interrupted: bool = False
    certified: bool = False

    def to_json(self) -> dict[str, Any]:
        """The JSON-lines record (``iterations`` are optimizer steps, ``gradient_evaluations`` closures;
        ``certified``: the analytic checks found this sequence exactly, no matching was needed)."""
        return {"batch": self.batch, "index": self.index, "reconstruction": self.reconstruction,
                "loss": self.loss, "iterations": self.iterations, "gradient_evaluations": self.evaluations,
                "seconds": round(self.seconds, 3), "method": self.method, "interrupted": self.interrupted,
                "certified": self.certified}


def decode_text(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """Plain text: special tokens stripped, word pieces merged."""
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=True).strip()


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
                   initial_ids: torch.Tensor | None = None) -> MaskedLMPlugin:
        """The engine plugin for one observation (priors read off its gradient unless given; the
        matching starts from ``initial_ids (B, T)`` when given)."""
        batch_size = self._batch_size(observation)
        priors = priors or infer_priors(observation.gradients, self.model, batch_size)
        tok = self.tokenizer
        # Every BERT input starts with [CLS]; a single sequence has no padding, so it ends with [SEP].
        boundary = (tok.cls_token_id, tok.sep_token_id if batch_size == 1 else None)
        return MaskedLMPlugin(self.model, priors, batch_size, use_priors=self.config.use_priors, boundary=boundary,
                              initial_ids=initial_ids)

    def attack(self, observation: GradientObservation, *, generator: torch.Generator,
               batch: int | None = None) -> list[Reconstruction]:
        """Reconstruct every sequence of the observed batch."""
        observation.check_shapes({n: p.shape for n, p in self.model.named_parameters()})
        observation = as_gradient(observation)  # a FedAvg weight delta becomes its mean gradient
        batch = int(observation.metadata.get("batch_index", 0)) if batch is None else batch
        batch_size = self._batch_size(observation)
        priors = infer_priors(observation.gradients, self.model, batch_size)
        initial = None
        if self.config.method == "span":  # the config refuses span without priors
            started = time.perf_counter()
            guess = self._analytic(observation, priors, batch_size, generator)
            if guess is not None:
                ids, inputs, certified, distance, unambiguous = guess
                seconds = time.perf_counter() - started
                texts = [decode_text(self.tokenizer, row.tolist()) for row in ids]
                record = StepRecord(0, 0, 0, distance, distance, seconds, {})
                for cb in self.callbacks:
                    cb(TextStep(record, tuple(texts), ids))
                if certified or unambiguous:
                    if certified:
                        logger.info("batch %d: every sentence certified by the span checks (%.1fs, gradient cosine "
                                    "distance %.2g)", batch, seconds, distance)
                    else:
                        logger.warning("batch %d: noisy gradient (cosine distance %.2g to the guess): every position's "
                                       "nearest token is unambiguous, kept as it is (not certified)", batch, distance)
                    return [Reconstruction(batch, i, tuple(row.tolist()), text, distance, 0, 0, seconds,
                                           self.config.method, certified=certified)
                            for i, (row, text) in enumerate(zip(ids, texts))]
                logger.warning("batch %d: the span checks did not certify every sentence: gradient matching "
                               "from the analytic guess", batch)
                initial = inputs
        return self._match(observation, priors, generator, batch, initial)

    def _analytic(self, observation: GradientObservation, priors: MaskedLMPriors, batch_size: int,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, bool, float, bool] | None:
        """The span checks and analytic labels: ``(original ids (B, T), input ids the model saw (B, T),
        certified, gradient cosine distance of the guess, unambiguous)``, or None where the checks cannot work
        (logged). One sentence whose gradient is not exact (noise, quantisation, pruning, dropout) still has
        rank T: its guess is then the nearest token per position, ``unambiguous`` when every position's
        nearest token stands out by ``NEAREST_MARGIN``."""
        grads, tok, length = observation.gradients, self.tokenizer, priors.sequence_length
        unambiguous = False
        try:
            try:
                inputs, mask = self._exact_guess(grads, priors, batch_size, generator)
            except SpanUnavailable as exc:
                if batch_size != 1:
                    raise
                logger.warning("span check: %s; one sentence: taking the nearest token to the rank-%d span at each "
                               "position (an inexact gradient?)", exc, length)
                span1 = attention_input_span(grads, self.model, 0, length, rank=length)
                ids, margin = nearest_tokens(self.model, span1, priors.token_set, length)
                ids[0], ids[-1] = tok.cls_token_id, tok.sep_token_id
                inner = margin[1:-1]
                unambiguous = bool(len(inner) == 0 or float(inner.min()) >= NEAREST_MARGIN)
                logger.info("nearest tokens: smallest margin %.3g (%s)", float(inner.min()) if len(inner) else
                            float("inf"), "unambiguous" if unambiguous else "ambiguous: gradient matching follows")
                inputs, mask = ids[None], torch.ones(1, length, dtype=torch.long)
            labels, misfit = place_labels(self.model, grads, inputs, mask, priors)
        except SpanUnavailable as exc:
            logger.warning("span check unavailable (%s): gradient matching only", exc)
            return None
        ids = torch.where(labels != -100, labels, inputs)
        own = masked_lm_gradient(self.model, inputs, mask, labels)
        names = list(grads)
        distance = float(gradient_distance([own[n] for n in names], [grads[n] for n in names], "cosine"))
        # the certificate: the guess, fed to the model, gives the observed gradient back
        certified = distance < CERTIFY_DISTANCE
        logger.info("span check: label misfit %.2g, gradient cosine distance %.2g", misfit, distance)
        return ids, inputs, certified, distance, unambiguous and not certified

    def _exact_guess(self, grads: Mapping[str, torch.Tensor], priors: MaskedLMPriors, batch_size: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Sentences from the exact span checks: ``(input ids (B, T), attention mask (B, T))``."""
        tok, length = self.tokenizer, priors.sequence_length
        span1 = attention_input_span(grads, self.model, 0, batch_size * length)
        candidates = position_candidates(self.model, span1, priors.token_set, length)
        logger.info("span check: rank %d; candidates per position %s", span1.rank, [len(c) for c in candidates])
        span2 = attention_input_span(grads, self.model, 1, batch_size * length)
        sentences = assemble_batch(self.model, span2, candidates, batch_size, cls_id=tok.cls_token_id,
                                   sep_id=tok.sep_token_id, generator=generator)
        if not sentences:
            raise SpanUnavailable("no sentence fits the attention spans")
        logger.info("span check: %d/%d sentence(s) fit the second layer", sum(s.certified for s in sentences),
                    batch_size)
        sentences += sentences[-1:] * (batch_size - len(sentences))
        inputs = torch.full((batch_size, length), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros(batch_size, length, dtype=torch.long)
        for i, s in enumerate(sentences):
            inputs[i, :len(s.token_ids)] = torch.tensor(s.token_ids)
            mask[i, :len(s.token_ids)] = 1
        return inputs, mask

    def _match(self, observation: GradientObservation, priors: MaskedLMPriors, generator: torch.Generator,
               batch: int, initial_ids: torch.Tensor | None) -> list[Reconstruction]:
        plugin = self.plugin_for(observation, priors=priors, initial_ids=initial_ids)
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
        texts = [decode_text(self.tokenizer, row.tolist()) for row in ids]
        for i, text in enumerate(texts):
            if not text.strip():
                logger.warning("batch %d, sequence %d: the matching decoded only special tokens (an empty "
                               "reconstruction; gradient distance %.3g)", batch, i, result.distance)
        return [Reconstruction(batch, i, tuple(row.tolist()), text, result.distance, result.steps,
                               result.evaluations, result.seconds, self.config.method, result.interrupted)
                for i, (row, text) in enumerate(zip(ids, texts))]
