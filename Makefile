# Two commands matter: `make demo` and `make test`. Both set everything up from a clean clone.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
LS_VENV := localstack/.venv
TTS := $(VENV)/bin/tts-pipeline

.PHONY: help setup browser console venv localstack-venv demo test unit integration faults sweep nemesis reliability bench bench-latency bench-abuse bench-gpu lint format schemas clean image-check

help:
	@echo "make demo    set up, start LocalStack, run one voice-cloning job end to end, print the result"
	@echo "make test    set up, lint, run unit + integration tests (real LocalStack, real f5-tts)"
	@echo "make console the demo, then a worker and the web console at http://127.0.0.1:8080/ (Ctrl-C stops)"
	@echo "make setup   only create .venv (app) and localstack/.venv (LocalStack + AWS CLI)"
	@echo "make sweep   the full fault-point matrix: every request of a job's life x every fault kind"
	@echo "make nemesis seeded schedules of jobs and overlapping faults, checked (TTS_NEMESIS_SEEDS=0-19)"

setup: venv localstack-venv

venv: $(VENV)/.installed
localstack-venv: $(LS_VENV)/.installed

# The app's virtualenv. f5-tts pulls a CUDA build of torch (several GB) the first time.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required (set PYTHON=...)"'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

# LocalStack's own virtualenv: its runtime pins boto3/awscli versions that clash with aioboto3.
$(LS_VENV)/.installed: localstack/requirements.txt
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install --quiet --upgrade pip
	$(LS_VENV)/bin/pip install --quiet -r localstack/requirements.txt
	touch $@

demo: setup
	scripts/demo.sh

# The demo, then a worker and the console (web page + OpenAI-compatible API) until Ctrl-C.
console: setup
	scripts/demo.sh --console

# Benchmarks (not part of `make test`: they measure, they do not assert). Needs ~4 GB of disk.
bench: setup
	$(VENV)/bin/pip install --quiet -e '.[dev,bench]'
	$(VENV)/bin/python scripts/bench_cold_start.py
	$(VENV)/bin/python scripts/bench_voice_cache.py
	$(VENV)/bin/python scripts/bench_report.py

# Issue 19's latency figures (streaming, priority, fair share, per-job overhead) on CPU with the
# tiny bundle: docs/bench/latency-cpu.json.
bench-latency: setup
	$(VENV)/bin/python scripts/bench_latency.py

# Issue 27's hostile-load benchmark (real stack, loopback only, bounded): a legitimate client's
# latency while every abuse of the front door runs at once. docs/bench/abuse.json.
bench-abuse: setup
	$(VENV)/bin/python scripts/bench_abuse.py $(BENCH_ABUSE_ARGS)

# Throughput (jobs in flight, batching, compile, alignment): full-size random bundle on a GPU,
# the tiny bundle on CPU. Writes docs/bench/throughput-<label>.json and docs/benchmarks.md.
bench-gpu: venv
	$(VENV)/bin/python scripts/bench_gpu.py $(BENCH_GPU_ARGS)

# The GPU image's install set resolves to wheels only for its platform (also run by make test).
image-check: venv
	$(VENV)/bin/python scripts/image_lock.py check

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

schemas: venv
	$(TTS) schema --out docs/schemas

# The console's browser tests drive Debian's chromium (Playwright's own download does not run here).
browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

# Two test processes (pytest-xdist), each with a LocalStack, workers and buckets of its own; a
# file's tests stay together (module fixtures), the longest files first (tests/conftest.py).
# Much of the suite waits on leases, polls and processes: two keep both cores busy.
TEST_PROCESSES ?= 2

test: setup browser lint
	$(VENV)/bin/pytest -n $(TEST_PROCESSES) --dist loadfile

unit: venv
	$(VENV)/bin/pytest tests/unit

integration: setup
	$(VENV)/bin/pytest tests/integration

faults: setup
	$(VENV)/bin/pytest -m "faults and not sweep"

# The Jepsen-style nemesis: for each seed of TTS_NEMESIS_SEEDS (default 0-19), a long schedule of jobs
# and overlapping faults on a stack of its own, healed, settled and checked from S3/SQS/SNS history
# (tests/nemesis/). `make test` runs two short seeds. Records and figures: .cache/nemesis/.
nemesis: setup
	$(VENV)/bin/pytest -m nemesis tests/nemesis

# Every request position of the reference jobs x every fault kind (make test runs one kind per
# position). TTS_SWEEP_LANES stacks run side by side (3 by default).
sweep: setup
	$(VENV)/bin/pytest -m sweep tests/sweep

# Re-measure the fault suite and the sweep, and rewrite docs/reliability.md from their figures.
reliability: setup
	rm -rf .cache/reliability
	$(VENV)/bin/pytest -m "faults and not sweep"
	$(VENV)/bin/pytest -m sweep tests/sweep
	$(VENV)/bin/python scripts/reliability_report.py

clean:
	-$(TTS) localstack stop
	rm -rf .localstack .cache out .pytest_cache .ruff_cache
