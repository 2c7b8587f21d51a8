"""A masked-LM federation on Flower: clients train on private sentences, the server records their updates.

Each client holds its own sentences and, in round ``r`` (from 1), trains on its batch ``r − 1``
(``batch_size`` sentences in order, wrapping around), masked with a generator seeded from
``(mask_seed, client, round)``: FedSGD sends the batch's gradient, FedAvg runs the server's ``local_steps``
SGD steps at ``local_lr`` and sends its weights. The server (:class:`nlp_dlg.engine.flower.RecordingStrategy`)
writes every update into a gradient file the attacker reads as it reads any other. Needs the ``flower``
extra; ``import nlp_dlg.text`` does not import this module.

Example:
    >>> recorded = run_masked_lm_federation(ModelSpec(seed=0), {"alice": ["a private sentence ."],
    ...                                     "bob": ["another one ."]}, out_dir="runs/flower")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.client import NumPyClient
from transformers import BertForMaskedLM, PreTrainedTokenizerBase

from nlp_dlg.engine.errors import ConfigError, InputDataError
from nlp_dlg.engine.flower import RecordingStrategy, check_options, run_federation, wait_for_server
from nlp_dlg.text.config import CaptureConfig
from nlp_dlg.text.model import ModelSpec, load_masked_lm, load_tokenizer, model_metadata
from nlp_dlg.text.task import masked_lm_gradient
from nlp_dlg.text.victim import local_sgd, observation_metadata, prepare_batch

logger = logging.getLogger(__name__)


def round_sentences(sentences: Sequence[str], batch_size: int, server_round: int) -> list[str]:
    """The sentences a client trains on in round ``server_round`` (from 1): its batch ``r − 1``, wrapping around."""
    start = (server_round - 1) * batch_size
    return [sentences[(start + i) % len(sentences)] for i in range(min(batch_size, len(sentences)))]


def _mask_generator(mask_seed: int, client: str, server_round: int) -> torch.Generator:
    salt = sum((i + 1) * ord(c) for i, c in enumerate(client))  # stable across processes, unlike hash()
    return torch.Generator().manual_seed((mask_seed * 1_000_003 + salt * 1009 + server_round) % (2**63))


def check_sentences(name: str, sentences: Sequence[str]) -> None:
    """Raise :class:`InputDataError` unless client ``name``'s data is a list of non-empty sentences."""
    if isinstance(sentences, str) or not sentences or any(not isinstance(s, str) or not s.strip() for s in sentences):
        raise InputDataError(f"client {name}: expected a list of non-empty sentences, got {sentences!r}")


class MaskedLMClient(NumPyClient):
    """A Flower client training a masked LM on its private sentences.

    Args:
        name: reported to the server with every update (``metrics["client"]``).
        model, tokenizer: the client's copy of the global model (weights replaced every round) and tokenizer.
        sentences: the client's private sentences.
        config: batch size, masking probability, max length, mode (its ``local_*`` fields are ignored: the
            server's fit config sets them).
        mask_seed: seeds the masks (with the client's name and the round).
    """

    def __init__(self, name: str, model: BertForMaskedLM, tokenizer: PreTrainedTokenizerBase,
                 sentences: Sequence[str], config: CaptureConfig, *, mask_seed: int = 0) -> None:
        check_sentences(name, sentences)
        self.name, self.model, self.tokenizer = name, model, tokenizer
        self.sentences, self.config, self.mask_seed = list(sentences), config, mask_seed
        self.names = [n for n, _ in model.named_parameters()]

    def get_parameters(self, config: Mapping[str, Any]) -> list[np.ndarray]:
        return [p.detach().cpu().numpy().copy() for _, p in self.model.named_parameters()]

    def fit(self, parameters: list[np.ndarray], config: Mapping[str, Any]) -> tuple[list[np.ndarray], int, dict]:
        with torch.no_grad():
            for (_, p), a in zip(self.model.named_parameters(), parameters, strict=True):
                p.copy_(torch.from_numpy(a))
        server_round = int(config["round"])
        batch = prepare_batch(self.tokenizer, round_sentences(self.sentences, self.config.batch_size, server_round),
                              self.config, index=server_round - 1, vocab_size=self.model.config.vocab_size,
                              generator=_mask_generator(self.mask_seed, self.name, server_round))
        inputs = (batch.masked_input_ids, batch.attention_mask, batch.labels)
        if config["mode"] == "fedsgd":
            grads = masked_lm_gradient(self.model, *inputs, train_mode=self.config.train_mode)
            update = [grads[n].cpu().numpy() for n in self.names]
        else:
            local = replace(self.config, local_lr=float(config["local_lr"]), local_steps=int(config["local_steps"]))
            local_sgd(self.model, *inputs, local)
            update = self.get_parameters({})
        logger.info("client %s, round %d: %s on %d sentence(s)", self.name, server_round, config["mode"],
                    len(batch.sentences))
        return update, len(batch.sentences), {"client": self.name}


def _client_process(address: str, *, name: str, spec: dict, tokenizer: str | None, sentences: list[str],
                    config: dict, mask_seed: int) -> None:
    try:
        from flwr.compat.client.app import start_client
    except ImportError:  # Flower before the compat package
        from flwr.client import start_client  # type: ignore[attr-defined,no-redef]
    model = load_masked_lm(ModelSpec(**spec))
    client = MaskedLMClient(name, model, load_tokenizer(tokenizer), sentences, CaptureConfig(**config),
                            mask_seed=mask_seed)
    wait_for_server(address)
    start_client(server_address=address, client=client.to_client(), insecure=True)


def _server_process(address: str, *, spec: dict, tokenizer: str | None, config: dict, out_dir: str, mode: str,
                    lr: float, local_steps: int, rounds: int, num_clients: int) -> list[dict[str, Any]]:
    from flwr.server import ServerConfig, start_server

    model_spec, capture = ModelSpec(**spec), CaptureConfig(**config)
    model = load_masked_lm(model_spec)
    infos: dict[int, dict[str, Any]] = {}

    def describe(batch_size: int, server_round: int, weights: dict[str, torch.Tensor]) -> dict[str, Any]:
        if server_round not in infos:  # the checksum of the weights this round started from
            model.load_state_dict(weights, strict=False)
            infos[server_round] = model_metadata(model, model_spec)
        return observation_metadata(capture, model_info=infos[server_round], tokenizer_name=tokenizer,
                                    batch_size=batch_size, batch_index=server_round - 1)

    strategy = RecordingStrategy(parameter_names=[n for n, _ in model.named_parameters()],
                                 initial_weights=[p.detach().cpu().numpy().copy() for p in model.parameters()],
                                 out_dir=out_dir, describe=describe, mode=mode, lr=lr, local_steps=local_steps,
                                 num_clients=num_clients)
    start_server(server_address=address, config=ServerConfig(num_rounds=rounds), strategy=strategy)
    return strategy.recorded


def run_masked_lm_federation(spec: ModelSpec, clients: Mapping[str, Sequence[str]], *, out_dir: str | Path,
                             config: CaptureConfig | None = None, tokenizer_name: str | None = None,
                             mode: str = "fedsgd", lr: float = 1e-2, local_steps: int = 1, rounds: int = 1,
                             mask_seed: int = 0, timeout: float = 600) -> list[dict[str, Any]]:
    """Run a loopback Flower federation (one process per client and one for the server) and record every update.

    Args:
        spec: the global model (every process builds it from this spec).
        clients: client name -> its private sentences.
        out_dir: where the server writes the gradient files and the global weights of each round.
        config: the clients' batch size, masking probability, max length and mode.
        mode, lr, local_steps: ``fedsgd`` (gradients; ``lr`` is the server's) or ``fedavg`` (``local_steps``
            SGD steps at ``lr`` on each client, weight deltas recorded).
        rounds: federation rounds; every client takes part in every round.

    Returns:
        One ``{"round", "client", "path", "global_weights"}`` per recorded update.
    """
    config = config or CaptureConfig()
    if not clients:
        raise ConfigError("a federation needs at least one client")
    if config.defense or config.local_lr is not None:
        raise ConfigError("the federation's clients take no defence and no local_lr of their own: the server's "
                          "mode, lr and local_steps drive them")
    check_options(mode, lr, local_steps)
    if not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds: expected a positive integer, got {rounds!r}")
    for name, sentences in clients.items():   # refused here, before any process starts, as each client would
        check_sentences(name, sentences)
    payload = {"spec": asdict(spec), "tokenizer": tokenizer_name, "config": asdict(config)}
    server = functools.partial(_server_process, **payload, out_dir=str(out_dir), mode=mode, lr=lr,
                               local_steps=local_steps, rounds=rounds, num_clients=len(clients))
    workers = [functools.partial(_client_process, **payload, name=name, sentences=list(sentences), mask_seed=mask_seed)
               for name, sentences in clients.items()]
    recorded = run_federation(server, workers, timeout=timeout)
    logger.info("federation done: %d update(s) recorded in %s", len(recorded), out_dir)
    return recorded
