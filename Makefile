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

# Mutation testing of the modules that carry the method (docs/testing.md#mutation-testing): slow, so not part of
# `make test`; all modules take over an hour on 2 cores, so run them one by one: `make mutation MODULE=loss`.
# mutmut (the `mutation` extra) works on a copy in mutants/ and its configuration is in setup.cfg; each glob
# selects the mutants of the functions that carry the method.
MUTATION_loss := usaid.losses.usa_loss.*
# the network's construction (~170 mutants, each building ResNets) is sampled: mutants numbered 10, 20, 30, ...
MUTATION_usanet := $(foreach f,x_batch_statistics_problem xǁUSANetǁ_load_backbone xǁUSANetǁtrain xǁUSANetǁforward \
	xǁUSANetǁforward_normalized,usaid.archs.usanet_arch.$(f)__mutmut_*) usaid.archs.usanet_arch.xǁUSANetǁ__init____mutmut_*0
MUTATION_sampler := usaid.data.resumable_sampler.*
MUTATION_checkpoint := usaid.checkpoint.x_write_atomically__mutmut_* usaid.checkpoint.x_save_atomically__mutmut_* \
	usaid.checkpoint.x__umask__mutmut_*
# the option checker: its ~1,000 mutants (many in message strings) are sampled, those numbered 10, 20, 30, ...
MUTATION_options := $(foreach f,check_options check_option_file load_option_file _walk _dataset \
	_strings_that_are_numbers _as_yaml11_float,usaid.options.x_$(f)__mutmut_*0) usaid.option_rules.*__mutmut_*0
MUTATION_noise := usaid.data.gaussian_noise_dataset.x_check_sigma__mutmut_* \
	usaid.data.gaussian_noise_dataset.*_draw_sigma__mutmut_* usaid.data.gaussian_noise_dataset.*_training_pair__mutmut_* \
	usaid.data.data_util.*
# each of the step's mutants runs training steps (seconds each): sampled, those numbered 10, 20, 30, ...
MUTATION_step := usaid.models.usaid_model.*optimize_parameters__mutmut_*0 usaid.models.usaid_model.*_step_is_finite__mutmut_*0
MUTATION_MODULES := loss usanet sampler checkpoint options noise step
MODULE ?= $(MUTATION_MODULES)
comma := ,
empty :=
space := $(empty) $(empty)
MUTATION_DIR := $(dir $(abspath $(firstword $(MAKEFILE_LIST))))

# MODULE is checked when the makefile is read, before the set-up: an empty list of globs would have mutmut mutate
# every function of every file (hours), and `rm -rf mutants` must act on this folder's copy only
ifneq ($(filter mutation,$(MAKECMDGOALS)),)
ifneq ($(CURDIR)/,$(MUTATION_DIR))
$(error make mutation runs in the folder of its Makefile, $(MUTATION_DIR), not in $(CURDIR): make -C $(MUTATION_DIR) mutation)
endif
ifeq ($(strip $(MODULE)),)
$(error MODULE is empty; expected some of: $(MUTATION_MODULES))
endif
$(foreach m,$(MODULE),$(if $(or $(findstring %,$(m)),$(if $(filter $(m),$(MUTATION_MODULES)),,unknown)),\
	$(error MODULE: unknown module '$(m)'; expected some of: $(MUTATION_MODULES))))
$(foreach m,$(MODULE),$(if $(strip $(MUTATION_$(m))),,$(error MUTATION_$(m) is empty; expected the globs of its mutants)))
endif

MUTATION_LOCKED = make mutation: another make mutation in $(CURDIR) holds .mutation.lock (its processes: fuser -v \
	.mutation.lock); wait for it to end, or stop them

.PHONY: mutation
mutation: install
	@# one run at a time in this folder: a second would delete the first's mutants/ (the lock ends with the run);
	@# then a fresh copy, as mutmut's cached test-to-function map would miss tests added since
	{ exec 9>.mutation.lock && flock --nonblock 9; } || { echo "$(MUTATION_LOCKED)" >&2; exit 1; }; \
	rm -rf mutants && \
	USAID_SHARED=$(abspath ..)/shared nice -n 10 $(VENV)/bin/mutmut run --max-children 2 \
		$(foreach m,$(MODULE),$(foreach g,$(MUTATION_$(m)),'$(g)')) && \
	$(PY) benchmarks/mutation_score.py --survivors \
		$(foreach m,$(MODULE),'$(m)=$(subst $(space),$(comma),$(strip $(MUTATION_$(m))))')

# On a GPU machine: the tests marked cuda, then benchmarks/bench.py --device cuda; figures in GPU_CHECK_OUTPUT
# (docs/testing.md#gpu-check). Without a GPU it says that every CUDA test was skipped, and why, and exits 0.
GPU_CHECK_OUTPUT ?= gpu-check/figures.md

.PHONY: gpu-check
gpu-check: install
	$(PY) benchmarks/gpu_check.py --output $(GPU_CHECK_OUTPUT) -- $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info experiments results tb_logger
