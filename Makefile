# Quickstart: `make demo` and `make test` each set up .venv on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
NATIVE_BUILD ?= build/native
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test native-check pytest wheel-test bench clean

setup:
	@bash scripts/setup_env.sh $(VENV)

demo: setup
	$(PY) -m astra demo

test: setup native-check pytest wheel-test

# Torch-free C++ core + its unit tests (ctest); compiles every csrc/cuda/*.cu
# for sm_90 when nvcc is present (a compile check: CI has nvcc but no GPU).
native-check:
	cmake -S . -B $(NATIVE_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV))/bin/ninja >/dev/null
	cmake --build $(NATIVE_BUILD) -j 2
	ctest --test-dir $(NATIVE_BUILD) --output-on-failure

pytest:
	$(PY) -m pytest -q tests

# A wheel of the tree, installed into a fresh environment that has only torch, checked from outside the
# tree (imports, every kernel op on the compiled CPU backend, the errors naming missing extras).
wheel-test:
	bash tests/packaging/wheel_test.sh $(PY)

# Single-thread CPU microbenchmarks (pytest-benchmark), ratios against baselines of the same run.
bench: setup
	$(PY) -m pytest -q benchmarks/micro --benchmark-enable --benchmark-only -p no:cacheprovider

clean:
	rm -rf build $(NATIVE_BUILD) astra_kernels/*.so *.egg-info
