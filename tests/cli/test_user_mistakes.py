"""What a user hits by mistake: a capture folder that already holds files, a sentence too long or with words the
vocabulary lacks, a typo in a path (answered before torch is even imported), the thread count."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import torch

VISION = ["--dataset", "skimage", "--index", "0", "--labels", "1", "--num-classes", "10", "--image-size", "16"]


def test_capture_refuses_a_folder_with_gradient_files_unless_told_to_overwrite(tmp_path, capsys):
    from vision_dlg.cli import main

    assert main(["-q", "capture", *VISION, "--out", str(tmp_path)]) == 0
    (tmp_path / "batch-007.safetensors").write_bytes((tmp_path / "batch-000.safetensors").read_bytes())
    capsys.readouterr()
    assert main(["-q", "capture", *VISION, "--out", str(tmp_path)]) == 2
    assert "holds 2 gradient file(s) already; pass --overwrite" in capsys.readouterr().err
    assert main(["-q", "capture", *VISION, "--out", str(tmp_path), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch-000.safetensors"]   # the stale batch-007 is gone


def test_truncation_and_unknown_words_are_said_and_unknown_words_come_back_as_unk(tmp_path, caplog, tiny_config_file):
    from nlp_dlg.cli import main

    long = "one two three four five six seven eight nine ten eleven twelve ."
    with caplog.at_level(logging.WARNING):
        assert main(["-q", "capture", "--text", long, "--text", "🦄 🦄 🦄", "--batch-size", "1", "--max-length", "8",
                     "--model-config", str(tiny_config_file), "--out", str(tmp_path / "g")]) == 0
    text = caplog.text
    assert "sentence 0: 15 tokens, truncated to --max-length 8" in text
    assert "3 word(s) outside the vocabulary become [UNK]" in text
    out = tmp_path / "r.jsonl"
    assert main(["-q", "attack", "--text", "🦄 is here .", "--model-config", str(tiny_config_file), "--mask-seed", "0",
                 "--mlm-probability", "1.0", "--steps", "40", "--out", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["reference"] == "[UNK] is here." and row["reconstruction"].startswith("[UNK]")


def test_a_missing_path_is_answered_before_torch_is_imported(tmp_path):
    for argv, message in ((["attack", "--gradients", str(tmp_path / "nope"), "--out", "r"], "no such file or"),
                          (["capture", "--input", str(tmp_path / "nope.txt"), "--out", "g"], "no such file")):
        code = f"import sys\nfrom nlp_dlg.cli import main\nprint(main(['-q', *{argv!r}]), 'torch' in sys.modules)"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.stdout.split() == ["2", "False"] and message in done.stderr, done.stderr


def test_threads_sets_torchs_thread_count(tmp_path):
    from vision_dlg.cli import main

    before = torch.get_num_threads()
    try:
        assert main(["-q", "capture", *VISION, "--threads", "1", "--out", str(tmp_path)]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_max_length_beyond_the_models_positions_is_one_line(tmp_path, capsys, tiny_config_file):
    from nlp_dlg.cli import main

    capsys.readouterr()
    code = main(["-q", "capture", "--text", "a sentence .", "--max-length", "1000", "--model-config",
                 str(tiny_config_file), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["nlp-dlg: error: --max-length: expected at most the model's 512 positions, got 1000"]


def test_ctrl_c_during_the_span_checks_keeps_the_batches_done_and_exits_130(tmp_path, monkeypatch, tiny_config_file):
    from nlp_dlg.cli import main
    from nlp_dlg.text.attack import MaskedLMAttack

    original, calls = MaskedLMAttack._analytic, []

    def interrupted_second_time(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MaskedLMAttack, "_analytic", interrupted_second_time)
    out = tmp_path / "r.jsonl"
    code = main(["-q", "attack", "--text", "one sentence here .", "--text", "and a second one .", "--model-config",
                 str(tiny_config_file), "--mask-seed", "0", "--steps", "2", "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 130 and len(rows) == 2
    assert not rows[0]["interrupted"] and rows[1]["interrupted"] and rows[1]["distance"] is None
