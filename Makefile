# fastfaas: `make serve` and `make test` are the Quick start.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: venv build test lint typecheck unit integration fuzz bench bench-http serve clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml setup.py constraints.txt $(wildcard csrc/*.c csrc/*.h csrc/*.pyx csrc/*.pxd)
	$(PIP) install -q -U -c constraints.txt setuptools wheel Cython
	$(PIP) install -q -c constraints.txt --no-build-isolation -e '.[test]'
	touch $(STAMP)

venv build: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check fastfaas tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: $(STAMP) lint typecheck
	$(PY) -m pytest -q

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

# Longer atheris runs than the test suite's (FUZZ_S seconds each); the corpus grows in
# build/fuzz/<harness>/, crashing inputs land in build/fuzz/.
FUZZ_S ?= 300
FUZZ_FLAGS = -max_total_time=$(FUZZ_S) -rss_limit_mb=2048 -max_len=4096 -timeout=60 \
	-print_final_stats=1 -artifact_prefix=build/fuzz/
fuzz: $(STAMP)
	rm -rf build/fuzz/data
	$(PY) -m tests.fuzz.fuzz_protocol --write-seeds build/fuzz/protocol
	$(PY) -m tests.fuzz.fuzz_protocol $(FUZZ_FLAGS) build/fuzz/protocol
	$(PY) -m tests.fuzz.fuzz_api --write-seeds build/fuzz/api
	FASTFAAS_FUZZ_DATA_DIR=build/fuzz $(PY) -m tests.fuzz.fuzz_api $(FUZZ_FLAGS) build/fuzz/api

bench: $(STAMP)
	$(PY) bench/starts.py

bench-http: $(STAMP)
	@command -v wrk >/dev/null || { echo "bench-http needs wrk: apt-get install -y wrk"; exit 1; }
	$(PIP) install -q -c constraints.txt -e '.[bench]' --no-build-isolation
	$(PY) bench/http_warm.py

serve: $(STAMP)
	$(PY) -m fastfaas serve --examples

clean:
	rm -rf build *.egg-info fastfaas/*.so csrc/_native.c csrc/_lane.c .pytest_cache .mypy_cache .ruff_cache
