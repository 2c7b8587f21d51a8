"""Results files of the benchmarks and scripts: one JSON object per line, each stamped with the day it was measured
and the command that measured it, so that the generated results page (``scripts/make_docs.py``) can say both."""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def stamped(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with ``date`` (today, UTC) and ``command`` (this process's command line) first, unless it has them."""
    command = "python " + shlex.join([Path(sys.argv[0]).as_posix().split("/main/")[-1], *sys.argv[1:]])
    return {"date": time.strftime("%Y-%m-%d", time.gmtime()), "command": command, **row}


def append_result(path: str | Path, row: Mapping[str, Any]) -> dict[str, Any]:
    """Append the stamped ``row`` to the JSON-lines file ``path`` (created with its folder); return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    row = stamped(row)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return row
