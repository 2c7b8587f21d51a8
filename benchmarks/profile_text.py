"""Where the time of the two masked-LM attacks goes, on BERT-base at random init, one held-out sentence.

* `span`: one whole attack at batch 1 (`method="span"`), under cProfile;
* `dlg`: gradient evaluations of the paper's matching (`method="dlg"`, `--max-evals N`), under cProfile and
  torch's profiler (the operators).

Writes `benchmarks/results/profile_span_b1.txt` and `benchmarks/results/profile_dlg.txt` (the 30 functions with
the most cumulative time, then for dlg the 25 costliest torch operators), and one JSON line per attack to
`benchmarks/results/profile.jsonl` (seconds, evaluations, seconds per evaluation, and the share of the time spent
in the top-level phases found in the profile).

    .venv/bin/python benchmarks/profile_text.py [--max-evals 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path

import torch

from nlp_dlg.results import append_result

HERE = Path(__file__).resolve().parent
SENTENCE = "the committee will meet again next week to decide on the budget ."


def setup():
    from nlp_dlg.text import CaptureConfig, ModelSpec, capture_gradients, load_masked_lm, load_tokenizer, model_metadata

    spec = ModelSpec(seed=0)
    model, tokenizer = load_masked_lm(spec), load_tokenizer()
    observation, _ = capture_gradients(model, tokenizer, [SENTENCE], CaptureConfig(),
                                       model_info=model_metadata(model, spec),
                                       generator=torch.Generator().manual_seed(0))[0]
    return model, tokenizer, observation


def profiled(model, tokenizer, observation, method: str, max_evals: int) -> tuple[object, float, cProfile.Profile]:
    from nlp_dlg.engine import MatchingConfig
    from nlp_dlg.text import MaskedLMAttack, TextAttackConfig

    config = TextAttackConfig(method=method, matching=MatchingConfig(distance="cosine", max_evaluations=max_evals))
    attack = MaskedLMAttack(model, tokenizer, config)
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    [rec] = attack.attack(observation, generator=torch.Generator().manual_seed(0))
    profile.disable()
    return rec, time.perf_counter() - started, profile


def top(profile: cProfile.Profile, count: int = 30) -> tuple[str, pstats.Stats]:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out).sort_stats("cumulative")
    stats.print_stats(count)
    return out.getvalue(), stats


def share(stats: pstats.Stats, total: float, names: tuple[str, ...]) -> dict[str, float]:
    """The share of ``total`` in the functions named (cumulative time, the first match of each)."""
    found: dict[str, float] = {}
    for (_, _, func), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        for name in names:
            if func == name and name not in found:
                found[name] = round(cumulative / total, 3)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-evals", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "profile.jsonl")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, observation = setup()
    phases = {"span": ("position_candidates", "attention_input_span", "place_labels", "certificate_distance",
                       "masked_lm_gradient", "recover", "_matching"),
              "dlg": ("evaluate", "task_loss", "gradient_distance", "grad", "step", "decode")}
    for method in ("span", "dlg"):
        rec, seconds, profile = profiled(model, tokenizer, observation, method, args.max_evals)
        text, stats = top(profile)
        if method == "dlg":
            with torch.profiler.profile() as prof:
                profiled(model, tokenizer, observation, method, 3)
            text += "\n\ntorch operators (3 evaluations):\n" + prof.key_averages().table(
                sort_by="self_cpu_time_total", row_limit=25)
        name = "profile_span_b1.txt" if method == "span" else "profile_dlg.txt"
        (args.out.parent / name).write_text(f"{method} on BERT-base random init, batch 1, {SENTENCE!r}\n"
                                            f"{seconds:.2f} s, {rec.evaluations} evaluations\n\n{text}")
        row = {"model": "bert-base random init", "method": method, "batch_size": 1, "sentence": SENTENCE,
               "seconds": round(seconds, 2), "evaluations": rec.evaluations,
               "seconds_per_evaluation": round(seconds / rec.evaluations, 3) if rec.evaluations else None,
               "exact": rec.reconstruction.replace(" ", "") == SENTENCE.replace(" ", ""),
               "share": share(stats, seconds, phases[method]), "torch_threads": torch.get_num_threads(),
               "profile": f"benchmarks/results/{name}"}
        print(append_result(args.out, row), flush=True)


if __name__ == "__main__":
    main()
