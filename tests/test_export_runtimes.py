"""The ONNX and OpenVINO deployment path: exported models against the torch backend, and through ``detect``
against what darknet printed.

* Every detection cfg of the collection that the torch backend builds (seeded well-conditioned random
  weights, ``randinit.random_weights``), two slim-pruned models from the pruning engine, and the real
  yolov3-tiny: ``write_onnx`` → onnxruntime and ``write_openvino`` (f32 inference) → OpenVINO each match the
  torch backend within ``TOLERANCE`` = max|a − b| / max|b| per head, all through ``runtimes.make_runner``
  with ``model=`` the written file (what ``detect --model`` runs). Cfgs without [connected]/[crop] run at
  the smallest multiple of their total stride that is ≥ ``MIN_SIZE``, to keep exports fast; a
  representative set runs by default, the rest is marked ``slow``.
* yolov3-tiny exported by ``cfgsurgeon export`` gives, through ``detect --backend … --model …``, the lines
  darknet printed for the zoo photos (the torch backend's tolerances: same classes, ±1 point, ±2 px).
* ``--dynamic-batch`` models run a batch of 2 with per-image outputs equal to batch-1 runs; ``--fp16``
  OpenVINO models are about half the size and match within ``FP16_TOLERANCE``; user mistakes are one line.
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import (
    CFG_DIR,
    MISH_TOLERANCE,
    MODELS_DIR,
    REPO_CFG_DIR,
    REPORT,
    SHARED_MARK,
    loadable_cfgs,
    mish_error,
    mish_probe,
    need_shared,
    quiet,
    section_headers,
)

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from cfgsurgeon import CfgError, load_cfg, loads_cfg, read_weights  # noqa: E402  (after the importorskips)
from cfgsurgeon import layers as L  # noqa: E402
from cfgsurgeon.cli import main  # noqa: E402
from cfgsurgeon.emit.onnx import write_onnx  # noqa: E402
from cfgsurgeon.emit.openvino import write_openvino  # noqa: E402
from cfgsurgeon.emit.torch import ACTIVATIONS  # noqa: E402
from cfgsurgeon.ir import Graph  # noqa: E402
from cfgsurgeon.randinit import random_weights  # noqa: E402
from cfgsurgeon.runtimes import make_runner  # noqa: E402

TOLERANCE = 1e-4  # max|exported − torch| / max|torch|, per head
FP16_TOLERANCE = 1e-2  # FP16 weights (f32 arithmetic): measured 4.7e-3 on the real yolov3-tiny
BATCH_TOLERANCE = 1e-6  # a batch of 2 against two batch-1 runs of the same model (measured: identical)
MIN_SIZE = 96
SEED = 0  # random_weights
INPUT_SEED = 1
BACKENDS = ("onnxruntime", "openvino")
SUFFIX = {"onnxruntime": ".onnx", "openvino": ".xml"}
FORMAT = {"onnxruntime": "onnx", "openvino": "openvino"}
WRITE = {"onnxruntime": write_onnx, "openvino": write_openvino}

ZOO_PHOTOS = sorted((MODELS_DIR.parent / "images").glob("*.jpg"))
DETECTIONS = MODELS_DIR.parent / "darknet_reference" / "detections"

HEAD_SECTIONS = frozenset({"yolo", "Gaussian_yolo", "region", "detection"})
# Detection cfgs the torch backend cannot build as they stand: nothing to export. (yolo9000's [region] names
# data/9k.tree, which the collection does not ship; with a tree file it builds and exports.)
TORCH_REFUSES = {
    "yolo9000.cfg": "tree=data/9k.tree: file not found",
}
# The default run: YOLOv3/v4/v7 tiny, prn, a [region] model, enet (depthwise convolutions, scale_channels),
# plus the pruned models, a [Gaussian_yolo] variant of yolov3-tiny and the real yolov3-tiny (below). The full
# yolov4 and Gaussian_yolov3_BDD are in the slow set: 30-35 s of CPU each, mostly the TorchScript ONNX
# exporter's per-op cost (the pruned yolov4 has the same ops, at 19 s). efficientnet_b0/-lite3 are
# classifiers, not detection cfgs.
DEFAULT = frozenset(
    {
        "yolov4-tiny.cfg",
        "yolov7-tiny.cfg",
        "yolov3-tiny-prn.cfg",
        "yolov2-tiny.cfg",
        "enet-coco.cfg",
        "yolov3-tiny_xnor.cfg",  # xnor convolutions (sign, -1 padding, per-filter scale) in the exports
    }
)
# Pruned with the engine's slim method (random weights with 80 % exactly dead BN channels, ratio 0.8: below
# the safe bound of both models at this input size).
PRUNED = {"yolov4-tiny.cfg": 0.8, "yolov4.cfg": 0.8}
DEAD_FRACTION = 0.8


def detection_cfgs() -> list[Path]:
    """Collection cfgs with a detection head section, found by scanning the files (not with our parser)."""
    return [p for p in loadable_cfgs() if any(name in HEAD_SECTIONS for _, name in section_headers(p))]


# -- helpers -------------------------------------------------------------------------------------------------


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    scale = np.abs(reference).max()
    return float(np.abs(ours - reference).max() / scale) if scale > 0 else float(np.abs(ours).max())


def worst(outputs: list[np.ndarray], reference: list[np.ndarray]) -> float:
    assert len(outputs) == len(reference)
    return max(relative_error(a, b) for a, b in zip(outputs, reference, strict=True))


def total_stride(graph: Graph) -> int:
    """How much the feature path downsamples: the largest input/output size ratio of the spatial layers,
    leaving out 1×1 maps (global pooling, e.g. enet's squeeze-and-excitation branches)."""
    spatial = (L.Convolutional, L.MaxPool, L.LocalAvgPool, L.Reorg, L.Reorg3d)
    return max(
        max(graph.net.width // layer.out_shape[2], graph.net.height // layer.out_shape[1])
        for layer in graph.layers
        if isinstance(layer, spatial) and layer.out_shape[1:] != (1, 1)
    )


def reduced_size(graph: Graph) -> int | None:
    """The smallest multiple of the total stride ≥ MIN_SIZE; None (keep the cfg's) with [connected]/[crop]."""
    if any(isinstance(layer, L.Connected | L.Crop) for layer in graph.layers):
        return None
    stride = total_stride(graph)
    return stride * math.ceil(MIN_SIZE / stride)


def prepare(path: Path, dead_fraction: float = 0.0, graph: Graph | None = None) -> Graph:
    """The cfg (or ``graph``) at its reduced size with seeded random weights (BN statistics of that size)."""
    graph = graph or load_cfg(path, warn=quiet)
    size = reduced_size(graph)
    if size is not None:
        graph.net.width = graph.net.height = size
        graph.infer()
    random_weights(graph, seed=SEED, dead_fraction=dead_fraction)
    return graph


def random_input(graph: Graph, batch: int = 1, seed: int = INPUT_SEED) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, *graph.input_shape), dtype=np.float32)


_ERRORS: dict[str, dict[str, float]] = {}


def record(case: str, errors: dict[str, float]) -> None:
    _ERRORS[case] = errors
    summary = []
    for backend in BACKENDS:
        name = max(_ERRORS, key=lambda c: _ERRORS[c][backend])
        summary.append(f"{backend} max {_ERRORS[name][backend]:.2e} ({name})")
    REPORT["export vs torch (max|a-b|/max|b| per head)"] = f"{len(_ERRORS)} models, " + ", ".join(summary)
    print(f"{case}: " + ", ".join(f"{b} {e:.2e}" for b, e in errors.items()))


def export_and_compare(graph: Graph, folder: Path, x: np.ndarray) -> dict[str, float]:
    """Write both exports to ``folder``, run them as ``detect --model`` does, and compare with torch."""
    reference = make_runner(graph, "torch")(x)
    write_onnx(graph, folder / "model.onnx")
    errors = {
        "onnxruntime": worst(make_runner(graph, "onnxruntime", model=folder / "model.onnx")(x), reference)
    }
    write_openvino(graph, folder / "model.xml")
    errors["openvino"] = worst(make_runner(graph, "openvino", model=folder / "model.xml")(x), reference)
    return errors


# -- the collection ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    cfg: str
    prune_ratio: float | None = None  # slim-pruned with this ratio
    gaussian: bool = False  # [yolo] heads replaced by [Gaussian_yolo] (cheap coverage of that head)


def gaussian_variant(path: Path) -> Graph:
    """The cfg with its [yolo] heads turned into [Gaussian_yolo] (4 more entries per anchor)."""
    text = path.read_text()
    heads = len(re.findall(r"(?m)^\[yolo\]", text))
    text = re.sub(r"(?m)^\[yolo\]", "[Gaussian_yolo]", text)
    text, count = re.subn(r"(?m)^filters=255$", "filters=267", text)  # 3 × (4 + 4 + 1 + 80)
    assert heads and count == heads, (heads, count)
    return loads_cfg(text, source=f"{path.name} with [Gaussian_yolo]", warn=quiet)


def _cases(slow: bool) -> list:
    cases = [
        pytest.param(Case(path.name), id=path.name, marks=[pytest.mark.slow] if slow else [])
        for path in detection_cfgs()
        if path.name not in TORCH_REFUSES and (path.name not in DEFAULT) == slow
    ]
    if not slow:
        cases += [pytest.param(Case(name, ratio), id=f"{name}-slim{ratio}") for name, ratio in PRUNED.items()]
        cases.append(pytest.param(Case("yolov3-tiny.cfg", gaussian=True), id="yolov3-tiny-Gaussian_yolo"))
    return cases


def _check_case(case: Case, tmp_path: Path) -> None:
    path = need_shared(CFG_DIR / case.cfg)
    if case.gaussian:
        graph = prepare(path, graph=gaussian_variant(path))
        assert any(isinstance(layer, L.GaussianYolo) for layer in graph.layers)
        label = graph.source
    elif case.prune_ratio is None:
        graph = prepare(path)
        label = case.cfg
    else:
        from cfgsurgeon.surgery.prune import prune

        original = prepare(path, dead_fraction=DEAD_FRACTION)
        result = prune(original, "slim", percent=case.prune_ratio)
        graph = result.pruned
        assert graph.params < 0.2 * original.params  # really pruned
        label = f"{case.cfg} slim {case.prune_ratio} ({original.params:,} → {graph.params:,} floats)"
    errors = export_and_compare(graph, tmp_path, random_input(graph))
    record(f"{label} at {graph.net.width}", errors)
    for backend, error in errors.items():
        assert error <= TOLERANCE, f"{backend}: {error:.3g}"


@SHARED_MARK
@pytest.mark.parametrize("case", _cases(slow=False))
def test_export_matches_torch(case: Case, tmp_path: Path):
    _check_case(case, tmp_path)


@SHARED_MARK
@pytest.mark.parametrize("case", _cases(slow=True))
def test_export_matches_torch_slow(case: Case, tmp_path: Path):
    _check_case(case, tmp_path)


@SHARED_MARK
def test_the_survey_covers_every_detection_cfg():
    names = {path.name for path in detection_cfgs()}
    if not names:
        pytest.skip("no collection")
    assert names >= set(TORCH_REFUSES) | DEFAULT | set(PRUNED) | {"yolov4.cfg", "Gaussian_yolov3_BDD.cfg"}
    assert len(names) >= 50  # the collection holds 54 detection cfgs; a scanning mistake would lose many


@SHARED_MARK
@pytest.mark.parametrize("name", sorted(TORCH_REFUSES))
def test_cfgs_torch_refuses_are_refused_by_the_exporter(name: str, tmp_path: Path):
    graph = load_cfg(need_shared(CFG_DIR / name), warn=quiet)
    with pytest.raises(CfgError, match=TORCH_REFUSES[name]):
        write_onnx(graph, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


# -- the real yolov3-tiny, exported by the CLI ---------------------------------------------------------------


def run_cli(*args: object):
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


@pytest.fixture(scope="module")
def real_model() -> Graph:
    cfg = need_shared(MODELS_DIR / "yolov3-tiny.cfg")
    graph = load_cfg(cfg, warn=quiet)
    read_weights(graph, need_shared(MODELS_DIR / "yolov3-tiny.weights"))
    return graph


@pytest.fixture(scope="module")
def real_exports(tmp_path_factory) -> dict[str, Path]:
    """yolov3-tiny written by ``cfgsurgeon export`` in both formats (FP32, batch 1)."""
    folder = tmp_path_factory.mktemp("yolov3-tiny")
    cfg = need_shared(MODELS_DIR / "yolov3-tiny.cfg")
    weights = need_shared(MODELS_DIR / "yolov3-tiny.weights")
    paths = {}
    for backend in BACKENDS:
        out = folder / f"yolov3-tiny{SUFFIX[backend]}"
        result = run_cli("export", "--format", FORMAT[backend], "--cfg", cfg, "--weights", weights, "-o", out)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"wrote {out} ({FORMAT[backend]})")
        paths[backend] = out
    return paths


@SHARED_MARK
def test_real_yolov3_tiny_matches_torch(real_model: Graph, real_exports: dict[str, Path]):
    from cfgsurgeon.images import load_image, network_input

    photo = network_input(real_model, load_image(need_shared(ZOO_PHOTOS[0])))[None]
    x = np.concatenate([photo, random_input(real_model)])
    reference = make_runner(real_model, "torch")(x)
    errors = {}
    for backend in BACKENDS:
        run = make_runner(real_model, backend, model=real_exports[backend])
        outputs = [run(x[i : i + 1]) for i in range(len(x))]  # static batch 1
        errors[backend] = max(
            worst(out, [ref[i : i + 1] for ref in reference]) for i, out in enumerate(outputs)
        )
    record("yolov3-tiny (darknet's weights) at 416", errors)
    for backend, error in errors.items():
        assert error <= TOLERANCE, f"{backend}: {error:.3g}"


_PHOTO_LINE = re.compile(r"^(?P<image>.+): Predicted in \d+\.\d+ ms\.$")


def split_by_photo(stdout: str) -> dict[str, list[str]]:
    """detect's text output → {photo stem: its detection lines}."""
    found: dict[str, list[str]] = {}
    current = None
    for line in stdout.splitlines():
        match = _PHOTO_LINE.match(line)
        if match:
            current = found.setdefault(Path(match["image"]).stem, [])
        else:
            assert current is not None, line
            current.append(line)
    return found


@SHARED_MARK
@pytest.mark.parametrize("backend", BACKENDS)
def test_detect_with_exported_model_matches_darknet(
    backend: str, real_exports: dict[str, Path], tmp_path: Path
):
    from test_detect import deviations

    photos = [need_shared(photo) for photo in ZOO_PHOTOS]
    assert len(photos) == 6
    args = [
        "detect",
        "--cfg", MODELS_DIR / "yolov3-tiny.cfg",
        "--weights", MODELS_DIR / "yolov3-tiny.weights",
        "--names", MODELS_DIR / "coco.names",
        "--backend", backend,
        "--model", real_exports[backend],
        "-o", tmp_path,
        *photos,
    ]  # fmt: skip
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    found = split_by_photo(result.stdout)
    assert sorted(found) == sorted(photo.stem for photo in photos)
    worst_prob = worst_box = 0
    for photo in photos:
        reference = (DETECTIONS / f"{photo.stem}.txt").read_text().splitlines()
        prob, box = deviations(found[photo.stem], reference)
        worst_prob, worst_box = max(worst_prob, prob), max(worst_box, box)
        assert (tmp_path / f"{photo.stem}.png").is_file()
    assert found["scream"] == []
    REPORT[f"detect --backend {backend} --model (yolov3-tiny) vs darknet"] = (
        f"{len(photos)} photos, max prob deviation {worst_prob} points, max box deviation {worst_box} px"
    )


@SHARED_MARK
def test_fp16_openvino_is_smaller_and_close(real_model: Graph, real_exports: dict[str, Path], tmp_path: Path):
    out = tmp_path / "yolov3-tiny-fp16.xml"
    result = run_cli(
        "export",
        "--format",
        "openvino",
        "--fp16",
        "--cfg",
        MODELS_DIR / "yolov3-tiny.cfg",
        "--weights",
        MODELS_DIR / "yolov3-tiny.weights",
        "-o",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "FP16" in result.stdout
    fp32_bin = real_exports["openvino"].with_suffix(".bin").stat().st_size
    fp16_bin = out.with_suffix(".bin").stat().st_size
    assert fp16_bin < 0.55 * fp32_bin, (fp16_bin, fp32_bin)
    x = random_input(real_model)
    error = worst(make_runner(real_model, "openvino", model=out)(x), make_runner(real_model, "torch")(x))
    REPORT["openvino --fp16 (yolov3-tiny)"] = f".bin {fp16_bin:,} vs {fp32_bin:,} bytes, error {error:.2e}"
    assert error <= FP16_TOLERANCE


# -- without the shared folder: the repo's own cfgs ----------------------------------------------------------


@pytest.fixture(scope="module")
def nano(tmp_path_factory) -> dict[str, Path]:
    """cfg/yolo-nano.cfg with `cfgsurgeon init` weights, exported with --dynamic-batch in both formats."""
    folder = tmp_path_factory.mktemp("nano")
    cfg = REPO_CFG_DIR / "yolo-nano.cfg"
    weights = folder / "nano.weights"
    assert run_cli("init", "--cfg", cfg, "-o", weights).exit_code == 0
    paths = {"cfg": cfg, "weights": weights}
    for backend in BACKENDS:
        out = folder / f"nano{SUFFIX[backend]}"
        result = run_cli(
            "export",
            "--format",
            FORMAT[backend],
            "--dynamic-batch",
            "--cfg",
            cfg,
            "--weights",
            weights,
            "-o",
            out,
        )
        assert result.exit_code == 0, result.output
        paths[backend] = out
    return paths


@pytest.mark.parametrize("backend", BACKENDS)
def test_dynamic_batch_runs_a_batch_of_two(backend: str, nano: dict[str, Path]):
    graph = load_cfg(nano["cfg"], warn=quiet)
    read_weights(graph, nano["weights"])
    run = make_runner(graph, backend, model=nano[backend])
    x = random_input(graph, batch=2)
    both = run(x)
    assert all(out.shape[0] == 2 for out in both)
    for i in range(2):
        single = run(x[i : i + 1])
        assert worst([out[i : i + 1] for out in both], single) <= BATCH_TOLERANCE
    assert worst(both, make_runner(graph, "torch")(x)) <= TOLERANCE


def test_dynamic_batch_onnx_declares_a_symbolic_batch(nano: dict[str, Path]):
    import onnx

    model = onnx.load(str(nano["onnxruntime"]))
    for value in [*model.graph.input, *model.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch", value.name


def _activation_graph(name: str) -> Graph:
    net = "[net]\nwidth=8\nheight=8\nchannels=3\n\n"
    text = net + f"[convolutional]\nfilters=6\nsize=3\npad=1\nactivation={name}\n"
    graph = loads_cfg(text, source=f"conv with activation={name}", warn=quiet)
    random_weights(graph, seed=SEED)
    return graph


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_exports(backend: str, name: str, tmp_path: Path):
    """Every darknet activation the torch backend runs, elu/selu (expm1) included, survives each export."""
    graph = _activation_graph(name)
    out = tmp_path / f"act{SUFFIX[backend]}"
    WRITE[backend](graph, out)
    x = (random_input(graph) - 0.5) * 8  # both signs, past the knees of hardtan/plse/relu6
    error = worst(make_runner(graph, backend, model=out)(x), make_runner(graph, "torch")(x))
    assert error <= TOLERANCE, (name, error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mish_is_accurate_pointwise(backend: str, tmp_path: Path):
    graph, x = mish_probe()
    out = tmp_path / f"mish{SUFFIX[backend]}"
    WRITE[backend](graph, out)
    for runner in (make_runner(graph, backend, model=out), make_runner(graph, "torch")):
        assert mish_error(runner(x)[0], x) <= MISH_TOLERANCE


def _one_line_error(result, *fragments: str) -> None:
    assert result.exit_code != 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _detect_args(cfg: Path, weights: Path, tmp_path: Path) -> list:
    names = tmp_path / "three.names"
    names.write_text("a\nb\nc\n")
    image = tmp_path / "grey.png"
    from PIL import Image

    Image.new("RGB", (64, 48), (128, 128, 128)).save(image)
    return ["detect", "--cfg", cfg, "--weights", weights, "--names", names, "-o", tmp_path / "out", image]


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_from_another_cfg_is_one_line(backend: str, nano: dict[str, Path], tmp_path: Path):
    other = REPO_CFG_DIR / "yolo-nano-res.cfg"
    weights = tmp_path / "res.weights"
    assert run_cli("init", "--cfg", other, "-o", weights).exit_code == 0
    args = _detect_args(other, weights, tmp_path)
    result = run_cli(*args, "--backend", backend, "--model", nano[backend])
    _one_line_error(result, str(nano[backend]), "has outputs", "was it exported from this cfg?")


@pytest.mark.parametrize("backend", [*BACKENDS, "tf1", "keras", "tflite"])
@pytest.mark.parametrize("kind", ["text file", "directory"])
def test_model_the_runtime_cannot_read_is_one_line(
    backend: str, kind: str, nano: dict[str, Path], tmp_path: Path
):
    if backend in ("tf1", "keras", "tflite"):
        pytest.importorskip("tf_keras" if backend == "keras" else "tensorflow")
    model = tmp_path / "model"
    if kind == "directory":
        model.mkdir()
    else:
        model.write_text("person\nbicycle\n")
    result = run_cli(
        *_detect_args(nano["cfg"], nano["weights"], tmp_path), "--backend", backend, "--model", model
    )
    _one_line_error(result, f"{model}: not ")


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_of_another_input_size_is_one_line(backend: str, nano: dict[str, Path], tmp_path: Path):
    cfg = tmp_path / "nano-160.cfg"
    cfg.write_text(re.sub(r"(?m)^(width|height)=128$", r"\1=160", nano["cfg"].read_text()))
    result = run_cli(
        *_detect_args(cfg, nano["weights"], tmp_path), "--backend", backend, "--model", nano[backend]
    )
    _one_line_error(result, "takes input ?x3x128x128", "Nx3x160x160")


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_export_without_weights_is_one_line(fmt: str, tmp_path: Path):
    out = tmp_path / f"m{'.onnx' if fmt == 'onnx' else '.xml'}"
    result = run_cli("export", "--format", fmt, "--cfg", REPO_CFG_DIR / "yolo-nano.cfg", "-o", out)
    _one_line_error(result, f"--format {fmt} needs --weights")
    assert not out.exists()


def test_model_with_the_torch_backend_is_one_line(nano: dict[str, Path], tmp_path: Path):
    result = run_cli(*_detect_args(nano["cfg"], nano["weights"], tmp_path), "--model", nano["onnxruntime"])
    _one_line_error(result, "--backend torch runs the cfg and weights directly")


def test_openvino_output_needs_xml_suffix(nano: dict[str, Path], tmp_path: Path):
    result = run_cli(
        "export",
        "--format",
        "openvino",
        "--cfg",
        nano["cfg"],
        "--weights",
        nano["weights"],
        "-o",
        tmp_path / "m.bin",
    )
    _one_line_error(result, "should end in .xml")


def test_output_that_is_a_directory_is_one_line(nano: dict[str, Path], tmp_path: Path):
    out = tmp_path / "m.onnx"
    out.mkdir()
    args = ("--cfg", nano["cfg"], "--weights", nano["weights"], "-o", out)
    _one_line_error(run_cli("export", "--format", "onnx", *args), "is a directory; name the file to write")
    assert out.is_dir() and not any(out.iterdir())


def test_openvino_export_across_file_systems(nano: dict[str, Path], tmp_path: Path, monkeypatch):
    """The system temp folder on another file system (tmpfs /tmp) than the output: the .xml/.bin are staged
    beside the output, since a rename across file systems fails (EXDEV)."""
    import tempfile

    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a temp folder on another file system (/dev/shm)")
    other = Path(tempfile.mkdtemp(dir=shm))
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(other))
        graph = load_cfg(nano["cfg"], warn=quiet)
        read_weights(graph, nano["weights"])
        out = tmp_path / "deploy" / "nano.xml"
        write_openvino(graph, out)
        assert sorted(p.name for p in out.parent.iterdir()) == ["nano.bin", "nano.xml"]  # no staging left
        assert list(other.iterdir()) == []
    finally:
        shutil.rmtree(other, ignore_errors=True)
