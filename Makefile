# Two commands on a fresh machine: `make study` and `make test`. Both set up .venv first.
# The install order matters (DESIGN.md, "Ecosystem facts"):
#   1. torch + torchvision from the registry as a matched pair (the CUDA build; it runs on CPU too,
#      and timm's torchvision only loads against it);
#   2. torchsort from source with --no-build-isolation, so it compiles against that torch:
#      CPU-only (nvcc hidden from PATH) unless a GPU is visible, then with CUDA for that GPU;
#   3. the project itself, editable, with its dev extras.
# A stamp file makes a second `make install` with nothing changed a no-op.

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip --disable-pip-version-check
TORCH_SPEC  ?= torch==2.15.0 torchvision==0.29.2
TORCHSORT   ?= torchsort==0.1.10
STAMP       := $(VENV)/.installed
ARGS        ?=
# pytest-xdist workers for make test (auto: one per core; each takes its share of the threads)
TEST_JOBS   ?= auto

# PATH without any directory that holds nvcc: torchsort's setup.py builds CUDA when nvcc runs.
PATH_NO_NVCC := $(shell printf '%s' "$$PATH" | tr ':' '\n' | while read -r d; do \
	[ -x "$$d/nvcc" ] || printf '%s:' "$$d"; done)

.PHONY: install postgres study test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=77" wheel
	@$(PY) -c "import torch, torchvision" 2>/dev/null \
		|| { echo "== installing $(TORCH_SPEC) (several GB on first install)"; \
		     $(PIP) install -q $(TORCH_SPEC); }
	@$(PY) -c "import torchsort" 2>/dev/null || { \
		if $(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
			arch=$$($(PY) -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())"); \
			echo "== building $(TORCHSORT) with CUDA for sm $$arch"; \
			TORCH_CUDA_ARCH_LIST=$$arch $(PIP) install -q --no-build-isolation $(TORCHSORT); \
		else \
			echo "== building $(TORCHSORT) CPU-only (no GPU visible)"; \
			PATH="$(PATH_NO_NVCC)" $(PIP) install -q --no-build-isolation $(TORCHSORT); \
		fi; }
	$(PIP) install -q -e ".[dev]"
	@touch $(STAMP)

# The main job: the default Optuna study on the bundled planted data (outputs/study/planted-txl);
# ARGS passes overrides, e.g. make study ARGS="study=digits".
study: install
	$(PY) -m diffsort_reorder.study $(ARGS)

# The tests start a throwaway PostgreSQL server (tests/postgres.py) from the machine's own
# packages: install Debian's when initdb is missing (as root, or through sudo).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
		echo "== installing PostgreSQL (Debian's postgresql package) for the tests"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q postgresql; }

test: install postgres
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile $(ARGS)

lint: install
	$(PY) -m ruff check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: install
	$(PY) -m diffsort_reorder.bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache outputs
