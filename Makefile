# The two commands the README opens with: `make demo` and `make test`.
# Both create .venv (once), install the pinned environment, then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNS ?= runs

.PHONY: demo test test-all lint format bench clean install

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned here (served from this machine's disk); the rest via the lock file.
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/layerscope record --out $(RUNS)/demo.zarr --overwrite
	$(BIN)/layerscope rank $(RUNS)/demo.zarr --out $(RUNS)/demo-ranking.json
	$(BIN)/layerscope report $(RUNS)/demo.zarr --out $(RUNS)/demo-report.html

test: $(STAMP)
	bash scripts/ensure_chromium.sh || echo "chromium unavailable: browser tests will be skipped"
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow" -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/record_overhead.py
	$(BIN)/python benchmarks/metrics.py
	$(BIN)/python benchmarks/ranking_validity.py
	$(BIN)/python benchmarks/sweep_overhead.py
	$(BIN)/python benchmarks/finetune_cost.py
	$(BIN)/python benchmarks/hunyuan_overhead.py
	$(BIN)/python benchmarks/bench_judge.py
	$(BIN)/python benchmarks/fsg_localisation.py

clean:
	rm -rf $(RUNS) .pytest_cache build *.egg-info
