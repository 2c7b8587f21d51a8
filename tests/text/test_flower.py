"""Flower: a loopback federation whose server records each client's update (FedSGD gradient, FedAvg delta)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("flwr")
pytestmark = pytest.mark.flower

from nlp_dlg.engine import ConfigError, InputDataError, load_observation, load_weights  # noqa: E402
from nlp_dlg.engine.flower import FederationError, check_options, wait_for_server  # noqa: E402
from nlp_dlg.text import CaptureConfig, ModelSpec, load_masked_lm  # noqa: E402
from nlp_dlg.text.federated import (  # noqa: E402
    _mask_generator,
    round_sentences,
    run_masked_lm_federation,
)
from nlp_dlg.text.task import masked_lm_gradient  # noqa: E402
from nlp_dlg.text.victim import local_sgd, prepare_batch  # noqa: E402

SMALL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
CLIENTS = {"alice": ["the cat sat on the mat .", "a red car stopped ."], "bob": ["a dog ran home ."]}


def _client_batch(name: str, server_round: int, tokenizer, vocab_size: int):
    return prepare_batch(tokenizer, round_sentences(CLIENTS[name], 1, server_round), CaptureConfig(),
                         index=server_round - 1, vocab_size=vocab_size,
                         generator=_mask_generator(0, name, server_round))


@pytest.fixture(scope="module")
def fedsgd(tmp_path_factory):
    out = tmp_path_factory.mktemp("fedsgd")
    return out, run_masked_lm_federation(ModelSpec(seed=0, config=SMALL), CLIENTS, out_dir=out, mode="fedsgd",
                                         lr=0.5, rounds=2, timeout=300)


@pytest.fixture(scope="module")
def fedavg(tmp_path_factory):
    out = tmp_path_factory.mktemp("fedavg")
    return out, run_masked_lm_federation(ModelSpec(seed=0, config=SMALL), CLIENTS, out_dir=out, mode="fedavg",
                                         lr=0.1, local_steps=2, rounds=2, timeout=300)


def test_fedsgd_records_each_clients_gradient_and_steps_the_global_model(fedsgd, tokenizer):
    out, recorded = fedsgd
    assert [(r["round"], r["client"]) for r in recorded] == [(1, "alice"), (1, "bob"), (2, "alice"), (2, "bob")]
    model = load_masked_lm(ModelSpec(seed=0, config=SMALL))
    names = [n for n, _ in model.named_parameters()]
    first = load_weights(out / "weights" / "global-round-001.safetensors")
    for n, p in model.named_parameters():
        torch.testing.assert_close(first[n], p.detach())
    grads = {}
    for name in CLIENTS:
        batch = _client_batch(name, 1, tokenizer, model.config.vocab_size)
        grads[name] = masked_lm_gradient(model, batch.masked_input_ids, batch.attention_mask, batch.labels)
        obs = load_observation(out / f"round-001-client-{name}.safetensors")
        assert set(obs.gradients) == set(names)
        for n in names:
            torch.testing.assert_close(obs.gradients[n], grads[name][n])
        assert obs.metadata["federation"]["strategy"] == "FedSGD" and obs.metadata["batch_size"] == 1
        assert "update" not in obs.metadata and obs.metadata["task"] == "masked-lm"
    second = load_weights(out / "weights" / "global-round-002.safetensors")
    for n, p in model.named_parameters():  # one example each: the server steps by the plain mean gradient
        torch.testing.assert_close(second[n], p.detach() - 0.5 * (grads["alice"][n] + grads["bob"][n]) / 2)


def test_fedavg_records_the_weight_delta_of_the_local_steps(fedavg, tokenizer):
    out, recorded = fedavg
    obs = load_observation(out / "round-002-client-alice.safetensors")
    assert obs.metadata["update"] == {"kind": "weight-delta", "local_steps": 2, "local_lr": 0.1}
    assert obs.metadata["federation"]["round"] == 2 and obs.metadata["federation"]["clients"] == 2
    model = load_masked_lm(ModelSpec(seed=0, config=SMALL))
    start = load_weights(out / "weights" / "global-round-002.safetensors")
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(start[n])
    batch = _client_batch("alice", 2, tokenizer, model.config.vocab_size)
    local_sgd(model, batch.masked_input_ids, batch.attention_mask, batch.labels,
              CaptureConfig(local_lr=0.1, local_steps=2))
    for n, p in model.named_parameters():
        torch.testing.assert_close(obs.gradients[n], p.detach() - start[n], atol=1e-6, rtol=1e-4)
    # round 2's metadata names the weights it was computed on: not the seed model any more
    assert obs.metadata["model"]["checksum"] != load_observation(
        out / "round-001-client-alice.safetensors").metadata["model"]["checksum"]


def test_nlp_dlg_attack_reads_a_later_round_with_its_global_weights(fedsgd, tmp_path, capsys):
    from nlp_dlg.cli import main

    out, _ = fedsgd
    bob = str(out / "round-002-client-bob.safetensors")
    args = ["-q", "attack", "--gradients", bob, "--out", str(tmp_path / "r.jsonl"), "--max-evals", "5"]
    capsys.readouterr()
    assert main(args) == 2 and "checksum" in capsys.readouterr().err
    assert main(args + ["--weights", str(out / "weights" / "global-round-002.safetensors")]) == 0
    row = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert row["reconstruction"]
    capsys.readouterr()
    assert main([*args[:3], str(out), *args[4:]]) == 2
    err = capsys.readouterr().err
    assert "other model weights" in err and len(err.strip().splitlines()) == 1


def test_a_failing_client_surfaces_as_one_error(tmp_path):
    """The supervisor's path, without Flower: a server waiting for a listener and a client that raises at once
    (``int("127.0.0.1:PORT")``). A client's own data errors are refused before any process starts."""
    import functools

    from nlp_dlg.engine.flower import run_federation

    with pytest.raises(FederationError, match=r"client 0 failed: ValueError: invalid literal"):
        run_federation(functools.partial(wait_for_server, timeout=60), [int], timeout=60)
    with pytest.raises(InputDataError, match="client bob: expected a list of non-empty sentences"):
        run_masked_lm_federation(ModelSpec(seed=0, config=SMALL), {"alice": ["fine ."], "bob": ["  "]},
                                 out_dir=tmp_path, timeout=120)


def test_bad_federation_options_are_refused_before_any_process_starts(tmp_path):
    for mode, lr, steps in [("fedprox", 0.1, 1), ("fedsgd", 0.0, 1), ("fedsgd", 0.1, 2), ("fedavg", 0.1, 0)]:
        with pytest.raises(ConfigError):
            check_options(mode, lr, steps)
    with pytest.raises(ConfigError, match="defence"):
        run_masked_lm_federation(ModelSpec(seed=0, config=SMALL), CLIENTS, out_dir=tmp_path,
                                 config=CaptureConfig(defense="fp16"))
    with pytest.raises(FederationError, match="no Flower server listening"):
        from nlp_dlg.engine.distributed import free_port

        wait_for_server(f"127.0.0.1:{free_port()}", timeout=0.5)


def test_weights_files_are_refused_as_gradients_and_vice_versa(fedsgd):
    from nlp_dlg.engine import GradientFileError

    out, _ = fedsgd
    with pytest.raises(GradientFileError, match="not an nlp_dlg gradient file"):
        load_observation(out / "weights" / "global-round-001.safetensors")
    with pytest.raises(GradientFileError, match="not an nlp_dlg weights file"):
        load_weights(out / "round-001-client-bob.safetensors")


def test_round_sentences_wrap_around():
    assert round_sentences(["a", "b", "c"], 2, 1) == ["a", "b"]
    assert round_sentences(["a", "b", "c"], 2, 2) == ["c", "a"]
    assert round_sentences(["a"], 3, 5) == ["a"]
