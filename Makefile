# fesim: two commands on a fresh machine.
#   make demo   - Tani-sized synthetic study (21 patients x 3 visits), whole chain, report in demo_out/
#   make test   - the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast install bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fesim demo --out demo_out

# pytest-xdist: one process per core, each test file on one worker (module fixtures computed
# once), long files first (tests/conftest.py XDIST_LONG_FIRST). TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
XDIST  := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: $(STAMP)
	$(PY) -m pytest -q $(XDIST)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(XDIST)

bench: $(STAMP)
	$(PY) benchmarks/solve.py
	$(PY) benchmarks/mesh.py
	$(PY) benchmarks/strength.py
	$(PY) benchmarks/study.py

clean:
	rm -rf demo_out .pytest_cache build *.egg-info
