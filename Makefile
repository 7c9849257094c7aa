# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv and install Wenlv with everything it needs first.
PY ?= python3
VENV := .venv
export OPENBLAS_NUM_THREADS := 1
export PYSPARK_PYTHON := $(abspath $(VENV))/bin/python

.PHONY: install demo test services

$(VENV)/.installed: pyproject.toml
	bash scripts/install.sh
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/wenlv demo

test: install services
	$(VENV)/bin/python -m pytest

services:
	bash scripts/services.sh
