"""Defences (nlp_dlg.engine.defense): parsing, each transform's statistics, DP-SGD, and the capture CLIs."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from nlp_dlg.engine.defense import dp_epsilon, parse_defense
from nlp_dlg.engine.errors import ConfigError


def _grads(seed=0, n=200_000):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(n, generator=g), "b": torch.randn(50, 40, generator=g) * 1e-3}


def _apply(spec, grads, seed=0, **kw):
    return parse_defense(spec).apply(grads, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("spec, message", [
    ("bogus:1", "unknown defence 'bogus'"), ("gaussian", "takes 1 value"), ("gaussian:-1", "must be >= 0"),
    ("prune:1.0", "in [0, 1)"), ("prune:abc", "not a number"), ("fp16:3", "takes 0 value"),
    ("dp:1", "takes 2 value"), ("dp:0,1", "C > 0"), ("gaussian:0.1+dp:1,1", "must come first"),
    ("laplace:nan", "finite"),
])
def test_bad_specs_name_the_accepted_forms(spec, message):
    with pytest.raises(ConfigError, match="accepted forms") as err:
        parse_defense(spec)
    assert message in str(err.value)


def test_specs_round_trip_and_none_means_no_defence():
    assert parse_defense("prune:0.2+gaussian:1e-3").spec == "prune:0.2+gaussian:0.001"
    assert parse_defense(None) is None and parse_defense("none") is None
    dp = {"clip_norm": 1.0, "noise_multiplier": 0.5}
    assert parse_defense("dp:1,0.5").metadata() == {"spec": "dp:1,0.5", "dp": dp}


def test_gaussian_and_laplace_noise_have_their_scale_and_are_seeded():
    clean = _grads()
    noisy = _apply("gaussian:0.01", clean)
    assert float((noisy["a"] - clean["a"]).std()) == pytest.approx(0.01, rel=0.01)
    assert torch.equal(noisy["a"], _apply("gaussian:0.01", clean)["a"])
    assert not torch.equal(noisy["a"], _apply("gaussian:0.01", clean, seed=1)["a"])
    lap = _apply("laplace:0.02", clean)["a"] - clean["a"]
    assert float(lap.abs().mean()) == pytest.approx(0.02, rel=0.02)          # E|Laplace(0, b)| = b
    assert float(lap.std()) == pytest.approx(0.02 * math.sqrt(2), rel=0.02)


def test_laplace_noise_stays_finite_when_the_uniform_draw_is_zero(monkeypatch):
    """torch.rand returns exactly 0 once in 2^24 draws (a few times per BERT-base gradient): the inverse CDF
    must not turn it into an infinite entry."""
    import nlp_dlg.engine.defense as defense

    def zeros(shape, generator=None, dtype=None):
        return torch.zeros(shape, dtype=dtype)

    monkeypatch.setattr(defense.torch, "rand", zeros)
    noisy = _apply("laplace:0.01", _grads(n=10))
    assert all(bool(torch.isfinite(t).all()) for t in noisy.values())


def test_precision_and_quantisation_errors_are_bounded():
    clean = _grads()
    for spec, rel, smallest in (("fp16", 2.0 ** -11, 2.0 ** -14), ("bf16", 2.0 ** -8, 2.0 ** -126)):
        for name, g in clean.items():
            normal = g.abs() >= smallest     # fp16 has no normal numbers below 2^-14: tiny entries lose more
            out = _apply(spec, clean)[name]
            assert float(((out - g).abs() / g.abs())[normal].max()) <= rel * 1.0001
    out = _apply("int8", clean)
    for name in clean:
        scale = float(clean[name].abs().max()) / 127
        assert float((out[name] - clean[name]).abs().max()) <= scale / 2 * 1.0001
        assert len(torch.unique((out[name] / scale).round())) <= 255


def test_pruning_zeroes_the_smallest_fraction_of_each_tensor():
    clean = _grads()
    out = _apply("prune:0.3", clean)
    for name, g in clean.items():
        zeroed = out[name] == 0
        assert int(zeroed.sum()) == int(0.3 * g.numel())
        assert float(g[zeroed].abs().max()) <= float(g[~zeroed].abs().min())
        assert torch.equal(out[name][~zeroed], g[~zeroed])


def test_dp_clips_each_example_and_adds_noise_of_z_times_c():
    big = {"w": torch.full((4,), 5.0)}          # norm 10
    small = {"w": torch.tensor([0.3, 0.4, 0.0, 0.0])}   # norm 0.5: unclipped
    out = _apply("dp:1,0", None, per_example=[big, small])["w"]
    assert torch.allclose(out, (big["w"] / 10 + small["w"]) / 2)
    zeros = [{"w": torch.zeros(100_000)} for _ in range(4)]
    noisy = _apply("dp:2,0.5", None, per_example=zeros)["w"]
    assert float(noisy.std()) == pytest.approx(0.5 * 2 / 4, rel=0.02)
    with pytest.raises(ConfigError, match="per-example"):
        _apply("dp:1,1", _grads())


def test_dp_epsilon_matches_opacus_and_falls_with_noise():
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for _ in range(100):
        acc.step(noise_multiplier=1.0, sample_rate=0.01)
    assert dp_epsilon(1.0, sample_rate=0.01, steps=100) == pytest.approx(acc.get_epsilon(delta=1e-5))
    assert dp_epsilon(2.0, sample_rate=0.01, steps=100) < dp_epsilon(1.0, sample_rate=0.01, steps=100)
    assert dp_epsilon(0.0, sample_rate=0.01, steps=100) == math.inf


@pytest.mark.parametrize("tool, extra", [("nlp_dlg.cli", ["--text", "a b c ."]),
                                         ("vision_dlg.cli", ["--dataset", "skimage", "--index", "0"])])
def test_capture_clis_refuse_a_bad_defence_in_one_line(tmp_path, capsys, tool, extra):
    import importlib

    main = importlib.import_module(tool).main
    capsys.readouterr()
    code = main(["-q", "capture", *extra, "--defense", "prune:1.5", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "accepted forms" in err and len(err.strip().splitlines()) == 1


@pytest.mark.subprocess
def test_vision_capture_records_the_defence(tmp_path):
    from nlp_dlg.engine import load_observation

    done = subprocess.run([sys.executable, "-m", "vision_dlg.cli", "-q", "capture", "--dataset", "skimage", "--index",
                           "0", "1", "--batch-size", "2", "--image-size", "16", "--num-classes", "10",
                           "--defense", "dp:1,0.1", "--defense-seed", "3", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    meta = load_observation(tmp_path / "batch-000.safetensors").metadata
    assert meta["defense"] == {"spec": "dp:1,0.1", "dp": {"clip_norm": 1.0, "noise_multiplier": 0.1}}
