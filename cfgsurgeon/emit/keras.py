"""IR (+ weights) → a ``tf_keras`` functional model computing what the torch backend computes.

The model's input is ``images`` (N×C×H×W, as for every other backend); a ``Permute`` turns it into NHWC,
TensorFlow's native layout on the CPU, and each output is a detection head's tensor permuted back to NCHW,
named ``<type>_<layer index>`` (``yolo_16``): the same names and layouts as the torch and ONNX outputs, so
``postprocess.decode`` and ``detect`` work unchanged.

Each cfg layer is built from its lowering (:mod:`.lower`), one Keras layer per op, named
``l<index>_<what>`` (``l12_conv``, ``l12_bn``, ``l12_leaky``). ``OP_BUILDERS`` holds one builder per op
type. Convolutions, batch norm and connected layers are tf_keras' own ``Conv2D`` / ``DepthwiseConv2D``,
``BatchNormalization`` and ``Dense`` (what TF Model Optimization prunes and quantises), as are pooling,
joins and resampling where TF's own layer computes darknet's result; every other op is a
:class:`DarknetOp` layer calling the :mod:`.tf_ops` function of its op (the same function the TF1 file
copies), with the op's fields as its config, so a ``.keras`` file reloads once this module is imported and
a saved model needs no tree file. The ``.weights`` tensors map to Keras variables through the lowering's
``params``, in both directions (:func:`load_weights`, :func:`store_weights`).

Numerics that matter: strided convolutions pad explicitly and symmetrically (``ZeroPadding2D`` +
``valid``: Keras' ``same`` pads stride-2 convolutions asymmetrically on even inputs), while stride-1
convolutions whose darknet padding is the symmetric ``(k−1)/2`` use ``same``; TF's ``same`` pooling ignores
the taps outside the image as darknet does, and is used wherever its windows coincide with darknet's.
"""

from __future__ import annotations

import contextvars
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from .. import layers as L
from ..errors import CfgError, UsageError
from ..ir import Graph
from . import lower as lo
from . import tf_ops
from .heads import INPUT_NAME, head_layers, output_names

BN_EPS = lo.BN_EPS
PACKAGE = "cfgsurgeon"  # prefix of the custom layers' registered names ("cfgsurgeon>DarknetOp")

KerasTensor = Any  # what the functional API passes between layers

# Kernel initializer of new layers: Keras' default, or "zeros" while to_keras builds a model whose weights
# it then loads (drawing ~60 M random numbers only to overwrite them takes seconds).
_KERNEL_INIT: contextvars.ContextVar[str] = contextvars.ContextVar("kernel_init", default="glorot_uniform")

OPS: dict[str, type] = {cls.__name__: cls for cls in (*tf_ops.FUNCTIONS, lo.Act)}


def _register(cls):
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)


mish = _register(tf_ops.mish)  # a standard Activation layer holds it and saves it by this registered name


# -- the layer of every op without a standard Keras layer ----------------------------------------------------


def _plain(value: Any) -> Any:
    """A field's value as config (JSON): tuples as lists; an op that holds tensors as a dict of its fields,
    ``module`` naming its type (its tensors are variables of the layer, ``<field>_<tensor>``)."""
    if isinstance(value, lo.MODULE_OPS):
        fields = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"module": type(value).__name__, **fields}
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def _tensors(field: str, op: lo.ModuleOp) -> dict[str, tuple[tuple[int, ...], Any]]:
    """The variables a module op in a field needs: name → (shape, initial value or initializer)."""
    if isinstance(op, lo.Parameter):
        return {field: (op.shape, op.value)}
    if isinstance(op, lo.Conv2d):
        shape = (op.size, op.size, op.in_channels // op.groups, op.filters)
        found = {f"{field}_weight": (shape, None)}
        return found | ({f"{field}_bias": ((op.filters,), 0.0)} if op.bias else {})
    if isinstance(op, lo.BatchNorm):
        values = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
        return {f"{field}_{name}": ((op.channels,), value) for name, value in values.items()}
    return {}


@_register
class DarknetOp(keras.layers.Layer):
    """One op of the lowering, computed by its :mod:`.tf_ops` function: ``op`` is the op type's name,
    ``fields`` its fields (config), ``shapes`` its variables (those of the tensor-holding ops among its
    fields, in the ``.weights`` layout, filters HWIO). ``get_prunable_weights`` tells TF Model
    Optimization there is nothing to prune here."""

    def __init__(self, op: str, fields: dict, shapes: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.op, self.fields, self.shapes = op, fields, shapes or {}

    @classmethod
    def of(cls, op: lo.Op, name: str) -> DarknetOp:
        fields = {f.name: getattr(op, f.name) for f in dataclasses.fields(op)}
        shapes = {}
        for field, value in fields.items():
            if isinstance(value, lo.MODULE_OPS):
                shapes |= {key: (list(shape), init) for key, (shape, init) in _tensors(field, value).items()}
        return cls(
            type(op).__name__, {key: _plain(value) for key, value in fields.items()}, shapes, name=name
        )

    def build(self, input_shape):
        self.tensors = {}
        for key, (shape, init) in self.shapes.items():
            initializer = _KERNEL_INIT.get() if init is None else keras.initializers.Constant(init)
            self.tensors[key] = self.add_weight(name=key, shape=shape, initializer=initializer)
        super().build(input_shape)

    def call(self, x):
        if self.op == "Act":
            return tf_ops.ACTIVATIONS[self.fields["name"]](x)
        arguments = {key: self._argument(key, value) for key, value in self.fields.items()}
        return tf_ops.FUNCTIONS[OPS[self.op]](x, **arguments)

    def _argument(self, field: str, value: Any) -> Any:
        if not isinstance(value, dict) or "module" not in value:
            return value
        kind = value["module"]
        if kind == "Parameter":
            return self.tensors[field]
        fields = {key: v for key, v in value.items() if key != "module"}
        if kind == "TreeGroups":
            return fields
        prefix = f"{field}_"
        tensors = {key[len(prefix) :]: v for key, v in self.tensors.items() if key.startswith(prefix)}
        return {**fields, "tensors": tensors}

    def get_config(self) -> dict:
        return {**super().get_config(), "op": self.op, "fields": self.fields, "shapes": self.shapes}

    def get_prunable_weights(self) -> list:
        return []


# -- builders: one per op type, (build, op, input) → output (NHWC) ------------------------------------------


@dataclass
class Build:
    """The cfg layer being built: names its Keras layers ``l<index>_<what>`` (``…<what><input>`` for an
    op applied to each input)."""

    layer: L.Layer
    input: int | None = None

    def name(self, what: str) -> str:
        return f"l{self.layer.index}_{what}{'' if self.input is None else self.input}"


# Activations with an exact standard layer (mish: the standard layer with our function).
STANDARD_ACTIVATIONS: dict[str, Callable[[str], keras.layers.Layer]] = {
    "leaky": lambda name: keras.layers.LeakyReLU(alpha=0.1, name=name),
    "relu": lambda name: keras.layers.ReLU(name=name),
    "relu6": lambda name: keras.layers.ReLU(max_value=6.0, name=name),
    "logistic": lambda name: keras.layers.Activation("sigmoid", name=name),
    "tanh": lambda name: keras.layers.Activation("tanh", name=name),
    "swish": lambda name: keras.layers.Activation("swish", name=name),
    "mish": lambda name: keras.layers.Activation(mish, name=name),
    "elu": lambda name: keras.layers.Activation("elu", name=name),
}


def build_act(build: Build, op: lo.Act, x):
    name = build.name(op.name)
    make = STANDARD_ACTIVATIONS.get(op.name)
    return (make(name) if make else DarknetOp.of(op, name))(x)


def is_depthwise(op: lo.Conv2d) -> bool:
    return op.groups > 1 and op.groups == op.in_channels


def build_conv(build: Build, op: lo.Conv2d, x):
    """Conv2D / DepthwiseConv2D; a dilated convolution with a stride runs at stride 1 and is subsampled
    (Keras refuses both at once)."""
    subsample = op.dilation > 1 and op.stride != (1, 1)
    strides = (1, 1) if subsample else op.stride
    ph, pw = op.padding
    if strides == (1, 1) and 2 * ph == 2 * pw == op.dilation * (op.size - 1):
        padding = "same"  # symmetric (k−1)/2·dilation on each side: exactly darknet's
    else:
        padding = "valid"
        if ph or pw:
            x = keras.layers.ZeroPadding2D(((ph, ph), (pw, pw)), name=build.name("pad"))(x)
    common = dict(strides=strides, padding=padding, dilation_rate=op.dilation, use_bias=op.bias)
    if is_depthwise(op):
        conv = keras.layers.DepthwiseConv2D(
            op.size,
            depth_multiplier=op.filters // op.in_channels,
            depthwise_initializer=_KERNEL_INIT.get(),
            name=build.name("conv"),
            **common,
        )
    else:
        conv = keras.layers.Conv2D(
            op.filters,
            op.size,
            groups=op.groups,
            kernel_initializer=_KERNEL_INIT.get(),
            name=build.name("conv"),
            **common,
        )
    y = conv(x)
    return Subsample(op.stride, name=build.name("subsample"))(y) if subsample else y


@_register
class Subsample(keras.layers.Layer):
    """Every ``stride``-th row and column: a dilated convolution's stride (Keras refuses both at once)."""

    def __init__(self, strides, **kwargs):
        super().__init__(**kwargs)
        self.strides = tuple(strides)

    def call(self, x):
        return x[:, :: self.strides[0], :: self.strides[1]]

    def get_config(self) -> dict:
        return {**super().get_config(), "strides": self.strides}

    def get_prunable_weights(self) -> list:
        return []


def build_batchnorm(build: Build, op: lo.BatchNorm, x):
    return keras.layers.BatchNormalization(epsilon=op.eps, name=build.name("bn"))(x)


def build_dense(build: Build, op: lo.Linear, x):
    dense = keras.layers.Dense(
        op.outputs, use_bias=op.bias, kernel_initializer=_KERNEL_INIT.get(), name=build.name("fc")
    )
    return dense(x)


def build_flatten(build: Build, op: lo.Flatten, x):
    if x.shape[1] * x.shape[2] > 1:  # darknet's weights index the input in C×H×W order
        x = keras.layers.Permute((3, 1, 2), name=build.name("nchw"))(x)
    return keras.layers.Flatten(name=build.name("flatten"))(x)


def build_unflatten(build: Build, op: lo.Unflatten, x):
    return keras.layers.Reshape((1, 1, x.shape[-1]), name=build.name("reshape"))(x)


def _tf_padding(size: int, stride: int, length: int, out: int, before: int, after: int) -> str | None:
    """The TF pooling padding ("valid"/"same") that gives darknet's output along one axis, if any."""
    if before == after == 0 and (length - size) // stride + 1 == out:
        return "valid"
    same_out = -(-length // stride)
    total = max((same_out - 1) * stride + size - length, 0)
    if same_out == out and (total // 2, total - total // 2) == (before, after):
        return "same"
    return None


def build_pool(build: Build, op: lo.MaxPool | lo.LocalAvgPool, x):
    """TF's own pooling where its windows are darknet's (every [maxpool] of the collection), else tf_ops'."""
    top, bottom, left, right = op.pads
    (sy, sx), (out_h, out_w) = op.stride, op.out_hw
    along_h = _tf_padding(op.size, sy, x.shape[1], out_h, top, bottom)
    along_w = _tf_padding(op.size, sx, x.shape[2], out_w, left, right)
    average = isinstance(op, lo.LocalAvgPool)
    name = build.name("local_avgpool" if average else "maxpool")
    if along_h is not None and along_h == along_w:
        pool = keras.layers.AveragePooling2D if average else keras.layers.MaxPooling2D
        return pool(op.size, (sy, sx), padding=along_h, name=name)(x)
    return DarknetOp.of(op, name)(x)


def build_global_avgpool(build: Build, op: lo.GlobalAvgPool, x):
    return keras.layers.GlobalAveragePooling2D(keepdims=True, name=build.name("avgpool"))(x)


def build_upsample(build: Build, op: lo.Upsample, x):
    if op.stride > 0 and op.scale == 1:
        return keras.layers.UpSampling2D(op.stride, interpolation="nearest", name=build.name("upsample"))(x)
    return DarknetOp.of(op, build.name("upsample"))(x)


def build_concat(build: Build, op: lo.Concat, xs):
    return keras.layers.Concatenate(axis=-1, name=build.name("route"))(xs)


def build_shortcut(build: Build, op: lo.WeightedSum, xs):
    if op.weights is None and len({x.shape[-1] for x in xs}) == 1:
        return keras.layers.Add(name=build.name("shortcut"))(xs)
    return build_op(build, op, xs)


def build_scale(build: Build, op: lo.Scale, xs):
    if op.first_channel:
        return DarknetOp.of(op, build.name(build.layer.kind))(xs)
    return keras.layers.Multiply(name=build.name(build.layer.kind))([xs[1], xs[0]])


# the op's Keras layer name when it is a DarknetOp (default: the cfg layer's kind)
OP_NAMES: dict[type, str] = {
    lo.BinaryConv: "conv",
    lo.WeightedSum: "shortcut",
    lo.Blur: "blur",
    lo.Slice: "group",
    lo.MaxPoolDepth: "maxpool_depth",
    lo.LocallyConnected: "local",
}


def op_name(build: Build, op: lo.Op) -> str:
    return build.name(OP_NAMES.get(type(op), build.layer.kind))


def build_op(build: Build, op: lo.Op, x):
    """Any other op: a :class:`DarknetOp` running its tf_ops function."""
    return DarknetOp.of(op, op_name(build, op))(x)


OP_BUILDERS: dict[type, Callable[[Build, Any, Any], KerasTensor]] = {
    lo.Act: build_act,
    lo.Conv2d: build_conv,
    lo.BatchNorm: build_batchnorm,
    lo.Linear: build_dense,
    lo.Flatten: build_flatten,
    lo.Unflatten: build_unflatten,
    lo.MaxPool: build_pool,
    lo.LocalAvgPool: build_pool,
    lo.GlobalAvgPool: build_global_avgpool,
    lo.Upsample: build_upsample,
    lo.Concat: build_concat,
    lo.WeightedSum: build_shortcut,
    lo.Scale: build_scale,
}


def build_layer(layer: L.Layer, lowered: lo.Lowered, inputs: list) -> KerasTensor:
    """The layer's ops in order; those before the joining op on each input (``<what><k>`` per input)."""
    ops, join = lowered.ops, lowered.join
    y = inputs[0]
    if join is not None:
        values = inputs
        for op in ops[:join]:
            values = [_built(Build(layer, k), op, x) for k, x in enumerate(values)]
        ops, y = ops[join + 1 :], _built(Build(layer), ops[join], values)
    for op in ops:
        y = _built(Build(layer), op, y)
    return y


def _built(build: Build, op: lo.Op, x) -> KerasTensor:
    return OP_BUILDERS.get(type(op), build_op)(build, op, x)


# -- weights: .weights tensors ↔ Keras variables ------------------------------------------------------------


@dataclass(frozen=True)
class Binding:
    """IR tensor ``tensor`` ↔ variable ``attr`` of the Keras layer ``keras_layer``. ``to_keras`` and
    ``from_keras`` reorder axes (exact inverses); shapes are then fitted by reshaping."""

    keras_layer: str
    attr: str
    tensor: str
    to_keras: Callable[[np.ndarray], np.ndarray] = lambda a: a
    from_keras: Callable[[np.ndarray], np.ndarray] = lambda a: a


def _oihw_to_hwio(a: np.ndarray) -> np.ndarray:
    return a.transpose(2, 3, 1, 0)


def _hwio_to_oihw(a: np.ndarray) -> np.ndarray:
    return a.transpose(3, 2, 0, 1)


STANDARD_ATTRIBUTES = {  # a standard layer's variable holding each tensor of the lowering's slot
    lo.BatchNorm: {
        "weight": "gamma",
        "bias": "beta",
        "running_mean": "moving_mean",
        "running_var": "moving_variance",
    },
    lo.Linear: {"weight": "kernel", "bias": "bias"},
    lo.Conv2d: {"weight": "kernel", "bias": "bias"},
}
STANDARD_NAMES = {lo.Conv2d: "conv", lo.BatchNorm: "bn", lo.Linear: "fc"}


def _holders(layer: L.Layer, lowered: lo.Lowered) -> dict[str, Callable[[str, str], Binding]]:
    """Each slot of the lowering → a function binding one of its tensors (``weight``, ``bias``, …) to the
    Keras layer that holds it."""
    build, holders = Build(layer), {}
    for op in lowered.ops:
        if type(op) in STANDARD_NAMES:
            holders[op.slot] = _standard(build.name(STANDARD_NAMES[type(op)]), op)
        for field, value in lo.arguments(op):
            if isinstance(value, lo.MODULE_OPS):
                holders[value.slot] = _in_darknet_op(op_name(build, op), field, value)
    return holders


def _standard(name: str, op: lo.ModuleOp) -> Callable[[str, str], Binding]:
    def bind(tensor: str, key: str) -> Binding:
        if isinstance(op, lo.Conv2d) and key == "weight" and is_depthwise(op):
            c, m = op.in_channels, op.filters // op.in_channels  # darknet filter c·M + m → (k, k, C, M)
            to_keras = lambda a: a.reshape(c, m, *a.shape[2:]).transpose(2, 3, 0, 1)  # noqa: E731
            return Binding(name, "depthwise_kernel", tensor, to_keras, lambda a: a.transpose(2, 3, 0, 1))
        if isinstance(op, lo.Conv2d) and key == "weight":
            return Binding(name, "kernel", tensor, _oihw_to_hwio, _hwio_to_oihw)
        if isinstance(op, lo.Linear) and key == "weight":  # darknet (out, in), Keras (in, out)
            return Binding(name, "kernel", tensor, lambda a: a.T, lambda a: a.T)
        return Binding(name, STANDARD_ATTRIBUTES[type(op)][key], tensor)

    return bind


def _in_darknet_op(name: str, field: str, op: lo.ModuleOp) -> Callable[[str, str], Binding]:
    def bind(tensor: str, key: str) -> Binding:
        if isinstance(op, lo.Parameter):
            return Binding(name, field, tensor)
        if isinstance(op, lo.Conv2d) and key == "weight":
            return Binding(name, f"{field}_weight", tensor, _oihw_to_hwio, _hwio_to_oihw)
        return Binding(name, f"{field}_{key}", tensor)

    return bind


def bindings(layer: L.Layer) -> list[Binding]:
    """The layer's ``.weights`` tensors ↔ its Keras variables. A ``share_index`` convolution has Keras layers
    of its own geometry holding its owner's tensors."""
    if not _source(layer).weight_layout():
        return []
    holders = _holders(layer, lo.lower(layer))
    found = []
    for tensor, path in lo.lower(_source(layer)).params.items():
        slot, _, key = path.partition(".")
        found.append(holders[slot](tensor, key))
    return found


def _source(layer: L.Layer) -> L.Layer:
    """Whose ``.weights`` tensors a layer computes with: a ``share_index`` convolution uses its owner's."""
    shared = layer.shares if isinstance(layer, L.Convolutional) else None
    return shared if shared is not None else layer


def _variable(keras_layer: keras.layers.Layer, attr: str):
    return keras_layer.tensors[attr] if isinstance(keras_layer, DarknetOp) else getattr(keras_layer, attr)


def load_weights(model: keras.Model, graph: Graph) -> None:
    """Copy ``layer.weights`` (numpy) into the model's variables.

    A ``share_index`` convolution gets its own Keras layers holding a copy of its owner's tensors (Keras
    cannot share variables between layers of different geometry): exact for inference; after fine-tuning
    in Keras, :func:`store_weights` keeps the owner's. Layers no output depends on (a [contrastive]
    branch) are not part of a functional model and are skipped."""
    present = {keras_layer.name for keras_layer in model.layers}
    for layer in graph.layers:
        source = _source(layer)
        if not source.weight_layout():
            continue
        if source.weights is None:
            raise CfgError(f"layer {source.index} [{source.header}] has no weights loaded", source.where())
        for binding in bindings(layer):
            if binding.keras_layer in present:
                variable = _variable(model.get_layer(binding.keras_layer), binding.attr)
                value = binding.to_keras(np.asarray(source.weights[binding.tensor], dtype=np.float32))
                variable.assign(value.reshape(variable.shape))


def store_weights(model: keras.Model, graph: Graph) -> None:
    """Copy the model's variables back into ``layer.weights`` (float32 numpy, the cfg's shapes and order),
    e.g. after pruning or fine-tuning in Keras, to write a darknet ``.weights`` file. Layers the model does
    not contain (no output depends on them) keep the tensors they have."""
    present = {keras_layer.name for keras_layer in model.layers}
    for layer in graph.layers:
        layout = layer.weight_layout()
        found_bindings = bindings(layer) if layout else []
        if not layout or not all(b.keras_layer in present for b in found_bindings):
            continue
        found = {
            b.tensor: b.from_keras(np.asarray(_variable(model.get_layer(b.keras_layer), b.attr)))
            for b in found_bindings
        }
        layer.weights = {name: found[name].astype(np.float32).reshape(shape) for name, shape in layout}


# -- the model ----------------------------------------------------------------------------------------------


def to_keras(graph: Graph, tree: str | Path | None = None) -> keras.Model:
    """Build the functional model for ``graph`` (with its weights, if loaded): input ``images`` N×C×H×W,
    outputs the heads' raw tensors in NCHW, named as :func:`output_names` says. ``tree``: the softmax-tree
    file for ``tree=`` layers (default ``graph.tree_file``, else looked up as :mod:`cfgsurgeon.tree` says)."""
    has_weights = any(layer.weights is not None for layer in graph.layers)
    token = _KERNEL_INIT.set("zeros" if has_weights else "glorot_uniform")
    try:
        model = _functional(graph, tree if tree is not None else graph.tree_file)
    finally:
        _KERNEL_INIT.reset(token)
    if has_weights:
        load_weights(model, graph)
    return model


def _functional(graph: Graph, tree: str | Path | None) -> keras.Model:
    c, h, w = graph.input_shape
    images = keras.Input((c, h, w), name=INPUT_NAME)
    tensors = {-1: keras.layers.Permute((2, 3, 1), name="nhwc")(images)}
    for layer in graph.layers:
        lowered = lo.lower(layer, tree)
        out = build_layer(layer, lowered, [tensors[graph.index_of(node)] for node in layer.inputs])
        _check_shape(layer, out)
        tensors[layer.index] = out
    outputs = [
        keras.layers.Permute((3, 1, 2), name=name)(tensors[layer.index])
        for layer, name in zip(head_layers(graph), output_names(graph), strict=True)
    ]
    return keras.Model(images, outputs, name="darknet")


def _check_shape(layer: L.Layer, out) -> None:
    """Every layer's Keras output has the IR's shape (darknet's geometry), except the flat [region]."""
    if isinstance(layer, L.Region):
        return
    c, h, w = layer.out_shape
    if tuple(out.shape[1:]) != (h, w, c):
        raise CfgError(
            f"layer {layer.index} [{layer.header}] computes {tuple(out.shape[1:])} (HxWxC) in Keras, darknet "
            f"{(h, w, c)}: unsupported geometry",
            layer.where(),
        )


def run_keras(model: keras.Model, batch: np.ndarray) -> list[np.ndarray]:
    """The model's outputs for a float32 N×C×H×W batch (one eager call), as numpy arrays, one per head."""
    return _as_list(model(np.ascontiguousarray(batch, dtype=np.float32), training=False))


def traced_forward(model: keras.Model) -> Callable[[np.ndarray], list[np.ndarray]]:
    """:func:`run_keras` as one traced TF graph (``tf.function``, any batch size, traced here, not in the
    first call): about 1.7× faster per call than eager execution on yolov4-tiny."""
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=INPUT_NAME)
    forward = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    forward.get_concrete_function()
    return lambda batch: _as_list(forward(np.ascontiguousarray(batch, dtype=np.float32)))


def _as_list(outputs) -> list[np.ndarray]:
    return [np.asarray(out) for out in (outputs if isinstance(outputs, list | tuple) else [outputs])]


def write_keras(graph: Graph, path: str | Path) -> keras.Model:
    """Save the model of ``graph`` (weights must be loaded) and return it.

    ``*.keras``: the Keras v3 single-file format (config + weights; reloads with :func:`load_keras`).
    A path without suffix: a TensorFlow SavedModel directory (what TFLite, OpenVINO and TF Serving read; it
    also reloads as a Keras model). Both are written beside the target and renamed into place."""
    path = Path(path)
    if path.suffix not in (".keras", ""):
        raise UsageError(f"Keras output {path} should end in .keras (or have no suffix, for a SavedModel)")
    if not path.suffix and path.exists() and not (path / "saved_model.pb").is_file():
        raise UsageError(f"{path} exists and is not a SavedModel directory; refusing to replace it")
    model = to_keras(graph)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        staged = staging / ("model.keras" if path.suffix else "saved_model")
        if path.suffix:
            model.save(staged)
        else:
            model.save(staged, save_format="tf", include_optimizer=False)
        if path.is_dir() and not path.suffix:
            shutil.rmtree(path)
        os.replace(staged, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model


def load_keras(path: str | Path) -> keras.Model:
    """Load a model written by :func:`write_keras` (``.keras`` file or SavedModel directory)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such Keras model")
    try:
        return keras.models.load_model(path, compile=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a Keras model this version can read ({exc})") from None
