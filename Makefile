# The two commands of the README: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sonossl-installed

.PHONY: venv demo demo-quick demo-long test test-slow bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/sonossl demo --out demo_out --resume

demo-quick: $(STAMP)
	$(BIN)/sonossl demo --out demo_out_quick --plan quick --resume

# a longer pretraining, fine-tuning at 1 and 10 % and more seeds; `sonossl demo --help` gives each plan's size and time
demo-long: $(STAMP)
	$(BIN)/sonossl demo --out demo_out_long --plan long --resume

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

# CPU benchmarks (benchmarks/README.md): about 12-17 minutes on 2 cores; THREADS=1 on a shared machine
bench: $(STAMP)
	bash benchmarks/run_all.sh

clean:
	rm -rf demo_out demo_out_quick demo_out_long .pytest_cache
