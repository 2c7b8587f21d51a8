"""Real distributed capture: a 2-process gloo all-reduce records the mean of the ranks' gradients."""

from __future__ import annotations

import json

import pytest
import torch

from nlp_dlg.engine.distributed import AllReduceRecorder, DistributedError, run_ranks

pytestmark = pytest.mark.distributed


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Sigmoid(), torch.nn.Linear(8, 3))


def _ddp_worker(rank: int, world: int, payload, device):
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(_model())
    recorder = AllReduceRecorder(ddp)
    x, y = payload
    torch.nn.functional.cross_entropy(ddp(x[rank::world]), y[rank::world]).backward()
    return recorder.gradients


def _failing_worker(rank: int, world: int, payload, device):
    if rank == 1:
        raise ValueError("boom on rank 1")
    return None


def test_recorded_gradient_is_the_mean_of_the_ranks_gradients():
    x, y = torch.randn(4, 4), torch.tensor([0, 1, 2, 1])
    recorded = run_ranks(_ddp_worker, 2, (x, y), timeout=120)
    model = _model()
    per_rank = []
    for r in range(2):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[r::2]), y[r::2]).backward()
        per_rank.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert set(recorded) == {n for n, _ in model.named_parameters()}
    for name, grad in recorded.items():
        torch.testing.assert_close(grad, (per_rank[0][name] + per_rank[1][name]) / 2)


def test_a_failing_rank_surfaces_as_one_error():
    with pytest.raises(DistributedError, match="rank 1 failed: ValueError: boom on rank 1"):
        run_ranks(_failing_worker, 2, None, timeout=120)


def test_nlp_dlg_capture_with_two_ranks_records_the_global_batch(tmp_path, capsys):
    from nlp_dlg.cli import main
    from nlp_dlg.engine import load_observation

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                  "intermediate_size": 64}))
    tiny = ["--model-config", str(config)]
    assert main(["-q", "capture", "--text", "the cat sat .", "--text", "a dog ran .", "--batch-size", "2",
                 "--world-size", "2", "--mask-seed", "3", *tiny, "--out", str(tmp_path / "g")]) == 0
    meta = load_observation(tmp_path / "g" / "batch-000.safetensors").metadata
    assert meta["batch_size"] == 2 and meta["distributed"]["world_size"] == 2
    capsys.readouterr()
    assert main(["-q", "capture", "--text", "a b c .", "--batch-size", "3", "--world-size", "2", *tiny,
                 "--out", str(tmp_path / "h")]) == 2
    assert "split evenly" in capsys.readouterr().err
    assert main(["-q", "capture", "--text", "a b c .", "--text", "d e .", "--batch-size", "2", "--world-size", "2",
                 "--local-lr", "0.1", *tiny, "--out", str(tmp_path / "f")]) == 2
    assert "FedAvg local steps with --world-size" in capsys.readouterr().err


def test_vision_dlg_capture_with_two_ranks_equals_the_single_process_gradient(tmp_path):
    from nlp_dlg.engine import load_observation
    from vision_dlg.cli import main

    common = ["--dataset", "skimage", "--index", "0", "1", "--labels", "3,5", "--num-classes", "10",
              "--image-size", "8", "--batch-size", "2"]
    for name, extra in (("ddp", ["--world-size", "2"]), ("one", [])):
        assert main(["-q", "capture", *common, *extra, "--out", str(tmp_path / name)]) == 0
    ddp = load_observation(tmp_path / "ddp" / "batch-000.safetensors")
    one = load_observation(tmp_path / "one" / "batch-000.safetensors")
    assert ddp.metadata["distributed"]["world_size"] == 2
    for name, grad in one.gradients.items():   # mean of two 1-image means == the 2-image mean
        torch.testing.assert_close(ddp.gradients[name], grad, rtol=1e-5, atol=1e-7)


def test_fedavg_weight_delta_of_one_step_is_the_gradient_and_two_steps_differ():
    from nlp_dlg.engine import as_gradient
    from nlp_dlg.engine.errors import ConfigError
    from nlp_dlg.text import CaptureConfig, ModelSpec, capture_gradients, load_masked_lm, load_tokenizer, model_metadata

    spec = ModelSpec(seed=0, config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                     "intermediate_size": 64})
    model, tokenizer = load_masked_lm(spec), load_tokenizer()
    info = model_metadata(model, spec)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def capture(**kw):
        return capture_gradients(model, tokenizer, ["the cat sat on the mat ."], CaptureConfig(**kw), model_info=info,
                                 generator=torch.Generator().manual_seed(0))[0][0]

    sgd, one, two = capture(), capture(local_lr=0.5), capture(local_lr=0.5, local_steps=2)
    assert one.metadata["update"] == {"kind": "weight-delta", "local_steps": 1, "local_lr": 0.5}
    for name, grad in sgd.gradients.items():
        # (W - lr g) - W loses float32 bits of W: atol of a few 1e-7
        torch.testing.assert_close(as_gradient(one).gradients[name], grad, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(as_gradient(two).gradients["cls.predictions.bias"], sgd.gradients["cls.predictions.bias"])
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())   # the victim's model is untouched
    with pytest.raises(ConfigError, match="local_lr"):
        CaptureConfig(local_steps=2)
