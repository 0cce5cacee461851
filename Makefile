# Two commands do everything on a fresh machine: `make demo` and `make test` (a plain `make`
# only sets up .venv); `make docs` builds the documentation site the same way. See README
# "Two commands" for what gets installed where.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Where torch comes from, installed before the package so nothing else chooses it.
# Default: `pip install torch==2.13.0` with pip's own configuration: a local wheel pip is set up
# to find first wins (this project's CI machine: the CPU wheel); otherwise PyPI's wheel, which
# on Linux is the CUDA 13 build with ~19 nvidia-*/cuda-*/triton packages (~6 GB).
# CPU build from PyTorch's index:  make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
# TORCH_SPEC: another torch in the supported range; PIP_EXTRA: options for every pip install.
# These apply when .venv is set up: `make clean` first to switch.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PIP_EXTRA ?=
PIP := $(BIN)/python -m pip install -q $(PIP_EXTRA)
TORCH_VERSION := $(BIN)/python -c "from importlib.metadata import version; print(version('torch'))"

.DEFAULT_GOAL := install
.PHONY: install demo test docs lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)") "$(TORCH_SPEC)"
	$(TORCH_VERSION) > $(VENV)/.torch
	$(PIP) -e ".[test,demo,yaml,integrations,docs]"
	@# the package and its extras must leave the chosen torch alone
	@$(TORCH_VERSION) | cmp -s - $(VENV)/.torch || { echo "error: installing the package" \
	  "replaced torch $$(cat $(VENV)/.torch) with $$($(TORCH_VERSION))"; exit 1; }
	@$(BIN)/python -c "import torch; c = torch.version.cuda; \
	  print('torch', torch.__version__, f'(CUDA {c} build)' if c else '(CPU build)')"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/paramwise demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/python -m pytest

# The documentation site, strict: any warning (a broken cross-reference, a link to a missing page,
# a malformed docstring) fails the build. Output: docs/_build/html/index.html.
docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -n -q -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_groups.py
	$(BIN)/python benchmarks/bench_regularizers.py
	$(BIN)/python benchmarks/bench_hybrid.py
	$(BIN)/python benchmarks/bench_audit.py

clean:
	rm -rf $(VENV) build docs/_build src/*.egg-info .pytest_cache .ruff_cache
