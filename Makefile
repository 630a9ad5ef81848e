# cfgsurgeon developer entry points. Everything runs from the project's own virtual environment in .venv/.
#   make demo    run the main job on the embedded default model (cfg/)
#   make test    lint + test suite (what CI runs, via .ci/run)

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# The venv is (re)installed only when this stamp is older than the packaging files, so `make test` twice does
# not reinstall. torch is pinned exactly in setup.cfg (torch==2.13.0, the local CPU wheel); never torchvision.
STAMP      := $(VENV)/.stamp
# Every backend the tests verify: torch, ONNX Runtime, OpenVINO and TensorFlow (about 3.5 GB in all).
EXTRAS     ?= dev,torch,onnx,openvino,tf
# tf-keras and tensorflow-model-optimization declare a dependency on "tensorflow" (not tensorflow-cpu) and would
# pull a second 572 MB TF over the first, so they go in with --no-deps (their other needs are listed in the tf
# extra); `pip check` then reports the missing "tensorflow" harmlessly. TF_LATE= skips them.
TF_LATE    ?= tf-keras==2.21.0 tensorflow-model-optimization==0.8.1
# Test-only oracle for YOLOv8 (tests/ultralytics_oracle.py): ultralytics declares torchvision, which must
# never be installed here (it does not load beside the torch CPU wheel and would pull another torch), so it
# goes in with --no-deps; its other needs (numpy, opencv, matplotlib, scipy, psutil, requests) come with the
# extras. The tests put a stand-in torchvision.ops on sys.path. ORACLE_LATE= skips it (those tests then skip).
ORACLE_LATE ?= ultralytics==8.4.190 ultralytics-thop==2.2.3 pyyaml==6.0.4

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[$(EXTRAS)]'
	$(if $(TF_LATE),$(BIN)/python -m pip install --no-deps $(TF_LATE))
	$(if $(ORACLE_LATE),$(BIN)/python -m pip install --no-deps $(ORACLE_LATE))
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
