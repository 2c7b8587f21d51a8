"""Classification leakage on real text: held-out Rotten Tomatoes reviews with their fresh/rotten labels
(`benchmarks/realtext.py`), a 2-label head freshly drawn on the pretrained all-MiniLM-L6-v2 encoder (where
fine-tuning starts), captured by `nlp-dlg capture --task classification` in one process and attacked from the
files in another (a fresh process per method, which reports its own peak RSS). One JSON line per (batch size,
method) to `benchmarks/results/classify.jsonl`.

    .venv/bin/python benchmarks/bench_classify.py --batch-sizes 1 8 [--batches 8 1] [--methods span dlg]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import realtext

from nlp_dlg.results import append_result

HERE = Path(__file__).resolve().parent


def minilm_dir() -> str:
    from nlp_dlg.text.model import default_tokenizer_dir

    return str(default_tokenizer_dir())


def attack(folder: str, method: str, max_evals: int) -> tuple[list[dict], float, float]:
    """In a fresh process: attack every file of ``folder``; the rows, the seconds and this process's peak RSS."""
    from nlp_dlg.causal.config import CausalAttackConfig
    from nlp_dlg.classify.runner import ClassificationTask
    from nlp_dlg.cliutil import setup_logging
    from nlp_dlg.engine.config import MatchingConfig
    from nlp_dlg.pipeline import run_attack

    setup_logging(quiet=False)
    config = CausalAttackConfig(method=method, log_every=10,
                                matching=MatchingConfig(distance="cosine", max_evaluations=max_evals))
    started = time.perf_counter()
    run = run_attack(ClassificationTask(config, name_or_path=minilm_dir()), gradients=folder,
                     out=Path(folder) / f"{method}.jsonl")
    return run.rows, time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def score(rows: list[dict], data: list[tuple[str, int]], batch_size: int) -> dict:
    from nlp_dlg.text.metrics import score_batch, summarize
    from nlp_dlg.text.model import load_tokenizer
    from nlp_dlg.text.task import decode_text

    tok, scored, labels = load_tokenizer(), [], 0
    for b in sorted({r["batch"] for r in rows}):
        group = [r for r in rows if r["batch"] == b]
        part = data[b * batch_size:(b + 1) * batch_size]
        refs = [tok(t)["input_ids"] for t, _ in part]
        texts = [decode_text(tok, ids) for ids in refs]
        result = score_batch([r["token_ids"] for r in group], [r["reconstruction"] for r in group], refs, texts,
                             ignore=set(tok.all_special_ids))
        truth = dict(zip(texts, (y for _, y in part)))
        labels += sum(truth.get(s["reference"]) == r["label"] for s, r in zip(result, group))
        scored += result
    means = summarize([{**s, "seconds": 0.0, "gradient_evaluations": 0} for s in scored])
    return {"token_accuracy": round(means["token_accuracy"], 4), "rouge1": round(means["rouge1"], 4),
            "exact": sum(bool(s["exact_match"]) for s in scored), "labels_right": labels}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="default: 8 of 1, else 1")
    ap.add_argument("--methods", nargs="+", default=["span"], choices=["span", "dlg"])
    ap.add_argument("--max-evals", type=int, default=300)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "classify.jsonl")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-classify-"))
    for batch_size, count in zip(args.batch_sizes, args.batches or [8 if b == 1 else 1 for b in args.batch_sizes]):
        data = realtext.labelled_reviews(batch_size * count)
        table = work / f"b{batch_size}.jsonl"
        table.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in data))
        subprocess.run([sys.executable, "-m", "nlp_dlg.cli", "-q", "capture", "--task", "classification", "--model",
                        minilm_dir(), "--input", str(table), "--label-column", "label", "--batch-size",
                        str(batch_size), "--out", str(work / f"b{batch_size}")], check=True)
        for method in args.methods:
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                rows, seconds, peak = pool.submit(attack, str(work / f"b{batch_size}"), method,
                                                  args.max_evals).result()
            row = {"model": "all-MiniLM-L6-v2 + fresh 2-label head", "batch_size": batch_size, "batches": count,
                   "method": method, "attacks_run": sorted({r["method"] for r in rows}), "sentences": len(data),
                   "data": f"Rotten Tomatoes reviews 0-{len(data) - 1} (8-24 words)", **score(rows, data, batch_size),
                   "seconds_per_batch": round(seconds / count, 1), "peak_rss_gib": round(peak, 2),
                   "max_evals": args.max_evals}
            print(append_result(args.out, row), flush=True)


if __name__ == "__main__":
    main()
