"""YOLOv8 checkpoints (the ``ultralytics`` package's ``DetectionModel``) imported into the cfg dialect with
the ``[anchor_free]`` head, checked against ultralytics itself (tests/ultralytics_oracle.py).

ultralytics builds yolov8n / yolov8s from its own yaml files with seeded random weights (γ, β random, BN
statistics measured on a batch so activations stay O(1), class biases near −3 so some boxes pass 0.25) and
saves them with its own ``YOLO.save`` (fp16, as it ships checkpoints); the reference is that file loaded back
by ``ultralytics.YOLO``. Ours is the same file read by our safe unpickler and run by our backends.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import REPORT, quiet
from ultralytics_oracle import ultralytics_or_skip

from cfgsurgeon import UsageError
from cfgsurgeon import layers as L
from cfgsurgeon.api.importing import import_checkpoint
from cfgsurgeon.detect import nms_sort
from cfgsurgeon.ir import Graph
from cfgsurgeon.postprocess import decode
from cfgsurgeon.runtimes import make_runner

torch = pytest.importorskip("torch")

TOLERANCE = 1e-4  # max|ours − reference| / max|reference|
SIZE = 256  # the input the comparisons run at (ultralytics runs any multiple of 32)
SEED = 0
CONF, IOU = 0.25, 0.45


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def build_checkpoint(ultralytics: ModuleType, yaml: str, path: Path) -> Path:
    """ultralytics' model from its ``yaml`` with seeded random weights, saved by ``YOLO.save``."""
    generator = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    yolo = ultralytics.YOLO(yaml)
    model = yolo.model
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in norms:
        bn.weight.data.uniform_(0.5, 1.5, generator=generator)
        bn.bias.data.uniform_(-0.2, 0.2, generator=generator)
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average: the statistics of the batch below
    detect = model.model[-1]
    for branch in detect.cv3:
        branch[-1].bias.data.normal_(-3.0, 1.0, generator=generator)
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, SIZE, SIZE, generator=generator))
    for bn in norms:
        bn.momentum = 0.1
    model.eval()
    yolo.save(path)
    return path


def our_graph(checkpoint: Path, size: int = SIZE) -> Graph:
    graph = import_checkpoint(checkpoint).model.graph
    graph.net.width = graph.net.height = size
    graph.infer()
    return graph


def photo(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 3, SIZE, SIZE), dtype=np.float32)


@pytest.fixture(scope="module")
def ultralytics() -> ModuleType:
    return ultralytics_or_skip()


@pytest.fixture(scope="module")
def yolov8n(ultralytics: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(ultralytics, "yolov8n.yaml", tmp_path_factory.mktemp("v8n") / "yolov8n.pt")


def reference_outputs(ultralytics: ModuleType, checkpoint: Path, x: np.ndarray) -> tuple:
    """ultralytics' inference output: decoded (B, 4 + nc, A) and the raw box / class logits (B, ·, A)."""
    model = ultralytics.YOLO(checkpoint).model.float().eval()
    with torch.no_grad():
        decoded, raw = model(torch.from_numpy(x))
    return decoded.numpy(), raw["boxes"].numpy(), raw["scores"].numpy()


def our_outputs(graph: Graph, x: np.ndarray) -> tuple:
    """Ours: the [anchor_free] output and the per-level raw maps (its inputs) split as ultralytics' dict."""
    from cfgsurgeon.emit.torch import to_torch

    head = graph.layers[-1]
    assert isinstance(head, L.AnchorFree)
    levels = [node.index for node in head.inputs]
    with torch.no_grad():
        *maps, decoded = (t.numpy() for t in to_torch(graph)(torch.from_numpy(x), keep=[*levels, head.index]))
    flat = np.concatenate([m.reshape(m.shape[0], m.shape[1], -1) for m in maps], axis=2)
    return decoded[..., 0], flat[:, : head.box_channels], flat[:, head.box_channels :]


def our_boxes(graph: Graph, decoded: np.ndarray) -> list[tuple[int, tuple[float, ...]]]:
    """(class, x1, y1, x2, y2 in input pixels) after our decode and darknet's per-class NMS."""
    head = graph.layers[-1]
    rows = decode(head, decoded, (graph.net.height, graph.net.width))
    probs = np.where(rows[:, 5:] > CONF, rows[:, 5:], 0).astype(np.float32)
    probs = nms_sort(rows[:, :4].astype(np.float32), probs, IOU)
    found = []
    for cell, k in zip(*np.nonzero(probs), strict=True):
        x, y, w, h = rows[cell, :4] * SIZE
        found.append((int(k), (x - w / 2, y - h / 2, x + w / 2, y + h / 2)))
    return sorted(found)


def ultralytics_boxes(decoded: np.ndarray) -> list[tuple[int, tuple[float, ...]]]:
    """ultralytics' own NMS (every class above the threshold, as darknet keeps them; per class)."""
    from ultralytics.utils.nms import non_max_suppression

    kept = non_max_suppression(torch.from_numpy(decoded), CONF, IOU, multi_label=True, max_det=30000)[0]
    return sorted((int(row[5]), tuple(float(v) for v in row[:4])) for row in kept.numpy())


def check_against_ultralytics(ultralytics: ModuleType, checkpoint: Path, label: str) -> Graph:
    x = photo()
    decoded, boxes, scores = reference_outputs(ultralytics, checkpoint, x)
    graph = our_graph(checkpoint)
    ours = our_outputs(graph, x)
    errors = [relative_error(a, b) for a, b in zip(ours, (decoded, boxes, scores), strict=True)]
    REPORT[f"{label} vs ultralytics (decoded, box logits, class logits)"] = ", ".join(
        f"{e:.1e}" for e in errors
    )
    assert max(errors) <= TOLERANCE, errors
    theirs, found = ultralytics_boxes(decoded), our_boxes(graph, ours[0])
    assert 0 < len(theirs) < 1000, len(theirs)
    assert [k for k, _ in found] == [k for k, _ in theirs]
    # the same boxes: each coordinate within the forward's 1e-4 relative (a box edge at 80 px moved 0.005 px
    # when torch ran on another thread count), or within 1/100 px scaled to the input, whichever is larger
    boxes = np.array([b for _, b in found]), np.array([b for _, b in theirs])
    np.testing.assert_allclose(*boxes, rtol=TOLERANCE, atol=1e-2 * SIZE / 640)
    return graph


def test_yolov8n_matches_ultralytics(ultralytics: ModuleType, yolov8n: Path) -> None:
    graph = check_against_ultralytics(ultralytics, yolov8n, "yolov8n")
    assert sum(isinstance(layer, L.AnchorFree) for layer in graph.layers) == 1
    assert graph.layers[-1].strides == [8, 16, 32]


def test_a_checkpoint_saved_after_fuse_matches_ultralytics(
    ultralytics: ModuleType, yolov8n: Path, tmp_path: Path
) -> None:
    """``predict`` fuses the model it runs (BN into the conv's bias); ``YOLO.save`` then writes it fused."""
    yolo = ultralytics.YOLO(yolov8n)
    yolo.model.fuse(verbose=False)
    fused = tmp_path / "fused.pt"
    yolo.save(fused)
    graph = check_against_ultralytics(ultralytics, fused, "yolov8n saved fused")
    assert not any(isinstance(layer, L.Convolutional) and layer.batch_normalize for layer in graph.layers)


@pytest.mark.slow
def test_yolov8s_matches_ultralytics(ultralytics: ModuleType, tmp_path: Path) -> None:
    checkpoint = build_checkpoint(ultralytics, "yolov8s.yaml", tmp_path / "yolov8s.pt")
    check_against_ultralytics(ultralytics, checkpoint, "yolov8s")


# TF1 and Keras convert the whole model in tens of seconds: slow (tests/test_conformance.py runs both ops in
# every backend by default).
@pytest.mark.parametrize(
    "backend",
    [
        "onnxruntime",
        "openvino",
        pytest.param("tf1", marks=pytest.mark.slow),
        pytest.param("keras", marks=pytest.mark.slow),
    ],
)
def test_backends_match_torch_on_yolov8n(yolov8n: Path, backend: str) -> None:
    graph = our_graph(yolov8n, size=128)
    x = np.random.default_rng(2).random((1, 3, 128, 128), dtype=np.float32)
    (reference,) = make_runner(graph, "torch")(x)
    (ours,) = make_runner(graph, backend)(x)
    error = relative_error(ours, reference)
    REPORT[f"yolov8n {backend} vs torch"] = f"{error:.1e}"
    assert error <= TOLERANCE


def test_import_command_and_api_write_identical_files(yolov8n: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cfgsurgeon.cli import main

    result = CliRunner().invoke(main, ["import", "--checkpoint", str(yolov8n), "-o", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    saved = import_checkpoint(yolov8n).save(tmp_path / "api")
    assert result.output == str(saved).replace(str(tmp_path / "api"), str(tmp_path / "cli")) + "\n"
    assert result.output.startswith(f"read {yolov8n}: ultralytics.nn.tasks.DetectionModel (depth 0.33")
    for suffix in ("cfg", "weights", "names"):
        a, b = (tmp_path / name / f"yolov8n.{suffix}" for name in ("cli", "api"))
        assert a.read_bytes() == b.read_bytes()
    cfg = (tmp_path / "cli" / "yolov8n.cfg").read_text()
    assert "[anchor_free]\nlayers=85,94,103\nclasses=80\nreg_max=16\nstrides=8,16,32\n" in cfg
    assert cfg.count("groups=2\ngroup_id=1\n") == 8  # one per C2f


# -- refusals ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("yolov8n-seg.yaml", r"a segmentation model \(ultralytics\.nn\.tasks\.SegmentationModel\)"),
        pytest.param(
            "yolov8n-pose.yaml", r"a pose model \(ultralytics\.nn\.tasks\.PoseModel\)", marks=pytest.mark.slow
        ),
        (
            "yolo11n.yaml",
            r"module model\.\d+(\.\w+)* is a ultralytics\.nn\.modules\.\w+\.\w+, not in the YOLOv8",
        ),
    ],
)
def test_other_ultralytics_models_are_one_line(
    ultralytics: ModuleType, tmp_path: Path, yaml: str, message: str
) -> None:
    checkpoint = tmp_path / "other.pt"
    ultralytics.YOLO(yaml).save(checkpoint)
    with pytest.raises(UsageError, match=message) as caught:
        import_checkpoint(checkpoint, warn=quiet)
    assert "\n" not in str(caught.value)


def test_an_unknown_module_in_the_yaml_is_one_line(yolov8n: Path, tmp_path: Path) -> None:
    """The yaml naming a module outside the table (a checkpoint edited by hand: the pickle's own modules are
    the same, only model.yaml differs)."""
    edited = tmp_path / "edited.pt"
    with zipfile.ZipFile(yolov8n) as source, zipfile.ZipFile(edited, "w") as out:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("data.pkl"):
                assert data.count(b"X\x03\x00\x00\x00C2f") >= 1  # protocol 2's BINUNICODE of the yaml's name
                data = data.replace(b"X\x03\x00\x00\x00C2f", b"X\x03\x00\x00\x00C3x", 1)
            out.writestr(item, data)
    with pytest.raises(UsageError, match=r"yaml layer \d+ is a C3x, not a YOLOv8 module this tool maps"):
        import_checkpoint(edited, warn=quiet)


# -- slim pruning of the imported yolov8n --------------------------------------------------------------------
def test_slim_pruning_compact_equals_masked_and_compensated(yolov8n: Path) -> None:
    """The compact model equals the unpruned one with the removed channels switched off by hand (γ = 0) and
    their constants padded as folded (test_prune_yolov5's reference), on every level's raw map and the
    decoded output; the C2f halves, bottleneck shortcuts and head branches are all pruned."""
    import functools

    from test_prune import check_kept_channels, masked_reference, outputs, rel_error, torch_model
    from test_prune_yolov5 import _pad_constants_then_conv

    from cfgsurgeon.surgery.prune import prune

    graph = our_graph(yolov8n, size=128)
    result = prune(graph, "slim", percent=0.2)
    removed = check_kept_channels(result)
    head = graph.layers[-1]
    keep = [*(node.index for node in head.inputs), head.index]
    x = torch.from_numpy(np.random.default_rng(3).random((1, 3, 128, 128)))
    compact = outputs(result.pruned, x, keep=keep)
    model = torch_model(masked_reference(result.analysis.graph, removed))
    for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and any(m.padding)):
        conv.forward = functools.partial(_pad_constants_then_conv, conv)
    with torch.inference_mode():
        reference = [y.numpy() for y in model(x, keep=keep)]
    error = rel_error(compact, reference)
    params = f"{graph.params:,} → {result.pruned.params:,} params"
    REPORT["yolov8n slim 0.2 compact vs masked+compensated (128, random input)"] = f"{error:.1e} ({params})"
    assert error <= TOLERANCE
    lost = [graph.layers[index] for index, channels in removed.items() if channels]
    c2f_split = [layer.index for layer in lost if _split_by_grouped_route(graph, layer)]
    branches = [layer.index for layer in lost if _feeds_head_output_conv(graph, layer)]
    assert c2f_split and branches, (c2f_split, branches)
    for index in c2f_split:  # the halves go in pairs: channel k and k + half
        half = graph.layers[index].filters // 2
        first = {k for k in removed[index] if k < half}
        assert set(removed[index]) == first | {k + half for k in first}


def _split_by_grouped_route(graph: Graph, layer: L.Layer) -> bool:
    """Whether ``layer`` is a C2f's cv1 (a ``[route] groups=2`` takes its second half)."""
    return any(isinstance(r, L.Route) and r.groups == 2 and layer in r.inputs for r in graph.layers)


def _feeds_head_output_conv(graph: Graph, layer: L.Layer) -> bool:
    """Whether ``layer`` is the second conv of a Detect branch (its consumer is a 1×1 conv with a bias)."""
    consumers = [other for other in graph.layers if layer in other.inputs]
    return any(isinstance(c, L.Convolutional) and not c.batch_normalize for c in consumers)
