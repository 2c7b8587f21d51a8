"""The sentence search's coordinate descent, damped and undamped, on the same starts.

BERT-base at random init, masked-LM gradients of the public-domain sentences (15% masking, masks drawn from a
generator seeded 1234), captured in this process. The `span` attack runs as the toolkit runs it; every start its
search descends (`nlp_dlg.text.analytic._descend`) is also descended the other way, so both descents see the
same starts, and the search goes on with the toolkit's own choice. Per batch size: descents, how many ended on a
certified sentence (second-layer residual below `CERTIFY_MAX`, found before or not) and the sweeps each way.
One JSON line per batch size to `benchmarks/results/descent.jsonl`.

    .venv/bin/python benchmarks/bench_descent.py [--batch-sizes 8 16]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from nlp_dlg.results import append_result

HERE = Path(__file__).resolve().parent


def counted(tally: dict[bool, list[int]]):
    """Stand-ins for `_descend`, which descends each start both ways and counts (descents, certified, sweeps), and
    for `_Options.outputs`, which counts the sweeps (one call each)."""
    import nlp_dlg.text.analytic as analytic

    descend, outputs = analytic._descend, analytic._Options.outputs
    calls = [0]

    def counting_outputs(self, first, ids):
        calls[0] += 1
        return outputs(self, first, ids)

    def both(first, span2, ids, options, max_sweeps, *, damped):
        ends = []
        for mode in (damped, not damped):
            calls[0] = 0
            ends.append(descend(first, span2, ids, options, max_sweeps, damped=mode))
            residual = float(span2.residual(first.full(first.inputs(ends[-1]))).mean())
            row = tally[mode]
            row[0], row[1], row[2] = row[0] + 1, row[1] + (residual < analytic.CERTIFY_MAX), row[2] + calls[0]
        return ends[0]                       # the search goes on with the toolkit's own descent
    return both, counting_outputs


def measure(batch_size: int, sentences: list[str]) -> dict:
    import nlp_dlg.text.analytic as analytic
    from nlp_dlg.text import (
        CaptureConfig,
        MaskedLMAttack,
        ModelSpec,
        TextAttackConfig,
        capture_gradients,
        load_masked_lm,
        load_tokenizer,
        model_metadata,
    )

    spec = ModelSpec(seed=0)
    model, tokenizer = load_masked_lm(spec), load_tokenizer()
    pairs = capture_gradients(model, tokenizer, sentences, CaptureConfig(batch_size=batch_size),
                              model_info=model_metadata(model, spec), generator=torch.Generator().manual_seed(1234))
    tally: dict[bool, list[int]] = {True: [0, 0, 0], False: [0, 0, 0]}
    original = analytic._descend, analytic._Options.outputs
    analytic._descend, analytic._Options.outputs = counted(tally)
    try:
        attack = MaskedLMAttack(model, tokenizer, TextAttackConfig(method="span"))
        for b, (observation, _) in enumerate(pairs):
            attack.attack(observation, generator=torch.Generator().manual_seed(b))
    finally:
        analytic._descend, analytic._Options.outputs = original
    return {"model": "bert-base random init", "batch_size": batch_size, "batches": len(pairs),
            "data": "public-domain sentences", "descents": tally[True][0],
            **{f"{name}_{what}": tally[mode][i] for name, mode in (("damped", True), ("undamped", False))
               for i, what in ((1, "certified"), (2, "sweeps"))}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--sentences", type=Path, default=HERE / "data" / "public_domain_sentences.txt")
    args = ap.parse_args()
    sentences = [s for s in args.sentences.read_text().splitlines() if s.strip()]
    for bs in args.batch_sizes:
        row = append_result(HERE / "results" / "descent.jsonl", measure(bs, sentences))
        print({k: v for k, v in row.items() if k not in ("date", "command")})


if __name__ == "__main__":
    main()
