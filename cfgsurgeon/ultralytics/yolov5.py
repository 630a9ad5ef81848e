"""YOLOv5 (the ``ultralytics/yolov5`` repository's ``models.yolo.Model``) as plain darknet layers.

The architecture is the checkpoint's ``model.yaml``, expanded as the repository's ``parse_model`` expands it
(depth multiple on repeat counts, width multiple rounded up to multiples of 8); every module becomes darknet
sections, written as cfg text and parsed by our own parser, so the result is an ordinary cfg:

* ``Conv`` (conv + BN + SiLU) → ``[convolutional]`` ``batch_normalize=1 activation=swish`` with the module's
  padding; YOLOv5's BN epsilon (1e-3) is folded into ``rolling_variance`` (darknet adds 1e-5);
* ``Bottleneck`` → 1×1 and 3×3 convs (+ ``[shortcut]`` when it adds its input); ``C3`` → cv1, bottlenecks,
  a ``[route]`` back to the input for cv2, a ``[route]`` joining both (bottleneck branch first), cv3;
* ``SPPF`` → cv1, three chained 5×5 ``[maxpool]`` stride 1, a ``[route]`` of the four, cv2; ``SPP`` → one
  maxpool per kernel, each from cv1;
* ``Focus`` → ``[reorg3d] stride=2`` + conv, whose input channels are reordered (Focus takes the 2×2 phases
  as (0,0), (1,0), (0,1), (1,1) in (row, column); reorg3d as (0,0), (0,1), (1,0), (1,1));
* ``Concat`` → ``[route]``; ``nn.Upsample`` (nearest) → ``[upsample]``;
* ``Detect`` → per level a 1×1 conv with its bias and ``activation=logistic``, then ``[yolo]`` with
  ``new_coords=1 scale_x_y=2.0`` (``xy = 2σ − 0.5 + cell``, ``wh = (2σ)²·anchor``, as Detect decodes) and
  the anchors in pixels (the checkpoint stores them in grid units: × stride).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..emit.lower import BN_EPS
from ..errors import UsageError
from ..ir import Graph, loads_cfg
from ..layers import Convolutional
from ..weights import WeightsHeader
from .pickled import Inert, read_pickled

INPUT_SIZE = 640  # the size YOLOv5 trains and detects at by default
V5_BN_EPS = 1e-3  # models.yolo initialize_weights; a checkpoint's own BatchNorm2d.eps wins
MODEL_CLASSES = ("models.yolo.Model", "models.yolo.DetectionModel")


@dataclass
class ConvSource:
    """Where the tensors of one emitted ``[convolutional]`` come from: a YOLOv5 ``Conv`` (conv + bn) or a
    Detect output conv (``bias``), and for Focus the reordering of its input channels."""

    path: str
    batch_normalize: bool
    input_order: list[int] | None = None


@dataclass
class Sections:
    """The darknet sections being written, and which checkpoint module each conv takes its tensors from."""

    sections: list[str] = field(default_factory=list)
    sources: dict[int, ConvSource] = field(default_factory=dict)

    @property
    def last(self) -> int:
        return len(self.sections) - 1

    def add(self, header: str, **options: Any) -> int:
        body = "".join(f"{key}={_option(value)}\n" for key, value in options.items())
        self.sections.append(f"[{header}]\n{body}")
        return self.last

    def conv(self, source: ConvSource, activation: str, **options: Any) -> int:
        bn = {"batch_normalize": 1} if source.batch_normalize else {}
        index = self.add("convolutional", **bn, **options, activation=activation)
        self.sources[index] = source
        return index

    def start_from(self, index: int) -> None:
        """Make ``index`` the input of the next section (a ``[route]`` unless it is the last one)."""
        if index != self.last:
            self.add("route", layers=index)


def _option(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(_option(item) for item in value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


# -- the architecture ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Module:
    """One row of the yaml after ``parse_model``: index, inputs (absolute module indices, -1 = the image),
    repeat count, type and arguments with channel counts resolved (``c1``, ``c2`` first for conv-like)."""

    index: int
    inputs: tuple[int, ...]
    repeats: int
    kind: str
    args: tuple[Any, ...]


CONV_LIKE = frozenset({"Conv", "Bottleneck", "SPP", "SPPF", "Focus", "C3"})
OTHERS = frozenset({"Concat", "Upsample", "Detect"})
NOT_DETECTION = {"Classify": "a classification model", "Segment": "a segmentation model (Segment head)"}


@dataclass(frozen=True)
class Scaling:
    """What ``parse_model`` applies to every row: the multiples, the names a row's arguments may use, the
    Detect output width (never scaled) and the image's channels."""

    depth: float
    width: float
    names: dict[str, Any]
    outputs: int
    image_channels: int


def expand_yaml(yaml: dict, source: Path) -> list[Module]:
    """The yaml's modules with depth and width multiples applied as YOLOv5's ``parse_model`` applies them."""
    try:
        nc, anchors = int(yaml["nc"]), yaml["anchors"]
        na = len(anchors[0]) // 2 if isinstance(anchors, list) else int(anchors)
        names = {"None": None, "nc": nc, "anchors": anchors, "True": True, "False": False}
        scaling = Scaling(
            float(yaml["depth_multiple"]),
            float(yaml["width_multiple"]),
            names,
            na * (nc + 5),
            int(yaml.get("ch", 3)),
        )
        rows = list(yaml["backbone"]) + list(yaml["head"])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise UsageError(f"the checkpoint's model.yaml lacks a YOLOv5 entry ({exc!r})", source) from None
    return expand_rows(rows, source, lambda *row: _expand_row(*row, scaling))


RowExpander = Callable[[int, Any, int, str, list, list[int]], "Module"]


def expand_rows(rows: list, source: Path, expand_row: RowExpander) -> list[Module]:
    """Each yaml row ``[from, repeats, module, args]`` through ``expand_row(index, from, repeats, module,
    args, channels)``, which appends the module's output channels to ``channels``; a malformed row or a
    refused module is one line naming ``source``."""
    channels: list[int] = []
    modules: list[Module] = []
    for index, row in enumerate(rows):
        try:
            origin, repeats, kind, args = row
            modules.append(expand_row(index, origin, int(repeats), str(kind), list(args), channels))
        except (TypeError, ValueError, IndexError) as exc:
            raise UsageError(
                f"the checkpoint's model.yaml layer {index} is malformed ({exc})", source
            ) from None
        except UsageError as exc:
            raise UsageError(exc.message, source) from None
    return modules


def _expand_row(
    index: int, origin: Any, repeats: int, kind: str, args: list, channels: list[int], scaling: Scaling
) -> Module:
    """One yaml row after ``parse_model``; appends the module's output channels to ``channels``."""
    kind = kind.rsplit(".", 1)[-1]
    if kind in NOT_DETECTION:
        raise UsageError(f"{NOT_DETECTION[kind]}: only YOLOv5 detection models are imported")
    if kind not in CONV_LIKE | OTHERS:
        known = ", ".join(sorted(CONV_LIKE | OTHERS))
        raise UsageError(f"yaml layer {index} is a {kind}, not a YOLOv5 module this tool maps ({known})")
    inputs = tuple(origin if isinstance(origin, list) else [origin])
    absolute = tuple(index + f if f < 0 and index else f for f in inputs)
    c_in = [channels[f] if f >= 0 else scaling.image_channels for f in absolute]
    args = [scaling.names.get(arg, arg) if isinstance(arg, str) else arg for arg in args]
    repeats = max(round(repeats * scaling.depth), 1) if repeats > 1 else repeats
    if kind in CONV_LIKE:
        c2 = args[0] if args[0] == scaling.outputs else _make_divisible(args[0] * scaling.width, 8)
        args = [c_in[0], c2, *args[1:]]
        if kind == "C3":
            args.insert(2, repeats)
            repeats = 1
    else:
        c2 = sum(c_in) if kind == "Concat" else 0 if kind == "Detect" else c_in[0]
    channels.append(c2)
    return Module(index, absolute, repeats, kind, tuple(args))


def _make_divisible(value: float, divisor: int) -> int:
    return math.ceil(value / divisor) * divisor


# -- module → darknet sections ------------------------------------------------------------------------------
Activation = Callable[[str], str]


def _conv(
    net: Sections,
    path: str,
    c2: int,
    k: int = 1,
    s: int = 1,
    p: Any = None,
    g: int = 1,
    *,
    act: Activation,
    order: list[int] | None = None,
) -> int:
    padding = k // 2 if p is None else int(p)
    options: dict[str, Any] = {"filters": c2, "size": k, "stride": s, "padding": padding}
    if g != 1:
        options["groups"] = g
    return net.conv(ConvSource(path, True, order), act(path), **options)


def _bottleneck(
    net: Sections,
    path: str,
    c1: int,
    c2: int,
    shortcut: bool = True,
    g: int = 1,
    e: float = 0.5,
    *,
    act: Activation,
) -> int:
    start = net.last
    hidden = int(c2 * e)
    _conv(net, f"{path}.cv1", hidden, 1, 1, act=act)
    end = _conv(net, f"{path}.cv2", c2, 3, 1, g=g, act=act)
    if shortcut and c1 == c2:
        end = net.add("shortcut", **{"from": start}, activation="linear")
    return end


def _c3(
    net: Sections,
    path: str,
    c1: int,
    c2: int,
    n: int = 1,
    shortcut: bool = True,
    g: int = 1,
    e: float = 0.5,
    *,
    act: Activation,
) -> int:
    start = net.last
    hidden = int(c2 * e)
    _conv(net, f"{path}.cv1", hidden, act=act)
    for j in range(n):
        _bottleneck(net, f"{path}.m.{j}", hidden, hidden, shortcut, g, 1.0, act=act)
    branch = net.last
    net.start_from(start)
    side = _conv(net, f"{path}.cv2", hidden, act=act)
    net.add("route", layers=[branch, side])
    return _conv(net, f"{path}.cv3", c2, act=act)


def _sppf(net: Sections, path: str, c1: int, c2: int, k: int = 5, *, act: Activation) -> int:
    pooled = [_conv(net, f"{path}.cv1", c1 // 2, act=act)]
    for _ in range(3):
        pooled.append(net.add("maxpool", size=k, stride=1))
    net.add("route", layers=pooled)
    return _conv(net, f"{path}.cv2", c2, act=act)


def _spp(net: Sections, path: str, c1: int, c2: int, k: Any = (5, 9, 13), *, act: Activation) -> int:
    pooled = [_conv(net, f"{path}.cv1", c1 // 2, act=act)]
    for size in k:
        net.start_from(pooled[0])
        pooled.append(net.add("maxpool", size=size, stride=1))
    net.add("route", layers=pooled)
    return _conv(net, f"{path}.cv2", c2, act=act)


def _focus(
    net: Sections,
    path: str,
    c1: int,
    c2: int,
    k: int = 1,
    s: int = 1,
    p: Any = None,
    g: int = 1,
    *_: Any,
    act: Activation,
) -> int:
    net.add("reorg3d", stride=2)
    phases = [0, 2, 1, 3]  # reorg3d's phase b is Focus's phases[b]
    order = [phase * c1 + channel for phase in phases for channel in range(c1)]
    return _conv(net, f"{path}.conv", c2, k, s, p, g, act=act, order=order)


BUILDERS = {"Conv": _conv, "Bottleneck": _bottleneck, "C3": _c3, "SPPF": _sppf, "SPP": _spp, "Focus": _focus}


def _conv_like(net: Sections, module: Module, act: Activation, source: Path) -> int:
    build, args = BUILDERS[module.kind], module.args
    if module.kind == "Conv":  # Conv(c1, c2, k, s, p, g, d, act): drop c1; a Sequential repeats it
        if len(args) > 6 and args[6] not in (1, True, False):
            raise UsageError(
                f"yaml layer {module.index}: Conv with dilation {args[6]} (only 1 maps here)", source
            )
        args = (args[1], *args[2:6])
    for j in range(module.repeats):
        path = f"model.{module.index}" + (f".{j}" if module.repeats > 1 else "")
        build(net, path, *args, act=act)
    return net.last


def to_darknet(modules: list[Module], anchors: list[list[float]], act: Activation, source: Path) -> Sections:
    """The darknet sections of the expanded modules; ``anchors``: per Detect level, in pixels."""
    net = Sections()
    ends: list[int] = []
    for module in modules:
        inputs = [ends[f] if f >= 0 else -1 for f in module.inputs]
        if module.kind == "Detect":
            _detect(net, module, inputs, anchors)
            ends.append(net.last)
            continue
        if inputs[0] >= 0 and module.kind != "Concat":
            net.start_from(inputs[0])
        if module.kind in CONV_LIKE:
            ends.append(_conv_like(net, module, act, source))
        elif module.kind == "Concat":
            if module.args[0] != 1:
                raise UsageError(
                    f"module {module.index}: Concat over dimension {module.args[0]} (only 1)", source
                )
            ends.append(net.add("route", layers=inputs))
        else:
            size, scale, mode = (list(module.args) + [None, None, None])[:3]
            if size is not None or mode != "nearest" or float(scale or 0) != int(scale or 0) or not scale:
                raise UsageError(
                    f"module {module.index}: Upsample({size}, {scale}, {mode}): only an integer "
                    "scale_factor with mode 'nearest' maps to [upsample]",
                    source,
                )
            ends.append(net.add("upsample", stride=int(scale)))
    return net


def _detect(net: Sections, module: Module, inputs: list[int], anchors: list[list[float]]) -> None:
    nc = int(module.args[0])
    na = len(anchors[0]) // 2
    every_anchor = [value for level in anchors for value in level]
    for level, source in enumerate(inputs):
        net.start_from(source)
        conv = ConvSource(f"model.{module.index}.m.{level}", batch_normalize=False)
        net.conv(conv, "logistic", filters=na * (nc + 5), size=1, stride=1, padding=0)
        mask = list(range(level * na, (level + 1) * na))
        net.add(
            "yolo",
            mask=mask,
            anchors=every_anchor,
            classes=nc,
            num=len(every_anchor) // 2,
            new_coords=1,
            scale_x_y=2.0,
        )


def cfg_text(net: Sections, size: int = INPUT_SIZE) -> str:
    head = f"[net]\nwidth={size}\nheight={size}\nchannels=3\nletter_box=1\n"
    return "\n".join([head, *net.sections])


# -- the checkpoint -----------------------------------------------------------------------------------------
# Every class a YOLOv5 detection model's module tree may hold; anything else is refused by name.
KNOWN_MODULES = frozenset(
    [f"models.common.{name}" for name in ("Conv", "C3", "Bottleneck", "SPPF", "SPP", "Focus", "Concat")]
    + ["models.yolo.Detect"]
    + [
        f"torch.nn.modules.{name}"
        for name in (
            "conv.Conv2d",
            "batchnorm.BatchNorm2d",
            "activation.SiLU",
            "activation.LeakyReLU",
            "linear.Identity",
            "pooling.MaxPool2d",
            "upsampling.Upsample",
            "container.Sequential",
            "container.ModuleList",
        )
    ]
)
ACTIVATIONS = {"SiLU": "swish", "Identity": "linear"}
OTHER_MODELS = {
    "ClassificationModel": "a classification model",
    "SegmentationModel": "a segmentation model",
}


@dataclass
class Checkpoint:
    """What a YOLOv5 checkpoint holds, read without running it: the architecture (``yaml``), class
    ``names``, the Detect anchors in pixels per level, every tensor by module path (``state``) and every
    module (inert) by path."""

    path: Path
    model_class: str
    yaml: dict
    names: list[str]
    anchors: list[list[float]]
    state: dict[str, np.ndarray]
    modules: dict[str, Inert]


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a YOLOv5 ``.pt`` (see :mod:`.pickled`); anything else is a one-line :class:`UsageError`."""
    path = Path(path)
    model = _the_model(read_pickled(path), path)
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
            raise UsageError(f"module {name} is a {module.qualified}, not in the YOLOv5 module table", path)
    return Checkpoint(
        path, model.qualified, yaml, _names(model, yaml), _anchors(modules, path), state, modules
    )


def _the_model(obj: Any, path: Path) -> Inert:
    if not isinstance(obj, dict):
        raise UsageError(
            f"not a YOLOv5 checkpoint: its pickle holds a {type(obj).__name__}, expected a dict "
            "with a 'model'",
            path,
        )
    model = obj.get("ema") or obj.get("model")
    if model is None and obj and all(isinstance(value, np.ndarray) for value in obj.values()):
        raise UsageError(
            f"a plain state_dict ({len(obj)} tensors) without the architecture: a YOLOv5 "
            "checkpoint holds the model (with its yaml) under 'model'",
            path,
        )
    if not isinstance(model, Inert):
        found = sorted(map(str, obj))[:6]
        raise UsageError(
            f"not a YOLOv5 checkpoint: no model object under 'model' or 'ema' (keys {found})", path
        )
    kind = model.class_name
    if kind in OTHER_MODELS:
        raise UsageError(
            f"{OTHER_MODELS[kind]} ({model.qualified}): only YOLOv5 detection models are imported", path
        )
    if model.qualified.startswith("ultralytics."):
        raise UsageError(
            f"an ultralytics-package model ({model.qualified}, YOLOv8 family): not supported "
            "yet, only YOLOv5 repository checkpoints",
            path,
        )
    if model.qualified not in MODEL_CLASSES:
        raise UsageError(f"the model is a {model.qualified}, expected {' or '.join(MODEL_CLASSES)}", path)
    return model


def _flatten(module: Inert, prefix: str, modules: dict[str, Inert], state: dict[str, np.ndarray]) -> None:
    modules[prefix] = module
    join = (lambda name: f"{prefix}.{name}") if prefix else str
    for table in ("_parameters", "_buffers"):
        for name, value in (module.__dict__.get(table) or {}).items():
            if isinstance(value, np.ndarray):
                state[join(name)] = value
    for name, child in (module.__dict__.get("_modules") or {}).items():
        if isinstance(child, Inert):
            _flatten(child, join(name), modules, state)


def _names(model: Inert, yaml: dict) -> list[str]:
    names = model.__dict__.get("names")
    if isinstance(names, dict):
        names = [names[key] for key in sorted(names)]
    if not isinstance(names, list | tuple):
        names = [str(k) for k in range(int(yaml.get("nc", 0)))]
    return [str(name) for name in names]


def _anchors(modules: dict[str, Inert], path: Path) -> list[list[float]]:
    """Detect's anchors (grid units, as the model stores them) × each level's stride."""
    detect = next((m for m in modules.values() if m.qualified == "models.yolo.Detect"), None)
    grid = (detect.__dict__.get("_buffers") or {}).get("anchors") if detect else None
    stride = detect.__dict__.get("stride") if detect else None
    if not isinstance(grid, np.ndarray) or not isinstance(stride, np.ndarray) or grid.ndim != 3:
        raise UsageError("no Detect module with anchors and stride: not a YOLOv5 detection model", path)
    pixels = grid.astype(np.float64) * stride.astype(np.float64).reshape(-1, 1, 1)
    return [[float(value) for value in level.reshape(-1)] for level in pixels]


def _activation(checkpoint: Checkpoint) -> Activation:
    def activation(path: str) -> str:
        module = checkpoint.modules.get(f"{path}.act")
        kind = module.class_name if module is not None else "SiLU"
        if kind == "LeakyReLU" and float(module.__dict__.get("negative_slope", 0)) == 0.1:
            return "leaky"
        if kind not in ACTIVATIONS:
            raise UsageError(
                f"{path}.act is a {module.qualified}: no darknet activation equals it here", checkpoint.path
            )
        return ACTIVATIONS[kind]

    return activation


def import_graph(checkpoint: Checkpoint, warn: Callable[[str], None]) -> Graph:
    """The checkpoint as a darknet :class:`Graph` with its weights."""
    modules = expand_yaml(checkpoint.yaml, checkpoint.path)
    net = to_darknet(modules, checkpoint.anchors, _activation(checkpoint), checkpoint.path)
    graph = loads_cfg(cfg_text(net), f"{checkpoint.path.name} (imported)", warn)
    used: set[str] = set()
    for index, source in net.sources.items():
        layer = graph.layers[index]
        assert isinstance(layer, Convolutional)
        layer.weights = _conv_tensors(checkpoint, source, layer, used)
    unused = [key for key, value in checkpoint.state.items() if key not in used and _is_weight(key, value)]
    if unused:
        raise UsageError(
            f"{len(unused)} tensors of the checkpoint fit no module of its yaml ({', '.join(unused[:3])})",
            checkpoint.path,
        )
    graph.weights_header = WeightsHeader()
    return graph


def _is_weight(key: str, value: np.ndarray) -> bool:
    """Tensors that must land in the darknet file: not BN's int64 counters, not Detect's anchors (they
    are in the cfg)."""
    return value.dtype.kind == "f" and not key.endswith((".anchors", ".anchor_grid"))


def _conv_tensors(checkpoint: Checkpoint, source: ConvSource, layer: Convolutional, used: set[str]) -> dict:
    def take(key: str) -> np.ndarray:
        full = f"{source.path}.{key}"
        if full not in checkpoint.state:
            raise UsageError(f"the checkpoint has no tensor {full}, which its yaml implies", checkpoint.path)
        used.add(full)
        return checkpoint.state[full].astype(np.float32)

    if source.batch_normalize:
        bn = checkpoint.modules.get(f"{source.path}.bn")
        eps = float(bn.__dict__.get("eps", V5_BN_EPS)) if bn is not None else V5_BN_EPS
        variance = take("bn.running_var").astype(np.float64) + eps - BN_EPS
        tensors = {
            "biases": take("bn.bias"),
            "scales": take("bn.weight"),
            "rolling_mean": take("bn.running_mean"),
            "rolling_variance": variance.astype(np.float32),
            "weights": take("conv.weight"),
        }
    else:
        tensors = {"biases": take("bias"), "weights": take("weight")}
    if source.input_order is not None:
        tensors["weights"] = tensors["weights"][:, source.input_order]
    _check_geometry(checkpoint, source, layer)
    for name, shape in layer.weight_layout():
        if tensors[name].shape != shape:
            raise UsageError(
                f"{source.path}: tensor for {name} has shape {tensors[name].shape}, the yaml's "
                f"layer {layer.index} [convolutional] needs {shape}",
                checkpoint.path,
            )
    return {name: np.ascontiguousarray(tensors[name]) for name, _ in layer.weight_layout()}


def _check_geometry(checkpoint: Checkpoint, source: ConvSource, layer: Convolutional) -> None:
    """The checkpoint's Conv2d must have the stride, padding, groups and dilation the yaml gave the layer."""
    conv = checkpoint.modules.get(f"{source.path}.conv" if source.batch_normalize else source.path)
    if conv is None:
        return
    stored = {key: conv.__dict__.get(key) for key in ("stride", "padding", "groups", "dilation")}
    ours = {
        "stride": (layer.stride, layer.stride),
        "padding": (layer.effective_padding, layer.effective_padding),
        "groups": layer.groups,
        "dilation": (1, 1),
    }
    differ = [
        f"{key} {stored[key]} (yaml: {ours[key]})"
        for key in ours
        if _as_pair(stored[key]) != _as_pair(ours[key])
    ]
    if differ:
        raise UsageError(f"{source.path}.conv has {', '.join(differ)}", checkpoint.path)


def _as_pair(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else value
