"""What every text task shares: the decoded text at a logged step (:class:`TextStep`), one reconstructed sequence
with how it was found (:class:`Reconstruction`, a JSON-lines row), the model-and-tokenizer base of the tasks in
the pipeline (:class:`TextTask`), and recovered sequences as a padded batch (:func:`padded_batch`)."""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nlp_dlg.engine.errors import ConfigError
from nlp_dlg.engine.matcher import StepRecord
from nlp_dlg.pipeline import PlacedModel


@dataclass(frozen=True)
class TextStep:
    """What a text callback sees: the engine's step record and the decoded candidate."""

    record: StepRecord
    texts: tuple[str, ...]      # plain text per sequence
    token_ids: torch.Tensor     # (B, T) decoded token ids


TextCallback = Callable[[TextStep], "bool | None"]
"""Called every ``log_every`` steps; returning True stops the restart."""


@dataclass(frozen=True)
class Reconstruction:
    """One reconstructed sequence (``distance``: the final gradient distance; ``steps``: optimizer steps;
    ``evaluations``: gradient evaluations)."""

    batch: int
    index: int
    token_ids: tuple[int, ...]
    reconstruction: str
    distance: float
    steps: int
    evaluations: int
    seconds: float
    method: str
    interrupted: bool = False
    certified: bool = False

    def to_json(self) -> dict[str, Any]:
        """The JSON-lines record (``token_ids``: the decoded ids, special tokens included, as scored;
        ``steps`` are optimizer steps, ``gradient_evaluations`` closures;
        ``certified``: the analytic checks found this sequence exactly, no matching was needed)."""
        return {"batch": self.batch, "index": self.index, "reconstruction": self.reconstruction,
                "token_ids": list(self.token_ids),
                "distance": self.distance if math.isfinite(self.distance) else None, "steps": self.steps,
                "gradient_evaluations": self.evaluations,
                "seconds": round(self.seconds, 3), "method": self.method, "interrupted": self.interrupted,
                "certified": self.certified}


class TextTask(PlacedModel):
    """What the text tasks (masked-LM, causal-LM, classification) share in the pipeline: a model and its tokenizer,
    built from the first file or adopted from an in-process victim, placed on the task's device."""

    tokenizer: Any = None
    report_dir: str | Path | None = None

    def __init__(self, *, model: Any, tokenizer: Any, name_or_path: str | None, tokenizer_name: str | None,
                 verify: bool, device: torch.device | str | None, echo: Callable[[str], Any] | None,
                 report_dir: str | Path | None = None) -> None:
        """The options every text task takes (see each task's Args), the model placed if one is given."""
        if report_dir is not None and importlib.util.find_spec("matplotlib") is None:
            raise ConfigError("--report draws its plots with matplotlib: pip install 'nlp-dlg[report]'")
        self.model, self.tokenizer, self.device, self.verify = model, tokenizer, device, verify
        self.name_or_path, self.tokenizer_name, self.report_dir = name_or_path, tokenizer_name, report_dir
        self.echo = echo or logging.getLogger(type(self).__module__).info    # the task module's logger
        self.place()

    def adopt(self, model: Any, tokenizer: Any) -> None:
        """Attack with the in-process victim's model and tokenizer (moved to the device, if one was given)."""
        self.model, self.tokenizer = model, tokenizer
        self.place()


def padded_batch(sequences: Sequence[Sequence[int]], pad_id: int,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id sequences as one right-padded batch ``(B, T)`` and its attention mask."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for b, s in enumerate(sequences):
        ids[b, :len(s)] = torch.tensor(list(s), device=device)
        mask[b, :len(s)] = 1
    return ids, mask
