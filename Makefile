# The two README commands: `make demo` (set up + run the main job) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# torch and torchvision are pinned as a pair that imports together (torchvision's C++ ops must
# match torch's ABI; timm imports torchvision).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

$(BIN)/raybench: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e ".[test,weights]" $(TORCH_PINS)
	@touch $@

setup: $(BIN)/raybench

demo: setup
	$(BIN)/raybench sweep demo

test: setup
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q -p no:cacheprovider

.PHONY: setup demo test
