# Two commands do everything: `make run` and `make test`. Both set up first,
# and the set-up is idempotent: a second run does nothing that is done already.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup run test serve lint bench-speed bench-accuracy bench-photos bench-serve dataset clean

setup: $(STAMP) dataset

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fmnist needs Python 3.11 or newer; found " + sys.version.split()[0])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "could not create $(VENV): install python3-venv (apt-get install python3-venv)"; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,serve]'
	@touch $(STAMP)

# The dataset: already somewhere fmnist looks, or Debian's package when we can
# install it (root on a Debian-like system), or else the loader downloads it
# from the official mirrors on first use.
dataset: $(STAMP)
	@if $(PY) -m fmnist data >/dev/null 2>&1; then \
		$(PY) -m fmnist data | head -1; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's package dataset-fashion-mnist"; \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) && \
		$(PY) -m fmnist data | head -1; \
	else \
		echo "Fashion-MNIST not found; fmnist will download it on first use (or run: $(PY) -m fmnist data --fetch)"; \
	fi

run: setup
	$(PY) -m fmnist train

# pytest's status 5 means it collected no tests: a failure, not a pass.
test: setup
	@$(PY) -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

# Serve the newest finished run on http://127.0.0.1:8000/, training the reference model first if there is none.
serve: setup
	@ls runs/*/metadata.json 2>/dev/null | grep -vq '\.partial/' || $(PY) -m fmnist train
	$(PY) -m fmnist serve

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

bench-speed: setup
	$(PY) -m fmnist bench speed

# Every model, 3 seeds: about 3 h 25 min on 2 cores (resnet alone is 3 x 60 min). Its records
# go under docs/runs, so that `fmnist bench accuracy --resume docs/runs/bench-<time>` can
# finish it in another checkout.
bench-accuracy: setup
	$(PY) -m fmnist bench accuracy --runs-dir docs/runs

bench-photos: setup
	$(PY) -m fmnist bench photos $$(dirname $$(ls -t runs/*/model.keras | grep -v '\.partial/' | head -1))

bench-serve: setup
	$(PY) -m fmnist bench serve $$(dirname $$(ls -t runs/*/model.keras | grep -v '\.partial/' | head -1))

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
