# The two commands the README opens with: `make demo` and `make test`.
# Both create .venv (once), install the pinned environment, then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNS ?= runs

.PHONY: demo test test-all lint format bench clean install

$(STAMP): pyproject.toml testbed/pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned here (served from this machine's disk); the rest via the lock file.
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e ".[test]" -e ./testbed
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/layerscope record --out $(RUNS)/demo.zarr --overwrite
	$(BIN)/layerscope rank $(RUNS)/demo.zarr --out $(RUNS)/demo-ranking.json
	$(BIN)/layerscope report $(RUNS)/demo.zarr --out $(RUNS)/demo-report.html

# Two pytest workers, one torch thread each: on 2 cores two 2-thread torch processes
# oversubscribe (a 4-step recording: 1.9 s alone at 1 thread, 23 s beside another job).
# --dist loadgroup: a model family's test module (xdist_group) runs on one worker, which
# builds its tiny pipelines once instead of once per worker.
export NO_MKDOCS_2_WARNING := 1
PYTEST := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadgroup -q --durations=15

test: $(STAMP)
	bash scripts/ensure_chromium.sh || echo "chromium unavailable: browser tests will be skipped"
	$(BIN)/ruff check .
	$(BIN)/mkdocs build --strict --quiet --site-dir build/site
	$(PYTEST) -m "not slow"

test-all: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet --site-dir build/site
	$(PYTEST)

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
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e ".[peers]"
	$(BIN)/python benchmarks/peers.py

clean:
	rm -rf $(RUNS) .pytest_cache build *.egg-info
