"""The causal-LM task in the pipeline (:class:`nlp_dlg.pipeline.AttackTask`): rebuild or load the decoder a
gradient file names, attack one observation with :class:`CausalLMAttack`, log the decoded text per step, score
against the truth when it is known (the text metrics of :mod:`nlp_dlg.text.metrics`), and summarise."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from nlp_dlg.causal.attack import CausalLMAttack
from nlp_dlg.causal.config import CausalAttackConfig
from nlp_dlg.causal.model import DEFAULT_TOKENIZER, check_model_metadata, load_bpe_tokenizer, model_from_metadata
from nlp_dlg.causal.task import TASK, decode_text
from nlp_dlg.causal.victim import CausalBatch
from nlp_dlg.pipeline import BatchOutcome, Row
from nlp_dlg.text.metrics import format_summary, score_batch
from nlp_dlg.text.model import tokenizer_to_load
from nlp_dlg.text.report import Trace, write_batch_report
from nlp_dlg.text.steps import TextStep, TextTask


class CausalLMTask(TextTask):
    """Attack causal-LM gradients in the pipeline.

    Args:
        config: the attack's options.
        model: the in-process victim's decoder (else built or loaded from the first file by :meth:`prepare`).
        tokenizer: its tokenizer, likewise.
        name_or_path: the checkpoint a file names, when it names one (a path in a file is never followed).
        tokenizer_name: the tokenizer (default: ``name_or_path``'s, else the shipped BPE).
        verify: compare the weights' checksum with the file's.
        device: where the attack runs.
        echo: where progress lines go.
        report_dir: a plot and a page of the decoded text per logged step, per batch (None: none).
    """

    task_names = (TASK,)

    def __init__(self, config: CausalAttackConfig | None = None, *, model: Any = None, tokenizer: Any = None,
                 name_or_path: str | None = None, tokenizer_name: str | None = None, verify: bool = True,
                 device: torch.device | str | None = None, echo: Callable[[str], Any] | None = None,
                 report_dir: str | Path | None = None) -> None:
        self.config = config or CausalAttackConfig()
        super().__init__(model=model, tokenizer=tokenizer, name_or_path=name_or_path, tokenizer_name=tokenizer_name,
                         verify=verify, device=device, echo=echo, report_dir=report_dir)


    def check_metadata(self, metadata: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> None:
        check_model_metadata(metadata, shapes)

    def prepare(self, metadata: Mapping[str, Any]) -> None:
        if self.model is None:
            self.model = model_from_metadata(dict(metadata["model"]), name_or_path=self.name_or_path,
                                             verify=self.verify)
        if self.tokenizer is None:
            self.tokenizer = load_bpe_tokenizer(tokenizer_to_load(metadata.get("tokenizer"), named=self.tokenizer_name,
                                                                  own=self.name_or_path or None,
                                                                  default=DEFAULT_TOKENIZER))
        self.place()

    def attack_batch(self, observation: Any, truth: CausalBatch | None, *, batch: int,
                     generator: torch.Generator) -> BatchOutcome:
        if self.model is None:
            self.prepare(observation.metadata)
        trace = Trace()
        attack = CausalLMAttack(self.model, self.tokenizer, self.config, callbacks=[self._progress(batch, trace)])
        recs = attack.attack(observation, generator=generator, batch=batch)
        rows: list[Row] = [r.to_json() for r in recs]
        truth_ids = None if truth is None else [ids[m.bool()].tolist() for ids, m in
                                                zip(truth.input_ids, truth.attention_mask)]
        if truth_ids is not None:
            refs = [decode_text(self.tokenizer, ids) for ids in truth_ids]
            scores = score_batch([r.token_ids for r in recs], [r.reconstruction for r in recs], truth_ids, refs,
                                 ignore=set(self.tokenizer.all_special_ids))
            rows = [{**row, **score} for row, score in zip(rows, scores)]
        if self.report_dir is not None:
            trace.add("final", recs[0].evaluations, recs[0].distance, [r.token_ids for r in recs])
            write_batch_report(self.report_dir, batch, trace, self.tokenizer, truth_ids)
        for row in rows:
            self.echo(f"batch {batch} [{row['index']}] -> {row['reconstruction']}")
        return BatchOutcome(rows, any(r.interrupted for r in recs))

    def _progress(self, batch: int, trace: Trace) -> Callable[[TextStep], bool]:
        def report(step: TextStep) -> bool:
            r = step.record
            trace.add(str(r.step), r.evaluations, r.distance, step.token_ids.tolist())
            lines = "\n".join(f"  [{i}] {t}" for i, t in enumerate(step.texts))
            self.echo(f"batch {batch} step {r.step} evals {r.evaluations} dist {r.distance:.4g} {r.elapsed:.1f}s\n"
                      f"{lines}")
            return False
        return report

    def summary(self, rows: Sequence[Row]) -> str | None:
        return format_summary(rows) if rows and "token_accuracy" in rows[0] else None
