# Two commands do all the set-up (see README):
#   make quickstart   set up .venv if missing, then run the main job on built-in data
#   make test         set up .venv if missing, then run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch 2.13.0 is pinned first: it is the CPU build on these machines; a bare `torch`
# would pull several GB of CUDA wheels.
TORCH ?= torch==2.13.0
# The `tpu` extra is libtpu, the TPU compiler: `plan --compile` builds a run's step for a TPU slice on any machine.
# The `beam` extra is Apache Beam's requirements (`data prepare --runner beam`); Beam itself goes in after it with
# --no-deps: its caps (protobuf<7, pyarrow<26, pillow<13) would downgrade protobuf below what sentencepiece and seqio
# need (pyproject.toml says more).
BEAM ?= apache-beam==2.77.0

.PHONY: setup quickstart test lint bench clean

$(BIN)/instructjax: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[eval,dev,tpu,beam]"
	$(BIN)/pip install -q --no-deps "$(BEAM)"
	touch $@

setup: $(BIN)/instructjax

quickstart: setup
	$(BIN)/instructjax quickstart

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25 tests

lint: setup
	$(BIN)/ruff check instructjax tests benchmarks

bench: setup
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs
