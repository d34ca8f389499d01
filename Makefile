# One way to run things: these targets are the documented entry points; CI calls them too.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DURATION ?= 60
SCENARIO ?= demo
STAMP  := $(VENV)/.installed-stamp

FUZZ_SECONDS ?= 300
SOAK_SECONDS ?= 600
BENCH_SECONDS ?= 60
CLOCK_SHIFT ?= 400d

.PHONY: install test test-clock check fmt demo screenshots fuzz soak bench clean help

help:
	@echo "make install   create $(VENV) and install UrbanPulse with its dev tools"
	@echo "make demo      run the live demo for DURATION seconds (default $(DURATION)), SCENARIO=$(SCENARIO)"
	@echo "make test      the whole test suite against real PostgreSQL and Mosquitto"
	@echo "make test-clock  the date-sensitive tests again with the clock moved CLOCK_SHIFT ahead (default $(CLOCK_SHIFT))"
	@echo "make check     ruff (lint + format check) and mypy --strict"
	@echo "make screenshots  refresh docs/console/*.png from the console's browser tests"
	@echo "make fuzz      coverage-guided fuzzing of message validation for FUZZ_SECONDS (default $(FUZZ_SECONDS))"
	@echo "make soak      the fault-injection run for SOAK_SECONDS (default $(SOAK_SECONDS)), then an overload run"
	@echo "make bench     the benchmark suite into build/bench-*.json: ingest (BENCH_SECONDS per shape, default $(BENCH_SECONDS))"
	@echo "               beside the broker and COPY ceilings and Node-RED, rules over 10 000 and 100 000 devices, the API"

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-clock: $(STAMP)
	$(BIN)/python -m tests.clockshift --shift $(CLOCK_SHIFT) -- $(CLOCK_TESTS)

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: $(STAMP)
	$(BIN)/urbanpulse demo --duration $(DURATION) --scenario $(SCENARIO)

screenshots: $(STAMP)
	URBANPULSE_SCREENSHOTS=docs/console $(BIN)/python -m pytest tests/test_console.py -q

fuzz: $(STAMP)
	@mkdir -p build/fuzz-corpus
	$(BIN)/python -c 'from pathlib import Path; from tests.fuzz_parse import write_seeds; write_seeds(Path("build/fuzz-corpus"))'
	$(BIN)/python -m tests.fuzz_parse -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -print_final_stats=1 build/fuzz-corpus

soak: $(STAMP)
	$(BIN)/python -m tests.faults --duration $(SOAK_SECONDS) --json build/soak.json

bench: $(STAMP)
	@mkdir -p build
	$(BIN)/python -m bench ingest --seconds $(BENCH_SECONDS) --json build/bench-ingest.json \
		--sweep 5000 10000 15000 20000 25000 --plot build/bench-ingest.svg
	$(BIN)/python -m bench rules --devices 10000 --lateness 120 --json build/bench-rules-10k.json
	$(BIN)/python -m bench rules --devices 100000 --lateness 120 --json build/bench-rules-100k.json
	$(BIN)/python -m bench api --json build/bench-api.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
