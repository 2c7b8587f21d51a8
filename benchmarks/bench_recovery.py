"""Iterations and seconds to recovery: held-out sentences, captured in another process, attacked here.

For each sentence of ``benchmarks/data/public_domain_sentences.txt``: ``nlp-dlg capture`` runs in a
subprocess (BERT-base architecture, random init, batch 1, 15% masking); this process loads the gradient
file, attacks it with ``dlg`` (L-BFGS lr 1.0, cosine, gradient priors), and the harness (not the
attacker) compares the decoded text with the sentence at every step to record the gradient evaluations
needed to reach token accuracy >= 0.9 and 1.0. A sentence stops at 1.0 or at the evaluation cap.
L-BFGS runs one evaluation per optimizer step here (``lbfgs_max_iter=1``): the same trajectory as 20 per step
(torch's L-BFGS keeps its history and step across calls), but the harness sees every evaluation, so the counts
are exact rather than rounded up to a multiple of 20.

    .venv/bin/python benchmarks/bench_recovery.py [--limit N] [--max-evals 600] [--match-layers auto|all|K]

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

from nlp_dlg.cliutil import match_layers
from nlp_dlg.engine import MatchingConfig, find_gradient_files, load_observation
from nlp_dlg.pipeline import run_attack, unless_interrupted
from nlp_dlg.results import append_result
from nlp_dlg.text import MaskedLMTask, TextAttackConfig, load_tokenizer, token_accuracy

HERE = Path(__file__).resolve().parent


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=Path, default=HERE / "data" / "public_domain_sentences.txt")
    ap.add_argument("--limit", type=int, default=8, help="first N sentences (default 8: the batch-1 set)")
    ap.add_argument("--start", type=int, default=0,
                    help="skip the first N sentences and append to recovery.jsonl (resume a stopped run)")
    ap.add_argument("--max-evals", type=int, default=600)
    ap.add_argument("--match-layers", default="auto", type=match_layers,
                    help="the gradients matched: auto (the attack's default), all, or K encoder layers")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    return ap.parse_args()


def harness(references: list[list[int]], special: set[int], first: int, reached: dict, curves: dict):
    """An ``on_step`` that knows the truth (the attacker does not): the token accuracy of every step, the gradient
    evaluations and seconds to 0.9 and 1.0; it stops a sentence at 1.0."""
    def check(batch: int, step) -> bool:
        i = first + batch
        acc = token_accuracy(step.token_ids[0].tolist(), references[i], ignore=special)
        curves.setdefault(i, []).append((step.record.evaluations, round(step.record.elapsed, 2), acc))
        for key, bar in (("evals_to_0.9", 0.9), ("evals_to_1.0", 1.0)):
            if acc >= bar and key not in reached.setdefault(i, {}):
                reached[i][key] = step.record.evaluations
                reached[i][key.replace("evals", "seconds")] = round(step.record.elapsed, 1)
        return acc >= 1.0
    return check


def attack_all(args: argparse.Namespace, files: list[Path], sentences: list[str], tokenizer) -> None:
    """Attack sentence ``i`` (from ``--start``) with seed ``i`` on the pipeline, the harness watching; each row is
    appended to ``recovery.jsonl`` as its sentence ends (a stopped run resumes with ``--start``)."""
    first, special = args.start, set(tokenizer.all_special_ids)
    references = [tokenizer(s)["input_ids"] for s in sentences]
    reached: dict[int, dict] = {}
    curves: dict[int, list] = {}
    config = TextAttackConfig(method="dlg", match_layers=args.match_layers,
                              matching=MatchingConfig(distance="cosine", steps=args.max_evals, lbfgs_max_iter=1,
                                                      max_evaluations=args.max_evals))
    task = MaskedLMTask(config, tokenizer=tokenizer, echo=lambda line: None,
                        on_step=harness(references, special, first, reached, curves))

    def write(batch: int, outcome) -> None:
        i, rec = first + batch, outcome.rows[0]
        row = {"sentence": sentences[i], "tokens": len(references[i]), "reconstruction": rec["reconstruction"],
               "final_token_accuracy": token_accuracy(rec["token_ids"], references[i], ignore=special),
               "gradient_evaluations": rec["gradient_evaluations"], "steps": rec["steps"],
               "seconds": round(rec["seconds"], 1),
               "seconds_per_evaluation": round(rec["seconds"] / rec["gradient_evaluations"], 3),
               "match_layers": config.match_layers, "torch_threads": torch.get_num_threads(),
               **reached.get(i, {}), "curve": curves.get(i, [])}
        append_result(out, row)
        print(f"[{i}] acc={row['final_token_accuracy']:.3f} evals>=0.9: {row.get('evals_to_0.9')} "
              f"evals=1.0: {row.get('evals_to_1.0')} {row['seconds']}s  {rec['reconstruction']}", flush=True)

    out = args.out / "recovery.jsonl"
    if not first:
        out.write_text("")
    with tempfile.TemporaryDirectory() as tmp:
        unless_interrupted(run_attack(task, pairs=((load_observation(f), None) for f in files[first:]), seed=first,
                                      out=Path(tmp) / "rows.jsonl", on_batch=write))


def summary_of(rows: list[dict], max_evals: int, capture_seconds: float) -> dict:
    n = len(rows)
    return {
        "sentences": n, "max_evaluations": max_evals,
        "match_layers": sorted({str(r.get("match_layers")) for r in rows}),
        "capture_seconds_all": round(capture_seconds, 1),
        "mean_final_token_accuracy": sum(r["final_token_accuracy"] for r in rows) / n,
        "reached_0.9_within_cap": sum("evals_to_0.9" in r for r in rows),
        "reached_1.0_within_cap": sum("evals_to_1.0" in r for r in rows),
        "median_evals_to_0.9": _median([r["evals_to_0.9"] for r in rows if "evals_to_0.9" in r]),
        "median_seconds_to_0.9": _median([r["seconds_to_0.9"] for r in rows if "seconds_to_0.9" in r]),
        "median_evals_to_1.0": _median([r["evals_to_1.0"] for r in rows if "evals_to_1.0" in r]),
        "mean_seconds_per_evaluation": sum(r["seconds_per_evaluation"] for r in rows) / n,
        "median_seconds_to_1.0": _median([r["seconds_to_1.0"] for r in rows if "seconds_to_1.0" in r]),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    sentences = [s for s in args.sentences.read_text().splitlines() if s.strip()][: args.limit]
    tokenizer = load_tokenizer()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nlp_dlg.cli", "-q", "capture", "--input", str(args.sentences),
                        "--out", tmp, "--mask-seed", "1234"], check=True)
        capture_seconds = time.perf_counter() - t0
        attack_all(args, find_gradient_files(tmp)[: len(sentences)], sentences, tokenizer)
    # the summary covers every row of the file (a resumed run's earlier rows included)
    rows = [json.loads(line) for line in (args.out / "recovery.jsonl").read_text().splitlines() if line.strip()]
    summary = summary_of(rows, args.max_evals, capture_seconds)
    (args.out / "recovery_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def _median(values: list[float]) -> float | None:
    values = sorted(values)
    return None if not values else values[len(values) // 2] if len(values) % 2 else (
        values[len(values) // 2 - 1] + values[len(values) // 2]) / 2


if __name__ == "__main__":
    main()
