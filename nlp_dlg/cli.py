"""``nlp-dlg``: capture language-model gradients (victim) and reconstruct sentences from them (attacker).

    nlp-dlg capture --text "a private sentence ." --out grads/                       # BERT masked-LM
    nlp-dlg capture --task causal-lm --architecture gpt2 --text "a private sentence ." --out grads/
    nlp-dlg attack --gradients grads/ --out results.jsonl                             # the task is the file's
    nlp-dlg attack --text "a private sentence ." --out results.jsonl   # both sides, with scores
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from nlp_dlg.causal.config import CausalAttackConfig
from nlp_dlg.cliutil import (
    add_matching_options,
    add_run_options,
    add_victim_options,
    cli_main,
    match_layers,
    matching_config,
    positive_int,
    probability,
    set_threads,
    task_parser,
)
from nlp_dlg.text.config import METHODS, CaptureConfig, TextAttackConfig

CAPTURE, ATTACK, CAUSAL = CaptureConfig(), TextAttackConfig(), CausalAttackConfig()
DATA_OPTIONS = ("--text", "--input")
TASKS = ("masked-lm", "causal-lm", "classification")
ARCHITECTURES = ("gpt2", "llama")     # nlp_dlg.causal.model.ARCHITECTURES (that module imports transformers)


def _add_victim_options(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("private data (victim side; with attack: both sides run here, scored)")
    src.add_argument("--text", action="append", metavar="S", help="a private sentence (repeatable)")
    src.add_argument("--input", type=Path, metavar="FILE",
                     help="sentences: .txt (one per line), or .csv/.json/.jsonl/.parquet with --column")
    src.add_argument("--column", help="text column of a table input (default: 'text' or the only string column)")
    src.add_argument("--task", choices=TASKS, default="masked-lm",
                     help="the loss the client trains: masked-lm (BERT's masking), causal-lm (next-token, a "
                          "decoder; padding ignored) or classification (a BERT-family encoder's sequence classifier; "
                          "labels from --label or --label-column); recorded in the file, which the attacker reads "
                          "(default: masked-lm)")
    src.add_argument("--num-labels", type=positive_int, default=2, metavar="K",
                     help="classification: the number of classes (default: 2)")
    src.add_argument("--label", type=int, action="append", metavar="Y",
                     help="classification: the label of each --text, in order (repeatable)")
    src.add_argument("--label-column", metavar="NAME", help="classification: the label column of a table --input")
    add_victim_options(src)
    src.add_argument("--mlm-probability", type=probability, default=CAPTURE.mlm_probability,
                     help=f"fraction of tokens selected for masked-LM, 80/10/10 masking "
                          f"(default: {CAPTURE.mlm_probability})")
    src.add_argument("--max-length", type=positive_int, default=CAPTURE.max_length,
                     help=f"truncate to this many tokens (default: {CAPTURE.max_length})")
    src.add_argument("--mask-seed", type=int, default=None,
                     help="seed of the masking (default: fresh randomness; the masks are private)")
    src.add_argument("--local-lr", type=float, default=None,
                     help="FedAvg: the client runs --local-steps SGD steps at this learning rate and shares the weight "
                          "delta (default: FedSGD, the gradient itself)")
    src.add_argument("--local-steps", type=positive_int, default=CAPTURE.local_steps,
                     help=f"FedAvg local steps (default: {CAPTURE.local_steps})")
    mod = p.add_argument_group("model")
    mod.add_argument("--model", metavar="NAME_OR_PATH",
                     help="pretrained checkpoint dir or hub name (default: masked-lm: bert-base-uncased architecture, "
                          "random init from --seed, as in the paper; causal-lm: --architecture, random init)")
    mod.add_argument("--architecture", choices=ARCHITECTURES, default="gpt2",
                     help="causal-lm, random init: the decoder family at its standard size (gpt2: GPT-2 small, 12 "
                          "layers x 768; llama: a small LLaMA, 8 layers x 512), with the shipped 8,192-token BPE "
                          "(default: gpt2)")
    mod.add_argument("--lora-rank", type=positive_int, default=None, metavar="R",
                     help="causal-lm: fine-tune LoRA adapters of rank R (peft, on the family's attention maps, drawn "
                          "from --seed); only their gradients leave the client (default: full fine-tuning)")
    mod.add_argument("--model-config", type=Path, metavar="JSON",
                     help="config overrides for a random-init model (e.g. a smaller model)")
    mod.add_argument("--tokenizer", metavar="NAME_OR_PATH",
                     help="tokenizer (default: the model dir's, else the offline bert-base-uncased vocab)")


def _add_attack_options(p: argparse.ArgumentParser) -> None:
    a = p.add_argument_group("attack")
    a.add_argument("--method", default=ATTACK.method, choices=METHODS,
                   help="span: analytic tokens and labels from the gradient, certified, with DLG where they cannot "
                        "settle everything; dlg: gradient matching only, the paper's method "
                        f"(default: {ATTACK.method})")
    add_matching_options(a, ATTACK.matching)
    a.add_argument("--no-priors", action="store_true",
                   help="with --method dlg: the paper's algorithm as written (no label words or token set "
                        "from the gradient)")
    a.add_argument("--no-peel", action="store_true",
                   help="--method span, a batch partly certified: keep the certified sentences' share of the "
                        "gradient instead of removing it and attacking the rest (masked-LM matches the whole batch "
                        "with them held fixed; classification searches the whole batch on)")
    a.add_argument("--match-layers", type=match_layers, default=ATTACK.match_layers, metavar="auto|all|K",
                   help="masked-LM: the gradients the matching compares: the embeddings' and the first K encoder "
                        "layers', or all (the paper); auto: 1 for --method dlg with priors, else all "
                        f"(default: {ATTACK.match_layers})")
    a.add_argument("--patience", type=positive_int, default=ATTACK.patience,
                   help="stop once the decoded text is unchanged for this many steps (default: run all)")
    a.add_argument("--no-verify", action="store_true", help="attack even if the model checksum differs")
    a.add_argument("--weights", type=Path, default=None, metavar="FILE",
                   help="with --gradients: weights the gradient was computed on, loaded over the model (e.g. a "
                        "Flower round's weights/global-round-RRR.safetensors)")
    a.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="per batch, a PNG of gradient distance and token accuracy against gradient evaluations and "
                        "an HTML page of the decoded text per logged step, tokens coloured by whether they match "
                        "(DIR/index.html links them)")
    add_run_options(a, ATTACK.log_every)


def build_parser() -> argparse.ArgumentParser:
    return task_parser("nlp-dlg", "Deep Leakage from Gradients for language models: BERT masked-LM and causal LMs "
                       "(GPT-2, LLaMA, LoRA).", "sentences",
                       _add_victim_options, _add_attack_options)[0]


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


def _overrides(args: argparse.Namespace) -> dict[str, Any] | None:
    from nlp_dlg.engine.errors import InputDataError

    if args.model_config is None:
        return None
    try:
        return json.loads(Path(args.model_config).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputDataError(f"--model-config {args.model_config}: {exc}") from exc


def _model_spec(args: argparse.Namespace) -> Any:
    from nlp_dlg.text.model import ModelSpec

    return ModelSpec(name_or_path=args.model, seed=args.seed, config=_overrides(args))


def _causal_victim(args: argparse.Namespace) -> tuple[dict[str, Any], list]:
    """The causal-LM client: the decoder, the shipped BPE (or the model's tokenizer), one gradient per batch."""
    from nlp_dlg.engine.errors import ConfigError

    for flag, given in (("--defense", args.defense), ("--world-size", args.world_size > 1),
                        ("--local-lr", args.local_lr), ("--mask-seed", args.mask_seed is not None)):
        if given:
            raise ConfigError(f"{flag} is not available with --task causal-lm yet")
    sentences = _sentences(args)
    from nlp_dlg.causal.model import CausalSpec, add_lora, load_bpe_tokenizer, load_causal_lm, model_metadata
    from nlp_dlg.causal.victim import capture_causal
    from nlp_dlg.engine.device import resolve_device
    from nlp_dlg.text.model import holds_tokenizer

    set_threads(args.threads)
    spec = CausalSpec(architecture=args.architecture, name_or_path=args.model, seed=args.seed,
                      config=_overrides(args))
    tok_name = args.tokenizer or (args.model if holds_tokenizer(args.model) else None)
    tokenizer = load_bpe_tokenizer(tok_name)
    model = load_causal_lm(spec, tokenizer)
    lora = None if args.lora_rank is None else {"rank": args.lora_rank, "seed": args.seed}
    if lora is not None:
        model = add_lora(model, rank=args.lora_rank, seed=args.seed,
                         architecture=args.architecture if args.model is None else model.config.model_type)
    model = model.to(resolve_device(args.device))
    return {"model": model, "tokenizer": tokenizer}, capture_causal(
        model, tokenizer, sentences, batch_size=args.batch_size, max_length=args.max_length,
        model_info=model_metadata(model, spec, lora), tokenizer_name=tok_name, train_mode=args.train_mode)


def _labelled(args: argparse.Namespace) -> tuple[list[str], list[int]]:
    from nlp_dlg.engine.errors import InputDataError
    from nlp_dlg.text.data import read_labelled

    if args.input is not None and args.label_column:
        return read_labelled(args.input, column=args.column, label_column=args.label_column)
    sentences = _sentences(args)
    if not args.label or len(args.label) != len(sentences):
        raise InputDataError(f"classification: expected one --label per sentence ({len(sentences)}), got "
                             f"{len(args.label or [])} (or a table --input with --label-column)")
    return sentences, list(args.label)


def _classification_victim(args: argparse.Namespace) -> tuple[dict[str, Any], list]:
    """The classification client: a BERT-family encoder with a fresh head, labelled sentences, one gradient per
    batch."""
    from nlp_dlg.engine.errors import ConfigError

    for flag, given in (("--defense", args.defense), ("--world-size", args.world_size > 1),
                        ("--local-lr", args.local_lr), ("--lora-rank", args.lora_rank is not None)):
        if given:
            raise ConfigError(f"{flag} is not available with --task classification yet")
    sentences, labels = _labelled(args)
    from nlp_dlg.classify.model import ClassifierSpec, load_classifier, model_metadata
    from nlp_dlg.classify.victim import capture_classification
    from nlp_dlg.engine.device import resolve_device
    from nlp_dlg.text.model import holds_tokenizer, load_tokenizer

    set_threads(args.threads)
    spec = ClassifierSpec(args.model, args.seed, _overrides(args), args.num_labels)
    tok_name = args.tokenizer or (args.model if holds_tokenizer(args.model) else None)
    tokenizer = load_tokenizer(tok_name)
    model = load_classifier(spec).to(resolve_device(args.device))
    return {"model": model, "tokenizer": tokenizer}, capture_classification(
        model, tokenizer, sentences, labels, batch_size=args.batch_size, max_length=args.max_length,
        model_info=model_metadata(model, spec), tokenizer_name=tok_name)


def _victim(args: argparse.Namespace) -> tuple[dict[str, Any], list]:
    """What the attack adopts of the victim (its model, on ``--device``, and tokenizer) and the captured
    (observation, truth) pairs for the victim options."""
    if args.task == "causal-lm":
        return _causal_victim(args)
    if args.task == "classification":
        return _classification_victim(args)
    if args.lora_rank is not None:
        from nlp_dlg.engine.errors import ConfigError

        raise ConfigError("--lora-rank applies to --task causal-lm")
    # the options and the input are checked before torch is imported or a model is built: a typo fails at once
    config = CaptureConfig(batch_size=args.batch_size, mlm_probability=args.mlm_probability,
                           max_length=args.max_length, train_mode=args.train_mode, defense=args.defense,
                           local_steps=args.local_steps, local_lr=args.local_lr)
    sentences = _sentences(args)
    from nlp_dlg.engine.device import resolve_device
    from nlp_dlg.engine.errors import ConfigError
    from nlp_dlg.engine.victim import fresh_generator
    from nlp_dlg.text.model import check_vocab, holds_tokenizer, load_masked_lm, load_tokenizer, model_metadata
    from nlp_dlg.text.victim import capture_gradients

    set_threads(args.threads)
    device = resolve_device(args.device)
    spec = _model_spec(args)
    model = load_masked_lm(spec).to(device)
    tok_name = args.tokenizer or (args.model if holds_tokenizer(args.model) else None)
    tokenizer = load_tokenizer(tok_name)
    check_vocab(model, tokenizer)
    positions = model.config.max_position_embeddings
    if args.max_length > positions:
        raise ConfigError(f"--max-length: expected at most the model's {positions} positions, got {args.max_length}")
    info = model_metadata(model, spec)
    if args.world_size > 1:
        from nlp_dlg.text.distributed import capture_distributed

        seed = args.mask_seed if args.mask_seed is not None else int.from_bytes(os.urandom(7), "big")
        return {"model": model, "tokenizer": tokenizer}, capture_distributed(
            spec, tokenizer, sentences, config, world_size=args.world_size, model_info=info, tokenizer_name=tok_name,
            vocab_size=model.config.vocab_size, mask_seed=seed, device=str(device))
    noise = None if args.defense_seed is None else fresh_generator(args.defense_seed)
    masks = None if args.mask_seed is None else fresh_generator(args.mask_seed)
    return {"model": model, "tokenizer": tokenizer}, capture_gradients(
        model, tokenizer, sentences, config, model_info=info, tokenizer_name=tok_name, generator=masks,
        defense_generator=noise)


def _task_of(args: argparse.Namespace) -> str:
    """The task to attack: the first gradient file's (read from its header alone), else ``--task``."""
    if args.gradients is None:
        return args.task
    from nlp_dlg.engine.errors import NlpDlgError
    from nlp_dlg.engine.observation import find_gradient_files, read_metadata

    try:
        meta = read_metadata(find_gradient_files(args.gradients)[0])
    except NlpDlgError:       # the pipeline refuses the folder or file with the same one line
        return args.task
    task = meta.get("task") if isinstance(meta, dict) else None
    return task if task in TASKS else "masked-lm"     # anything else is refused, in one line, by the pipeline


def _task(args: argparse.Namespace, *, device: Any) -> Any:
    task = _task_of(args)
    if task == "classification":
        from nlp_dlg.classify.runner import ClassificationTask

        config = CausalAttackConfig(method=args.method, log_every=args.log_every, peel=not args.no_peel,
                                    matching=matching_config(args, CAUSAL.matching))
        return ClassificationTask(config, name_or_path=args.model, tokenizer_name=args.tokenizer,
                                  verify=not args.no_verify, device=device)
    if task == "causal-lm":
        from nlp_dlg.causal.runner import CausalLMTask

        config = CausalAttackConfig(method=args.method, use_priors=not args.no_priors, log_every=args.log_every,
                                    matching=matching_config(args, CAUSAL.matching), max_length=args.max_length)
        return CausalLMTask(config, name_or_path=args.model, tokenizer_name=args.tokenizer,
                            verify=not args.no_verify, device=device, report_dir=args.report)
    from nlp_dlg.text.runner import MaskedLMTask

    config = TextAttackConfig(method=args.method, use_priors=not args.no_priors,
                              matching=matching_config(args, ATTACK.matching), log_every=args.log_every,
                              patience=args.patience, peel=not args.no_peel, match_layers=args.match_layers)
    return MaskedLMTask(config, name_or_path=args.model, tokenizer_name=args.tokenizer, verify=not args.no_verify,
                        weights=args.weights, device=device, report_dir=args.report)


def main(argv: list[str] | None = None) -> int:
    return cli_main("nlp-dlg", build_parser(), argv, victim=_victim, make_task=_task, data_options=DATA_OPTIONS)


if __name__ == "__main__":
    sys.exit(main())
