"""What the default attack recovers from a FedAvg weight delta of 1, 2 and 4 local steps.

Victim: BERT-base architecture, random init, one held-out sentence per client update (the first `--limit`
sentences of `benchmarks/data/public_domain_sentences.txt`, 15% masking), `--local-steps K` plain SGD steps
at `--local-lr` on its batch, sharing the weight delta. Attacker: the default `span` method on
`-delta / (lr K)` (the mean of the K gradients), falling back to at most `--max-evals` gradient evaluations
of DLG when the analytic guess is not certified. Appends one JSON line per K to
`benchmarks/results/fedavg.jsonl`.

    .venv/bin/python benchmarks/bench_fedavg.py [--steps 1 2 4] [--local-lr 1e-2] [--limit 4] [--max-evals 30]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from nlp_dlg.engine import MatchingConfig
from nlp_dlg.pipeline import run_attack, unless_interrupted
from nlp_dlg.results import append_result
from nlp_dlg.text import (
    CaptureConfig,
    MaskedLMTask,
    ModelSpec,
    TextAttackConfig,
    capture_gradients,
    load_masked_lm,
    load_tokenizer,
    model_metadata,
    summarize,
)

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--local-lr", type=float, default=1e-2)
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--max-evals", type=int, default=30)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "fedavg.jsonl")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    sentences = [s for s in (HERE / "data" / "public_domain_sentences.txt").read_text().splitlines() if s][:args.limit]
    spec = ModelSpec(seed=0)
    model, tokenizer = load_masked_lm(spec), load_tokenizer()
    info = model_metadata(model, spec)
    config = TextAttackConfig(matching=MatchingConfig(distance="cosine", steps=1000, max_evaluations=args.max_evals))
    for k in args.steps:
        pairs = capture_gradients(model, tokenizer, sentences, CaptureConfig(local_steps=k, local_lr=args.local_lr),
                                  model_info=info, generator=torch.Generator().manual_seed(5))
        ends = [time.perf_counter()]
        task = MaskedLMTask(config, model=model, tokenizer=tokenizer, echo=lambda line: None)
        with tempfile.TemporaryDirectory() as tmp:     # sentence i attacked with seed i
            run = unless_interrupted(run_attack(task, pairs=pairs, out=Path(tmp) / "rows.jsonl", seed=0,
                                                on_batch=lambda b, o, ends=ends: ends.append(time.perf_counter())))
        rows = [{**r, "seconds": end - start} for r, start, end in zip(run.rows, ends, ends[1:])]
        for i, r in enumerate(rows):
            print(f"K={k} [{i}] tokacc {r['token_accuracy']:.3f} certified {r['certified']}  {r['reconstruction']}",
                  flush=True)
        m = summarize(rows)
        row = {"local_steps": k, "local_lr": args.local_lr, "sentences": len(rows), "max_evals": args.max_evals,
               "token_accuracy": round(m["token_accuracy"], 4), "rouge1": round(m["rouge1"], 4),
               "rouge2": round(m["rouge2"], 4), "exact_match": round(m["exact_match"], 4),
               "certified": sum(r["certified"] for r in rows), "seconds_per_sentence": round(m["seconds"], 1),
               "rows": [{k2: r[k2] for k2 in ("token_accuracy", "certified", "reconstruction")} for r in rows]}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        append_result(args.out, row)
        print(json.dumps({k2: v for k2, v in row.items() if k2 != "rows"}), flush=True)


if __name__ == "__main__":
    main()
