"""Shared test helpers: where the read-only ``../shared`` material lives, how to skip cleanly without it,
and a few facts about the darknet cfg collection found by scanning the files ourselves (not with our parser,
so the tests do not trust the code under test to classify its own inputs).

Nothing here needs the network.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import numpy as np
import pytest

# The checkout is <root>/main and the read-only material is <root>/shared (in CI: ../shared beside the clone).
SHARED = Path(__file__).resolve().parents[2] / "shared"
ZOO = SHARED / "zoo"
CFG_DIR = ZOO / "cfg"
REFERENCE_DIR = ZOO / "darknet_reference"
MODELS_DIR = ZOO / "models"
HAVE_SHARED = CFG_DIR.is_dir()

# The project's own example cfgs (always present: they are part of the checkout).
REPO_CFG_DIR = Path(__file__).resolve().parents[1] / "cfg"

RECURRENT = frozenset({"rnn", "gru", "lstm", "crnn", "conv_lstm"})
# darknet itself refuses these (parse_shortcut asserts that both inputs have the same width and height).
DARKNET_REFUSES = frozenset({"resnet50", "resnet101", "resnet152", "resnext152-32x4d"})

SHARED_MARK = pytest.mark.shared

# Lines printed after the test session (see pytest_terminal_summary): figures the brief asks us to report.
REPORT: dict[str, str] = {}


def need_shared(path: Path = SHARED) -> Path:
    """Return ``path`` (inside ``../shared``) or skip the calling test cleanly when it is absent."""
    if not path.exists():
        pytest.skip(f"needs the read-only shared folder ({path} is absent)")
    return path


@pytest.fixture
def shared() -> Path:
    """The ``../shared`` folder; skips the test when it is absent."""
    return need_shared(ZOO)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``shared`` skip (rather than fail) when ``../shared`` is absent."""
    if HAVE_SHARED:
        return
    skip = pytest.mark.skip(reason=f"needs the read-only shared folder ({SHARED} is absent)")
    for item in items:
        if item.get_closest_marker("shared") is not None:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter) -> None:  # pragma: no cover - presentation only
    if REPORT:
        terminalreporter.section("cfgsurgeon figures")
        for key, value in sorted(REPORT.items()):
            terminalreporter.write_line(f"{key}: {value}")


# -- the cfg collection ------------------------------------------------------------------------------------
def collection_cfgs() -> list[Path]:
    """Every ``.cfg`` of the shared collection (empty when it is absent), sorted by name."""
    return sorted(CFG_DIR.glob("*.cfg")) if HAVE_SHARED else []


_HEADER = re.compile(r"\[([^\]]*)\]")


@cache
def section_headers(path: Path) -> tuple[tuple[int, str], ...]:
    """``(line, name)`` of every section header, read the way darknet reads lines: all spaces, tabs and CRs
    are deleted first, then a line starting with ``[`` opens a section."""
    headers = []
    text = path.read_bytes().decode("utf-8-sig")
    for number, raw in enumerate(text.split("\n"), start=1):
        line = re.sub(r"[ \t\r]", "", raw)
        match = _HEADER.match(line)
        if match:
            headers.append((number, match.group(1)))
    return tuple(headers)


def first_recurrent_header(path: Path) -> tuple[int, str] | None:
    """The first recurrent section header of a cfg, or None."""
    return next(((line, name) for line, name in section_headers(path) if name in RECURRENT), None)


def is_recurrent(path: Path) -> bool:
    return first_recurrent_header(path) is not None


def recurrent_cfgs() -> list[Path]:
    return [path for path in collection_cfgs() if is_recurrent(path)]


def refused_cfgs() -> list[Path]:
    return [path for path in collection_cfgs() if path.stem in DARKNET_REFUSES]


def loadable_cfgs() -> list[Path]:
    """Cfgs that both darknet and we must load: not recurrent, not one of the resnets darknet refuses."""
    return [path for path in collection_cfgs() if not is_recurrent(path) and path.stem not in DARKNET_REFUSES]


def reference_tsv(path: Path) -> Path | None:
    tsv = REFERENCE_DIR / f"{path.stem}.tsv"
    return tsv if tsv.is_file() else None


def params_by_name(paths: list[Path]) -> list:
    """``pytest.param`` per file with the file name as id, so a failure names the cfg."""
    return [pytest.param(path, id=path.name) for path in paths]


# -- quiet loading with a cache (the collection is loaded by several tests) ---------------------------------
def quiet(_message: str) -> None:
    """A ``warn`` callback that drops warnings."""


class Warnings(list):
    """A ``warn`` callback that keeps what it is told: ``loads_cfg(text, warn=w)`` then ``w`` lists them."""

    def __call__(self, message: str) -> None:
        self.append(message)

    def matching(self, pattern: str) -> Iterator[str]:
        return (message for message in self if re.search(pattern, message))


_GRAPHS: dict[Path, object] = {}


def cached_graph(path: Path):
    """Load a cfg once per session (callers must not modify the graph)."""
    from cfgsurgeon import load_cfg

    if path not in _GRAPHS:
        _GRAPHS[path] = load_cfg(path, warn=quiet)
    return _GRAPHS[path]


# -- mish, element by element --------------------------------------------------------------------------------
# Every YOLOv4-family layer uses mish; a scale-relative check of a whole model does not see an error of
# log(1 + eˣ) for negative x, which converted graphs (ONNX, OpenVINO, TFLite) can lose and deep nets add up.
MISH_TOLERANCE = 1e-6  # per element, relative, where |mish| > 1e-3 (measured ≤ 4e-7; log(1 + eˣ): up to 9e-3)
MISH_CFG = "[net]\nwidth=6001\nheight=1\nchannels=1\n\n[convolutional]\nfilters=1\nsize=1\nactivation=mish\n"


def mish_probe():
    """An identity 1×1 convolution with mish, with weights, and its input: a line of 6001 values -30..30."""
    from cfgsurgeon import loads_cfg

    graph = loads_cfg(MISH_CFG, source="identity conv with mish", warn=quiet)
    identity = {"biases": np.zeros(1, np.float32), "weights": np.ones((1, 1, 1, 1), np.float32)}
    graph.layers[0].weights = identity
    return graph, np.linspace(-30, 30, 6001, dtype=np.float32).reshape(1, 1, 1, -1)


def mish_error(output, x) -> float:
    """Largest relative error of ``output`` against mish(``x``) in float64, where |mish| > 1e-3."""
    x64 = np.asarray(x, np.float64)
    truth = x64 * np.tanh(np.logaddexp(0.0, x64))
    visible = np.abs(truth) > 1e-3
    got = np.asarray(output, np.float64).reshape(truth.shape)[visible]
    return float((np.abs(got - truth[visible]) / np.abs(truth[visible])).max())


@pytest.fixture(scope="module")
def nano(tmp_path_factory) -> tuple[Path, Path]:
    """cfg/yolo-nano.cfg at 64x64 (grids 2x2 and 4x4: fast enough for a few CPU steps per test) and a small
    synthetic dataset for it (8 train, 4 valid images): ``(cfg, .data)``."""
    from cfgsurgeon.train.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("nano")
    text = (REPO_CFG_DIR / "yolo-nano.cfg").read_text()
    cfg = root / "yolo-nano-64.cfg"
    cfg.write_text(text.replace("width=128", "width=64").replace("height=128", "height=64"))
    data = make_synthetic_dataset(root / "data", train=8, valid=4, size=64, seed=0)
    return cfg, data


def nano_config(nano: tuple[Path, Path], out: Path, **overrides):
    """A short, quiet TrainConfig for the ``nano`` fixture (2 epochs of batch 4, constant lr 0.005)."""
    from cfgsurgeon.train.trainer import TrainConfig

    cfg, data = nano
    settings = dict(
        cfg=cfg,
        data=data,
        output=out,
        epochs=2,
        batch=4,
        warmup=0,
        lr=0.005,
        lr_policy="constant",
        progress=False,
        gamma_plots=False,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


# Bad calibration input for quantize and the TFLite export (one reader, cfgsurgeon.calibration): how to make
# it in a folder d, and the start of the one-line error naming it.
BAD_CALIBRATION = [
    (lambda d: d / "missing.txt", "{d}/missing.txt: no such calibration image list or folder"),
    (
        lambda d: (d / "empty.txt").write_text("\n") and d / "empty.txt",
        "{d}/empty.txt: the calibration list names no image",
    ),  # fmt: skip
    (
        lambda d: (d / "gone.txt").write_text("nothere.jpg\n") and d / "gone.txt",
        "{d}/gone.txt:1: no such image file 'nothere.jpg'",
    ),  # fmt: skip
    (lambda d: (d / "sub").mkdir() or d / "sub", "{d}/sub: the calibration folder holds no image"),
    (
        lambda d: (
            (d / "bad.jpg").write_text("not a photo")
            and (d / "bad.txt").write_text("bad.jpg\n")
            and d / "bad.txt"
        ),
        "{d}/bad.jpg: cannot read the image",
    ),  # fmt: skip
]
