"""The text tasks' options, in plain Python (no torch, no transformers): the command line builds its parser, its
choices and its defaults from them, so there is no second default to drift."""

from __future__ import annotations

from dataclasses import dataclass, field

from nlp_dlg.engine.config import MatchingConfig
from nlp_dlg.engine.errors import ConfigError

METHODS = ("span", "dlg")
DLG_MATCH_LAYERS = 1   # "auto" for dlg with priors: the embeddings and the first encoder layer are matched


@dataclass(frozen=True)
class CaptureConfig:
    """Victim-side options.

    Args:
        batch_size: sentences per gradient (per file), in input order.
        mlm_probability: fraction of tokens selected for prediction (BERT's 80/10/10 masking).
        max_length: sentences are truncated to this many tokens, special tokens included.
        train_mode: compute the gradient with dropout on (the model's ``training`` flag is restored).
        defense: a defence applied before the gradient leaves (:mod:`nlp_dlg.engine.defense`), e.g.
            ``gaussian:1e-2`` or ``dp:1.0,0.5`` (DP-SGD: per-sentence gradients, each its own mean loss).
        local_steps, local_lr: FedAvg: the client runs ``local_steps`` SGD steps at ``local_lr`` on its batch
            and shares the weight delta (``local_lr`` None: FedSGD, the gradient itself).
    """

    batch_size: int = 1
    mlm_probability: float = 0.15
    max_length: int = 128
    train_mode: bool = False
    defense: str | None = None
    local_steps: int = 1
    local_lr: float | None = None

    def __post_init__(self) -> None:
        if self.defense:  # torch is imported only for a defence to check, not for a parser's defaults
            from nlp_dlg.engine.defense import parse_defense

            parse_defense(self.defense)  # raises ConfigError naming the accepted forms
        if not isinstance(self.local_steps, int) or self.local_steps < 1:
            raise ConfigError(f"local_steps: expected a positive integer, got {self.local_steps!r}")
        if self.local_lr is not None and not self.local_lr > 0:
            raise ConfigError(f"local_lr: expected a positive number, got {self.local_lr!r}")
        if self.local_lr is None and self.local_steps > 1:
            raise ConfigError("local_steps > 1 is FedAvg: give local_lr, the client's learning rate")
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ConfigError(f"batch_size: expected a positive integer, got {self.batch_size!r}")
        if not 0.0 < self.mlm_probability <= 1.0:
            raise ConfigError(f"mlm_probability: expected a number in (0, 1], got {self.mlm_probability!r}")
        if not isinstance(self.max_length, int) or self.max_length < 3:
            raise ConfigError(f"max_length: expected an integer >= 3, got {self.max_length!r}")


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
        peel: ``span`` with a batch partly certified: remove the certified sentences' share of the gradient
            and attack the others on what is left (False: gradient matching on the whole batch, the
            certified sentences held fixed).
        match_layers: which gradients the matching compares: ``"all"`` (every parameter but the tied word
            embedding, the paper), an integer K (the embeddings and the first K encoder layers; nothing
            above them: on BERT-base at K = 1 an evaluation takes 0.54x the time of matching all,
            ``benchmarks/results/eval_time.json``), or ``"auto"``: ``DLG_MATCH_LAYERS`` for ``dlg`` with
            priors, ``"all"`` for the paper as written and for ``span``'s matching.
    """

    method: str = "span"
    use_priors: bool = True
    matching: MatchingConfig = field(default_factory=lambda: MatchingConfig(distance="cosine", max_evaluations=600))
    log_every: int = 1
    patience: int | None = None
    peel: bool = True
    match_layers: int | str = "auto"

    def __post_init__(self) -> None:
        if self.match_layers not in ("auto", "all") and not (
                isinstance(self.match_layers, int) and not isinstance(self.match_layers, bool)
                and self.match_layers >= 0):
            raise ConfigError(f"match_layers: expected 'auto', 'all' or a non-negative integer, "
                              f"got {self.match_layers!r}")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience <= 0):
            raise ConfigError(f"patience: expected a positive integer or None, got {self.patience!r}")
        if self.method not in METHODS:
            raise ConfigError(f"method: expected one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "span" and not self.use_priors:
            raise ConfigError("use_priors=False (no priors) is the paper's plain DLG: use it with method 'dlg'")
        if not isinstance(self.log_every, int) or self.log_every <= 0:
            raise ConfigError(f"log_every: expected a positive integer, got {self.log_every!r}")

    def matched_blocks(self) -> int | None:
        """The encoder layers whose gradients the matching compares (None: every parameter's)."""
        if self.match_layers == "auto":
            return DLG_MATCH_LAYERS if self.method == "dlg" and self.use_priors else None
        return None if self.match_layers == "all" else int(self.match_layers)
