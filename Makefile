# ddpm-lite: two commands for a fresh machine.
#   make lab    set up .venv from requirements.txt and open the course in JupyterLab
#   make test   set up the same .venv and run the whole test suite (unit tests + every notebook)
#   make sync       bring each notebooks/NN_name.py and its .ipynb back in step (jupytext; the newer file wins)
#   make notebooks  sync, then re-execute every notebook in place (the committed .ipynb keep their outputs)
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# JupyterLab refuses to start as root (usual in containers) unless told it is meant: say so for root only.
LAB_FLAGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: venv lab test test-browser student sync notebooks clean

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

# every pair by its .ipynb; a new notebooks/NN_name.py without an .ipynb gets one (with the python3 kernelspec)
NB_IPYNB := $(wildcard notebooks/[0-9][0-9]_*.ipynb)
NB_NEW := $(filter-out $(NB_IPYNB:.ipynb=.py),$(wildcard notebooks/[0-9][0-9]_*.py))

sync: venv
	$(VENV)/bin/jupytext --sync $(NB_IPYNB)
	$(if $(NB_NEW),$(VENV)/bin/jupytext --set-kernel python3 --sync $(NB_NEW))

notebooks: sync
	for nb in notebooks/[0-9][0-9]_*.ipynb; do \
		$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=600 $$nb || exit 1; \
	done

student: venv
	$(PY) tools/make_student.py --src notebooks --out student

clean:
	rm -rf $(VENV) student test-output .pytest_cache
