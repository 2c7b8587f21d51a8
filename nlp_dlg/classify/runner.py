"""The classification task in the pipeline (:class:`nlp_dlg.pipeline.AttackTask`): rebuild or load the classifier
a gradient file names, read the sentences and labels off the gradient (``span``) or match it (``dlg``), log the
decoded text, score text and labels when the truth is known, and summarise."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from nlp_dlg.causal.config import CausalAttackConfig
from nlp_dlg.classify.analytic import batch_tokens, recover
from nlp_dlg.classify.model import check_model_metadata, model_from_metadata
from nlp_dlg.classify.plugin import ClassificationPlugin
from nlp_dlg.classify.victim import TASK, LabelledBatch
from nlp_dlg.engine.matcher import GradientMatcher, StepRecord
from nlp_dlg.engine.span import SpanUnavailable
from nlp_dlg.pipeline import BatchOutcome, Row
from nlp_dlg.text.metrics import format_summary, score_batch
from nlp_dlg.text.model import encoder_tokenizer, load_tokenizer
from nlp_dlg.text.steps import TextTask
from nlp_dlg.text.task import decode_text

logger = logging.getLogger(__name__)


class ClassificationTask(TextTask):
    """Attack sequence-classification gradients (options as the causal task's: method, matching, log_every).

    Args:
        config: the attack's options. model, tokenizer: the in-process victim's (else from the first file).
        name_or_path: the checkpoint a file names. tokenizer_name: the tokenizer (default: the checkpoint's, else
            the offline bert-base-uncased vocabulary). verify: check the checksum. device: where the attack runs.
        echo: where progress lines go.
    """

    task_names = (TASK,)

    def __init__(self, config: CausalAttackConfig | None = None, *, model: Any = None, tokenizer: Any = None,
                 name_or_path: str | None = None, tokenizer_name: str | None = None, verify: bool = True,
                 device: torch.device | str | None = None, echo: Callable[[str], Any] | None = None) -> None:
        self.config = config or CausalAttackConfig()
        super().__init__(model=model, tokenizer=tokenizer, name_or_path=name_or_path, tokenizer_name=tokenizer_name,
                         verify=verify, device=device, echo=echo)


    def check_metadata(self, metadata: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> None:
        check_model_metadata(metadata, shapes)

    def prepare(self, metadata: Mapping[str, Any]) -> None:
        if self.model is None:
            self.model = model_from_metadata(dict(metadata["model"]), name_or_path=self.name_or_path,
                                             verify=self.verify)
        if self.tokenizer is None:
            name = encoder_tokenizer(metadata.get("tokenizer"), tokenizer_name=self.tokenizer_name,
                                     name_or_path=self.name_or_path)
            self.tokenizer = load_tokenizer(name)
        self.place()

    def attack_batch(self, observation: Any, truth: LabelledBatch | None, *, batch: int,
                     generator: torch.Generator) -> BatchOutcome:
        if self.model is None:
            self.prepare(observation.metadata)
        grads = observation.to(self.model.get_input_embeddings().weight.device).gradients
        size, started = int(observation.metadata["batch_size"]), time.perf_counter()
        rows = None
        if self.config.method == "span":
            try:
                guess = recover(self.model, self.tokenizer, grads, batch_size=size, generator=generator,
                                peel=self.config.peel)
                rows = [self._row(batch, i, s, y, guess.distance, 0, started, "span", guess.certified)
                        for i, (s, y) in enumerate(zip(guess.sequences, guess.labels))]
            except SpanUnavailable as exc:
                logger.warning("batch %d: the span test cannot work on this gradient (%s): gradient matching", batch,
                               exc)
        rows = rows or self._matched(grads, size, generator, batch, started)
        rows = self._scored(rows, truth) if truth is not None else rows
        for row in rows:
            self.echo(f"batch {batch} [{row['index']}] label {row['label']} -> {row['reconstruction']}")
        return BatchOutcome(rows)

    def _row(self, batch: int, i: int, ids: Sequence[int], label: int, distance: float, evals: int, started: float,
             method: str, certified: bool = False) -> Row:
        return {"batch": batch, "index": i, "reconstruction": decode_text(self.tokenizer, ids),
                "token_ids": [int(t) for t in ids], "label": int(label), "distance": distance, "steps": 0,
                "gradient_evaluations": evals, "seconds": round(time.perf_counter() - started, 3), "method": method,
                "interrupted": False, "certified": certified}

    def _matched(self, grads: Any, size: int, generator: torch.Generator, batch: int, started: float) -> list[Row]:
        length, tokens = batch_tokens(grads, self.model)
        plugin = ClassificationPlugin(self.model, batch_size=size, length=length, candidates=tokens)

        def on_step(record: StepRecord) -> bool:
            if record.step % self.config.log_every == 0:
                ids, labels = plugin.decode(record.candidate)
                texts = "\n".join(f"  [{i}] label {int(y)}: {decode_text(self.tokenizer, r.tolist())}"
                                  for i, (r, y) in enumerate(zip(ids, labels)))
                self.echo(f"batch {batch} step {record.step} evals {record.evaluations} dist {record.distance:.4g}"
                          f"\n{texts}")
            return False

        result = GradientMatcher(plugin, self.config.matching, callbacks=[on_step]).run(grads, generator=generator)
        ids, labels = plugin.decode(result.leaves)
        return [self._row(batch, i, r.tolist(), int(y), result.distance, result.total_evaluations, started, "dlg")
                for i, (r, y) in enumerate(zip(ids, labels))]

    def _scored(self, rows: list[Row], truth: LabelledBatch) -> list[Row]:
        refs = [ids[m.bool()].tolist() for ids, m in zip(truth.input_ids, truth.attention_mask)]
        texts = [decode_text(self.tokenizer, r) for r in refs]
        scores = score_batch([r["token_ids"] for r in rows], [r["reconstruction"] for r in rows], refs, texts,
                             ignore=set(self.tokenizer.all_special_ids))
        by_text = {t: int(y) for t, y in zip(texts, truth.labels)}
        return [{**row, **score, "label_correct": by_text.get(score["reference"]) == row["label"]}
                for row, score in zip(rows, scores)]

    def summary(self, rows: Sequence[Row]) -> str | None:
        return format_summary(rows) if rows and "token_accuracy" in rows[0] else None
