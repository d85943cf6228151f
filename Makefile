# The few commands people and CI both run. Everything works without make too (see README).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test lint sandbox bench clean

$(VENV):
	python3 -m venv $(VENV)

install: $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'

test: install
	$(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

sandbox: install
	$(VENV)/bin/sms-gateway serve --sandbox

bench: install
	$(PY) -m bench.run

ci:
	bash .ci/run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
