# `make demo` and `make test` each build .venv on first use, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# Interpreters for `make test-matrix`; those not installed are skipped with a message.
MATRIX ?= 3.10 3.11 3.12 3.13
# `make test` runs the whole suite on the default interpreter; on every interpreter of the
# matrix the fast part (no `slow` tests: stress, faults, packaging) keeps CI under 20 minutes
# on 2 cores. `make test-matrix MATRIX_ARGS=` runs everything.
MATRIX_ARGS ?= -m "not slow"
# The oldest interpreter with wheels for every floor (numpy 1.22.0 has none for 3.11).
OLDEST_PYTHON ?= 3.10
# The packaging tests build and install wheels; they need running only once, in `make test`.
SUITE_ARGS ?= -m "not packaging"

.PHONY: demo test lint bench bench-quick dist-check test-matrix test-oldest test-opencv4 clean

$(STAMP): pyproject.toml setup.py shmsave/_fastfiles.c  # an editable install builds the helper in place
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,bench,opencv,dev,dask,fast]"
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(PY) -m shmsave._sample demo-out/frames.npy --count 240
	$(VENV)/bin/shmsave demo-out/frames.npy -o "demo-out/images/{index:04d}.jpg" --quality 90
	@echo "The images are in $(CURDIR)/demo-out/images/ (ls demo-out/images | head)"

test: $(STAMP)
	$(PY) -m pytest

# ruff's lint rules and formatting ([tool.ruff] in pyproject.toml); changes nothing.
lint: $(STAMP)
	$(PY) -m ruff check shmsave tests benchmarks
	$(PY) -m ruff format --check shmsave tests benchmarks

# sdist + wheel into dist/, twine check --strict, py.typed in the wheel, the sdist's tests collect.
dist-check: $(STAMP)
	bash tests/check_dist.sh $(PY)

# The suite on every Python of MATRIX, each in its own .venv-py3.X.
test-matrix:
	@for version in $(MATRIX); do \
	    python=$$(.ci/python_for $$version) || { echo "test-matrix: no Python $$version (pyenv or python$$version), skipped"; continue; }; \
	    .ci/suite_venv .venv-py$$version $$python -e ".[test,opencv]" -- $(SUITE_ARGS) $(MATRIX_ARGS) || exit 1; \
	done

# The whole suite with the oldest numpy, OpenCV, psutil and tqdm that pyproject.toml allows,
# then with the newest OpenCV 4.x (.venv has OpenCV 5).
test-oldest: build/floors.txt
	python=$$(.ci/python_for $(OLDEST_PYTHON)) || { echo "test-oldest: needs Python $(OLDEST_PYTHON) (pyenv or python$(OLDEST_PYTHON))"; exit 1; }; \
	.ci/suite_venv .venv-oldest $$python -e ".[test,opencv]" -c build/floors.txt -- $(SUITE_ARGS)
	$(MAKE) test-opencv4

test-opencv4: build/opencv4.txt
	.ci/suite_venv .venv-opencv4 $(PYTHON) -e ".[test,opencv]" -c build/opencv4.txt -- $(SUITE_ARGS)

build/floors.txt: pyproject.toml .ci/floors.py
	mkdir -p build
	$(PYTHON) .ci/floors.py > $@

build/opencv4.txt:
	mkdir -p build
	echo "opencv-python-headless<5" > $@

# One full run: every method on every workload (full.md/png), the command against user scripts
# (command.md), streams against loops (streaming.md); ~75 min on 2 cores, mostly the mixed workload.
# BENCH_ARGS="--repeat 3" shortens the first part to ~40 min.
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) -m benchmarks $(BENCH_ARGS)
	$(PY) -m benchmarks.command
	$(PY) -m benchmarks.streaming
	$(PY) -m benchmarks.names

bench-quick: $(STAMP)
	$(PY) -m benchmarks --quick

clean:
	rm -rf $(VENV) .venv-py3.* .venv-oldest .venv-opencv4 build dist demo-out .pytest_cache
