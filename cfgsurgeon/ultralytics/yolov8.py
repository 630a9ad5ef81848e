"""YOLOv8 (the ``ultralytics`` package's ``ultralytics.nn.tasks.DetectionModel``) as darknet layers plus
``[anchor_free]``, the cfg dialect's anchor-free head.

The architecture is the checkpoint's ``model.yaml``, expanded as ultralytics' ``parse_model`` expands it (the
yaml's ``scales[scale]`` or its multiples: depth on repeat counts, width times ``min(c2, max_channels)``
rounded up to multiples of 8); every module becomes darknet sections written as cfg text and parsed by our
own parser:

* ``Conv`` → ``[convolutional] batch_normalize=1`` with the module's activation (SiLU → ``swish``; an
  ``Identity``, e.g. SPPF's cv1 in ultralytics 8.4, → ``linear``); BN epsilon folded as for YOLOv5; a
  model saved after ``fuse()`` (BN already in the conv's bias) → ``[convolutional]`` with that bias;
* ``C2f`` → cv1, a ``[route] groups=2 group_id=1`` (the second half, which the bottlenecks chain on), the
  bottlenecks (3×3, 3×3, ``[shortcut]`` when they add), a ``[route]`` of cv1 (both halves, in order) and every
  bottleneck's output, cv2;
* ``SPPF`` → cv1, three chained 5×5 ``[maxpool]`` stride 1, a ``[route]`` of the four, cv2;
* ``Concat`` → ``[route]``; ``nn.Upsample`` (nearest) → ``[upsample]``;
* ``Detect`` (the v3/v5/v8 "legacy" head: two 3×3 Conv then a 1×1 conv with bias, for the box and the class
  branch of every level) → those convs, a ``[route]`` per level joining box then class logits (ultralytics'
  raw per-level output), and one ``[anchor_free]`` over the levels with ``reg_max`` and the strides, which
  decodes as Detect does in inference (DFL expectation, ``dist2bbox`` around cell centres, × stride,
  sigmoid classes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..ir import Graph, loads_cfg
from ..layers import Convolutional
from ..weights import WeightsHeader
from .pickled import Inert, read_pickled
from .yolov5 import (
    Activation,
    ConvSource,
    Module,
    Sections,
    _activation,
    _conv,
    _conv_tensors,
    _flatten,
    _make_divisible,
    _names,
    cfg_text,
    expand_rows,
)

MODEL_CLASS = "ultralytics.nn.tasks.DetectionModel"
OTHER_MODELS = {
    "SegmentationModel": "a segmentation model",
    "PoseModel": "a pose model",
    "OBBModel": "an oriented-box (OBB) model",
    "ClassificationModel": "a classification model",
    "WorldModel": "a YOLO-World model",
    "RTDETRDetectionModel": "an RT-DETR model",
}
CONV_LIKE = frozenset({"Conv", "C2f", "SPPF"})
OTHERS = frozenset({"Concat", "Upsample", "Detect"})
HEADS = {
    "Segment": "a segmentation head (Segment)",
    "Pose": "a pose head (Pose)",
    "OBB": "an oriented-box head (OBB)",
    "Classify": "a classification head (Classify)",
    "v10Detect": "a YOLOv10 head (v10Detect)",
}
DFL_WEIGHT = ".dfl.conv.weight"  # the fixed integral conv: arange(reg_max), which [anchor_free] computes
KNOWN_MODULES = frozenset(
    [f"ultralytics.nn.modules.conv.{name}" for name in ("Conv", "Concat")]
    + [f"ultralytics.nn.modules.block.{name}" for name in ("C2f", "Bottleneck", "SPPF", "DFL")]
    + ["ultralytics.nn.modules.head.Detect"]
    + [
        f"torch.nn.modules.{name}"
        for name in (
            "conv.Conv2d",
            "batchnorm.BatchNorm2d",
            "activation.SiLU",
            "linear.Identity",
            "pooling.MaxPool2d",
            "upsampling.Upsample",
            "container.Sequential",
            "container.ModuleList",
        )
    ]
)


@dataclass(frozen=True)
class Scaling:
    """``parse_model``'s multiples, the largest width before scaling, and the names arguments may use."""

    depth: float
    width: float
    max_channels: float
    names: dict[str, Any]
    image_channels: int


def scaling(yaml: dict, source: Path) -> Scaling:
    """The yaml's ``scales[scale]`` (or ``depth_multiple``/``width_multiple``) as ``parse_model`` reads it."""
    try:
        names = {"None": None, "nc": int(yaml["nc"]), "True": True, "False": False}
        scales, scale = yaml.get("scales"), yaml.get("scale")
        if scales:
            depth, width, max_channels = scales[scale or next(iter(scales))]
        else:
            depth, width, max_channels = yaml["depth_multiple"], yaml["width_multiple"], float("inf")
        return Scaling(float(depth), float(width), float(max_channels), names, int(yaml.get("channels", 3)))
    except (KeyError, TypeError, ValueError, StopIteration) as exc:
        raise UsageError(f"the checkpoint's model.yaml lacks a YOLOv8 entry ({exc!r})", source) from None


def expand_yaml(yaml: dict, source: Path) -> list[Module]:
    """The yaml's modules with depth and width applied as ultralytics' ``parse_model`` applies them."""
    scale = scaling(yaml, source)
    try:
        rows = list(yaml["backbone"]) + list(yaml["head"])
    except (KeyError, TypeError) as exc:
        raise UsageError(f"the checkpoint's model.yaml lacks a YOLOv8 entry ({exc!r})", source) from None
    return expand_rows(rows, source, lambda *row: _expand_row(*row, scale))


def _expand_row(
    index: int, origin: Any, repeats: int, kind: str, args: list, channels: list[int], scale: Scaling
) -> Module:
    kind = kind.rsplit(".", 1)[-1]
    if kind in HEADS:
        raise UsageError(f"yaml layer {index} is {HEADS[kind]}: only YOLOv8 detection models are imported")
    if kind not in CONV_LIKE | OTHERS:
        known = ", ".join(sorted(CONV_LIKE | OTHERS))
        raise UsageError(f"yaml layer {index} is a {kind}, not a YOLOv8 module this tool maps ({known})")
    inputs = tuple(origin if isinstance(origin, list) else [origin])
    absolute = tuple(index + f if f < 0 and index else f for f in inputs)
    c_in = [channels[f] if f >= 0 else scale.image_channels for f in absolute]
    args = [scale.names.get(arg, arg) if isinstance(arg, str) else arg for arg in args]
    repeats = max(round(repeats * scale.depth), 1) if repeats > 1 else repeats
    if kind in CONV_LIKE:
        c2 = _make_divisible(min(args[0], scale.max_channels) * scale.width, 8)
        args = [c_in[0], c2, *args[1:]]
        if kind == "C2f":
            args.insert(2, repeats)
            repeats = 1
    elif kind == "Detect":
        c2, args = 0, [int(args[0]), c_in]
    else:
        c2 = sum(c_in) if kind == "Concat" else c_in[0]
    channels.append(c2)
    return Module(index, absolute, repeats, kind, tuple(args))


# -- module → darknet sections ------------------------------------------------------------------------------
def _bottleneck(net: Sections, path: str, c: int, shortcut: bool, g: int, act: Activation) -> int:
    """C2f's Bottleneck(c, c, shortcut, g, k=(3, 3), e=1.0)."""
    start = net.last
    _conv(net, f"{path}.cv1", c, 3, 1, act=act)
    end = _conv(net, f"{path}.cv2", c, 3, 1, g=g, act=act)
    return net.add("shortcut", **{"from": start}, activation="linear") if shortcut else end


def _c2f(
    net: Sections,
    path: str,
    c1: int,
    c2: int,
    n: int = 1,
    shortcut: bool = False,
    g: int = 1,
    e: float = 0.5,
    *,
    act: Activation,
) -> int:
    hidden = int(c2 * e)
    both = _conv(net, f"{path}.cv1", 2 * hidden, act=act)
    net.add("route", layers=both, groups=2, group_id=1)
    ends = [both]
    for j in range(n):
        ends.append(_bottleneck(net, f"{path}.m.{j}", hidden, bool(shortcut), g, act))
    net.add("route", layers=ends)
    return _conv(net, f"{path}.cv2", c2, act=act)


def _sppf(net: Sections, path: str, c1: int, c2: int, k: int = 5, *, act: Activation) -> int:
    pooled = [_conv(net, f"{path}.cv1", c1 // 2, act=act)]
    for _ in range(3):
        pooled.append(net.add("maxpool", size=k, stride=1))
    net.add("route", layers=pooled)
    return _conv(net, f"{path}.cv2", c2, act=act)


def _conv_module(
    net: Sections,
    path: str,
    c1: int,
    c2: int,
    k: int = 1,
    s: int = 1,
    p: Any = None,
    g: int = 1,
    *rest: Any,
    act: Activation,
) -> int:
    if rest and rest[0] not in (1, True, False):
        raise UsageError(f"{path}: Conv with dilation {rest[0]} (only 1 maps here)")
    return _conv(net, path, c2, k, s, p, g, act=act)


BUILDERS = {"Conv": _conv_module, "C2f": _c2f, "SPPF": _sppf}


def _branch(net: Sections, path: str, source: int, hidden: int, outputs: int, act: Activation) -> int:
    """One Detect branch: two 3×3 Conv then the 1×1 output conv with its bias (no activation)."""
    net.start_from(source)
    _conv(net, f"{path}.0", hidden, 3, act=act)
    _conv(net, f"{path}.1", hidden, 3, act=act)
    return net.conv(ConvSource(f"{path}.2", batch_normalize=False), "linear", filters=outputs, size=1)


def _detect(net: Sections, module: Module, inputs: list[int], head: DetectHead, act: Activation) -> int:
    nc, c_in = module.args
    box_hidden = max(16, c_in[0] // 4, 4 * head.reg_max)
    class_hidden = max(c_in[0], min(nc, 100))
    levels = []
    for level, source in enumerate(inputs):
        path = f"model.{module.index}"
        box = _branch(net, f"{path}.cv2.{level}", source, box_hidden, 4 * head.reg_max, act)
        scores = _branch(net, f"{path}.cv3.{level}", source, class_hidden, nc, act)
        levels.append(net.add("route", layers=[box, scores]))
    return net.add("anchor_free", layers=levels, classes=nc, reg_max=head.reg_max, strides=head.strides)


def to_darknet(modules: list[Module], head: DetectHead, act: Activation, source: Path) -> Sections:
    """The darknet sections of the expanded modules."""
    net = Sections()
    ends: list[int] = []
    for module in modules:
        inputs = [ends[f] if f >= 0 else -1 for f in module.inputs]
        if module.kind == "Detect":
            ends.append(_detect(net, module, inputs, head, act))
            continue
        if inputs[0] >= 0 and module.kind != "Concat":
            net.start_from(inputs[0])
        if module.kind in CONV_LIKE:
            for j in range(module.repeats):
                path = f"model.{module.index}" + (f".{j}" if module.repeats > 1 else "")
                try:
                    BUILDERS[module.kind](net, path, *module.args, act=act)
                except UsageError as exc:
                    raise UsageError(exc.message, source) from None
            ends.append(net.last)
        elif module.kind == "Concat":
            if module.args[0] != 1:
                raise UsageError(
                    f"module {module.index}: Concat over dimension {module.args[0]} (only 1)", source
                )
            ends.append(net.add("route", layers=inputs))
        else:
            ends.append(_upsample(net, module, source))
    return net


def _upsample(net: Sections, module: Module, source: Path) -> int:
    size, scale, mode = (list(module.args) + [None, None, None])[:3]
    if size is not None or mode != "nearest" or not scale or float(scale) != int(scale):
        raise UsageError(
            f"module {module.index}: Upsample({size}, {scale}, {mode}): only an integer scale_factor with "
            "mode 'nearest' maps to [upsample]",
            source,
        )
    return net.add("upsample", stride=int(scale))


# -- the checkpoint -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DetectHead:
    """What the Detect module holds beyond its convolutions: DFL bins per side and the levels' strides."""

    reg_max: int
    strides: tuple[int, ...]


@dataclass
class Checkpoint:
    """What an ultralytics YOLOv8 checkpoint holds, read without running it (see :mod:`.pickled`)."""

    path: Path
    model_class: str
    yaml: dict
    names: list[str]
    head: DetectHead
    state: dict[str, np.ndarray]
    modules: dict[str, Inert]


def is_ultralytics_package(obj: Any) -> bool:
    """Whether an unpickled checkpoint holds a model of the ``ultralytics`` package (not the YOLOv5 repo)."""
    model = (obj.get("ema") or obj.get("model")) if isinstance(obj, dict) else None
    return isinstance(model, Inert) and model.qualified.startswith("ultralytics.")


def read_checkpoint(path: str | Path, obj: Any = None) -> Checkpoint:
    """Read an ultralytics YOLOv8 detection ``.pt`` (``obj``: its unpickled content, when already read)."""
    path = Path(path)
    obj = read_pickled(path) if obj is None else obj
    if not is_ultralytics_package(obj):
        raise UsageError("not an ultralytics-package checkpoint: no ultralytics model under 'model'", path)
    model = obj.get("ema") or obj.get("model")
    if model.class_name in OTHER_MODELS:
        raise UsageError(
            f"{OTHER_MODELS[model.class_name]} ({model.qualified}): only YOLOv8 detection models are "
            "imported",
            path,
        )
    if model.qualified != MODEL_CLASS:
        raise UsageError(f"the model is a {model.qualified}, expected {MODEL_CLASS}", path)
    yaml = model.__dict__.get("yaml")
    if not isinstance(yaml, dict):
        raise UsageError(
            f"the {model.qualified} carries no model.yaml dict: its architecture is unknown", path
        )
    modules: dict[str, Inert] = {}
    state: dict[str, np.ndarray] = {}
    _flatten(model, "", modules, state)
    for name, module in modules.items():
        if name and module.qualified not in KNOWN_MODULES:
            raise UsageError(f"module {name} is a {module.qualified}, not in the YOLOv8 module table", path)
    head = _detect_head(modules, state, path)
    return Checkpoint(path, model.qualified, yaml, _names(model, yaml), head, state, modules)


def _detect_head(modules: dict[str, Inert], state: dict[str, np.ndarray], path: Path) -> DetectHead:
    found = [(name, m) for name, m in modules.items() if m.qualified == "ultralytics.nn.modules.head.Detect"]
    if len(found) != 1:
        raise UsageError(f"{len(found)} Detect modules: a YOLOv8 detection model has one", path)
    name, detect = found[0]
    reg_max, stride = detect.__dict__.get("reg_max"), detect.__dict__.get("stride")
    if not isinstance(reg_max, int) or not isinstance(stride, np.ndarray) or stride.ndim != 1:
        raise UsageError(f"{name} (Detect) has no reg_max and strides: not a built YOLOv8 model", path)
    strides = tuple(int(s) for s in stride)
    if any(s <= 0 or s != v for s, v in zip(strides, stride, strict=True)):
        raise UsageError(f"{name} (Detect) has strides {stride.tolist()}, expected positive integers", path)
    dfl = state.get(f"{name}{DFL_WEIGHT}")
    if reg_max > 1 and (dfl is None or not np.array_equal(dfl.reshape(-1), np.arange(reg_max))):
        raise UsageError(
            f"{name}.dfl is not the fixed integral 0..{reg_max - 1} that [anchor_free] uses", path
        )
    return DetectHead(reg_max, strides)


def import_graph(checkpoint: Checkpoint, warn: Callable[[str], None]) -> Graph:
    """The checkpoint as a darknet :class:`Graph` (with ``[anchor_free]``) and its weights."""
    modules = expand_yaml(checkpoint.yaml, checkpoint.path)
    net = to_darknet(modules, checkpoint.head, _activation(checkpoint), checkpoint.path)  # type: ignore[arg-type]
    _take_fused_convs(net, checkpoint)
    graph = loads_cfg(cfg_text(net), f"{checkpoint.path.name} (imported)", warn)
    used: set[str] = set()
    for index, source in net.sources.items():
        layer = graph.layers[index]
        assert isinstance(layer, Convolutional)
        layer.weights = _conv_tensors(checkpoint, source, layer, used)  # type: ignore[arg-type]
    unused = [
        key
        for key, value in checkpoint.state.items()
        if key not in used and value.dtype.kind == "f" and not key.endswith(DFL_WEIGHT)
    ]
    if unused:
        raise UsageError(
            f"{len(unused)} tensors of the checkpoint fit no module of its yaml ({', '.join(unused[:3])})",
            checkpoint.path,
        )
    graph.weights_header = WeightsHeader()
    return graph


def _take_fused_convs(net: Sections, checkpoint: Checkpoint) -> None:
    """A model saved after ``fuse()`` (as ``predict`` leaves it) holds each Conv's BN folded into its conv's
    bias: such a section becomes a conv with a bias, taking the tensors of ``<Conv>.conv``."""
    for index, source in net.sources.items():
        path = source.path
        fused = f"{path}.bn" not in checkpoint.modules and f"{path}.conv.bias" in checkpoint.state
        if source.batch_normalize and fused:
            net.sections[index] = net.sections[index].replace("batch_normalize=1\n", "", 1)
            net.sources[index] = ConvSource(f"{path}.conv", batch_normalize=False)


def multiples(checkpoint: Checkpoint) -> tuple[float, float]:
    """(depth, width) the architecture was scaled by."""
    scale = scaling(checkpoint.yaml, checkpoint.path)
    return scale.depth, scale.width
