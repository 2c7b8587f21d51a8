"""Files per minute with `--workers`: one folder of LeNet gradient files (real photos, one image each) attacked by
`vision-dlg attack` alone (one thread, then torch's default) and by N worker processes of `cores // N` threads,
each a fresh process timed from start to exit. `same_rows` compares each run's rows (less seconds and image
paths) with the one-thread serial run's (another thread count may change float sums). Optionally beside busy
processes (`--busy`), as on a shared machine. Appends one JSON line per run to
`benchmarks/results/workers.jsonl`.

    .venv/bin/python benchmarks/bench_workers.py [--files 8] [--steps 100] [--workers 2] [--busy 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nlp_dlg.results import append_result

HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "vision_dlg.cli", "-q"]


def _rows(path: Path) -> list[dict]:
    """The rows without what differs between two runs of the same attack (wall time, where images went)."""
    return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "image", "progress_grid")}
            for line in path.read_text().splitlines()]


def _timed_attack(grads: Path, out: Path, steps: int, options: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([*CLI, "attack", "--gradients", str(grads), "--out", str(out), "--steps", str(steps),
                    "--save-images", str(out.with_suffix("")), *options], check=True)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--workers", type=int, nargs="+", default=[2])
    ap.add_argument("--busy", type=int, default=0, help="busy processes beside the runs")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "workers.jsonl")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    subprocess.run([*CLI, "capture", "--dataset", "skimage", "--index", *map(str, range(args.files)),
                    "--num-classes", "10", "--out", str(work / "g")], check=True)
    runs = {"serial, 1 thread": ["--threads", "1"], "serial, default threads": []}
    runs.update({f"{n} workers x {max(1, cores // n)} threads": ["--workers", str(n)] for n in args.workers})
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        reference = None
        for i, (name, options) in enumerate(runs.items()):
            seconds = _timed_attack(work / "g", work / f"r{i}.jsonl", args.steps, options)
            rows = _rows(work / f"r{i}.jsonl")
            reference = reference or rows
            row = {"date": time.strftime("%Y-%m-%d"), "run": name, "files": args.files, "steps": args.steps,
                   "cores": cores, "busy": args.busy, "seconds": round(seconds, 1),
                   "files_per_minute": round(60 * args.files / seconds, 2), "same_rows": rows == reference,
                   "command": " ".join(["benchmarks/bench_workers.py", *sys.argv[1:]])}
            print(json.dumps(row))
            append_result(args.out, row)
    finally:
        for spinner in spinners:
            spinner.kill()


if __name__ == "__main__":
    main()
