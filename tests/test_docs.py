"""The documentation cannot drift: the generated pages match what scripts/make_docs.py makes now (from the
parsers and benchmarks/results), the README stays short with both quick-start commands, and its examples run."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", ROOT / "scripts" / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_docs"] = module     # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_generated_pages_are_up_to_date():
    stale = [path.relative_to(ROOT).as_posix() for path, text in _make_docs().generated().items()
             if not path.exists() or path.read_text(encoding="utf-8") != text]
    assert not stale, f"out of date: {stale}; run .venv/bin/python scripts/make_docs.py"


def test_every_option_of_both_command_lines_is_in_the_cli_page():
    from nlp_dlg.cli import build_parser as nlp_parser
    from vision_dlg.cli import build_parser as vision_parser

    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for build in (nlp_parser, vision_parser):
        for sub in _make_docs()._subcommands(build()).values():
            for action in sub._actions:
                assert all(flag in page for flag in action.option_strings)


def test_the_readme_is_short_and_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    quick = readme.split("## Quick start")[1].split("##")[0]
    assert "make demo" in quick and "make test" in quick
    assert "| BERT-base random init, masked-LM, batch 1, `span` |" in readme


@pytest.mark.parametrize("index, printed", [(0, "the quick brown fox jumps over the lazy dog."),
                                            (1, "wooden acting , no plot . True"), (3, "6 ")])
def test_the_readme_python_examples_run(index, printed):
    """The text example is also the suite's check that `dlg` recovers a sentence exactly on a tiny BERT."""
    block = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)[index]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, f"README example {index}", "exec"), {})
    assert printed in out.getvalue()
