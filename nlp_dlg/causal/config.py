"""The causal-LM attack's options, in plain Python (the command line reads its defaults from here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nlp_dlg.engine.config import MatchingConfig
from nlp_dlg.engine.errors import ConfigError

METHODS = ("span", "dlg")


@dataclass(frozen=True)
class CausalAttackConfig:
    """Attacker options.

    Args:
        method: ``span`` (tokens and sentences read off the gradient, certified; gradient matching where the span
            test cannot work) or ``dlg`` (the paper's gradient matching on dummy embeddings and soft labels).
        use_priors: ``dlg`` decodes over, and labels with, the token set the first layer's span shows (False: the
            whole vocabulary, the paper as written).
        matching: the engine's options.
        log_every: decode and report every this many steps.
        max_length: the longest sequence the span search tries.
        peel: classification, ``span``, a batch partly certified: remove the certified sentences' share of the
            gradient and search the rest as a batch of its own (:func:`nlp_dlg.classify.analytic.sentences_of`).
    """

    method: str = "span"
    use_priors: bool = True
    matching: MatchingConfig = field(default_factory=lambda: MatchingConfig(distance="cosine", max_evaluations=600))
    log_every: int = 1
    max_length: int = 64
    peel: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method: expected one of {', '.join(METHODS)}, got {self.method!r}")
        if not isinstance(self.log_every, int) or self.log_every <= 0:
            raise ConfigError(f"log_every: expected a positive integer, got {self.log_every!r}")
