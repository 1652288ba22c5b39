# Two commands on a fresh machine:  `make lab`  and  `make test`.
# Everything is installed into .venv; nothing needs installing by hand.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NOTEBOOK ?= notebooks/01-getting-started.ipynb

.PHONY: lab test bench doctor system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,test]'
	touch $@

## Open JupyterLab on the getting-started notebook.
lab: $(STAMP)
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) $(NOTEBOOK)

## Run the whole test suite.
test: $(STAMP) system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## System packages some tests use (installed when run as root with apt-get).
system-deps:
	@sh scripts/system-deps.sh

## Run the benchmarks (ratios measured side by side; non-zero exit on a missed target).
bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

## Say which backends can run on this machine.
doctor: $(STAMP)
	$(BIN)/atp-notebook doctor

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
