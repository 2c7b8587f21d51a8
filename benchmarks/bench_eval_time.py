"""Seconds per gradient evaluation of the attack vs one plain training step, BERT-base at 32 tokens.

A gradient evaluation is what one L-BFGS inner iteration costs: dummy forward, first-order gradients
of every matched parameter with ``create_graph``, the distance, and its backward to the dummy leaves
(double backprop). Timed twice: matching every parameter (``span``'s matching, the paper) and matching the
embeddings and the first encoder layer only (``dlg``'s default, ``TextAttackConfig.match_layers``). A training
step is forward + backward of the same batch. Median of ``--repeats``.

    .venv/bin/python benchmarks/bench_eval_time.py [--tokens 32] [--repeats 5]

Writes ``benchmarks/results/eval_time.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from nlp_dlg.engine import gradient_distance
from nlp_dlg.text import (
    MaskedLMAttack,
    ModelSpec,
    TextAttackConfig,
    capture_gradients,
    load_masked_lm,
    load_tokenizer,
)

HERE = Path(__file__).resolve().parent


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    model, tokenizer = load_masked_lm(ModelSpec(seed=0)), load_tokenizer()
    words = ("the committee will review every application before the end of the month and " * 4).split()
    sentence = " ".join(words[: args.tokens - 2])
    obs, truth = capture_gradients(model, tokenizer, [sentence], model_info={},
                                   generator=torch.Generator().manual_seed(0))[0]
    assert truth.input_ids.shape[1] == args.tokens, truth.input_ids.shape
    for p in model.parameters():
        p.requires_grad_(True)

    def evaluation(match_layers: int | str):
        plugin = MaskedLMAttack(model, tokenizer, TextAttackConfig(method="dlg", match_layers=match_layers)
                                ).plugin_for(obs)
        params = plugin.matched_parameters()
        target = [obs.gradients[n] for n in params]
        leaves = {k: v.requires_grad_() for k, v in plugin.init_leaves(torch.Generator().manual_seed(0)).items()}

        def run() -> None:
            grads = torch.autograd.grad(plugin.task_loss(leaves), list(params.values()), create_graph=True)
            torch.autograd.grad(gradient_distance(grads, target, "cosine"), list(leaves.values()))
        return run

    def training_step() -> None:
        loss = model(input_ids=truth.masked_input_ids, labels=truth.labels).loss
        torch.autograd.grad(loss, list(model.parameters()))

    eval_s = _median_seconds(evaluation("all"), args.repeats)
    first_s = _median_seconds(evaluation(1), args.repeats)
    train_s = _median_seconds(training_step, args.repeats)
    result = {"model": "bert-base-uncased architecture, random init", "tokens": args.tokens, "batch_size": 1,
              "seconds_per_gradient_evaluation": round(eval_s, 3),
              "seconds_per_gradient_evaluation_first_layer": round(first_s, 3),
              "seconds_per_training_step": round(train_s, 3),
              "ratio": round(eval_s / train_s, 2), "ratio_first_layer": round(first_s / train_s, 2),
              "torch_threads": torch.get_num_threads(), "repeats": args.repeats}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "eval_time.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
