# Two entry points: `make demo` (explain the default model) and `make test`.
# Both create .venv on first use. TORCH_SPEC pins the CPU build that lies on the CI machine's
# disk; on another machine override it, e.g. `make demo TORCH_SPEC=torch`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.regprim-installed

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev,biggan,many,serve]"
	$(BIN)/pip install --quiet --no-deps gan-face-generate==1.1.1 omniart-eye-generator==0.1 \
		pytorch-pretrained-biggan==0.1.1
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/regprim explain --model dcgan-faces --n 9 --out runs/demo --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs
