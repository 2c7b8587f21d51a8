"""``nlp-dlg``: capture masked-LM gradients (victim) and reconstruct sentences from them (attacker).

    nlp-dlg capture --text "a private sentence ." --out grads/
    nlp-dlg attack --gradients grads/ --out results.jsonl
    nlp-dlg attack --text "a private sentence ." --out results.jsonl   # both sides, with scores
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from nlp_dlg import __version__
from nlp_dlg.cliutil import DISTANCE_CHOICES, positive_int, run_command, setup_logging

logger = logging.getLogger("nlp_dlg.cli")




def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {value}")
    return value


def _add_victim_options(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("private data (victim side)")
    src.add_argument("--text", action="append", metavar="S", help="a private sentence (repeatable)")
    src.add_argument("--input", type=Path, metavar="FILE",
                     help="sentences: .txt (one per line), or .csv/.json/.jsonl/.parquet with --column")
    src.add_argument("--column", help="text column of a table input (default: 'text' or the only string column)")
    src.add_argument("--batch-size", type=int, default=1, help="sentences per gradient (default: 1)")
    src.add_argument("--mlm-probability", type=_probability, default=0.15,
                     help="fraction of tokens selected for masked-LM, 80/10/10 masking (default: 0.15)")
    src.add_argument("--max-length", type=positive_int, default=128,
                     help="truncate to this many tokens (default: 128)")
    src.add_argument("--train-mode", action="store_true", help="compute the gradient with dropout on (default: eval)")
    src.add_argument("--mask-seed", type=int, default=None,
                     help="seed of the masking (default: fresh randomness; the masks are private)")
    src.add_argument("--defense", metavar="SPEC",
                     help="defence applied before the gradient leaves: gaussian:SIGMA, laplace:B, fp16, bf16, int8, "
                          "prune:P, dp:C,Z, joined by '+' (e.g. prune:0.2+gaussian:1e-3); recorded in the metadata")
    src.add_argument("--defense-seed", type=int, default=None, help="seed of the defence's noise (default: fresh)")
    src.add_argument("--local-lr", type=float, default=None,
                     help="FedAvg: the client runs --local-steps SGD steps at this learning rate and shares the weight "
                          "delta (default: FedSGD, the gradient itself)")
    src.add_argument("--local-steps", type=positive_int, default=1, help="FedAvg local steps (default: 1)")
    src.add_argument("--world-size", type=positive_int, default=1,
                     help="run a real DDP step in W local processes (gloo, loopback) and record the all-reduced "
                          "gradient; --batch-size is the global batch, split evenly over the ranks (default: 1)")
    mod = p.add_argument_group("model")
    mod.add_argument("--model", metavar="NAME_OR_PATH",
                     help="pretrained BERT checkpoint dir or hub name (default: bert-base-uncased architecture, "
                          "random init from --seed, as in the paper)")
    mod.add_argument("--model-config", type=Path, metavar="JSON",
                     help="BERT config overrides for a random-init model (e.g. a smaller model)")
    mod.add_argument("--tokenizer", metavar="NAME_OR_PATH",
                     help="tokenizer (default: the model dir's, else the offline bert-base-uncased vocab)")
    mod.add_argument("--seed", type=int, default=0, help="seed of the random model init and of the attack (default: 0)")


def _add_attack_options(p: argparse.ArgumentParser) -> None:
    a = p.add_argument_group("attack")
    a.add_argument("--method", default="span", choices=["span", "dlg"],
                   help="span: analytic tokens and labels from the gradient, certified, with DLG where they cannot "
                        "settle everything; dlg: gradient matching only, the paper's method (default: span)")
    a.add_argument("--iters", type=positive_int, default=30,
                   help="optimizer steps; one L-BFGS step runs up to 20 gradient evaluations (default: 30)")
    a.add_argument("--max-evals", type=positive_int, default=600,
                   help="cap on gradient evaluations per sequence batch (default: 600)")
    a.add_argument("--optimizer", choices=["lbfgs", "adam"], default="lbfgs", help="(default: lbfgs, as the paper)")
    a.add_argument("--lr", type=float, default=None, help="learning rate (default: 1.0 for lbfgs, 0.05 for adam)")
    a.add_argument("--distance", choices=DISTANCE_CHOICES, default="cosine",
                   help="gradient distance (default: cosine; the paper used l2)")
    a.add_argument("--restarts", type=positive_int, default=1, help="random restarts, best kept (default: 1)")
    a.add_argument("--schedule", choices=["joint", "per-sample"], default="joint",
                   help="batches: update all samples per step (default), or sample (step mod B) as the paper")
    a.add_argument("--no-priors", action="store_true",
                   help="with --method dlg: the paper's algorithm as written (no label words or token set "
                        "from the gradient)")
    a.add_argument("--no-peel", action="store_true",
                   help="--method span, a batch partly certified: match the whole batch with the certified "
                        "sentences held fixed, instead of removing their share and attacking the rest")
    a.add_argument("--patience", type=positive_int, default=None,
                   help="stop once the decoded text is unchanged for this many steps (default: run all)")
    a.add_argument("--log-every", type=positive_int, default=1, help="report decoded text every N steps (default: 1)")
    a.add_argument("--no-verify", action="store_true", help="attack even if the model checksum differs")
    a.add_argument("--weights", type=Path, default=None, metavar="FILE",
                   help="with --gradients: weights the gradient was computed on, loaded over the model (e.g. a "
                        "Flower round's weights/global-round-RRR.safetensors)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nlp-dlg", description="Deep Leakage from Gradients for BERT masked-LM.")
    parser.add_argument("--version", action="version", version=f"nlp-dlg {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("capture", help="victim: compute masked-LM gradients of private sentences into files",
                         description="Write one gradient file per batch (batch-000.safetensors, ...): tensors named "
                                     "by parameter, JSON metadata; never the text, token ids or masks.")
    _add_victim_options(cap)
    cap.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for the gradient files")
    att = sub.add_parser("attack", help="attacker: reconstruct sentences from gradient files (or from --text/--input)",
                         description="Reconstruct sentences with DLG. With --gradients only the files are used; with "
                                     "--text/--input both sides run here and the results are scored.")
    att.add_argument("--gradients", type=Path, metavar="DIR_OR_FILE", help="gradient file or directory of them")
    att.add_argument("--out", type=Path, required=True, metavar="FILE", help="results, one JSON line per sequence")
    _add_victim_options(att)
    _add_attack_options(att)
    return parser




def _sentences(args: argparse.Namespace) -> list[str]:
    from nlp_dlg.engine.errors import InputDataError
    from nlp_dlg.text.data import read_sentences

    if args.text and args.input:
        raise InputDataError("pass --text or --input, not both")
    if args.input is not None:
        return read_sentences(args.input, column=args.column)
    if args.text:
        if any(not t.strip() for t in args.text):
            raise InputDataError("--text: expected a non-empty sentence, got an empty one")
        return list(args.text)
    raise InputDataError("no private data: pass --text S (repeatable) or --input FILE")


def _victim(args: argparse.Namespace):
    """Model, tokenizer and captured (observation, truth) pairs for the victim options."""
    import torch

    from nlp_dlg.engine.errors import ConfigError, InputDataError
    from nlp_dlg.text import (
        CaptureConfig,
        ModelSpec,
        capture_gradients,
        check_vocab,
        load_masked_lm,
        load_tokenizer,
        model_metadata,
    )

    if args.batch_size <= 0:
        raise ConfigError(f"--batch-size: expected a positive integer, got {args.batch_size}")
    # options are checked (defence spec included) before a model is built: a typo fails in a moment
    config = CaptureConfig(batch_size=args.batch_size, mlm_probability=args.mlm_probability,
                           max_length=args.max_length, train_mode=args.train_mode, defense=args.defense,
                           local_steps=args.local_steps, local_lr=args.local_lr)
    sentences = _sentences(args)
    overrides = None
    if args.model_config is not None:
        try:
            overrides = json.loads(Path(args.model_config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputDataError(f"--model-config {args.model_config}: {exc}") from exc
    spec = ModelSpec(name_or_path=args.model, seed=args.seed, config=overrides)
    model = load_masked_lm(spec)
    tok_name = args.tokenizer or (args.model if args.model and Path(args.model, "vocab.txt").exists() else None)
    tokenizer = load_tokenizer(tok_name)
    check_vocab(model, tokenizer)
    generator = None
    if args.mask_seed is not None:
        generator = torch.Generator().manual_seed(args.mask_seed)
    noise = None if args.defense_seed is None else torch.Generator().manual_seed(args.defense_seed)
    if args.world_size > 1:
        from nlp_dlg.text.distributed import capture_distributed

        seed = args.mask_seed if args.mask_seed is not None else int.from_bytes(os.urandom(7), "big")
        pairs = capture_distributed(spec, tokenizer, sentences, config, world_size=args.world_size,
                                    model_info=model_metadata(model, spec), tokenizer_name=tok_name,
                                    vocab_size=model.config.vocab_size, mask_seed=seed)
        return model, tokenizer, pairs
    pairs = capture_gradients(model, tokenizer, sentences, config, model_info=model_metadata(model, spec),
                              tokenizer_name=tok_name, generator=generator, defense_generator=noise)
    return model, tokenizer, pairs


def cmd_capture(args: argparse.Namespace) -> int:
    from nlp_dlg.text import write_observations

    _, _, pairs = _victim(args)
    paths = write_observations(pairs, args.out)
    print(f"wrote {len(paths)} gradient file(s) to {args.out}")
    return 0


def _same_weights(observation, first, path: Path):
    """Refuse a gradient file computed on other weights than the first one (e.g. another federated round)."""
    from nlp_dlg.engine.errors import ModelMismatchError

    checksum = observation.metadata.get("model", {}).get("checksum")
    if checksum != first.metadata.get("model", {}).get("checksum"):
        raise ModelMismatchError(f"{path}: computed on other model weights than the first gradient file: attack "
                                 "files of different weights (e.g. federated rounds) separately, with --weights")
    return observation


def _attack_config(args: argparse.Namespace):
    from nlp_dlg.engine import MatchingConfig
    from nlp_dlg.text import TextAttackConfig

    lr = args.lr if args.lr is not None else (1.0 if args.optimizer == "lbfgs" else 0.05)
    matching = MatchingConfig(steps=args.iters, max_evaluations=args.max_evals, optimizer=args.optimizer, lr=lr,
                              distance=args.distance, restarts=args.restarts, schedule=args.schedule)
    return TextAttackConfig(method=args.method, use_priors=not args.no_priors, matching=matching,
                            log_every=args.log_every, patience=args.patience, peel=not args.no_peel)


def _progress(batch: int, steps: int):
    def report(step) -> None:
        record, texts = step.record, step.texts
        head = (f"batch {batch} restart {record.restart} step {record.step}/{steps} evals {record.evaluations} "
                f"dist {record.distance:.4g} best {record.best_distance:.4g} {record.elapsed:.1f}s")
        logger.info("%s\n%s", head, "\n".join(f"  [{i}] {t}" for i, t in enumerate(texts)))
    return report


def cmd_attack(args: argparse.Namespace) -> int:
    import torch

    from nlp_dlg.engine import find_gradient_files, load_observation
    from nlp_dlg.engine.errors import ConfigError
    from nlp_dlg.text import MaskedLMAttack, decode_text, load_tokenizer, model_from_metadata, score_batch

    config = _attack_config(args)
    if args.gradients is not None and (args.text or args.input):
        raise ConfigError("pass --gradients (attacker only) or --text/--input (both sides), not both")
    if args.gradients is not None:
        files = find_gradient_files(args.gradients)
        first = load_observation(files[0])
        model, _ = model_from_metadata(first.metadata.get("model", {}), name_or_path=args.model,
                                       verify=not args.no_verify, weights=args.weights)
        tokenizer = load_tokenizer(args.tokenizer or first.metadata.get("tokenizer"))
        batches = ((_same_weights(load_observation(f), first, f) if i else first, None) for i, f in enumerate(files))
    else:
        model, tokenizer, pairs = _victim(args)
        batches = iter(pairs)
    special = set(tokenizer.all_special_ids)
    rows: list[dict[str, Any]] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    interrupted = False
    with args.out.open("w") as out:
        for b, (observation, truth) in enumerate(batches):
            attack = MaskedLMAttack(model, tokenizer, config, callbacks=[_progress(b, config.matching.steps)])
            recs = attack.attack(observation, generator=torch.Generator().manual_seed(args.seed + b), batch=b)
            lines = [r.to_json() for r in recs]
            if truth is not None:
                ref_texts = [decode_text(tokenizer, ids.tolist()) for ids in truth.input_ids]
                scores = score_batch([r.token_ids for r in recs], [r.reconstruction for r in recs],
                                     truth.input_ids.tolist(), ref_texts, ignore=special)
                lines = [{**line, **score} for line, score in zip(lines, scores)]
            for line in lines:
                out.write(json.dumps(line) + "\n")
                logger.info("batch %d [%d] -> %s", b, line["index"], line["reconstruction"])
            out.flush()
            rows.extend(lines)
            if any(r.interrupted for r in recs):
                interrupted = True
                break
    if rows and "token_accuracy" in rows[0]:
        print(format_summary(rows))
    print(f"wrote {len(rows)} reconstruction(s) to {args.out}")
    return 130 if interrupted else 0


def format_summary(rows: list[dict[str, Any]]) -> str:
    """A plain-text table: one line per sequence, then the means."""
    from nlp_dlg.text import summarize

    head = (f"{'batch':>5} {'idx':>3} {'tokacc':>6} {'R1':>5} {'R2':>5} {'RL':>5} {'exact':>5} {'evals':>5} "
            f"{'sec':>7}  reconstruction")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['batch']:>5} {r['index']:>3} {r['token_accuracy']:>6.3f} {r['rouge1']:>5.2f} "
                     f"{r['rouge2']:>5.2f} {r['rougeL']:>5.2f} {str(r['exact_match']):>5} "
                     f"{r['gradient_evaluations']:>5} {r['seconds']:>7.1f}  {r['reconstruction']}")
    m = summarize(rows)
    lines.append("-" * len(head))
    lines.append(f"{'mean':>9} {m['token_accuracy']:>6.3f} {m['rouge1']:>5.2f} {m['rouge2']:>5.2f} "
                 f"{m['rougeL']:>5.2f} {m['exact_match']:>5.2f} {m['gradient_evaluations']:>5.0f} {m['seconds']:>7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    return run_command("nlp-dlg", cmd_capture if args.command == "capture" else cmd_attack, args)


if __name__ == "__main__":
    sys.exit(main())
