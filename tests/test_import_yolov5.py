"""``cfgsurgeon import`` of YOLOv5 checkpoints: the safe reader, the mapping onto darknet layers, the files.

The mapping is proved against two implementations that share nothing with our cfg path:

* OpenCV's darknet importer runs the written cfg/weights (per head, ≤ 1e-4 relative vs our torch backend);
* the checkpoint itself, read by torch's own restricted unpickler (``weights_only=True``) into the small
  YOLOv5 modules written below from the repository's definitions (Conv, Bottleneck, C3, SPPF, Concat,
  Detect), whose forward must give the same head outputs and decoded boxes as the imported model.

The malicious checkpoint proves that reading never runs pickled code: its pickle writes a marker file when
unpickled normally (checked), and reading it with our reader leaves no marker and fails with one line.
"""

from __future__ import annotations

import pickle
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS_DIR, REPORT, SHARED_MARK, ZOO

from cfgsurgeon import CfgSurgeonError, UsageError
from cfgsurgeon import layers as L
from cfgsurgeon.ultralytics.pickled import read_pickled
from cfgsurgeon.ultralytics.yolov5 import read_checkpoint

torch = pytest.importorskip("torch")

YOLOV5N = MODELS_DIR / "yolov5n.pt"
TOLERANCE = 1e-4


def need_yolov5n() -> Path:
    if not YOLOV5N.is_file():
        pytest.skip(f"needs {YOLOV5N} (the read-only shared folder)")
    return YOLOV5N


# -- checkpoints made here, with classes at the names the real repositories use ------------------------------
def fake_class(monkeypatch: pytest.MonkeyPatch, qualified: str, base: type = object) -> type:
    """A class importable (for pickling) as ``qualified``, e.g. ``models.yolo.ClassificationModel``."""
    module_name, name = qualified.rsplit(".", 1)
    parts = module_name.split(".")
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth])
        if prefix not in sys.modules:
            monkeypatch.setitem(sys.modules, prefix, types.ModuleType(prefix))
    cls = type(name, (base,), {"__module__": module_name})
    monkeypatch.setattr(sys.modules[module_name], name, cls, raising=False)
    return cls


class WritesMarker:
    """Unpickled normally, this runs ``exec`` of code that writes a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pickled code ran')",))


def test_malicious_pickle_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"epoch": 1, "model": WritesMarker(marker), "names": ["a"]}, evil)
    with pytest.raises(UsageError, match=r"evil\.pt: the model is a __builtin__\.exec, expected") as error:
        read_checkpoint(evil)
    assert "\n" not in str(error.value)
    assert not marker.exists()
    with zipfile.ZipFile(evil) as archive:  # the file truly is malicious: plain unpickling runs its code
        pickle.loads(archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl"))))
    assert marker.read_text() == "pickled code ran"


def test_malicious_global_deep_inside_a_checkpoint_stays_inert(tmp_path: Path, monkeypatch) -> None:
    marker = tmp_path / "marker"
    model_class = fake_class(monkeypatch, "models.yolo.Model", torch.nn.Module)
    model = model_class()
    model.yaml = {"nc": 1, "payload": WritesMarker(marker)}
    path = tmp_path / "deep.pt"
    torch.save({"model": model}, path)
    tree = read_pickled(path)
    assert tree["model"].yaml["payload"].qualified == "__builtin__.exec"
    assert not marker.exists()
    with pytest.raises(UsageError, match="Detect"):
        read_checkpoint(path)
    assert not marker.exists()


def test_state_in_the_file_cannot_rename_a_class(tmp_path: Path, monkeypatch) -> None:
    model = fake_class(monkeypatch, "mytools.Net", torch.nn.Module)()
    model.qualified = model.pickled_name = model.class_name = "models.yolo.Model"
    path = tmp_path / "spoof.pt"
    torch.save({"model": model}, path)
    with pytest.raises(UsageError, match=r"the model is a mytools\.Net, expected"):
        read_checkpoint(path)


def test_numpy_values_are_read_only_when_numeric(tmp_path: Path) -> None:
    numeric, objects = tmp_path / "numeric.pt", tmp_path / "objects.pt"
    torch.save({"fitness": np.array([[0.25, 0.5]]), "seen": np.int64(7)}, numeric)
    tree = read_pickled(numeric)
    assert tree["fitness"].array.tolist() == [[0.25, 0.5]] and tree["seen"] == 7
    torch.save({"names": np.array(["a", None], dtype=object)}, objects)
    with pytest.raises(
        UsageError, match=r"objects\.pt: damaged PyTorch checkpoint \(a numpy array of dtype 'O8'"
    ):
        read_pickled(objects)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("hello\n")
    with pytest.raises(
        UsageError, match=r"notes\.pt: not a PyTorch checkpoint: .*neither a zip nor a pickle"
    ):
        read_checkpoint(text)
    with pytest.raises(UsageError, match=r"missing\.pt: no such checkpoint file"):
        read_checkpoint(tmp_path / "missing.pt")


def test_legacy_pickle_file(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save({"model": None}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UsageError, match=r"legacy\.pt: .*bare pickle \(torch's legacy format"):
        read_checkpoint(path)


@SHARED_MARK
def test_truncated_zip(tmp_path: Path) -> None:
    data = need_yolov5n().read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match=r"cut\.pt: not a PyTorch checkpoint: .*damaged or truncated zip"):
        read_checkpoint(path)


def test_damaged_storage(tmp_path: Path) -> None:
    """A zip whose directory is intact but whose tensor data member is missing."""
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch.save({"model": torch.zeros(3)}, good)
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bad, "w") as target:
        for item in source.infolist():
            if "/data/" not in item.filename:
                target.writestr(item, source.read(item))
    with pytest.raises(
        UsageError, match=r"bad\.pt: damaged PyTorch checkpoint \(storage data/0 is missing\)"
    ):
        read_checkpoint(bad)


def test_plain_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "weights_only.pt"
    torch.save({"model.0.conv.weight": torch.zeros(2, 3, 1, 1), "model.0.bn.weight": torch.ones(2)}, path)
    with pytest.raises(UsageError, match=r"a plain state_dict \(2 tensors\) without the architecture"):
        read_checkpoint(path)


@pytest.mark.parametrize(
    ("qualified", "message"),
    [
        ("models.yolo.ClassificationModel", "a classification model"),
        ("models.yolo.SegmentationModel", "a segmentation model"),
        ("ultralytics.nn.tasks.DetectionModel", "an ultralytics-package model"),
        ("mytools.Net", r"the model is a mytools\.Net, expected models\.yolo\.Model"),
    ],
)
def test_other_models_are_refused(tmp_path: Path, monkeypatch, qualified: str, message: str) -> None:
    model = fake_class(monkeypatch, qualified, torch.nn.Module)()
    path = tmp_path / "other.pt"
    torch.save({"model": model, "epoch": 3}, path)
    with pytest.raises(UsageError, match=message):
        read_checkpoint(path)


def test_unknown_module_is_named(tmp_path: Path, monkeypatch) -> None:
    model = fake_class(monkeypatch, "models.yolo.Model", torch.nn.Module)()
    ghost = fake_class(monkeypatch, "models.common.GhostConv", torch.nn.Module)
    model.yaml = {"nc": 1}
    model.model = torch.nn.Sequential(ghost())
    path = tmp_path / "ghost.pt"
    torch.save({"model": model}, path)
    with pytest.raises(
        UsageError, match=r"module model\.0 is a models\.common\.GhostConv, not in the YOLOv5"
    ):
        read_checkpoint(path)


def test_segment_head_in_the_yaml_is_refused(tmp_path: Path) -> None:
    from cfgsurgeon.ultralytics.yolov5 import expand_yaml

    yaml = {"nc": 1, "depth_multiple": 1, "width_multiple": 1, "anchors": [[10, 13]]}
    yaml |= {"backbone": [[-1, 1, "Conv", [16, 3, 2]]], "head": [[[0], 1, "Segment", ["nc", "anchors"]]]}
    with pytest.raises(UsageError, match=r"y\.pt: a segmentation model \(Segment head\)"):
        expand_yaml(yaml, Path("y.pt"))


def test_malformed_yaml_rows_are_named() -> None:
    from cfgsurgeon.ultralytics.yolov5 import expand_yaml

    yaml = {"nc": 1, "depth_multiple": 1, "width_multiple": 1, "anchors": [[10, 13]]}
    yaml |= {"backbone": [[-1, 1, "Conv", [16, 3, 2]], [-1, "Conv", [16]]], "head": []}
    with pytest.raises(UsageError, match=r"y\.pt: the checkpoint's model\.yaml layer 1 is malformed"):
        expand_yaml(yaml, Path("y.pt"))
    with pytest.raises(UsageError, match=r"y\.pt: the checkpoint's model\.yaml lacks a YOLOv5 entry"):
        expand_yaml({"nc": 1}, Path("y.pt"))


# -- the real checkpoint ------------------------------------------------------------------------------------
@SHARED_MARK
def test_reader_takes_architecture_names_and_fp32_tensors() -> None:
    checkpoint = read_checkpoint(need_yolov5n())
    assert checkpoint.model_class == "models.yolo.Model"
    assert checkpoint.yaml["width_multiple"] == 0.25 and len(checkpoint.names) == 80
    assert checkpoint.names[:3] == ["person", "bicycle", "car"]
    # the v5 yaml's anchors in pixels, recovered from the grid-unit buffer × stride
    assert checkpoint.anchors == [[float(v) for v in row] for row in checkpoint.yaml["anchors"]]
    assert checkpoint.state["model.0.conv.weight"].shape == (16, 3, 6, 6)


@pytest.fixture(scope="module")
def imported():
    from cfgsurgeon.api.importing import import_checkpoint

    return import_checkpoint(need_yolov5n())


def photo_input(graph, name: str = "dog.jpg") -> np.ndarray:
    from cfgsurgeon.images import load_image, network_input

    return network_input(graph, load_image(ZOO / "images" / name))[None].astype(np.float32)


def head_convs(graph) -> list[int]:
    """The 1×1 logistic conv feeding each [yolo]: YOLOv5's Detect output after its sigmoid."""
    return [layer.index - 1 for layer in graph.layers if isinstance(layer, L.Yolo)]


@SHARED_MARK
def test_darknet_layers_follow_the_yaml(imported) -> None:
    layers = imported.model.layers
    yolos = [layer for layer in layers if isinstance(layer, L.Yolo)]
    assert [(y.new_coords, y.scale_x_y, y.classes, y.mask) for y in yolos] == [
        (1, 2.0, 80, [0, 1, 2]),
        (1, 2.0, 80, [3, 4, 5]),
        (1, 2.0, 80, [6, 7, 8]),
    ]
    assert yolos[0].anchors == [10, 13, 16, 30, 33, 23, 30, 61, 62, 45, 59, 119, 116, 90, 156, 198, 373, 326]
    assert [layer.out_shape[1:] for layer in yolos] == [(80, 80), (40, 40), (20, 20)]
    convs = [layer for layer in layers if isinstance(layer, L.Convolutional)]
    # counted by hand from the yaml: depth 0.33 turns the C3 repeats 3, 6, 9, 3 / 3, 3, 3, 3 into 1, 2, 3, 1 /
    # 1, 1, 1, 1 bottlenecks; 5 + 4 plain Convs, 8 C3 × 3, 11 bottlenecks × 2, SPPF 2 = 57 SiLU convs; only
    # the backbone's 7 bottlenecks add their input (the head's C3s say shortcut=False)
    assert sum(conv.activation == "swish" for conv in convs) == 57
    assert [conv.activation for conv in convs if not conv.batch_normalize] == ["logistic"] * 3
    assert sum(isinstance(layer, L.Shortcut) for layer in layers) == 7
    assert sum(isinstance(layer, L.MaxPool) for layer in layers) == 3


@SHARED_MARK
def test_heads_match_opencv(imported, tmp_path: Path) -> None:
    """Our torch backend and OpenCV's darknet importer on the written cfg/weights, on a real photo at 640."""
    pytest.importorskip("cv2")
    from test_torch_vs_opencv import opencv_blob_names, opencv_net, relative_error, write_for_opencv

    from cfgsurgeon.emit.torch import to_torch

    graph = imported.model.graph
    net = opencv_net(*write_for_opencv(graph, tmp_path))
    names = opencv_blob_names(net, graph)
    heads = head_convs(graph)
    x = photo_input(graph)
    net.setInput(x)
    theirs = net.forward([names[i] for i in heads])
    with torch.no_grad():
        ours = to_torch(graph)(torch.from_numpy(x), keep=heads)
    errors = [relative_error(o.numpy().reshape(-1), t.reshape(-1)) for o, t in zip(ours, theirs, strict=True)]
    REPORT["yolov5n import vs OpenCV (per head, dog.jpg at 640)"] = ", ".join(f"{e:.1e}" for e in errors)
    assert max(errors) <= TOLERANCE, errors


# -- an independent YOLOv5: torch's own restricted unpickler and the repository's forward, written here ------
def _conv(self, x):
    return self.act(self.bn(self.conv(x)))


def _bottleneck(self, x):
    y = self.cv2(self.cv1(x))
    return x + y if self.add else y


def _c3(self, x):
    return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


def _sppf(self, x):
    x = self.cv1(x)
    y1 = self.m(x)
    y2 = self.m(y1)
    return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


def _spp(self, x):
    x = self.cv1(x)
    return self.cv2(torch.cat([x] + [pool(x) for pool in self.m], 1))


def _focus(self, x):
    phases = [x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]]
    return self.conv(torch.cat(phases, 1))


def _concat(self, xs):
    return torch.cat(xs, self.d)


def _detect(self, xs):
    return [conv(x) for conv, x in zip(self.m, xs, strict=True)]


def _model(self, x):
    outputs = []
    for module in self.model:
        if module.f != -1:
            x = (
                outputs[module.f]
                if isinstance(module.f, int)
                else [x if j == -1 else outputs[j] for j in module.f]
            )
        x = module(x)
        outputs.append(x)
    return x


YOLOV5_FORWARDS = {
    "models.common.Conv": _conv,
    "models.common.Bottleneck": _bottleneck,
    "models.common.C3": _c3,
    "models.common.SPPF": _sppf,
    "models.common.SPP": _spp,
    "models.common.Focus": _focus,
    "models.common.Concat": _concat,
    "models.yolo.Detect": _detect,
    "models.yolo.Model": _model,
}


def stand_ins() -> dict[str, type]:
    """The repository's classes by qualified name, with the forwards above."""
    classes = {}
    for qualified, forward in YOLOV5_FORWARDS.items():
        module, name = qualified.rsplit(".", 1)
        classes[qualified] = type(name, (torch.nn.Module,), {"__module__": module, "forward": forward})
    return classes


def load_with_torch(path: Path):
    """The checkpoint as torch modules: ``torch.load(weights_only=True)`` with the repository's classes
    stood in by the forwards above and ``torch.nn``'s own layers."""
    core = getattr(np, "_core", None) or np.core
    nn = torch.nn
    allowed = [
        *stand_ins().values(),
        nn.Conv2d,
        nn.BatchNorm2d,
        nn.SiLU,
        nn.MaxPool2d,
        nn.Upsample,
        nn.Sequential,
    ]
    allowed += [nn.ModuleList, (set, "__builtin__.set"), np.ndarray, np.dtype, type(np.dtype("f8"))]
    allowed += [(core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
    with torch.serialization.safe_globals(allowed):
        checkpoint = torch.load(path, weights_only=True)
    model = checkpoint["model"].float().eval()
    for module in model.modules():
        if isinstance(module, nn.Upsample):
            module.recompute_scale_factor = None  # an attribute newer torch reads, absent from old pickles
    return model


def v5_decode(detect, raw: list) -> list[np.ndarray]:
    """YOLOv5's Detect inference: per level rows (row, column, anchor) of x, y, w, h in pixels, objectness,
    class scores × objectness."""
    rows = []
    for level, output in enumerate(raw):
        _, _, ny, nx = output.shape
        y = output.sigmoid().view(detect.na, detect.no, ny, nx).permute(2, 3, 0, 1).double()
        grid_y, grid_x = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
        grid = torch.stack((grid_x, grid_y), -1)[:, :, None].double()
        stride = float(detect.stride[level])
        xy = (y[..., :2] * 2 - 0.5 + grid) * stride
        wh = (y[..., 2:4] * 2) ** 2 * (detect.anchors[level].double() * stride)
        probs = y[..., 5:] * y[..., 4:5]
        rows.append(torch.cat((xy, wh, y[..., 4:5], probs), -1).reshape(-1, detect.no).numpy())
    return rows


@SHARED_MARK
def test_matches_the_checkpoints_own_forward(imported) -> None:
    """The checkpoint's tensors through YOLOv5's forward (no cfg involved) against the imported darknet
    model, on a real photo at 320: per head the sigmoid outputs and the decoded boxes."""
    from test_torch_vs_opencv import relative_error

    from cfgsurgeon.emit.torch import to_torch
    from cfgsurgeon.postprocess import decode

    graph = imported.model.copy().graph
    graph.net.width = graph.net.height = 320
    graph.infer()
    x = photo_input(graph, "horses.jpg")
    reference = load_with_torch(need_yolov5n())
    heads = head_convs(graph)
    with torch.no_grad():
        raw = reference(torch.from_numpy(x))
        ours = to_torch(graph)(torch.from_numpy(x), keep=heads + [i + 1 for i in heads])
    theirs_rows = v5_decode(reference.model[-1], raw)
    errors, box_errors = [], []
    for level, index in enumerate(heads):
        errors.append(relative_error(ours[level].numpy(), raw[level].sigmoid().numpy()))
        rows = decode(graph.layers[index + 1], ours[len(heads) + level][0].numpy(), (320, 320))
        rows[:, :4] *= 320
        box_errors.append(relative_error(rows, theirs_rows[level]))
    REPORT["yolov5n import vs YOLOv5's forward (per head, horses.jpg at 320)"] = ", ".join(
        f"{e:.1e}/{b:.1e}" for e, b in zip(errors, box_errors, strict=True)
    )
    assert max(errors) <= TOLERANCE and max(box_errors) <= TOLERANCE, (errors, box_errors)


# -- the command and the API ---------------------------------------------------------------------------------
@SHARED_MARK
def test_import_command_writes_identical_files_twice(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cfgsurgeon.api import import_checkpoint
    from cfgsurgeon.cli import main

    runs = []
    for name in ("first", "second"):
        result = CliRunner().invoke(
            main, ["import", "--checkpoint", str(need_yolov5n()), "-o", str(tmp_path / name)]
        )
        assert result.exit_code == 0, result.output
        runs.append(result.output)
    files = ("yolov5n.cfg", "yolov5n.weights", "yolov5n.names")
    for file in files:
        assert (tmp_path / "first" / file).read_bytes() == (tmp_path / "second" / file).read_bytes(), file
    expected = str(import_checkpoint(YOLOV5N).save(tmp_path / "api")).replace(str(tmp_path / "api"), "{out}")
    assert runs[0] == expected.replace("{out}", str(tmp_path / "first")) + "\n"
    names = (tmp_path / "first" / "yolov5n.names").read_text().splitlines()
    # YOLOv5's COCO names (darknet's coco.names says "motorbike", "aeroplane", "sofa", …)
    assert (len(names), names[0], names[3], names[-1]) == (80, "person", "motorcycle", "toothbrush")


def test_import_command_error_is_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cfgsurgeon.cli import main

    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"PK\x03\x04 not really")
    result = CliRunner().invoke(main, ["import", "--checkpoint", str(bogus), "-o", str(tmp_path)])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        f"Error: {bogus}: not a PyTorch checkpoint: expected a torch.save zip, found a damaged or "
        "truncated zip"
    ]


@SHARED_MARK
def test_model_load_points_to_import() -> None:
    from cfgsurgeon import Model

    with pytest.raises(
        UsageError, match=r"YOLOv5/ultralytics model checkpoint: .*`cfgsurgeon import --checkpoint"
    ):
        Model.load(None, need_yolov5n())


# -- what yolov5n does not use: Focus (older releases), SPP, C3 with shortcuts, two Detect levels -----------
class Builder:
    """Modules of the repository's classes (stand-ins importable under their names, so torch.save pickles
    them by those names) with seeded random weights and BN statistics."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.classes = stand_ins()
        for qualified, cls in self.classes.items():
            module_name = qualified.rsplit(".", 1)[0]
            for name in ("models", module_name):
                if not getattr(sys.modules.get(name), "stand_in", False):
                    stand_in = types.ModuleType(name)
                    stand_in.stand_in = True
                    monkeypatch.setitem(sys.modules, name, stand_in)
            setattr(sys.modules[module_name], cls.__name__, cls)
        self.generator = torch.Generator().manual_seed(0)

    def new(self, name: str, **children) -> torch.nn.Module:
        module = self.classes[name]()
        for key, value in children.items():
            setattr(module, key, value)
        return module

    def rand(self, *shape: int, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=self.generator)

    def conv(self, c1: int, c2: int, k: int = 1, s: int = 1) -> torch.nn.Module:
        conv = torch.nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        conv.weight.data = self.rand(c2, c1, k, k) / (c1 * k * k) ** 0.5
        bn = torch.nn.BatchNorm2d(c2, eps=1e-3)
        bn.weight.data, bn.bias.data = self.rand(c2, low=0.5, high=1.5), self.rand(c2, low=-0.5, high=0.5)
        bn.running_mean, bn.running_var = self.rand(c2, low=-0.2, high=0.2), self.rand(c2, low=0.5, high=1.5)
        return self.new("models.common.Conv", conv=conv, bn=bn, act=torch.nn.SiLU())

    def bottleneck(self, c: int, shortcut: bool) -> torch.nn.Module:
        return self.new("models.common.Bottleneck", cv1=self.conv(c, c), cv2=self.conv(c, c, 3), add=shortcut)

    def c3(self, c1: int, c2: int, shortcut: bool) -> torch.nn.Module:
        hidden = c2 // 2
        m = torch.nn.Sequential(self.bottleneck(hidden, shortcut))
        cv1, cv2, cv3 = self.conv(c1, hidden), self.conv(c1, hidden), self.conv(2 * hidden, c2)
        return self.new("models.common.C3", cv1=cv1, cv2=cv2, cv3=cv3, m=m)

    def at(self, module: torch.nn.Module, index: int, origin) -> torch.nn.Module:
        module.i, module.f, module.type = index, origin, type(module).__module__ + "." + type(module).__name__
        return module


def tiny_v5(builder: Builder) -> torch.nn.Module:
    """Written by hand from the yaml below (width 0.25: 64 → 16, …; depth 0.33: C3 n=3 → 1), independently
    of the importer's expansion of that yaml."""
    nc, anchors = 2, [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119]]
    yaml = {"nc": nc, "depth_multiple": 0.33, "width_multiple": 0.25, "anchors": anchors}
    yaml["backbone"] = [
        [-1, 1, "Focus", [64, 3]],
        [-1, 1, "Conv", [128, 3, 2]],
        [-1, 3, "C3", [128]],
        [-1, 1, "Conv", [256, 3, 2]],
        [-1, 1, "SPP", [256, [5, 9, 13]]],
    ]
    yaml["head"] = [
        [-1, 1, "Conv", [128, 1, 1]],
        [-1, 1, "nn.Upsample", ["None", 2, "nearest"]],
        [[-1, 2], 1, "Concat", [1]],
        [-1, 3, "C3", [128, False]],
        [[8, 5], 1, "Detect", ["nc", "anchors"]],
    ]
    b = builder
    pools = torch.nn.ModuleList(torch.nn.MaxPool2d(k, 1, k // 2) for k in (5, 9, 13))
    detect = b.new("models.yolo.Detect", nc=nc, no=nc + 5, na=3, nl=2)
    detect.m = torch.nn.ModuleList(torch.nn.Conv2d(c, 3 * (nc + 5), 1) for c in (32, 32))
    for conv in detect.m:
        conv.weight.data, conv.bias.data = b.rand(*conv.weight.shape) / 6, b.rand(*conv.bias.shape)
    detect.stride = torch.tensor([4.0, 8.0])
    detect.register_buffer(
        "anchors", torch.tensor(anchors).float().view(2, 3, 2) / detect.stride.view(-1, 1, 1)
    )
    layers = [
        b.at(b.new("models.common.Focus", conv=b.conv(12, 16, 3)), 0, -1),
        b.at(b.conv(16, 32, 3, 2), 1, -1),
        b.at(b.c3(32, 32, shortcut=True), 2, -1),
        b.at(b.conv(32, 64, 3, 2), 3, -1),
        b.at(b.new("models.common.SPP", cv1=b.conv(64, 32), cv2=b.conv(128, 64), m=pools), 4, -1),
        b.at(b.conv(64, 32), 5, -1),
        b.at(torch.nn.Upsample(None, 2, "nearest"), 6, -1),
        b.at(b.new("models.common.Concat", d=1), 7, [-1, 2]),
        b.at(b.c3(64, 32, shortcut=False), 8, -1),
        b.at(detect, 9, [8, 5]),
    ]
    return b.new(
        "models.yolo.Model", model=torch.nn.Sequential(*layers), yaml=yaml, names=["cat", "dog"]
    ).eval()


def test_focus_spp_and_shortcut_c3_match_yolov5s_forward(tmp_path: Path, monkeypatch) -> None:
    from test_torch_vs_opencv import relative_error

    from cfgsurgeon.api import import_checkpoint
    from cfgsurgeon.emit.torch import to_torch

    reference = tiny_v5(Builder(monkeypatch))
    path = tmp_path / "tiny.pt"
    torch.save({"epoch": -1, "model": reference.half()}, path)
    reference.float()
    imported = import_checkpoint(path)
    graph = imported.model.graph
    graph.net.width = graph.net.height = 64
    graph.infer()
    heads = head_convs(graph)
    kinds = {layer.header for layer in graph.layers}
    assert {"reorg3d", "maxpool", "shortcut", "upsample", "yolo"} <= kinds
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = [reference.model[0](x)] + [raw.sigmoid() for raw in reference(x)]
        ours = to_torch(graph)(x, keep=[1, *heads])  # 1: the conv after [reorg3d] = Focus' output
    assert [tuple(t.shape) for t in theirs[1:]] == [(1, 21, 16, 16), (1, 21, 8, 8)]
    errors = [relative_error(o.numpy(), t.numpy()) for o, t in zip(ours, theirs, strict=True)]
    assert max(errors) <= TOLERANCE, errors
    assert imported.names == ["cat", "dog"]


def test_a_conv_whose_geometry_differs_from_the_yaml_is_refused(tmp_path: Path, monkeypatch) -> None:
    from cfgsurgeon.api import import_checkpoint

    model = tiny_v5(Builder(monkeypatch))
    model.model[1].conv.stride = (1, 1)
    path = tmp_path / "edited.pt"
    torch.save({"model": model}, path)
    with pytest.raises(
        UsageError, match=r"edited\.pt: model\.1\.conv has stride \(1, 1\) \(yaml: \(2, 2\)\)"
    ):
        import_checkpoint(path)


def test_mutated_pickles_fail_as_one_line_errors(tmp_path: Path, monkeypatch) -> None:
    """Random byte changes in a checkpoint's data.pkl: importing either succeeds or is a one-line error."""
    import random

    from cfgsurgeon.api import import_checkpoint

    good = tmp_path / "good.pt"
    torch.save({"model": tiny_v5(Builder(monkeypatch)).half(), "best_fitness": np.array([0.5])}, good)
    with zipfile.ZipFile(good) as archive:
        members = {item.filename: archive.read(item) for item in archive.infolist()}
    pkl = next(name for name in members if name.endswith("data.pkl"))
    rng = random.Random(0)
    for trial in range(60):
        data = bytearray(members[pkl])
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path = tmp_path / f"mutated{trial}.pt"
        with zipfile.ZipFile(path, "w") as archive:
            for name, content in members.items():
                archive.writestr(name, bytes(data) if name == pkl else content)
        try:
            import_checkpoint(path)
        except CfgSurgeonError as error:  # what the command line shows as one line
            assert "\n" not in str(error)
