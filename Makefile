# Lockstep: `make demo` runs the main job on the embedded default; `make test` runs the checks.
# Both set up everything they need (virtual env, installs) on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
LC_VENV ?= $(VENV)-langchain-tests

.PHONY: install demo test lint typecheck gen-check gen-sync unit langchain-standard chaos chaos-long bench bench-quick clean

$(STAMP): pyproject.toml tools/bootstrap.sh
	bash tools/bootstrap.sh "$(PYTHON)" "$(VENV)"
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/lockstep demo

lint: install
	$(PY) -m ruff check coordinator participants tests tools chaos benchmarks
	$(PY) -m ruff format --check coordinator participants tests tools chaos benchmarks

typecheck: install
	$(PY) -m mypy

gen-check: install
	$(PY) tools/gen_sync.py --check

gen-sync: install
	$(PY) tools/gen_sync.py

test: lint typecheck gen-check
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q
	$(MAKE) --no-print-directory langchain-standard
	$(MAKE) --no-print-directory chaos

# LangChain's standard vector-store tests, in an environment of their own: langchain-tests
# brings pytest plugins (pytest-socket, pytest-asyncio...) that do not run beside the suite's.
langchain-standard: install
	test -x $(LC_VENV)/bin/python || $(PYTHON) -m venv $(LC_VENV)
	$(LC_VENV)/bin/python -m pip install --quiet -e '.[embedded,langchain]' 'langchain-tests==1.1.9' 'pytest-asyncio>=1.0'
	cd tests/langchain_standard && ../../$(LC_VENV)/bin/python -m pytest -q -p no:cacheprovider

# A campaign sized for CI: every fault point of the protocol, then every backend
# combination with agent and server kills; real processes killed with SIGKILL.
chaos: install
	$(PY) -m chaos.engine_kill --runs 1
	$(PY) -m chaos.campaign --runs 1

# The long campaign (thousands of faults over every combination; over an hour on 2 cores).
chaos-long: install
	$(PY) -m chaos.engine_kill --runs 10
	$(PY) -m chaos.campaign --runs 110 --writes 100

bench: install
	$(PY) -m benchmarks.engine
	$(PY) -m benchmarks.embedded_index
	$(PY) -m benchmarks.failure
	$(PY) -m benchmarks.crash --runs 200 --json crash.json
	$(PY) -m benchmarks.crash --runs 200 --rollbacks 0.2 --json crash-rollbacks.json
	$(PY) -m benchmarks.late_writes --runs 100
	$(PY) -m benchmarks.late_writes --runs 100 --load
	$(PY) -m benchmarks.commit_cost --ops 200 --rounds 2 --json commit-cost.json
	$(PY) -m benchmarks.optimisations --ops 200 --rounds 2 --json optimisations.json
	$(PY) -m benchmarks.recovery --transactions 10000 --json recovery.json
	$(PY) -m benchmarks.large_transactions --facts 6000 --singles 200 --json large-transactions.json
	$(PY) -m benchmarks.rollback_log --lengths 0,1000,10000 --json rollback-log.json
	$(PY) -m benchmarks.reads_beside_commits --reads 1000 --rounds 2 --json reads.json
	$(PY) -m benchmarks.chroma_sync --held 20000 --json chroma-sync.json
	$(PY) -m benchmarks.search_scale --json search-scale.json
	$(PY) -m benchmarks.long_running --memories 1000,10000 --updates 30000 --checkpoints 4 --json long-running.json
	$(PY) -m benchmarks.langgraph_saver --turns 300 --rounds 2 --json langgraph-saver.json

bench-quick: install
	$(PY) -m benchmarks.engine --quick
	$(PY) -m benchmarks.embedded_index --quick
	$(PY) -m benchmarks.failure --ops 200
	$(PY) -m benchmarks.crash --runs 5 --combos "sqlite + qdrant local"
	$(PY) -m benchmarks.crash --runs 5 --combos "sqlite + qdrant local" --rollbacks 0.2
	$(PY) -m benchmarks.crash --runs 5 --combos "sqlite + qdrant edge"
	$(PY) -m benchmarks.late_writes --runs 5
	$(PY) -m benchmarks.commit_cost --ops 24 --rounds 1 --combos "sqlite,sqlite + qdrant local"
	$(PY) -m benchmarks.optimisations --ops 24 --rounds 1
	$(PY) -m benchmarks.recovery --transactions 500
	$(PY) -m benchmarks.large_transactions --facts 300 --singles 20 --combos "sqlite,sqlite + qdrant local"
	$(PY) -m benchmarks.rollback_log --lengths 0,200 --versions 10,500 --stores sqlite,redis
	$(PY) -m benchmarks.reads_beside_commits --reads 200 --rounds 1 --writers 0,4
	$(PY) -m benchmarks.chroma_sync --writes 400 --rounds 1 --places embedded
	$(PY) -m benchmarks.search_scale --sizes 200,1000 --queries 10
	$(PY) -m benchmarks.long_running --memories 300 --updates 2500
	$(PY) -m benchmarks.langgraph_saver --turns 20 --rounds 1

unit: install
	$(PY) -m pytest -q tests/unit

clean:
	rm -rf $(VENV) $(LC_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
