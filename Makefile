# The two README commands: `make demo` (set up + run the main job) and `make test` (everything, what
# CI runs); `make test-fast` runs the unit tests alone (no Ray, no servers).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# torch and torchvision are pinned as a pair that imports together (torchvision's C++ ops must
# match torch's ABI; timm imports torchvision).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

# pip's and setuptools' chatter goes to $(VENV)/setup.log (shown only if setup fails), so it never
# hides the sweep's leaderboard at the end of `make demo`.
$(BIN)/raybench: pyproject.toml
	@echo "setting up $(VENV) (log: $(VENV)/setup.log) ..."
	@$(PY) -m venv $(VENV)
	@{ $(BIN)/pip install -q --disable-pip-version-check --upgrade pip && \
	   $(BIN)/pip install -q --disable-pip-version-check $(TORCH_PINS) && \
	   $(BIN)/pip install -q --disable-pip-version-check -e ".[test,weights]" $(TORCH_PINS); } > $(VENV)/setup.log 2>&1 \
	  || { cat $(VENV)/setup.log; echo "setup failed (log above: $(VENV)/setup.log)"; exit 1; }
	@touch $@

setup: $(BIN)/raybench

demo: setup
	$(BIN)/raybench sweep demo

test: setup
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: setup
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

.PHONY: setup demo test test-fast
