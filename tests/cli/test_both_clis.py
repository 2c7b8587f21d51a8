"""What both command lines do the same way, on the one pipeline: refuse a folder of mixed weights, run on a chosen
device, refuse a device that is not there, report a failed file in one line and keep the others' rows (and an
earlier results file when no file succeeds)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import SENTENCE

VISION = ["--dataset", "skimage", "--index", "0", "--labels", "1", "--num-classes", "10", "--image-size", "16"]


def _run(capsys, cli: str, *args: str) -> tuple[int, str]:
    """The exit code and stderr of ``nlp-dlg`` or ``vision-dlg`` run in this process."""
    from nlp_dlg.cli import main as text_main
    from vision_dlg.cli import main as vision_main

    capsys.readouterr()
    code = (text_main if cli == "nlp-dlg" else vision_main)(["-q", *args])
    return code, capsys.readouterr().err


def _victim(cli: str, config_file) -> list[str]:
    """Private data and a small model for ``cli``."""
    if cli == "nlp-dlg":
        return ["--text", SENTENCE, "--model-config", str(config_file), "--mlm-probability", "1.0", "--mask-seed", "0"]
    return list(VISION)


def _one_line(code: int, err: str, message: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], err


@pytest.mark.parametrize("cli", ["nlp-dlg", "vision-dlg"])
def test_a_folder_of_files_computed_on_different_weights_is_refused(cli, tmp_path, capsys, tiny_config_file):
    for seed in (0, 1):
        code, err = _run(capsys, cli, "capture", *_victim(cli, tiny_config_file), "--seed", str(seed),
                         "--out", str(tmp_path / f"s{seed}"))
        assert code == 0, err
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(tmp_path / "s0" / "batch-000.safetensors", mixed / "batch-000.safetensors")
    shutil.copy(tmp_path / "s1" / "batch-000.safetensors", mixed / "batch-001.safetensors")
    code, err = _run(capsys, cli, "attack", "--gradients", str(mixed), "--out", str(tmp_path / "r.jsonl"))
    _one_line(code, err, "batch-001.safetensors: computed on other model weights than batch-000.safetensors")
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("cli", ["nlp-dlg", "vision-dlg"])
def test_device_cpu_on_both_sides(cli, tmp_path, capsys, tiny_config_file):
    code, err = _run(capsys, cli, "capture", *_victim(cli, tiny_config_file), "--device", "cpu",
                     "--out", str(tmp_path / "g"))
    assert code == 0, err
    code, err = _run(capsys, cli, "attack", "--gradients", str(tmp_path / "g"), "--device", "cpu", "--steps", "2",
                     "--out", str(tmp_path / "r.jsonl"), *(["--save-images", str(tmp_path / "img")]
                                                           if cli == "vision-dlg" else []))
    assert code == 0, err
    assert (tmp_path / "r.jsonl").read_text().count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("cli", ["nlp-dlg", "vision-dlg"])
def test_a_device_that_is_not_there_is_one_line(cli, tmp_path, capsys, tiny_config_file):
    victim = _victim(cli, tiny_config_file)
    for command in (["capture", *victim, "--out", str(tmp_path / "g")],
                    ["attack", *victim, "--out", str(tmp_path / "r.jsonl")]):
        _one_line(*_run(capsys, cli, *command, "--device", "cuda"), "device: 'cuda' is not available")
        _one_line(*_run(capsys, cli, *command, "--device", "gpu7"), "device: expected one of auto | cpu")
    assert not (tmp_path / "g").exists() and not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("cli", ["nlp-dlg", "vision-dlg"])
def test_a_failed_file_is_one_line_the_others_are_kept_and_a_run_with_none_keeps_the_earlier_file(
        cli, tmp_path, capsys, tiny_config_file):
    from nlp_dlg.engine import load_observation, save_observation

    assert _run(capsys, cli, "capture", *_victim(cli, tiny_config_file), "--out", str(tmp_path / "g"))[0] == 0
    obs = load_observation(tmp_path / "g" / "batch-000.safetensors")
    bad = {n: t.clone() for n, t in obs.gradients.items()}
    next(iter(bad.values())).view(-1)[0] = float("nan")
    save_observation(type(obs)(bad, obs.metadata), tmp_path / "g" / "batch-001.safetensors")
    out = tmp_path / "r.jsonl"
    images = ["--save-images", str(tmp_path / "img")] if cli == "vision-dlg" else []
    for gradients, rows in ((tmp_path / "g" / "batch-001.safetensors", 0), (tmp_path / "g", 1)):
        out.write_text("an earlier run's results\n")
        code, err = _run(capsys, cli, "attack", "--gradients", str(gradients), "--steps", "1", "--out", str(out),
                         *images)
        _one_line(code, err, "batch-001.safetensors: ")
        assert "NaN/Inf" in err
        lines = out.read_text().splitlines()
        assert lines == ["an earlier run's results"] if rows == 0 else [json.loads(x)["source"] for x in lines] == [
            str(tmp_path / "g" / "batch-000.safetensors")]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".r.jsonl")] == []


@pytest.mark.gpu
@pytest.mark.parametrize("cli", ["nlp-dlg", "vision-dlg"])
def test_device_cuda_on_both_sides_gives_what_the_cpu_gives(cli, tmp_path, capsys, tiny_config_file):
    import json

    rows = {}
    for device in ("cpu", "cuda"):
        code, err = _run(capsys, cli, "capture", *_victim(cli, tiny_config_file), "--device", device,
                         "--out", str(tmp_path / device))
        assert code == 0, err
        out = tmp_path / f"{device}.jsonl"
        code, err = _run(capsys, cli, "attack", "--gradients", str(tmp_path / device), "--device", device,
                         "--steps", "20", "--out", str(out), *(["--save-images", str(tmp_path / f"img-{device}")]
                                                              if cli == "vision-dlg" else []))
        assert code == 0, err
        rows[device] = json.loads(out.read_text())
    key = "reconstruction" if cli == "nlp-dlg" else "label"
    assert rows["cuda"][key] == rows["cpu"][key]
