# `make install` creates .venv and installs focalgraph into it (editable) with every extra the
# tests need (tensorflow, test, bench, signing, ray, spark), once; it reinstalls only when
# pyproject.toml changes. `make test` installs first if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install artifacts bench gpu-check test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[tensorflow,test,bench,signing,ray,spark]'
	touch $(STAMP)

# The main job: export and validate the built-in losses (export.exporter.default_specs).
artifacts: install
	$(BIN)/focalgraph export-defaults --out artifacts --force

# Speed: the default sparse-softmax and sigmoid artifacts against Keras and a read-once floor;
# writes docs/bench.json, docs/bench.md and docs/bench.png.
bench: artifacts
	$(BIN)/focalgraph bench --eval-rows 262144 --json docs/bench.json --force

# The CUDA check (docs/gpu-check.md): every artifact validated against its stored TensorFlow
# outputs, its nodes' providers and its speed on ONNX Runtime's CUDA provider; writes docs/gpu.json
# and docs/gpu.md. PROVIDER=cpu does the same on the CPU and writes to a new temporary folder
# (GPU_CHECK_ARGS="--out DIR" names one). Needs only numpy, onnx and onnxruntime(-gpu) and the
# artifacts `make artifacts` wrote: it installs nothing, so it runs where only those are (a plain
# python3 where there is no .venv).
PROVIDER ?= cuda
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	PYTHONPATH="$${PYTHONPATH:+$$PYTHONPATH:}$(CURDIR)" $(GPU_PYTHON) scripts/gpu_check.py --provider $(PROVIDER) $(GPU_CHECK_ARGS)

# One worker per core (at most 4: each imports TensorFlow), tests handed out as workers free up.
test: install
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist worksteal

demo: install
	$(BIN)/python examples/seeds.py

clean:
	rm -rf $(VENV) build *.egg-info
