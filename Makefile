# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-all clean

# The package itself is installed editable (its pinned requirements are already in place),
# so `import generative_recommenders` works from any folder with this venv's python.
$(VENV)/.runtime: requirements.txt pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-test.txt
	touch $@

demo: $(VENV)/.runtime
	$(PY) preprocess_public_data.py --dataset ml100k
	$(PY) -m generative_recommenders.demo

# Every core path, fast; test-all adds the tests marked slow (end-to-end runs in subprocesses,
# the installed wheel, a real search): what CI runs.
test: $(VENV)/.test
	$(PY) -m pytest -q -m "not slow" tests

test-all: $(VENV)/.test
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) tmp exps
