"""`make demo` interrupted once: it stops with the partial Table 2 and exit 130 (BERT-base: slow, out of the default
suite; `pytest -m slow tests/test_demo_interrupt.py`)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.subprocess
def test_one_interrupt_stops_the_demo_with_its_partial_table_and_130(tmp_path):
    demo = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "reconstruct_sentences.py"), "--out",
                             str(tmp_path / "t2.jsonl")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    started = time.monotonic()
    for line in demo.stdout:                     # wait for the first sentence's step 1, then one Ctrl-C
        lines.append(line)
        if "step 1/" in line:
            demo.send_signal(signal.SIGINT)
            break
        assert time.monotonic() - started < 600
    rest = demo.communicate(timeout=600)[0]
    assert demo.returncode == 130, rest
    assert "Table 2" in rest and "interrupted" in rest and "example 2" not in rest
    assert (tmp_path / "t2.jsonl").read_text().count("\n") == 1           # the one sentence begun, its best text
