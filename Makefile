# Thin wrappers: every target calls a Python entry point of the package.
PY      ?= .venv/bin/python
PYTEST_ARGS ?=

.PHONY: install test bench clean

install:
	python3 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	.venv/bin/pip install --quiet -e '.[test]'

test:
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench:
	$(PY) -m bench.convert_memory --size 2.7b
	$(PY) -m bench.data_throughput

clean:
	rm -rf .venv build *.egg-info .pytest_cache
