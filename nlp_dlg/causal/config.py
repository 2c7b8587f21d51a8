"""The causal-LM attack's options, in plain Python (the command line reads its defaults from here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nlp_dlg.engine.config import MatchingConfig
from nlp_dlg.engine.errors import ConfigError

METHODS = ("span", "dlg")


@dataclass(frozen=True)
class PursuitConfig:
    """Options of :func:`nlp_dlg.causal.pursuit.recover_one`, the batch-1 search where no span test works.

    Args:
        labels: labels per step evaluated exactly (of the vocabulary, ranked by the directional derivative).
        first_tokens: first tokens tried (those whose best label ranks highest), each by a short pursuit of
            ``screen`` tokens; the full pursuit starts from the one whose terms fit the gradient best.
        screen: tokens of each short pursuit.
        runners_up: labels per step kept as the order search's substitutes and insertions.
        max_length: the longest sentence the pursuit builds.
        candidates: moves evaluated per round of the order search.
        rounds: most rounds of the order search.
        patience: rounds without gain that end the order search.
    """

    labels: int = 16
    first_tokens: int = 8
    screen: int = 4
    runners_up: int = 3
    max_length: int = 64
    candidates: int = 64
    rounds: int = 120
    patience: int = 15

    def __post_init__(self) -> None:
        for name in ("labels", "first_tokens", "screen", "runners_up", "max_length", "candidates", "rounds",
                     "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "rounds" else 1):
                raise ConfigError(f"pursuit.{name}: expected a positive integer, got {value!r}")


@dataclass(frozen=True)
class CausalAttackConfig:
    """Attacker options.

    Args:
        method: ``span`` (tokens and sentences read off the gradient, certified; where the span test cannot work,
            the pursuit and order search at batch 1 with LoRA, else gradient matching) or ``dlg`` (the paper's
            gradient matching on dummy embeddings and soft labels).
        use_priors: ``dlg`` decodes over, and labels with, the token set the first layer's span shows (False: the
            whole vocabulary, the paper as written).
        matching: the engine's options.
        log_every: decode and report every this many steps.
        max_length: the longest sequence the span search tries.
        pursuit: ``span`` at batch 1 where no span test can work (LoRA of a rank below the token count): the
            pursuit and order search's options (:mod:`nlp_dlg.causal.pursuit`; its ``max_length`` is ``max_length``).
        peel: classification, ``span``, a batch partly certified: remove the certified sentences' share of the
            gradient and search the rest as a batch of its own (:func:`nlp_dlg.classify.analytic.sentences_of`).
    """

    method: str = "span"
    use_priors: bool = True
    matching: MatchingConfig = field(default_factory=lambda: MatchingConfig(distance="cosine", max_evaluations=600))
    log_every: int = 1
    max_length: int = 64
    peel: bool = True
    pursuit: PursuitConfig = field(default_factory=PursuitConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method: expected one of {', '.join(METHODS)}, got {self.method!r}")
        if not isinstance(self.log_every, int) or self.log_every <= 0:
            raise ConfigError(f"log_every: expected a positive integer, got {self.log_every!r}")
