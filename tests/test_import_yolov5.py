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

import pytest
from conftest import MODELS_DIR, SHARED_MARK

from cfgsurgeon import UsageError
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
    assert type(tree["model"].yaml["payload"]).qualified == "__builtin__.exec"
    assert not marker.exists()
    with pytest.raises(UsageError, match="Detect"):
        read_checkpoint(path)
    assert not marker.exists()


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
