# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv, installs the project into it and runs. TORCH chooses the torch build:
# the default pins the CPU build that pip finds on this kind of machine; on a GPU machine use
# for example `make demo TORCH="torch==2.5.1"` or `make demo TORCH=torch`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
EXTRAS ?= dev,ray
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell echo '$(TORCH) $(EXTRAS)' | cksum | cut -d' ' -f1)

.PHONY: install demo test test-quick lint format bench hostile clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cycleqd demo

test: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples
	$(PY) -m pytest; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: a suite that runs nothing is a failure" >&2; fi; \
	  exit $$rc

test-quick: $(STAMP)
	$(PY) -m pytest -m "not slow"

# The hostile set through `cycleqd eval --predictions`: attack | contained | seconds (docs/sandbox.md).
hostile: $(STAMP)
	$(PY) bench/bench_hostile.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples

format: $(STAMP)
	$(VENV)/bin/ruff format src tests bench examples
	$(VENV)/bin/ruff check --fix src tests bench examples

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
