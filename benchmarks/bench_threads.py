"""Threads on a shared machine: seconds per gradient evaluation at each thread count, alone and beside busy
processes (what another job on the same cores does to the attack, and what `--threads` changes).

One evaluation is one L-BFGS inner iteration of the attack (dummy forward, gradients with `create_graph`,
distance, backward to the dummy), here of DLG's LeNet on one 32x32 image and of BERT-base (random init) on one
sentence; median of `--repeats` after a warm-up. "Busy" processes spin in a Python loop (one core each) while
the measurement runs. Appends one JSON line per (model, threads, busy) to `benchmarks/results/threads.jsonl`.

    .venv/bin/python benchmarks/bench_threads.py [--threads 1 2] [--busy 0 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_eval_time import _median_seconds  # a warm-up, then the median (this folder is on sys.path)

from nlp_dlg.results import append_result

HERE = Path(__file__).resolve().parent


def _evaluation(plugin, target: list[torch.Tensor]):
    from nlp_dlg.engine import gradient_distance

    params = list(plugin.matched_parameters().values())
    for p in params:
        p.requires_grad_(True)
    leaves = {k: v.requires_grad_() for k, v in plugin.init_leaves(torch.Generator().manual_seed(0)).items()}

    def run() -> None:
        grads = torch.autograd.grad(plugin.task_loss(leaves), params, create_graph=True)
        torch.autograd.grad(gradient_distance(grads, target, "l2"), list(leaves.values()), allow_unused=True)
    return run


def lenet_evaluation():
    from vision_dlg import ImagePlugin, VisionModelSpec, build_model, capture_images, model_metadata, skimage_photo

    spec = VisionModelSpec()
    model = build_model(spec)
    [(obs, _)] = capture_images(model, skimage_photo("coffee")[None], [3], model_info=model_metadata(model, spec))
    plugin = ImagePlugin(model, 1, (3, 32, 32), 100, labels=torch.tensor([3]))
    return _evaluation(plugin, [obs.gradients[n] for n in plugin.matched_parameters()])


def bert_evaluation():
    from nlp_dlg.text import MaskedLMAttack, ModelSpec, capture_gradients, load_masked_lm, load_tokenizer

    model, tokenizer = load_masked_lm(ModelSpec(seed=0)), load_tokenizer()
    [(obs, _)] = capture_gradients(model, tokenizer, ["the committee will review every application before the "
                                                      "end of the month ."], model_info={},
                                   generator=torch.Generator().manual_seed(0))
    plugin = MaskedLMAttack(model, tokenizer).plugin_for(obs)
    return _evaluation(plugin, [obs.gradients[n] for n in plugin.matched_parameters()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 2], help="busy processes beside the measurement")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "threads.jsonl")
    args = ap.parse_args()
    runs = {"lenet": lenet_evaluation(), "bert-base": bert_evaluation()}
    for busy in args.busy:
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            for threads in args.threads:
                torch.set_num_threads(threads)
                for model, run in runs.items():
                    row = {"date": time.strftime("%Y-%m-%d"), "model": model, "threads": threads, "busy": busy,
                           "cores": os.cpu_count(), "seconds_per_evaluation": round(_median_seconds(run, args.repeats),
                                                                                     4)}
                    append_result(args.out, row)
                    print(json.dumps(row), flush=True)
        finally:
            for spinner in spinners:
                spinner.kill()


if __name__ == "__main__":
    main()
