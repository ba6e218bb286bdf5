# Two entry points: `make demo` (explain the default model) and `make test`.
# Both create .venv on first use. TORCH_SPEC pins the CPU build that lies on the CI machine's
# disk; on another machine override it, e.g. `make demo TORCH_SPEC=torch`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.regprim-installed

.PHONY: setup demo test test-rounding lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev,biggan,many,serve,diffusion]"
	$(BIN)/pip install --quiet --no-deps gan-face-generate==1.1.1 omniart-eye-generator==0.1 \
		pytorch-pretrained-biggan==0.1.1
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/regprim explain --model dcgan-faces --n 9 --out runs/demo --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The numeric comparisons once more as CPUs without AVX-512 and without any vector unit would
# round them (docs/reliability.md, "Every CPU"); .ci/run runs this after `make test`.
ROUNDING_TESTS := tests/test_golden.py tests/test_interactions.py tests/test_or_structured.py \
	tests/test_solvers.py tests/test_planted_family.py
test-rounding: $(STAMP)
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
		$(BIN)/python -m pytest -q -p no:cacheprovider $(ROUNDING_TESTS)
	ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -q -p no:cacheprovider $(ROUNDING_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs
