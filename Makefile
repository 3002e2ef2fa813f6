# `make demo` and `make test` set everything up from nothing: a .venv with requirements.txt, the demo data.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DATA := datasets/digits

.PHONY: venv demo-data demo test clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

demo-data: venv
	$(PY) tools/make_demo_dataset.py --out $(DEMO_DATA)

demo: demo-data
	$(PY) tools/demo.py --data-path $(DEMO_DATA) --output output/demo

test: venv
	$(PY) -m pytest -q

clean:
	rm -rf output $(DEMO_DATA) .pytest_cache
