# ddpm-lite: two commands for a fresh machine.
#   make lab    set up .venv from requirements.txt and open the course in JupyterLab
#   make test   set up the same .venv and run the whole test suite (unit tests + every notebook)
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# JupyterLab refuses to start as root (usual in containers) unless told it is meant: say so for root only.
LAB_FLAGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: venv lab test test-browser student clean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.installed

lab: venv
	$(VENV)/bin/jupyter lab $(LAB_FLAGS) notebooks/

test: venv
	$(PY) -m pytest

test-browser: venv
	$(PY) -m pytest -m browser tests/

student: venv
	$(PY) tools/make_student.py --src notebooks --out student

clean:
	rm -rf $(VENV) student test-output .pytest_cache
