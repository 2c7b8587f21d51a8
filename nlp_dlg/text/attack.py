"""The attacker: reconstruct sentences from one masked-LM gradient observation with DLG.

``dlg`` here is DLG's gradient matching (dummy embeddings + soft labels + nearest-token decoding,
L-BFGS) with priors read off the gradient itself: sequence length, label words and the token set
(:mod:`nlp_dlg.text.priors`), and cosine distance by default. ``use_priors=False`` with ``l2`` is the
paper's algorithm as written, kept for comparison.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import BertForMaskedLM, PreTrainedTokenizerBase

from nlp_dlg.engine.errors import ConfigError
from nlp_dlg.engine.matcher import GradientMatcher, MatchingConfig, StepRecord
from nlp_dlg.engine.observation import GradientObservation
from nlp_dlg.text.plugin import MaskedLMPlugin
from nlp_dlg.text.priors import infer_priors
from nlp_dlg.text.victim import TASK

logger = logging.getLogger(__name__)

METHODS = ("dlg",)

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
        method: ``dlg`` (gradient matching; see the module docstring).
        use_priors: read sequence length, labels and token set off the gradient (False: the paper as written).
        matching: the engine's options (optimizer, distance, steps, evaluation cap, restarts, schedule).
        log_every: decode and report every this many steps (and at step 0 and the last step).
        patience: stop once the decoded text of every sequence has stayed the same for this many steps
            (None: run all steps). The attacker needs no ground truth for this.
    """

    method: str = "dlg"
    use_priors: bool = True
    matching: MatchingConfig = field(default_factory=lambda: MatchingConfig(distance="cosine", max_evaluations=600))
    log_every: int = 1
    patience: int | None = None

    def __post_init__(self) -> None:
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience <= 0):
            raise ConfigError(f"patience: expected a positive integer or None, got {self.patience!r}")
        if self.method not in METHODS:
            raise ConfigError(f"method: expected one of {', '.join(METHODS)}, got {self.method!r}")
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

    def to_json(self) -> dict[str, Any]:
        """The JSON-lines record (``iterations`` are optimizer steps, ``gradient_evaluations`` closures)."""
        return {"batch": self.batch, "index": self.index, "reconstruction": self.reconstruction,
                "loss": self.loss, "iterations": self.iterations, "gradient_evaluations": self.evaluations,
                "seconds": round(self.seconds, 3), "method": self.method, "interrupted": self.interrupted}


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

    def plugin_for(self, observation: GradientObservation) -> MaskedLMPlugin:
        """The engine plugin for one observation (priors read off its gradient)."""
        task = observation.metadata.get("task", TASK)
        if task != TASK:
            raise ConfigError(f"gradient task: expected {TASK!r}, got {task!r}")
        batch_size = int(observation.metadata.get("batch_size", 1))
        if batch_size <= 0:
            raise ConfigError(f"batch_size in gradient metadata: expected a positive integer, got {batch_size}")
        priors = infer_priors(observation.gradients, self.model, batch_size)
        tok = self.tokenizer
        # Every BERT input starts with [CLS]; a single sequence has no padding, so it ends with [SEP].
        boundary = (tok.cls_token_id, tok.sep_token_id if batch_size == 1 else None)
        return MaskedLMPlugin(self.model, priors, batch_size, use_priors=self.config.use_priors, boundary=boundary)

    def attack(self, observation: GradientObservation, *, generator: torch.Generator,
               batch: int | None = None) -> list[Reconstruction]:
        """Reconstruct every sequence of the observed batch."""
        observation.check_shapes({n: p.shape for n, p in self.model.named_parameters()})
        plugin = self.plugin_for(observation)
        batch = int(observation.metadata.get("batch_index", 0)) if batch is None else batch
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
        return [Reconstruction(batch, i, tuple(row.tolist()), decode_text(self.tokenizer, row.tolist()),
                               result.distance, result.steps, result.evaluations, result.seconds,
                               self.config.method, result.interrupted)
                for i, row in enumerate(ids)]
