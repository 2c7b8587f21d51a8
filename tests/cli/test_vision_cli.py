"""vision-dlg end to end: two-process round trip, options reaching the attack, and bad input as one clean line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nlp_dlg.engine import load_observation, save_observation


def _vision_cli(*args: str) -> subprocess.CompletedProcess:
    """``vision-dlg`` in its own process (the real exit path)."""
    return subprocess.run([sys.executable, "-m", "vision_dlg.cli", "-q", *args], capture_output=True, text=True)


def _vision_main(capsys, *args: str) -> tuple[int, str]:
    """``vision-dlg`` in this process (same code path after argument parsing, without a second torch import):
    the exit code and what went to stderr."""
    from vision_dlg.cli import main

    capsys.readouterr()
    code = main(["-q", *args])
    return code, capsys.readouterr().err


def test_cli_scores_a_train_mode_gradient_after_the_brightness_contrast_fit(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    code, err = _vision_main(capsys, "attack", "--dataset", "skimage", "--index", "1", "--labels", "4", "--model",
                             "resnet20", "--num-classes", "10", "--image-size", "8", "--train-mode", "--steps", "1",
                             "--out", str(out), "--save-images", str(tmp_path / "img"))
    assert code == 0, err
    row = json.loads(out.read_text().splitlines()[0])
    assert row["fit"] == "brightness-contrast" and row["psnr"] >= row["psnr_raw"] - 1e-9


def test_attack_options_reach_the_attack_config(capsys):
    from vision_dlg.cli import _task, build_parser
    from vision_dlg.config import BOXED_INIT_STD, ImageAttackConfig

    parse = build_parser().parse_args
    assert _task(parse(["attack", "--out", "r"]), device=None).config == ImageAttackConfig()  # the config's defaults
    config = _task(parse(["attack", "--out", "r", "--no-normalize", "--init-std", "0.2", "--steps", "9",
                          "--tolerance", "0"]), device=None).config
    assert not config.matching.normalize and config.init_std == 0.2
    assert config.matching.steps == 9 and config.matching.tolerance == 0
    with pytest.raises(SystemExit):
        parse(["attack", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"{BOXED_INIT_STD:g} for logits" in help_text and "(default: 300)" in help_text


def test_init_std_out_of_range_is_one_line(tmp_path, capsys):
    code, err = _vision_main(capsys, "attack", "--dataset", "skimage", "--index", "1", "--labels", "4",
                             "--num-classes", "10", "--image-size", "16", "--init-std", "-1", "--out",
                             str(tmp_path / "r.jsonl"))
    assert code == 2 and "init_std" in err and len(err.strip().splitlines()) == 1


@pytest.mark.subprocess
def test_cli_capture_then_attack_in_two_processes(tmp_path):
    grads = tmp_path / "grads"
    done = _vision_cli("capture", "--dataset", "skimage", "--index", "1", "--labels", "4", "--num-classes", "10",
                       "--image-size", "16", "--out", str(grads))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "r.jsonl"
    done = _vision_cli("attack", "--gradients", str(grads), "--out", str(out), "--steps", "5",
                       "--save-images", str(tmp_path / "img"))
    assert done.returncode == 0, done.stderr
    row = json.loads(out.read_text().splitlines()[0])
    assert row["label"] == 4 and (tmp_path / "img" / "batch-000-0.png").is_file()
    assert (tmp_path / "img" / "progress-batch-000.png").is_file() and "mse" not in row
    assert row["source"] == str(grads / "batch-000.safetensors") and {"distance", "steps"} <= set(row)


@pytest.mark.parametrize("args, message", [
    (["--image", "/no/such.png", "--labels", "1"], "no such image"),
    (["--dataset", "skimage", "--index", "0", "1", "--labels", "1"], "expected 2 label"),
    (["--dataset", "skimage", "--index", "0", "--labels", "10"], "labels: expected integers in [0, 10)"),
    (["--dataset", "skimage", "--index", "99"], "out of range"),
])
def test_cli_bad_victim_input_is_one_line(tmp_path, capsys, args, message):
    code, err = _vision_main(capsys, "capture", "--num-classes", "10", "--image-size", "16", "--out", str(tmp_path),
                             *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_a_file_for_another_model_and_nan(tmp_path, capsys):
    grads = tmp_path / "g"
    assert _vision_main(capsys, "capture", "--dataset", "skimage", "--index", "0", "--labels", "1",
                        "--num-classes", "10", "--image-size", "16", "--out", str(grads))[0] == 0
    path = grads / "batch-000.safetensors"
    obs = load_observation(path)
    other = dict(obs.metadata)
    other["model"] = {**other["model"], "checksum": "0" * 64}
    save_observation(type(obs)(obs.gradients, other), tmp_path / "other.safetensors")
    code, err = _vision_main(capsys, "attack", "--gradients", str(tmp_path / "other.safetensors"), "--out",
                             str(tmp_path / "r"))
    assert code == 2 and "checksum" in err
    bad = {n: t.clone() for n, t in obs.gradients.items()}
    bad["fc.bias"][0] = float("nan")
    save_observation(type(obs)(bad, obs.metadata), tmp_path / "nan.safetensors")
    code, err = _vision_main(capsys, "attack", "--gradients", str(tmp_path / "nan.safetensors"), "--out",
                             str(tmp_path / "r"))
    assert code == 2 and "NaN" in err and len(err.strip().splitlines()) == 1


def test_workers_give_the_rows_of_one_process(tmp_path, capsys):
    grads = tmp_path / "g"
    assert _vision_main(capsys, "capture", "--dataset", "skimage", "--index", "0", "1", "2", "--num-classes", "10",
                        "--image-size", "16", "--out", str(grads))[0] == 0
    runs = {}
    for name, options in {"serial": [], "pooled": ["--workers", "2"]}.items():
        code, err = _vision_main(capsys, "attack", "--gradients", str(grads), "--out", str(tmp_path / f"{name}.jsonl"),
                                 "--steps", "3", "--threads", "1", "--save-images", str(tmp_path / name), *options)
        assert code == 0, err
        runs[name] = [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "image", "progress_grid")}
                      for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert runs["pooled"] == runs["serial"] and len(runs["serial"]) == 3
    assert (tmp_path / "pooled" / "batch-002-0.png").is_file()
    code, err = _vision_main(capsys, "attack", "--dataset", "skimage", "--index", "0", "--workers", "2", "--out",
                             str(tmp_path / "r.jsonl"))
    assert code == 2 and "--workers and --ray attack --gradients files" in err


@pytest.mark.ray
def test_ray_actors_give_the_rows_of_one_process_and_keep_going_past_a_failed_file(tmp_path, capsys):
    """A local Ray instance with 2 actors: the serial rows in file order; a file that fails is named, the rest kept."""
    ray = pytest.importorskip("ray")
    grads = tmp_path / "g"
    assert _vision_main(capsys, "capture", "--dataset", "skimage", "--index", "0", "1", "--num-classes", "10",
                        "--image-size", "16", "--out", str(grads))[0] == 0
    common = ["--steps", "3", "--threads", "1"]
    assert _vision_main(capsys, "attack", "--gradients", str(grads), "--out", str(tmp_path / "serial.jsonl"),
                        *common)[0] == 0
    obs = load_observation(grads / "batch-001.safetensors")
    bad = {n: t.clone() for n, t in obs.gradients.items()}
    bad["fc.bias"][0] = float("nan")
    save_observation(type(obs)(bad, obs.metadata), grads / "batch-002.safetensors")
    try:
        code, err = _vision_main(capsys, "attack", "--gradients", str(grads), "--out", str(tmp_path / "ray.jsonl"),
                                 "--ray", "local", "--workers", "2", *common)
    finally:
        ray.shutdown()
    assert code == 2 and "batch-002.safetensors" in err and "NaN" in err
    varying = ("seconds", "source", "image", "progress_grid")
    rows = {name: [{k: v for k, v in json.loads(line).items() if k not in varying}
                   for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()] for name in ("serial", "ray")}
    assert rows["ray"] == rows["serial"] and len(rows["serial"]) == 2


@pytest.mark.ray
def test_ray_actors_attack_in_process_pairs_and_score_them_as_one_process_does(tmp_path):
    """In-process captures (scored) on a local Ray instance with 2 actors: the rows of one process, in order."""
    ray = pytest.importorskip("ray")
    import torch

    from nlp_dlg.engine import MatchingConfig
    from nlp_dlg.pipeline import run_attack
    from vision_dlg import ImageAttackConfig, ImageTask, VisionModelSpec, build_model, capture_images, model_metadata
    from vision_dlg.data import skimage_photo

    spec = VisionModelSpec(num_classes=10, image_size=16)
    model = build_model(spec)
    images = torch.stack([skimage_photo(name, size=16) for name in ("coffee", "astronaut", "chelsea")])
    pairs = capture_images(model, images, [1, 4, 7], model_info=model_metadata(model, spec))
    config = ImageAttackConfig(matching=MatchingConfig(steps=3))
    serial = run_attack(ImageTask(config, images_dir=tmp_path / "s"), pairs=pairs, out=tmp_path / "s.jsonl")
    try:
        on_ray = run_attack(ImageTask(config, images_dir=tmp_path / "r"), pairs=pairs, out=tmp_path / "r.jsonl",
                            ray="local", workers=2, threads=1)
    finally:
        ray.shutdown()
    varying = ("seconds", "image", "progress_grid")
    assert [{k: v for k, v in r.items() if k not in varying} for r in on_ray.rows] == \
        [{k: v for k, v in r.items() if k not in varying} for r in serial.rows]
    assert len(serial.rows) == 3 and "psnr" in serial.rows[0]


def test_the_polish_and_the_stall_check_are_options_and_zero_turns_them_off(tmp_path):
    from vision_dlg.cli import _task, build_parser

    def config(*options):
        args = build_parser().parse_args(["attack", "--gradients", str(tmp_path), "--out", str(tmp_path / "r"),
                                          *options])
        return _task(args, device="cpu").config

    default = config()
    assert default.polish_steps == 100 and default.matching.stall_step == 10 and default.matching.restarts == 8
    paper = config("--polish-steps", "0", "--stall-step", "0", "--restarts", "1")
    assert paper.polish_steps == 0 and paper.matching.stall_step is None and paper.matching.restarts == 1
    with pytest.raises(SystemExit):
        config("--polish-steps", "-1")
