"""The paper's Table 2: sentences come back out of BERT masked-LM gradients.

Victim: the bert-base-uncased architecture, random weights (seed 0), eval mode, one sentence per
gradient, standard 15% masking. Attacker: `dlg` (dummy embeddings + soft labels, L-BFGS lr 1.0, cosine
distance, priors read off the gradient), decoded text printed as it converges. Sentence 1 is the
paper's Table 2 example; 2 and 3 paraphrase the other two NeurIPS 2019 calls it used (tutorial
proposals, call for papers).

    .venv/bin/python scripts/reconstruct_sentences.py [--steps 30] [--out runs/table2.jsonl]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from nlp_dlg.engine import MatchingConfig
from nlp_dlg.pipeline import run_attack
from nlp_dlg.text import (
    CaptureConfig,
    MaskedLMTask,
    ModelSpec,
    TextAttackConfig,
    capture_gradients,
    load_masked_lm,
    load_tokenizer,
    model_metadata,
)

SENTENCES = [
    "registration , volunteer applications , and student travel application open the first week of september .",
    "tutorial proposals are due in june ; tutorials take place on the first day of the conference .",
    "we invite submissions to the thirty - third annual conference on neural information processing systems .",
]
SHOW_AT = (0, 10, 20, 30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="L-BFGS steps (each up to 20 gradient evaluations)")
    ap.add_argument("--max-evals", type=int, default=600, help="gradient evaluations per sentence")
    ap.add_argument("--patience", type=int, default=3,
                    help="stop a sentence once its decoded text is unchanged for this many steps")
    ap.add_argument("--out", type=Path, default=Path("runs/table2.jsonl"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    spec = ModelSpec(seed=0)
    model, tokenizer = load_masked_lm(spec), load_tokenizer()
    pairs = capture_gradients(model, tokenizer, SENTENCES, CaptureConfig(batch_size=1),
                              model_info=model_metadata(model, spec), generator=torch.Generator().manual_seed(2019))
    matching = MatchingConfig(distance="cosine", steps=args.steps, max_evaluations=args.max_evals)
    config = TextAttackConfig(method="dlg", matching=matching, patience=args.patience)
    shown: dict[int, dict[int, str]] = {}  # batch -> step -> decoded text

    def keep(batch: int, step) -> None:
        shown.setdefault(batch, {})[step.record.step] = step.texts[0]

    task = MaskedLMTask(config, model=model, tokenizer=tokenizer, echo=lambda line: print(line, flush=True),
                        on_step=keep)
    run = run_attack(task, pairs=pairs, out=args.out, seed=0)
    print_table(run.rows, shown)
    print(f"\nresults: {args.out}")
    return 130 if run.interrupted else 0


def print_table(rows: list[dict], shown: dict[int, dict[int, str]]) -> None:
    """The paper's Table 2 for the sentences attacked: the text at steps 0, 10, 20, 30 and the final one (a
    sentence that stopped early keeps its last text; an interrupted run shows only the steps it ran)."""
    print("\nTable 2 (decoded text at L-BFGS steps 0, 10, 20, 30; a sentence that stopped early keeps its text)")
    for row in rows:
        at = shown.get(row["batch"], {})
        last = max(at, default=0)
        print(f"\nexample {row['batch'] + 1}   reference: {row['reference']}")
        for s in SHOW_AT:
            if s <= last or not row["interrupted"]:
                print(f"  step {s:>2}: {at.get(s, at.get(last, '')) if s > last else at.get(s, '')}")
        print(f"  final ({row['steps']} steps, {row['gradient_evaluations']} gradient evaluations, "
              f"{row['seconds']:.0f}s{', interrupted' if row['interrupted'] else ''}): {row['reconstruction']}\n"
              f"  token accuracy {row['token_accuracy']:.3f}  ROUGE-1 {row['rouge1']:.3f}  exact {row['exact_match']}")


if __name__ == "__main__":
    sys.exit(main())
