"""Gradient files written by someone hostile: every one ends in a result or in one line and exit 2, never in a
traceback, and nothing is allocated beyond what the file itself holds before its metadata is checked."""

from __future__ import annotations

import json
import random
import resource
import struct
import subprocess
import sys

import pytest

from nlp_dlg.engine import load_observation, save_observation

SMALL = ["--num-classes", "10", "--image-size", "16"]


def _main(capsys, cli: str, *args: str) -> tuple[int, list[str]]:
    from nlp_dlg.cli import main as text_main
    from vision_dlg.cli import main as vision_main

    capsys.readouterr()
    code = (text_main if cli == "nlp-dlg" else vision_main)(["-q", *args])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def vision_file(tmp_path_factory):
    from vision_dlg.cli import main

    out = tmp_path_factory.mktemp("v")
    assert main(["-q", "capture", "--dataset", "skimage", "--index", "0", "--labels", "1", *SMALL,
                 "--out", str(out)]) == 0
    return out / "batch-000.safetensors"


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    from conftest import SENTENCE, TINY

    from nlp_dlg.cli import main

    out = tmp_path_factory.mktemp("t")
    (out / "tiny.json").write_text(json.dumps(TINY))
    assert main(["-q", "capture", "--text", SENTENCE, "--model-config", str(out / "tiny.json"), "--mask-seed", "0",
                 "--out", str(out / "g")]) == 0
    return out / "g" / "batch-000.safetensors"


def _rewrite(source, path, change_metadata=None, change_tensors=None):
    obs = load_observation(source)
    meta, tensors = json.loads(json.dumps(dict(obs.metadata))), dict(obs.gradients)
    meta = change_metadata(meta) if change_metadata else meta
    if change_tensors:
        change_tensors(tensors)
    save_observation(type(obs)(tensors, {} if meta is None else {"_": 0}), path)
    raw = path.read_bytes()                                     # put the hostile metadata in as it is
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header["__metadata__"]["metadata"] = json.dumps(meta)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    return path


@pytest.mark.parametrize("cli, change, message", [
    ("nlp-dlg", lambda m: {**m, "model": {**m["model"], "config": {**m["model"]["config"], "num_hidden_layers": 24}}},
     "the model config does not fit the tensors in the file"),
    ("nlp-dlg", lambda m: {**m, "model": {**m["model"], "config": {**m["model"]["config"], "num_hidden_layers": 100}}},
     "model.config.num_hidden_layers: expected a value in [1, 96], got 100"),
    ("nlp-dlg", lambda m: {**m, "model": {**m["model"], "config": {**m["model"]["config"], "hidden_size": 10**9}}},
     "model.config.hidden_size: expected a value in [1, 16384], got 1000000000"),
    ("nlp-dlg", lambda m: {**m, "model": {**m["model"], "config": {**m["model"]["config"], "vocab_size": -5}}},
     "model.config.vocab_size: expected a value in [1, 1000000], got -5"),
    ("nlp-dlg", lambda m: {**m, "model": {**m["model"], "config": {**m["model"]["config"], "hidden_act": "boom"}}},
     "model.config.hidden_act: expected one of"),
    ("nlp-dlg", lambda m: {**m, "model": {**m["model"], "config": [1, 2]}}, "model.config: expected dict, got list"),
    ("nlp-dlg", lambda m: {**m, "mlm_probability": 7}, "mlm_probability: expected a value in [1e-09, 1.0], got 7"),
    ("nlp-dlg", lambda m: {**m, "mode": "weird"}, "mode: expected one of 'eval', 'train', got 'weird'"),
    ("nlp-dlg", lambda m: {**m, "update": "yes"}, "update: expected dict, got str"),
    ("nlp-dlg", lambda m: {**m, "batch_size": 10**9}, "batch_size: expected a value in [1, 4096]"),
    ("nlp-dlg", lambda m: [1, 2, 3], "metadata: expected a JSON object, got list"),
    ("nlp-dlg", lambda m: 42, "metadata: expected a JSON object, got int"),
    ("vision-dlg", lambda m: {**m, "model": {**m["model"], "image_size": 10**5}},
     "model.image_size: expected a value in [1, 1024], got 100000"),
    ("vision-dlg", lambda m: {**m, "model": {**m["model"], "num_classes": 10**9}},
     "model.num_classes: expected a value in [2, 1000000]"),
    ("vision-dlg", lambda m: {**m, "model": {**m["model"], "num_classes": 11}},
     "the lenet description does not fit the tensors in the file"),
    ("vision-dlg", lambda m: {**m, "model": {**m["model"], "name": "vgg"}}, "model.name: expected one of 'lenet'"),
])
def test_hostile_metadata_is_one_line_before_anything_is_built(cli, change, message, tmp_path, capsys, text_file,
                                                                vision_file):
    path = _rewrite(text_file if cli == "nlp-dlg" else vision_file, tmp_path / "bad.safetensors", change)
    code, err = _main(capsys, cli, "attack", "--gradients", str(path), "--out", str(tmp_path / "r.jsonl"))
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_a_resnet_file_cannot_ask_for_huge_dummy_images():
    """ResNet's shapes do not depend on the image size: the dummy images it would need are bounded instead."""
    import torch

    from nlp_dlg.engine.metadata import MetadataError
    from vision_dlg.models import ResNet, check_model_metadata

    with torch.device("meta"):
        shapes = {n: tuple(p.shape) for n, p in ResNet(3, 10, 3).named_parameters()}
    meta = {"batch_size": 64, "model": {"name": "resnet20", "num_classes": 10, "channels": 3, "image_size": 1024,
                                        "seed": 0}}
    with pytest.raises(MetadataError, match="dummy pixels, more than"):
        check_model_metadata(meta, shapes)
    check_model_metadata({**meta, "batch_size": 8, "model": {**meta["model"], "image_size": 64}}, shapes)


@pytest.mark.subprocess
def test_a_deep_config_in_a_small_file_allocates_nothing_large(tmp_path, text_file):
    """A 48-layer BERT-base config on a tiny 2-layer file built a 345M-parameter model (1.4 GB) before refusing;
    now the shapes are compared on the meta device first."""
    path = _rewrite(text_file, tmp_path / "deep.safetensors", lambda m: {
        **m, "model": {**m["model"], "config": {**m["model"]["config"], "num_hidden_layers": 48,
                                                 "hidden_size": 768, "intermediate_size": 3072,
                                                 "num_attention_heads": 12}}})
    code = ("import resource, runpy, sys\n"
            f"sys.argv = ['nlp-dlg', '-q', 'attack', '--gradients', {str(path)!r}, '--out', {str(tmp_path / 'r')!r}]\n"
            "try:\n    runpy.run_module('nlp_dlg.cli', run_name='__main__')\nexcept SystemExit as e:\n"
            "    print('exit', e.code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    exit_code, peak_kib = done.stdout.split()[1:]
    assert exit_code == "2" and "does not fit the tensors" in done.stderr
    assert int(peak_kib) < 1.5 * 2**20, f"peak RSS {int(peak_kib) / 2**20:.2f} GiB"   # the import alone is ~0.6


def _mutations(rng: random.Random, meta: dict):
    """Metadata values and types swapped for hostile ones, one field at a time (and nested model fields)."""
    hostile = [None, -1, 0, 10**12, 1e308, float("nan"), "", "x" * 50, [], {}, [1, 2], True, "weird"]
    fields = [k for k in meta] + [f"model.{k}" for k in meta["model"]]
    for _ in range(120):
        name, value = rng.choice(fields), rng.choice(hostile)
        changed = json.loads(json.dumps(meta))
        if name.startswith("model."):
            changed["model"][name[6:]] = value
        else:
            changed[name] = value
        yield name, changed


def test_a_fuzz_of_metadata_and_header_bytes_ends_in_a_result_or_one_line(tmp_path, capsys, vision_file):
    rng = random.Random(0)
    meta = dict(load_observation(vision_file).metadata)
    cases = [(f"metadata {name}", _rewrite(vision_file, tmp_path / f"m{i}.safetensors", lambda m, c=changed: c))
             for i, (name, changed) in enumerate(_mutations(rng, meta))]
    raw = vision_file.read_bytes()
    for i in range(80):                                         # header (mostly) and data bytes flipped
        data = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(min(len(data), 600) if i % 4 else len(data))] = rng.randrange(256)
        (tmp_path / f"b{i}.safetensors").write_bytes(bytes(data))
        cases.append((f"bytes {i}", tmp_path / f"b{i}.safetensors"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes = {0: 0, 2: 0}
    for what, path in cases:
        code, err = _main(capsys, "vision-dlg", "attack", "--gradients", str(path), "--max-evals", "2", "--out",
                          str(tmp_path / "r.jsonl"), "--save-images", str(tmp_path / "img"))
        assert code in outcomes, (what, code, err)
        assert code == 0 or (len(err) == 1 and err[0].startswith("vision-dlg: error:")), (what, err)
        outcomes[code] += 1
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**10
    assert grown < 300, f"peak RSS grew by {grown:.0f} MiB over {len(cases)} hostile files"
    assert outcomes[2] > len(cases) // 2       # most are refused; the rest are attacked as what they say


def test_a_checkpoint_a_file_names_is_not_followed_and_pickled_weights_are_never_loaded(tmp_path, capsys):
    import torch
    from conftest import SENTENCE, TINY
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(**TINY))
    model.config.save_pretrained(tmp_path / "pickled")                            # config.json
    torch.save(model.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")   # and a pickle, no safetensors
    code, err = _main(capsys, "nlp-dlg", "capture", "--text", SENTENCE, "--model", str(tmp_path / "pickled"),
                      "--out", str(tmp_path / "g0"))
    assert code == 2 and len(err) == 1 and "cannot load" in err[0], err
    model.save_pretrained(tmp_path / "ckpt")                                       # model.safetensors
    code, err = _main(capsys, "nlp-dlg", "capture", "--text", SENTENCE, "--model", str(tmp_path / "ckpt"),
                      "--mask-seed", "0", "--out", str(tmp_path / "g"))
    assert code == 0, err
    code, err = _main(capsys, "nlp-dlg", "attack", "--gradients", str(tmp_path / "g"), "--out", str(tmp_path / "r"))
    assert code == 2 and len(err) == 1 and "pass --model NAME_OR_PATH to load it" in err[0], err
    code, err = _main(capsys, "nlp-dlg", "attack", "--gradients", str(tmp_path / "g"), "--model",
                      str(tmp_path / "ckpt"), "--steps", "1", "--out", str(tmp_path / "r"))
    assert code == 0, err


def test_a_tokenizer_a_file_names_is_not_followed(tmp_path, capsys, text_file):
    """A file recording another tokenizer (a path) is refused until --tokenizer names it."""
    path = _rewrite(text_file, tmp_path / "tok.safetensors", lambda m: {**m, "tokenizer": "/home/someone/evil-tok"})
    code, err = _main(capsys, "nlp-dlg", "attack", "--gradients", str(path), "--out", str(tmp_path / "r"))
    assert code == 2 and len(err) == 1 and "tokenized with '/home/someone/evil-tok': pass --tokenizer" in err[0], err
