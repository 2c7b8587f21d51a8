"""The masked-LM task in the pipeline (:class:`nlp_dlg.pipeline.AttackTask`): load the model a gradient file
names, attack one observation with :class:`MaskedLMAttack`, log the decoded text per step, score against the
truth when it is known, and summarise."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from nlp_dlg.pipeline import BatchOutcome, Row
from nlp_dlg.text.attack import MaskedLMAttack
from nlp_dlg.text.config import TextAttackConfig
from nlp_dlg.text.metrics import format_summary, score_batch
from nlp_dlg.text.model import (
    check_model_metadata,
    encoder_tokenizer,
    load_tokenizer,
    model_from_metadata,
)
from nlp_dlg.text.report import Trace, write_batch_report
from nlp_dlg.text.steps import TextStep, TextTask
from nlp_dlg.text.task import TASK, decode_text
from nlp_dlg.text.victim import VictimBatch


class MaskedLMTask(TextTask):
    """Attack masked-LM gradients in the pipeline.

    Args:
        config: the attack's options.
        model: the model to attack with (the in-process victim's); None: built or loaded from the first gradient
            file's metadata by :meth:`prepare`.
        tokenizer: its tokenizer, likewise.
        name_or_path: where to load pretrained weights from; required when a file names a pretrained checkpoint
            (a path or hub name in a file is never followed).
        tokenizer_name: the tokenizer; default: ``name_or_path`` where it holds one, else the offline
            bert-base-uncased vocabulary. A file recording another tokenizer is refused until it is named here.
        verify: compare the weights' checksum with the file's.
        weights: a weights file loaded over the model (e.g. a federated round's global weights).
        device: where the attack runs (None: where the model is).
        echo: where progress lines go (default: this module's logger at INFO).
        on_step: also called with ``(batch, step)`` at every logged step (e.g. to keep the text at given steps);
            returning True stops the attack there (e.g. a harness that knows the truth).
        report_dir: where a plot and a page of the decoded text per logged step go, per batch
            (:mod:`nlp_dlg.text.report`); None: no report.

    Example:
        >>> from nlp_dlg.pipeline import run_attack  # doctest: +SKIP
        >>> task = MaskedLMTask(TextAttackConfig())  # doctest: +SKIP
        >>> run = run_attack(task, gradients="grads/", out="results.jsonl")  # doctest: +SKIP
    """

    task_names = (TASK,)

    def __init__(self, config: TextAttackConfig | None = None, *, model: PreTrainedModel | None = None,
                 tokenizer: PreTrainedTokenizerBase | None = None, name_or_path: str | None = None,
                 tokenizer_name: str | None = None, verify: bool = True, weights: str | Path | None = None,
                 device: torch.device | str | None = None, echo: Callable[[str], Any] | None = None,
                 on_step: Callable[[int, TextStep], bool | None] | None = None,
                 report_dir: str | Path | None = None) -> None:
        self.config, self.on_step, self.weights = config or TextAttackConfig(), on_step, weights
        super().__init__(model=model, tokenizer=tokenizer, name_or_path=name_or_path, tokenizer_name=tokenizer_name,
                         verify=verify, device=device, echo=echo, report_dir=report_dir)


    def check_metadata(self, metadata: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> None:
        check_model_metadata(metadata, shapes)

    def prepare(self, metadata: Mapping[str, Any]) -> None:
        if self.model is None:
            self.model, _ = model_from_metadata(dict(metadata.get("model", {})), name_or_path=self.name_or_path,
                                                verify=self.verify, weights=self.weights)
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self._tokenizer_for(metadata.get("tokenizer")))
        self.place()

    def _tokenizer_for(self, recorded: Any) -> str | None:
        """The tokenizer to load (:func:`~nlp_dlg.text.model.encoder_tokenizer`): the model directory's, or a hub
        name the user passed as ``--model`` that the file recorded."""
        return encoder_tokenizer(recorded, tokenizer_name=self.tokenizer_name, name_or_path=self.name_or_path)

    def attack_batch(self, observation: Any, truth: VictimBatch | None, *, batch: int,
                     generator: torch.Generator) -> BatchOutcome:
        if self.model is None or self.tokenizer is None:
            self.prepare(observation.metadata)
        trace = Trace()
        attack = MaskedLMAttack(self.model, self.tokenizer, self.config,
                                callbacks=[self._progress(batch, trace)])
        recs = attack.attack(observation, generator=generator, batch=batch)
        if self.report_dir is not None:
            trace.add("final", recs[0].evaluations, recs[0].distance, [r.token_ids for r in recs])
            write_batch_report(self.report_dir, batch, trace, self.tokenizer,
                               truth.input_ids.tolist() if truth is not None else None)
        rows = [r.to_json() for r in recs]
        if truth is not None:
            refs = [decode_text(self.tokenizer, ids.tolist()) for ids in truth.input_ids]
            scores = score_batch([r.token_ids for r in recs], [r.reconstruction for r in recs],
                                 truth.input_ids.tolist(), refs, ignore=set(self.tokenizer.all_special_ids))
            rows = [{**row, **score} for row, score in zip(rows, scores)]
        for row in rows:
            self.echo(f"batch {batch} [{row['index']}] -> {row['reconstruction']}")
        return BatchOutcome(rows, any(r.interrupted for r in recs))

    def _progress(self, batch: int, trace: Trace) -> Callable[[TextStep], bool]:
        steps = self.config.matching.steps

        def report(step: TextStep) -> bool:
            r = step.record
            trace.add(f"{r.restart}:{r.step}" if r.restart else str(r.step), r.evaluations, r.distance,
                      step.token_ids.tolist())
            lines = "\n".join(f"  [{i}] {t}" for i, t in enumerate(step.texts))
            self.echo(f"batch {batch} restart {r.restart} step {r.step}/{steps} evals {r.evaluations} "
                      f"dist {r.distance:.4g} best {r.best_distance:.4g} {r.elapsed:.1f}s\n{lines}")
            return bool(self.on_step(batch, step)) if self.on_step is not None else False
        return report

    def summary(self, rows: Sequence[Row]) -> str | None:
        return format_summary(rows) if rows and "token_accuracy" in rows[0] else None


def score_rows(rows: Sequence[Row], sentences: Sequence[str], tokenizer: PreTrainedTokenizerBase,
               max_length: int | None = None) -> list[Row]:
    """Rows of an attack on gradient files, scored against the private ``sentences`` they were captured from (in
    order: batch b holds the next sentences, as many as its rows), with Hungarian pairing inside each batch."""
    scored: list[Row] = []
    start = 0
    for batch in sorted({r["batch"] for r in rows}):
        group = [r for r in rows if r["batch"] == batch]
        refs = list(sentences[start:start + len(group)])
        start += len(group)
        ref_ids = [tokenizer(s, truncation=max_length is not None, max_length=max_length)["input_ids"] for s in refs]
        scores = score_batch([r["token_ids"] for r in group], [r["reconstruction"] for r in group], ref_ids,
                             [decode_text(tokenizer, ids) for ids in ref_ids], ignore=set(tokenizer.all_special_ids))
        scored += [{**r, **s} for r, s in zip(group, scores)]
    return scored
