# Set-up and everyday commands. Every target installs first when needed.
VENV ?= .venv
PYTHON ?= python3
# Linux wheels of torchvision on the package index are CUDA builds and need the CUDA build of torch
# (both run on a machine without a GPU). GPU users may point these at the wheels for their CUDA.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.2
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.usaid-installed
PYTEST_ARGS ?=

.PHONY: install demo test clean docs

install: $(STAMP)

# Order matters: torch first; basicsr 1.4.2 without build isolation (its sdist needs torch at build time)
# and without its requirement set (tb-nightly clashes with tensorboard); then this package, whose own
# requirement list (setup.py) names what basicsr needs, read back from the installed metadata.
$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q --no-build-isolation --no-deps basicsr==1.4.2
	$(PIP) install -q --no-build-isolation --no-deps -e '.[test]'
	$(PY) -c "import importlib.metadata as m; print('\n'.join(r.split(';')[0] for r in m.requires('basicsr-usaid') if not r.startswith('basicsr')))" > $(VENV)/usaid-requirements.txt
	@echo "pip may now say 'basicsr 1.4.2 requires tb-nightly': expected, tensorboard replaces it on purpose."
	$(PIP) install -q -r $(VENV)/usaid-requirements.txt
	$(PY) -c "import usaid; print('basicsr-usaid installed:', usaid.__version__)"
	touch $(STAMP)

demo: install
	$(PY) -m usaid.demo

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest tests $(PYTEST_ARGS)

# the option reference and JSON Schema, generated from the declarations (a test fails when they are stale)
docs: install
	$(PY) -m usaid.option_reference docs

clean:
	rm -rf $(VENV) build *.egg-info experiments results tb_logger
