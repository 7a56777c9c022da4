# `make install` creates .venv and installs focalgraph into it (editable), once; it reinstalls
# only when pyproject.toml changes. `make test` installs first if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install artifacts test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The main job: export and validate the built-in losses (export.exporter.default_specs).
artifacts: install
	$(BIN)/focalgraph export-defaults --out artifacts --force

test: install
	$(BIN)/python -m pytest

demo: install
	$(BIN)/python examples/seeds.py

clean:
	rm -rf $(VENV) build *.egg-info
