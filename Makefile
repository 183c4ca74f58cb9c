# Two commands a fresh machine needs: `make test` and `make demo`. Each sets up
# its own environment. torch is installed first, pinned, so the resolver keeps
# the local CPU wheel instead of pulling a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0

BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

.PHONY: test demo bench lint clean

$(STAMP): pyproject.toml setup.py $(wildcard taxaug/_native/*.c taxaug/_native/*.h)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test,train,lightning,tensorboard,report]"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

# The second pass forces the accelerator strategy on CPU, so every branch a GPU takes runs here too.
ACCEL_TESTS := tests/test_policies.py tests/test_mixing.py tests/test_transforms.py tests/test_learned.py \
	tests/test_image_ops.py tests/test_differentiable.py

test: $(STAMP)
	$(BIN)/ruff check .
	TAXAUG_HYPOTHESIS=ci $(BIN)/python -m pytest -q -p no:cacheprovider --durations=15
	TAXAUG_HYPOTHESIS=ci TAXAUG_DEVICE_STRATEGY=accelerator $(BIN)/python -m pytest -q -p no:cacheprovider $(ACCEL_TESTS)

demo: $(STAMP)
	test -f demo_data/labels.h5 || $(BIN)/taxaug-data demo --out demo_data
	$(BIN)/taxaug-train --config configs/demo.yaml --set checkpoint.overwrite=true  # a rerun replaces runs/demo

# Comparisons against torchvision and timm need their (CUDA) torch build, so
# they get a separate environment; the project's own stays on the CPU wheel.
$(BENCH_STAMP): pyproject.toml setup.py $(wildcard taxaug/_native/*.c taxaug/_native/*.h)
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q torch torchvision timm kornia
	$(BENCH_VENV)/bin/python -m pip install -q -e ".[train]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	mkdir -p benchmarks/results
	for script in $(filter-out benchmarks/ab_%,$(wildcard benchmarks/[!_]*.py)); do \
		echo "== $$script"; \
		$(BENCH_VENV)/bin/python $$script --out benchmarks/results || exit 1; \
	done

clean:
	rm -rf $(VENV) $(BENCH_VENV) build dist *.egg-info .pytest_cache .ruff_cache
