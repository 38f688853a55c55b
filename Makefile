# Two commands a new user needs: `make run` (set up + default experiment) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The pinned CPU build; override e.g. TORCH_SPEC="torch==2.13.0 --index-url ..." for a CUDA machine.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup run test test-rounding test-browser gpu-test bench reproduce analysis view clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev,lm]"
	touch $@

run: setup
	$(PY) launch.py $(ARGS)

# one worker process per core (pytest-xdist), whole test files to a worker so module fixtures run once, in the
# order tests/conftest.py sets (the longest first); TEST_WORKERS=0 runs them in this process
TEST_WORKERS ?= auto
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(ARGS)

# The tests marked `rounding` again on ATen's default CPU kernels, which any x86 CPU runs: a test that held only by
# this machine's kernels (AVX2, AVX-512) and their rounding fails here. .ci/run runs it after `make test`.
test-rounding: setup
	@ATEN_CPU_CAPABILITY=default $(PY) -c "import torch; print('CPU kernels:', torch.backends.cpu.get_cpu_capability())"
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m rounding $(ARGS)

# The viewer's page in a real browser: installs Debian's Chromium (needs root and apt) and runs the browser test
test-browser: setup
	command -v chromium >/dev/null || apt-get install -y -q chromium
	$(PY) -m pytest -q tests/viewer/test_browser.py $(ARGS)

# The GPU lane: tests marked `cuda` (they skip without a GPU). On a machine whose Python already has the
# dependencies: make gpu-test PY=python3 SETUP=
SETUP ?= setup
gpu-test: $(SETUP)
	$(PY) -m pytest -q -m cuda $(ARGS)

bench: setup
	$(PY) bench/overhead.py
	$(PY) bench/diagnostics_overhead.py
	$(PY) bench/ensemble.py --experiment mlp_grok --members 8 --steps 200
	$(PY) bench/time_to_grok.py

# every study's headline result at its source's size, 9 minutes a part on one GPU (docs/reproductions.md, 'The
# reproduction suite'): make reproduce [ARGS="--part nanda routed" | ARGS="--size cpu" | ARGS=--plan]
reproduce: setup
	$(PY) -m reproduce $(ARGS)

# the table and figures of a sweep: make analysis DIR=runs/<sweep name>/multirun_<date_time>
analysis: setup
	$(PY) -m analysis $(DIR)

# the local viewer of run folders, offline, in a browser on this machine: make view [DIR=runs/<experiment>]
view: setup
	$(PY) -m viewer $(or $(DIR),runs)

clean:
	rm -rf $(VENV) runs .pytest_cache
