"""nlp-dlg end to end: two-process round trip, options, and every bad input as one clean line."""

import json
import logging
import pickle
import subprocess
import sys

import pytest
import torch
from conftest import SENTENCE

from nlp_dlg.cli import main
from nlp_dlg.engine import load_observation, save_observation


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "nlp_dlg.cli", "-q", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def grad_dir(tmp_path_factory):
    """A victim process writes gradient files of two sentences (tiny model, all tokens labelled)."""
    out = tmp_path_factory.mktemp("grads")
    cfg = out / "tiny.json"
    cfg.write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                               "intermediate_size": 128}))
    done = _cli("capture", "--text", SENTENCE, "--text", "a second private sentence .", "--model-config", cfg,
                "--mlm-probability", "1.0", "--mask-seed", "0", "--out", out / "g")
    assert done.returncode == 0, done.stderr
    return out / "g"


@pytest.mark.subprocess  # the victim's files come from another process (grad_dir)
def test_capture_then_attack_in_two_processes(grad_dir, tmp_path):
    assert sorted(p.name for p in grad_dir.iterdir()) == ["batch-000.safetensors", "batch-001.safetensors"]
    out = tmp_path / "r.jsonl"
    done = _cli("attack", "--gradients", grad_dir / "batch-000.safetensors", "--out", out, "--steps", "60")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1
    assert set(rows[0]) >= {"batch", "index", "reconstruction", "distance", "steps", "seconds", "method"}
    assert rows[0]["reconstruction"] == "the quick brown fox jumps over the lazy dog."


def test_attack_with_text_scores_and_prints_a_summary(tiny_config_file, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "r.jsonl"
    code = main(["attack", "--method", "dlg", "--text", SENTENCE, "--model-config", str(tiny_config_file),
                 "--mlm-probability", "1.0", "--mask-seed", "0", "--steps", "20", "--log-every", "10",
                 "--out", str(out), "--report", str(tmp_path / "report")])
    assert code == 0
    row = json.loads(out.read_text())
    assert row["token_accuracy"] == 1.0 and row["exact_match"] and row["rouge1"] == 1.0
    from PIL import Image

    assert Image.open(tmp_path / "report" / "batch-000.png").size[0] > 300
    page = (tmp_path / "report" / "batch-000.html").read_text()
    assert page.count("<tr>") == 1 + 3 + 1  # the header, steps 0, 10 and 20, the final text
    assert "private text" in page and '<span class="hit">fox</span>' in page
    assert "batch-000.html" in (tmp_path / "report" / "index.html").read_text()
    assert row["reference"] == "the quick brown fox jumps over the lazy dog."
    printed = capsys.readouterr().out
    assert "mean" in printed and "tokacc" in printed
    assert any("step 10/20" in r.getMessage() for r in caplog.records)  # progress: decoded text per logged step


def test_default_span_method_certifies_and_reports(tiny_config_file, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "r.jsonl"
    code = main(["attack", "--text", SENTENCE, "--model-config", str(tiny_config_file), "--mask-seed", "0",
                 "--out", str(out)])
    assert code == 0
    row = json.loads(out.read_text())
    assert row["method"] == "span" and row["certified"] and row["gradient_evaluations"] == 0
    assert row["exact_match"] and row["token_accuracy"] == 1.0
    assert any("step 0/" in r.getMessage() and "fox" in r.getMessage() for r in caplog.records)


def test_help_and_version(capsys):
    for argv in (["--help"], ["capture", "--help"], ["attack", "--help"], ["--version"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0
    assert "--max-evals" in capsys.readouterr().out


def _one_line_error(argv, capsys, match):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("nlp-dlg: error:") and match in err[-1], err
    assert not any("Traceback" in line for line in err)


def test_missing_gradient_path(tmp_path, capsys):
    _one_line_error(["attack", "--gradients", str(tmp_path / "nope"), "--out", str(tmp_path / "r")], capsys,
                    "no such file")


def test_random_bytes_gradient_file(tmp_path, capsys):
    (tmp_path / "g.safetensors").write_bytes(b"\x01\x02 not safetensors at all" * 10)
    _one_line_error(["attack", "--gradients", str(tmp_path / "g.safetensors"), "--out", str(tmp_path / "r")], capsys,
                    "not a safetensors file")


def test_pickle_gradient_file(tmp_path, capsys):
    (tmp_path / "g.safetensors").write_bytes(pickle.dumps({"w": [1, 2]}))
    _one_line_error(["attack", "--gradients", str(tmp_path / "g.safetensors"), "--out", str(tmp_path / "r")], capsys,
                    "refused")


def _tampered(grad_dir, tmp_path, change):
    obs = load_observation(grad_dir / "batch-000.safetensors")
    grads = dict(obs.gradients)
    change(grads)
    path = tmp_path / "bad.safetensors"
    save_observation(type(obs)(grads, obs.metadata), path)
    return str(path)


@pytest.mark.subprocess  # the victim's files come from another process (grad_dir)
def test_wrong_shape_missing_and_extra_parameters(grad_dir, tmp_path, capsys):
    def reshape(g):
        g["cls.predictions.bias"] = torch.zeros(7)
    path = _tampered(grad_dir, tmp_path, reshape)
    _one_line_error(["attack", "--gradients", path, "--out", str(tmp_path / "r")], capsys,
                    "cls.predictions.bias: (7,) stored, (30522,) implied): nothing was built")

    def drop_and_add(g):
        del g["bert.encoder.layer.1.output.dense.bias"]
        g["extra.weight"] = torch.zeros(2)
    path = _tampered(grad_dir, tmp_path, drop_and_add)
    _one_line_error(["attack", "--gradients", path, "--out", str(tmp_path / "r")], capsys,
                    "missing bert.encoder.layer.1.output.dense.bias; unexpected extra.weight")


@pytest.mark.subprocess  # the victim's files come from another process (grad_dir)
def test_nan_in_gradient(grad_dir, tmp_path, capsys):
    def poison(g):
        g["cls.predictions.bias"] = g["cls.predictions.bias"].clone()
        g["cls.predictions.bias"][3] = float("inf")
    path = _tampered(grad_dir, tmp_path, poison)
    _one_line_error(["attack", "--gradients", path, "--out", str(tmp_path / "r")], capsys, "NaN/Inf")


@pytest.mark.subprocess  # the victim's files come from another process (grad_dir)
def test_checksum_mismatch(grad_dir, tmp_path, capsys):
    obs = load_observation(grad_dir / "batch-000.safetensors")
    meta = json.loads(json.dumps(dict(obs.metadata)))
    meta["model"]["seed"] = 5
    path = tmp_path / "other.safetensors"
    save_observation(type(obs)(dict(obs.gradients), meta), path)
    _one_line_error(["attack", "--gradients", str(path), "--out", str(tmp_path / "r")], capsys,
                    "do not match the gradient file")


def test_empty_input_file_and_bad_batch_size(tmp_path, capsys, tiny_config_file):
    (tmp_path / "empty.txt").write_text("\n")
    _one_line_error(["capture", "--input", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "g")], capsys,
                    "holds no sentence")
    with pytest.raises(SystemExit) as info:
        main(["capture", "--text", "hi there", "--batch-size", "0", "--out", str(tmp_path / "g")])
    assert info.value.code == 2
    assert "argument --batch-size: expected a positive integer, got 0" in capsys.readouterr().err


def test_argument_errors_exit_non_zero(tmp_path, capsys):
    for argv in (["attack", "--out", "r", "--steps", "0"], ["capture", "--out", "g", "--mlm-probability", "2"],
                 ["attack", "--out", "r", "--distance", "l3"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    err = capsys.readouterr().err
    assert "expected a positive integer, got 0" in err and "expected a number in (0, 1], got 2.0" in err


def test_attack_without_any_source(tmp_path, capsys):
    _one_line_error(["attack", "--out", str(tmp_path / "r")], capsys, "nothing to attack: pass --gradients DIR")


def test_attack_options_reach_the_attack_config(tmp_path):
    from nlp_dlg.cli import _task, build_parser
    from nlp_dlg.text.config import TextAttackConfig

    args = build_parser().parse_args(["attack", "--gradients", str(tmp_path), "--out", str(tmp_path / "r.jsonl")])
    assert _task(args, device=None).config == TextAttackConfig()  # no second default: the CLI's are the config's
    args = build_parser().parse_args(["attack", "--gradients", str(tmp_path), "--out", str(tmp_path / "r.jsonl"),
                                      "--no-peel", "--method", "dlg", "--steps", "7", "--optimizer", "adam",
                                      "--match-layers", "2"])
    config = _task(args, device=None).config
    assert not config.peel and config.method == "dlg" and config.matched_blocks() == 2
    assert config.matching.steps == 7 and config.matching.learning_rate == 0.1
    assert config.matching.max_evaluations == TextAttackConfig().matching.max_evaluations
