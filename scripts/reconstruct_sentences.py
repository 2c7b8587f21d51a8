"""The paper's Table 2: sentences come back out of BERT masked-LM gradients.

Victim: the bert-base-uncased architecture, random weights (seed 0), eval mode, one sentence per
gradient, standard 15% masking. Attacker: `dlg` (dummy embeddings + soft labels, L-BFGS lr 1.0, cosine
distance, priors read off the gradient), decoded text printed as it converges. Sentence 1 is the
paper's Table 2 example; 2 and 3 paraphrase the other two NeurIPS 2019 calls it used (tutorial
proposals, call for papers).

    .venv/bin/python scripts/reconstruct_sentences.py [--iters 30] [--out runs/table2.jsonl]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from nlp_dlg.engine import MatchingConfig
from nlp_dlg.text import (
    CaptureConfig,
    MaskedLMAttack,
    ModelSpec,
    TextAttackConfig,
    capture_gradients,
    decode_text,
    load_masked_lm,
    load_tokenizer,
    model_metadata,
    score_batch,
)

SENTENCES = [
    "registration , volunteer applications , and student travel application open the first week of september .",
    "tutorial proposals are due in june ; tutorials take place on the first day of the conference .",
    "we invite submissions to the thirty - third annual conference on neural information processing systems .",
]
SHOW_AT = (0, 10, 20, 30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=30, help="L-BFGS steps (each up to 20 gradient evaluations)")
    ap.add_argument("--max-evals", type=int, default=600, help="gradient evaluations per sentence")
    ap.add_argument("--patience", type=int, default=3,
                    help="stop a sentence once its decoded text is unchanged for this many steps")
    ap.add_argument("--out", type=Path, default=Path("runs/table2.jsonl"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    spec = ModelSpec(seed=0)
    model, tokenizer = load_masked_lm(spec), load_tokenizer()
    info = model_metadata(model, spec)
    pairs = capture_gradients(model, tokenizer, SENTENCES, CaptureConfig(batch_size=1), model_info=info,
                              generator=torch.Generator().manual_seed(2019))
    matching = MatchingConfig(distance="cosine", steps=args.iters, max_evaluations=args.max_evals)
    config = TextAttackConfig(method="dlg", matching=matching, patience=args.patience)
    rows, table = [], []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for i, (observation, truth) in enumerate(pairs):
        shown: dict[int, str] = {}

        def progress(step, shown=shown, i=i) -> None:
            r = step.record
            print(f"[{i}] step {r.step:>2} evals {r.evaluations:>3} dist {r.distance:.3g} {r.elapsed:6.1f}s  "
                  f"{step.texts[0]}", flush=True)
            shown[r.step] = step.texts[0]

        attack = MaskedLMAttack(model, tokenizer, config, callbacks=[progress])
        rec = attack.attack(observation, generator=torch.Generator().manual_seed(i), batch=i)[0]
        reference = decode_text(tokenizer, truth.input_ids[0].tolist())
        score = score_batch([rec.token_ids], [rec.reconstruction], truth.input_ids.tolist(), [reference],
                            ignore=set(tokenizer.all_special_ids))[0]
        rows.append({**rec.to_json(), **score})
        last = max(shown)
        table.append((i, reference, {s: shown.get(s, shown[last] if s > last else "") for s in SHOW_AT},
                      rec, score))
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))

    print("\nTable 2 (decoded text at L-BFGS steps 0, 10, 20, 30; a sentence that stopped early keeps its text)")
    for i, reference, at, rec, score in table:
        print(f"\nexample {i + 1}   reference: {reference}")
        for s in SHOW_AT:
            print(f"  step {s:>2}: {at[s]}")
        print(f"  final ({rec.iterations} steps, {rec.evaluations} gradient evaluations, {rec.seconds:.0f}s): "
              f"{rec.reconstruction}\n  token accuracy {score['token_accuracy']:.3f}  ROUGE-1 {score['rouge1']:.3f}  "
              f"exact {score['exact_match']}")
    print(f"\nresults: {args.out}")


if __name__ == "__main__":
    main()
