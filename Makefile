# fastfaas: `make serve` and `make test` are the Quick start.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: venv build test lint typecheck unit integration bench bench-http serve clean

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

bench: $(STAMP)
	$(PY) bench/starts.py

bench-http: $(STAMP)
	@command -v wrk >/dev/null || { echo "bench-http needs wrk: apt-get install -y wrk"; exit 1; }
	$(PIP) install -q -c constraints.txt -e '.[bench]' --no-build-isolation
	$(PY) bench/http_warm.py

serve: $(STAMP)
	$(PY) -m fastfaas serve --examples

clean:
	rm -rf build *.egg-info fastfaas/*.so csrc/_native.c .pytest_cache .mypy_cache .ruff_cache
