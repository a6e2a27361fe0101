# Two set-up commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO ?= demo

.PHONY: install demo test lint format bench clean

# Reinstall only when the project's dependencies change. No pip cache: the venv alone holds
# several GB (torch), and a copy of every wheel beside it can fill a small disk.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-cache-dir -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) data_manifests/make_demo.py --out $(DEMO)
	$(VENV)/bin/vidfeat extract $(DEMO)/manifest.csv --out $(DEMO)/features.zarr
	$(VENV)/bin/vidfeat info $(DEMO)/features.zarr
	rm -rf $(DEMO)/runs/bilstm
	$(VENV)/bin/heads train $(DEMO)/features.zarr --model bilstm --out $(DEMO)/runs/bilstm \
		--epochs 40 --optimizer adam --no-progress
	$(VENV)/bin/heads evaluate $(DEMO)/runs/bilstm
	$(VENV)/bin/heads report $(DEMO)/runs/bilstm --out $(DEMO)/report

test: install
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=20

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) -m benchmarks.extract

clean:
	rm -rf $(DEMO) .pytest_cache
