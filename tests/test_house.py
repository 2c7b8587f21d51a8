"""The house rules that code review alone would let drift: import hygiene, the size of functions, one source for
choices and defaults."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60


def _functions(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{path.relative_to(ROOT)}:{node.lineno} {node.name}", node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("package", ["nlp_dlg", "vision_dlg"])
def test_no_function_in_the_packages_is_over_60_lines(package):
    long = [f"{where} ({n} lines)" for where, n in _functions(package) if n > MAX_FUNCTION_LINES]
    assert not long, long


def _imports(code: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", f"import sys; {code}; print(' '.join(sorted(sys.modules)))"],
                          check=True, capture_output=True, text=True, cwd=ROOT)
    return set(done.stdout.split())


@pytest.mark.subprocess
def test_the_engine_and_vision_never_import_transformers_and_the_parsers_import_no_torch():
    loaded = _imports("import nlp_dlg, nlp_dlg.engine, vision_dlg, vision_dlg.cli, nlp_dlg.engine.matcher, "
                      "vision_dlg.attack")
    assert "transformers" not in loaded
    loaded = _imports("import nlp_dlg.cli, vision_dlg.cli; nlp_dlg.cli.build_parser(); vision_dlg.cli.build_parser()")
    assert "torch" not in loaded and "transformers" not in loaded


def test_choices_and_defaults_have_one_source():
    """The command lines take their choices from the configs' constants: no copied list to hold equal."""
    from nlp_dlg.cli import build_parser as text_parser
    from nlp_dlg.engine.config import DISTANCES, OPTIMIZERS, PRIORS, SCHEDULES
    from vision_dlg.cli import build_parser as vision_parser

    def choices(parser, flag):
        attack = parser()._subparsers._group_actions[0].choices["attack"]
        return tuple(next(a for a in attack._actions if flag in a.option_strings).choices)

    for parser in (text_parser, vision_parser):
        assert choices(parser, "--distance") == DISTANCES
        assert choices(parser, "--optimizer") == OPTIMIZERS
        assert choices(parser, "--schedule") == SCHEDULES
    assert choices(vision_parser, "--prior") == PRIORS
