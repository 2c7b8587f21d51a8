"""Iterations and seconds to recovery: held-out sentences, captured in another process, attacked here.

For each sentence of ``benchmarks/data/public_domain_sentences.txt``: ``nlp-dlg capture`` runs in a
subprocess (BERT-base architecture, random init, batch 1, 15% masking); this process loads the gradient
file, attacks it with ``dlg`` (L-BFGS lr 1.0, cosine, gradient priors), and the harness (not the
attacker) compares the decoded text with the sentence at every step to record the gradient evaluations
needed to reach token accuracy >= 0.9 and 1.0. A sentence stops at 1.0 or at the evaluation cap.

    .venv/bin/python benchmarks/bench_recovery.py [--limit N] [--max-evals 600]

Writes ``benchmarks/results/recovery.jsonl`` (one line per sentence) and ``recovery_summary.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from nlp_dlg.engine import MatchingConfig, find_gradient_files, load_observation
from nlp_dlg.text import MaskedLMAttack, TextAttackConfig, load_tokenizer, model_from_metadata, token_accuracy

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=Path, default=HERE / "data" / "public_domain_sentences.txt")
    ap.add_argument("--limit", type=int, default=8, help="first N sentences (default 8: the batch-1 set)")
    ap.add_argument("--start", type=int, default=0,
                    help="skip the first N sentences and append to recovery.jsonl (resume a stopped run)")
    ap.add_argument("--max-evals", type=int, default=600)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    sentences = [s for s in args.sentences.read_text().splitlines() if s.strip()][: args.limit]
    first = args.start
    tokenizer = load_tokenizer()
    special = set(tokenizer.all_special_ids)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, (args.out / "recovery.jsonl").open("a" if first else "w") as out:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nlp_dlg.cli", "-q", "capture", "--input", str(args.sentences),
                        "--out", tmp, "--mask-seed", "1234"], check=True)
        capture_seconds = time.perf_counter() - t0
        files = find_gradient_files(tmp)[: len(sentences)]
        model, _ = model_from_metadata(load_observation(files[0]).metadata["model"])
        for i, (path, sentence) in enumerate(zip(files, sentences)):
            if i < first:
                continue
            reference = tokenizer(sentence)["input_ids"]
            reached: dict[str, int] = {}
            curve: list[tuple[int, float, float]] = []

            def harness(step, reference=reference, reached=reached, curve=curve) -> bool:
                acc = token_accuracy(step.token_ids[0].tolist(), reference, ignore=special)
                curve.append((step.record.evaluations, round(step.record.elapsed, 2), acc))
                for key, bar in (("evals_to_0.9", 0.9), ("evals_to_1.0", 1.0)):
                    if acc >= bar and key not in reached:
                        reached[key] = step.record.evaluations
                        reached[key.replace("evals", "seconds")] = round(step.record.elapsed, 1)
                return acc >= 1.0

            matching = MatchingConfig(distance="cosine", steps=1000, max_evaluations=args.max_evals)
            config = TextAttackConfig(method="dlg", matching=matching)
            attack = MaskedLMAttack(model, tokenizer, config, callbacks=[harness])
            rec = attack.attack(load_observation(path), generator=torch.Generator().manual_seed(i))[0]
            row = {"sentence": sentence, "tokens": len(reference), "reconstruction": rec.reconstruction,
                   "final_token_accuracy": token_accuracy(list(rec.token_ids), reference, ignore=special),
                   "gradient_evaluations": rec.evaluations, "steps": rec.steps,
                   "seconds": round(rec.seconds, 1), "seconds_per_evaluation": round(rec.seconds / rec.evaluations, 3),
                   **reached, "curve": curve}
            out.write(json.dumps(row) + "\n")
            out.flush()
            rows.append(row)
            print(f"[{i}] acc={row['final_token_accuracy']:.3f} evals>=0.9: {reached.get('evals_to_0.9')} "
                  f"evals=1.0: {reached.get('evals_to_1.0')} {row['seconds']}s  {rec.reconstruction}", flush=True)
    # the summary covers every row of the file (a resumed run's earlier rows included)
    rows = [json.loads(line) for line in (args.out / "recovery.jsonl").read_text().splitlines() if line.strip()]
    n = len(rows)
    summary = {
        "sentences": n, "max_evaluations": args.max_evals, "capture_seconds_all": round(capture_seconds, 1),
        "mean_final_token_accuracy": sum(r["final_token_accuracy"] for r in rows) / n,
        "reached_0.9_within_cap": sum("evals_to_0.9" in r for r in rows),
        "reached_1.0_within_cap": sum("evals_to_1.0" in r for r in rows),
        "median_evals_to_0.9": _median([r["evals_to_0.9"] for r in rows if "evals_to_0.9" in r]),
        "median_seconds_to_0.9": _median([r["seconds_to_0.9"] for r in rows if "seconds_to_0.9" in r]),
        "median_evals_to_1.0": _median([r["evals_to_1.0"] for r in rows if "evals_to_1.0" in r]),
        "mean_seconds_per_evaluation": sum(r["seconds_per_evaluation"] for r in rows) / n,
        "torch_threads": torch.get_num_threads(),
    }
    (args.out / "recovery_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def _median(values: list[float]) -> float | None:
    values = sorted(values)
    return None if not values else values[len(values) // 2] if len(values) % 2 else (
        values[len(values) // 2 - 1] + values[len(values) // 2]) / 2


if __name__ == "__main__":
    main()
