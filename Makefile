# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test clean

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-test.txt
	touch $@

demo: $(VENV)/.runtime
	$(PY) preprocess_public_data.py --dataset ml100k
	$(PY) -m generative_recommenders.demo

test: $(VENV)/.test
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) tmp exps
