# cfgsurgeon developer entry points. Everything runs from the project's own virtual environment in .venv/.
#   make demo    run the main job on the embedded default model (cfg/)
#   make test    lint + test suite (what CI runs, via .ci/run)

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# The venv is (re)installed only when this stamp is older than the packaging files, so `make test` twice does
# not reinstall. torch is pinned exactly in setup.cfg (torch==2.13.0, the local CPU wheel); never torchvision.
STAMP      := $(VENV)/.stamp
STAMP_FULL := $(VENV)/.stamp-full
EXTRAS     ?= dev,torch,onnx,openvino

.PHONY: venv venv-full demo test lint bench clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[$(EXTRAS)]'
	touch $@

# Optional: every export backend (onnx, openvino, TF). tf-keras and tensorflow-model-optimization declare a
# dependency on "tensorflow" (not tensorflow-cpu) and would pull a second 572 MB TF over the first, so they go
# in with --no-deps; `pip check` then reports the missing "tensorflow" harmlessly. About 3 GB.
venv-full: $(STAMP_FULL)

$(STAMP_FULL): $(STAMP)
	$(BIN)/python -m pip install -e '.[$(EXTRAS),onnx,openvino,tf]'
	$(BIN)/python -m pip install --no-deps tf-keras==2.21.0 tensorflow-model-optimization==0.8.1
	touch $@

demo: venv
	$(BIN)/cfgsurgeon demo

test: venv
	$(BIN)/ruff check . && $(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check .

bench: venv
	$(BIN)/cfgsurgeon bench

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
