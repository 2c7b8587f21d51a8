"""The one pipeline, with a stand-in task: files checked before anything is built, one seed per batch, rows
streamed with their source, results replaced only when a run ends, Ctrl-C keeping what was done."""

from __future__ import annotations

import json

import pytest
import torch

from nlp_dlg.engine import GradientObservation, save_observation
from nlp_dlg.engine.errors import GradientFileError, ModelMismatchError
from nlp_dlg.pipeline import AttackTask, BatchOutcome, run_attack


class ToyTask:
    task_names = ("toy",)

    def __init__(self, interrupt_at: int | None = None, fail_at: int | None = None) -> None:
        self.prepared: list[dict] = []
        self.interrupt_at, self.fail_at = interrupt_at, fail_at

    def check_metadata(self, metadata, shapes):
        if shapes != {"w": (2,)}:
            raise ValueError(f"unexpected shapes {shapes}")

    def prepare(self, metadata):
        self.prepared.append(dict(metadata))

    def attack_batch(self, observation, truth, *, batch, generator):
        if batch == self.fail_at:
            raise ValueError("the attack failed")
        draw = float(torch.rand(1, generator=generator))
        rows = [{"batch": batch, "index": 0, "draw": draw, "g": float(observation.gradients["w"][0])}]
        if truth is not None:
            rows[0]["truth"] = truth
        return BatchOutcome(rows, interrupted=batch == self.interrupt_at)

    def summary(self, rows):
        return f"{len(rows)} row(s)"


def _files(tmp_path, checksums=("a", "a", "a"), task="toy"):
    folder = tmp_path / "g"
    for i, checksum in enumerate(checksums):
        obs = GradientObservation({"w": torch.full((2,), float(i))},
                                  {"task": task, "model": {"checksum": checksum}, "batch_size": 1})
        save_observation(obs, folder / f"batch-{i:03d}.safetensors")
    return folder


def test_the_toy_task_is_an_attack_task():
    assert isinstance(ToyTask(), AttackTask)


def test_files_are_attacked_in_order_with_one_seed_per_batch_and_their_source(tmp_path):
    task, out = ToyTask(), tmp_path / "r.jsonl"
    run = run_attack(task, gradients=_files(tmp_path), out=out, seed=5)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == run.rows and [r["g"] for r in rows] == [0.0, 1.0, 2.0]
    assert [r["draw"] for r in rows] == [float(torch.rand(1, generator=torch.Generator().manual_seed(5 + b)))
                                         for b in range(3)]
    assert rows[1]["source"].endswith("batch-001.safetensors")
    assert len(task.prepared) == 1 and task.prepared[0]["model"]["checksum"] == "a"
    assert run.summary == "3 row(s)" and not run.interrupted


def test_files_of_other_weights_or_another_task_are_refused_before_anything_is_built(tmp_path):
    task = ToyTask()
    with pytest.raises(ModelMismatchError, match="batch-002.safetensors: computed on other model weights"):
        run_attack(task, gradients=_files(tmp_path, ("a", "a", "b")), out=tmp_path / "r.jsonl")
    with pytest.raises(GradientFileError, match="a gradient file of task 'masked-lm'; this command attacks 'toy'"):
        run_attack(task, gradients=_files(tmp_path / "t", task="masked-lm"), out=tmp_path / "r.jsonl")
    assert task.prepared == [] and not (tmp_path / "r.jsonl").exists()


def test_an_interrupt_keeps_the_rows_done_and_stops(tmp_path):
    run = run_attack(ToyTask(interrupt_at=1), gradients=_files(tmp_path), out=tmp_path / "r.jsonl")
    assert run.interrupted and len(run.rows) == 2
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2


def test_a_failed_file_is_reported_and_the_others_kept(tmp_path):
    out = tmp_path / "r.jsonl"
    run = run_attack(ToyTask(fail_at=1), gradients=_files(tmp_path), out=out)
    assert [r["batch"] for r in run.rows] == [0, 2] and len(out.read_text().splitlines()) == 2
    assert len(run.failed) == 1 and run.failed[0][0].endswith("batch-001.safetensors")
    assert run.failed[0][1] == "the attack failed"


def test_a_failure_leaves_the_earlier_results_and_no_temporary_file(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text("earlier\n")
    with pytest.raises(GradientFileError, match="batch-000.safetensors: the attack failed"):
        run_attack(ToyTask(fail_at=0), gradients=_files(tmp_path, ("a",)), out=out)
    obs = GradientObservation({"w": torch.zeros(2)}, {"task": "toy", "batch_size": 1})
    with pytest.raises(ValueError, match="the attack failed"):
        run_attack(ToyTask(fail_at=1), pairs=[(obs, None), (obs, None)], out=out)
    assert out.read_text() == "earlier\n" and sorted(p.name for p in tmp_path.iterdir()) == ["g", "r.jsonl"]


def test_workers_give_the_serial_rows_in_file_order_and_keep_going_past_a_failure(tmp_path):
    folder = _files(tmp_path, ("a",) * 5)
    serial = run_attack(ToyTask(fail_at=3), gradients=folder, out=tmp_path / "s.jsonl", seed=7)
    pooled = run_attack(ToyTask(fail_at=3), gradients=folder, out=tmp_path / "p.jsonl", seed=7, workers=2,
                        threads=1)
    assert pooled.rows == serial.rows and len(pooled.rows) == 4
    assert (tmp_path / "p.jsonl").read_text() == (tmp_path / "s.jsonl").read_text()
    assert pooled.failed == serial.failed and pooled.failed[0][0].endswith("batch-003.safetensors")


def test_workers_attack_in_process_pairs_as_one_process_does_and_keep_going_reports_a_failed_pair(tmp_path):
    pairs = [(GradientObservation({"w": torch.full((2,), float(i))}, {"task": "toy", "batch_size": 1}), f"t{i}")
             for i in range(4)]
    serial = run_attack(ToyTask(fail_at=2), pairs=pairs, out=tmp_path / "s.jsonl", seed=3, keep_going=True)
    pooled = run_attack(ToyTask(fail_at=2), pairs=pairs, out=tmp_path / "p.jsonl", seed=3, keep_going=True,
                        workers=2, threads=1)
    assert pooled.rows == serial.rows and [r["truth"] for r in pooled.rows] == ["t0", "t1", "t3"]
    assert pooled.failed == serial.failed == [("batch 2", "the attack failed")]
    # without keep_going a pair's error stops the run, pooled or not (one code path: _failed_pairs)
    with pytest.raises(ValueError, match="the attack failed"):
        run_attack(ToyTask(fail_at=2), pairs=pairs, out=tmp_path / "q.jsonl")


def test_in_process_pairs_are_scored_rows_without_a_source(tmp_path):
    obs = GradientObservation({"w": torch.zeros(2)}, {"task": "toy", "batch_size": 1})
    run = run_attack(ToyTask(), pairs=[(obs, "truth-0")], out=tmp_path / "r.jsonl")
    assert run.rows[0]["truth"] == "truth-0" and "source" not in run.rows[0]
    with pytest.raises(ValueError, match="one of them"):
        run_attack(ToyTask(), out=tmp_path / "r.jsonl")


def test_worker_threads_share_the_cores_out_unless_told(monkeypatch, caplog):
    from nlp_dlg.workers import cpu_cores, threads_per_worker

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads_per_worker(2, None) == max(1, cpu_cores() // 2) and threads_per_worker(1, 3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads_per_worker(4, None) == 1
    caplog.clear()
    threads_per_worker(cpu_cores(), 2)
    assert "thread pools will compete" in caplog.text


def test_a_progress_bar_with_an_eta_runs_over_the_files_unless_quiet(tmp_path, capsys, caplog):
    import logging

    folder = _files(tmp_path)
    caplog.set_level(logging.INFO, logger="nlp_dlg")
    run_attack(ToyTask(), gradients=folder, out=tmp_path / "r.jsonl")
    err = capsys.readouterr().err
    assert "3/3" in err and ("batch/s" in err or "s/batch" in err)
    caplog.set_level(logging.WARNING, logger="nlp_dlg")
    run_attack(ToyTask(), gradients=folder, out=tmp_path / "r.jsonl")
    assert "3/3" not in capsys.readouterr().err
