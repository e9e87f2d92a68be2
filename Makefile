# LASAN: one Makefile for set-up, tests, the demo, serving and benchmarks.
# `make demo` and `make test` are the two commands a new machine needs.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
LASAN  := $(VENV)/bin/lasan
STAMP  := $(VENV)/.installed
WORK   ?= work
REPO   ?= $(WORK)/model_repository
APT_PACKAGES := libb64-0d dcmtk openssl dicom3tools postgresql

.PHONY: install test test-fast demo report serve bench experiments lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	else echo "not root: make sure these Debian packages are installed: $(APT_PACKAGES)"; fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: the CPU build of 2.13.0 is on local disk; anything else downloads CUDA.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[client,integration,hubert,export,eval,dev]"
	# The embedded Triton server (tritonserver 2.51 + python backend). --no-deps: it pins numpy<2.
	$(PIP) install -q --no-deps nvidia-pytriton==0.7.0
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(LASAN) demo --work $(WORK)

# docs/report/: the demo model's evaluation report (plots included) and its targets table on the
# served ensemble, regenerated (the report is re-evaluated; training is reused if present).
report: install
	rm -rf $(WORK)/report
	$(LASAN) demo --work $(WORK) --docs docs/report

serve: install
	$(LASAN) serve --repo $(REPO)

bench: install
	$(LASAN) bench --work $(WORK) --publish docs/benchmarks.md

# The paper's experiment grid (about half an hour on 2 cores; resumes if interrupted): regenerates docs/experiments.md.
experiments: install
	$(LASAN) experiments --config configs/experiments.yaml --out $(WORK)/experiments --docs

# mypy runs on a link tree that mirrors the installed layout (train/ -> lasan/train, ...):
# it cannot follow the editable install's import hook.
MYPY_TREE := .mypy_tree

lint: install
	$(VENV)/bin/ruff check lasan train build client integration benchmarks tests
	@rm -rf $(MYPY_TREE) && mkdir -p $(MYPY_TREE)/lasan
	@for f in lasan/*; do ln -s ../../$$f $(MYPY_TREE)/lasan/; done
	@for p in train build client integration benchmarks; do ln -s ../../$$p $(MYPY_TREE)/lasan/$$p; done
	cd $(MYPY_TREE) && ../$(VENV)/bin/mypy --config-file ../pyproject.toml -p lasan

clean:
	rm -rf $(WORK) .pytest_cache .mypy_cache .mypy_tree
	find . -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
