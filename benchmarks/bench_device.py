"""The same measurements on every device this machine has, side by side: seconds per gradient evaluation
(BERT-base random init, batch 1 and 8) and the default `span` attack on a batch of 8, on the one pipeline.

Sentences: the first 8 of `benchmarks/data/public_domain_sentences.txt`, 15% masking (mask seed 1234), eval mode.
A gradient evaluation is one L-BFGS inner iteration of `dlg` (dummy forward, first-order gradients with
`create_graph`, cosine distance, its backward to the dummy leaves); median of `--repeats` after a warm-up, with the
device synchronised. The span attack is timed per batch (model already built). Random draws are made on the CPU,
so every device starts from the same dummy. Appends one JSON line per device to `benchmarks/results/device.jsonl`.

    .venv/bin/python benchmarks/bench_device.py [--devices cpu cuda] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nlp_dlg.results import append_result

HERE = Path(__file__).resolve().parent


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_evaluation(task, observation, device: torch.device, repeats: int) -> float:
    """Median seconds of one `dlg` gradient evaluation on ``observation`` (plugin and leaves on ``device``)."""
    from nlp_dlg.engine import gradient_distance
    from nlp_dlg.text import MaskedLMAttack

    plugin = MaskedLMAttack(task.model, task.tokenizer).plugin_for(observation.to(device))
    params = plugin.matched_parameters()
    flags = {n: p.requires_grad for n, p in task.model.named_parameters()}
    for p in params.values():
        p.requires_grad_(True)
    target = [observation.gradients[n].to(device) for n in params]
    leaves = {k: v.requires_grad_() for k, v in plugin.init_leaves(torch.Generator().manual_seed(0)).items()}
    times = []
    for i in range(repeats + 1):                   # the first is a warm-up
        _sync(device)
        started = time.perf_counter()
        grads = torch.autograd.grad(plugin.task_loss(leaves), list(params.values()), create_graph=True)
        torch.autograd.grad(gradient_distance(grads, target, "cosine"), list(leaves.values()))
        _sync(device)
        if i:
            times.append(time.perf_counter() - started)
    for n, p in task.model.named_parameters():
        p.requires_grad_(flags[n])
    return statistics.median(times)


def measure(device: torch.device, sentences: list[str], repeats: int) -> dict:
    from nlp_dlg.pipeline import run_attack
    from nlp_dlg.text import (
        CaptureConfig,
        MaskedLMTask,
        ModelSpec,
        capture_gradients,
        load_masked_lm,
        load_tokenizer,
        model_metadata,
    )

    spec = ModelSpec(seed=0)
    model, tokenizer = load_masked_lm(spec).to(device), load_tokenizer()
    task = MaskedLMTask(model=model, tokenizer=tokenizer, device=device, echo=lambda line: None)
    row: dict = {"device": str(device), "name": torch.cuda.get_device_name(device) if device.type == "cuda"
                 else platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}
    for batch in (1, 8):
        [(obs, truth)] = capture_gradients(model, tokenizer, sentences[:batch], CaptureConfig(batch_size=batch),
                                           model_info=model_metadata(model, spec),
                                           generator=torch.Generator().manual_seed(1234))[:1]
        row[f"seconds_per_evaluation_batch{batch}"] = round(seconds_per_evaluation(task, obs, device, repeats), 3)
        if batch == 8:
            with tempfile.TemporaryDirectory() as tmp:
                _sync(device)
                started = time.perf_counter()
                run = run_attack(task, pairs=[(obs, truth)], out=Path(tmp) / "rows.jsonl", seed=0)
                _sync(device)
            row["span_batch8_seconds"] = round(time.perf_counter() - started, 1)
            row["span_batch8_token_accuracy"] = round(sum(r["token_accuracy"] for r in run.rows) / len(run.rows), 4)
            row["span_batch8_certified"] = sum(bool(r["certified"]) for r in run.rows)
    if device.type == "cuda":
        row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", nargs="+", default=["cpu", *(["cuda"] if torch.cuda.is_available() else [])])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "device.jsonl")
    args = ap.parse_args()
    from nlp_dlg.engine import resolve_device

    sentences = [s for s in (HERE / "data" / "public_domain_sentences.txt").read_text().splitlines() if s.strip()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.devices:
        row = {"date": time.strftime("%Y-%m-%d"), **measure(resolve_device(name), sentences, args.repeats)}
        append_result(args.out, row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
