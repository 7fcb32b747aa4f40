# Each target sets itself up first: a .venv with torch pinned by constraints.txt.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-fast bench data models-table pictures lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,export,tensorboard,show,samples]'
	touch $(STAMP)

# Fashion-MNIST from Debian's package where apt is at hand; otherwise classicnets
# downloads it (with checksums) on first use.
data:
	@if [ ! -d $(FMNIST) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; fi

# The main job: the `quick` recipe on a CPU (minutes on 2 cores), the full d2l recipe on a GPU.
demo: $(STAMP) data
	$(BIN)/classicnets models
	$(BIN)/classicnets train --dataset fashion-mnist --overwrite --out runs/demo --recipe \
		$$($(BIN)/python -c 'import torch; print("d2l" if torch.cuda.is_available() else "quick")')

test: $(STAMP) data
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP) data
	$(BIN)/python benchmarks/run_all.py

# The README's pictures (docs/pictures/*.png): trains one small run under runs/pictures/ first.
pictures: $(STAMP) data
	$(BIN)/python -m classicnets.tools.pictures

models-table: $(STAMP)
	$(BIN)/python -m classicnets.tools.readme_tables --write README.md
	$(BIN)/python -m classicnets.tools.readme_tables --write docs/performance.md

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache runs
