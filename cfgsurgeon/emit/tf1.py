"""IR → a standalone, readable TF1-style Python file (``tf.compat.v1`` graph code) that freezes to a .pb.

The file depends only on tensorflow and numpy. It defines ``build_network()`` (a placeholder ``images`` and
one ``with tf1.variable_scope("l<index>_<type>"):`` block per cfg layer, whose variables and ops are named
after it), ``load_darknet_weights(session, path)`` for darknet ``.weights`` files, ``freeze(session)``,
``export(path)`` (those three in a new graph) and a ``__main__`` that writes the frozen graph
(``python FILE.py MODEL.weights MODEL.pb``), optionally runs it on a ``.npy`` input and saves the outputs as
``.npz``.

Layout: the input placeholder is NCHW (float32 ``N×C×H×W``, RGB in [0, 1], as for every other runtime) and is
transposed once to NHWC, the layout TensorFlow's CPU kernels need; each output (named like
:func:`cfgsurgeon.emit.heads.output_names`, e.g. ``yolo_16``) is transposed back, so it equals the torch
backend's head tensor. Darknet's OIHW filters become HWIO (depthwise: HW·C·multiplier) when loaded.

It computes what :mod:`cfgsurgeon.emit.torch` computes: convolutions with explicit symmetric zero padding
and ``VALID`` (TF's ``SAME`` pads stride-2 convolutions asymmetrically), darknet's pooling windows, route
groups, weighted shortcuts of unequal widths, both reorg orders, xnor/binary convolutions as darknet's
detector test runs them (batch norm folded in, ±mean|w| filters, ±1 inputs, -1 padding in the bit-packed
path), softmax trees (their group sizes written into the file) and raw [yolo] outputs before box decoding.
:class:`TF1Emitter` is a visitor with one ``visit_<LayerClass>`` per layer type; darknet-specific operations
become helper functions that are emitted only when a layer uses them.
"""

from __future__ import annotations

import math
import textwrap
import types
from dataclasses import dataclass, field
from pathlib import Path

from .. import layers as L
from ..errors import CfgError, UsageError
from ..files import atomic_output
from ..ir import Graph
from ..tree import has_tree, load_tree
from .darknet_rules import binary_conv_activation as _binary_conv_activation
from .darknet_rules import check_binary_conv as _check_binary_conv
from .darknet_rules import check_conv_geometry as _check_conv_geometry
from .darknet_rules import xnor_bit_packed as _xnor_bit_packed
from .heads import INPUT_NAME, head_layers, output_names
from .torch_source import _describe, _ident

__all__ = ["TF1Emitter", "output_names", "tf1_runner", "tf1_source", "write_tf1"]

BN_EPS = 1e-5  # darknet's normalize_cpu

# Without oneDNN (TF_ENABLE_ONEDNN_OPTS=0, or a CPU where TensorFlow leaves it off, e.g. AVX2-only) grappler
# fuses Conv2D + BiasAdd into a kernel that refuses groups; Conv2D + Add is not fused. Measured (3x3, 2-32
# groups, one thread): with oneDNN as fast as the fused op, where split/conv/concat is 1-3x slower; without
# it within 30 % of split/conv/concat either way.
_GROUPED_CONV_NOTE = """\
# groups={groups}: TensorFlow infers them from the filters' depth {depth}; the bias is a plain add, not
# tf.nn.bias_add, whose fused CPU kernel (used without oneDNN) refuses grouped convolutions"""

# -- helper functions of the generated file, emitted in this order when used --------------------------------

_ACTIVATION_HELPERS = {
    "revleaky": "return tf.nn.leaky_relu(x, alpha=0.1)",
    "relie": "return tf.nn.leaky_relu(x, alpha=0.01)",
    "ramp": "return tf.nn.relu(x) + 0.1 * x",
    "loggy": "return 2.0 * tf.sigmoid(x) - 1.0",
    "selu": "return tf.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * tf.math.expm1(x))",
    "gelu": "return 0.5 * x * (1.0 + tf.tanh(0.797885 * x + 0.035677 * x * x * x))",
    "swish": "return x * tf.sigmoid(x)",
    "mish": (  # as cfgsurgeon.emit.torch computes it: log(1 + eˣ) loses accuracy in converted graphs
        "e = tf.exp(tf.minimum(x, 20.0))\n"
        "    n = e * (e + 2)\n"
        "    return tf.where(x > 20, x, x * n / (n + 2))"
    ),
    "hard_mish": "return tf.where(x > 0, x, tf.where(x > -2, x * x / 2 + x, tf.zeros_like(x)))",
    "plse": (
        "return tf.where(\n"
        "        x < -4, 0.01 * (x + 4), tf.where(x > 4, 0.01 * (x - 4) + 1, 0.125 * x + 0.5)\n"
        "    )"
    ),
    "hardtan": "return tf.clip_by_value(x, -1.0, 1.0)",
    "lhtan": "return tf.where(x < 0, 0.001 * x, tf.where(x > 1, 0.001 * (x - 1) + 1, x))",
    "stair": (
        "n = tf.floor(x)\n"
        "    half = tf.floor(x / 2)\n"
        "    return tf.where(tf.math.floormod(n, 2) == 0, half, (x - n) + half)"
    ),
    "normalize_channels": (
        "positive = tf.nn.relu(x)\n"
        "    return positive / (1e-4 + tf.reduce_sum(positive, axis=-1, keepdims=True))"
    ),
    "normalize_channels_softmax": (
        "e = tf.exp(x)\n    return e / (1e-4 + tf.reduce_sum(e, axis=-1, keepdims=True))"
    ),
    "normalize_channels_softmax_maxval": (
        "e = tf.exp(x - tf.reduce_max(x, axis=-1, keepdims=True))\n"
        "    return e / (1e-4 + tf.reduce_sum(e, axis=-1, keepdims=True))"
    ),
}

# Activations that are one TensorFlow call; "linear" is no call at all.
_ACTIVATION_INLINE = {
    "relu": "tf.nn.relu({})",
    "relu6": "tf.nn.relu6({})",
    "logistic": "tf.sigmoid({})",
    "tanh": "tf.tanh({})",
    "elu": "tf.nn.elu({})",
    "leaky": "tf.nn.leaky_relu({}, alpha=0.1)",
}

_HELPERS: dict[str, str] = {
    **{
        name: f'\ndef {name}(x):\n    """darknet activation {name!r} (channels last)."""\n    {body}\n'
        for name, body in _ACTIVATION_HELPERS.items()
    },
    "antialiasing_blur": '''
def antialiasing_blur(x, kind, strides):
    """Fixed depthwise blur after an antialiased convolution: 3x3 binomial (kind 1) or 2x2 box (kind 2)."""
    if kind == 1:
        kernel, pad = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 16, 1
    else:
        kernel, pad = np.full((2, 2), 0.25, np.float32), 0
    filters = np.tile(kernel[:, :, None, None], (1, 1, x.shape[-1], 1))
    if pad:
        x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    return tf.nn.depthwise_conv2d(x, filters, strides=[1, *strides, 1], padding="VALID")
''',
    "binary_weights": '''
def binary_weights(weights, bn=None, biases=None, depthwise=False):
    """An xnor=1 / binary=1 convolution as darknet's detector test runs it: batch norm folded into the
    weights (fuse_conv_batchnorm), then each filter binarised to +-mean|w| (w > 0 is +). Returns the
    +-1 filters, each filter's mean|w| and the bias: conv(x, signs) * scale + bias."""
    if bn is not None:  # w * scales / sqrt(var + eps), biases - scales * mean / sqrt(var + eps)
        factor = bn["scales"] / tf.sqrt(bn["rolling_variance"] + BN_EPS)
        weights = weights * (tf.reshape(factor, weights.shape[2:]) if depthwise else factor)
        biases = bn["biases"] - factor * bn["rolling_mean"]
    per_filter = [0, 1] if depthwise else [0, 1, 2]  # depthwise filters: (kh, kw, in, multiplier)
    scale = tf.reshape(tf.reduce_mean(tf.abs(weights), axis=per_filter), [-1])
    return tf.where(weights > 0, 1.0, -1.0), scale, biases
''',
    "local_avgpool_darknet": '''
def local_avgpool_darknet(x, size, strides, pads):
    """darknet's [local_avgpool]: the mean over the taps of each window that lie inside the input."""
    window = dict(ksize=size, strides=[1, *strides, 1], padding="VALID")
    total = tf.nn.avg_pool2d(tf.pad(x, pads), **window)
    inside = tf.nn.avg_pool2d(tf.pad(tf.ones_like(x[:1, :, :, :1]), pads), **window)
    return total / inside
''',
    "maxpool_depth": '''
def maxpool_depth(x, out_channels):
    """maxpool_depth=1: per pixel, the max over channels g, g + out_channels, g + 2*out_channels, ..."""
    _, h, w, c = x.shape
    groups = -(-c // out_channels)
    padded = tf.pad(x, [[0, 0], [0, 0], [0, 0], [0, groups * out_channels - c]], constant_values=-np.inf)
    return tf.reduce_max(tf.reshape(padded, [-1, h, w, groups, out_channels]), axis=3)
''',
    "upsample_sum": '''
def upsample_sum(x, s):
    """[upsample] with stride=-s: sums s x s blocks. darknet reads the (C, H, W) input buffer with the
    output's geometry times s, so when s does not divide H or W the blocks run on in memory order."""
    _, h, w, c = x.shape
    oh, ow = h // s, w // s
    flat = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [-1, c * h * w])[:, : c * oh * s * ow * s]
    y = tf.reduce_sum(tf.reshape(flat, [-1, c, oh, s, ow, s]), axis=[3, 5])
    return tf.transpose(y, [0, 2, 3, 1])
''',
    "shortcut_darknet": '''
def shortcut_darknet(x, others, weights, normalization):
    """[shortcut]: w0*x + sum(wk*from_k) (weights optional); a from-layer with fewer channels adds to the
    first channels only, one with more channels is cut."""
    w = None if weights is None else shortcut_weights(weights, normalization)
    out = x * w[0] if w is not None else x
    channels = x.shape[-1]
    for k, other in enumerate(others, start=1):
        other = other[..., :channels]
        term = other * w[k][: other.shape[-1]] if w is not None else other
        n = min(channels, term.shape[-1])
        out = tf.concat([out[..., :n] + term, out[..., n:]], axis=-1) if n < channels else out + term
    return out


def shortcut_weights(w, normalization):
    """darknet's weights_normalization over the inputs (axis 0)."""
    if normalization in ("relu", "avg_relu"):
        positive = tf.nn.relu(w)
        return positive / (1e-4 + tf.reduce_sum(positive, axis=0, keepdims=True))
    if normalization == "softmax":
        e = tf.exp(w - tf.reduce_max(w, axis=0, keepdims=True))
        return e / (1e-4 + tf.reduce_sum(e, axis=0, keepdims=True))
    return w
''',
    "reorg_darknet": '''
def reorg_darknet(x, stride, out_shape, old):
    """Space-to-depth, computed in darknet's (C, H, W) order. old=True is [reorg] (YOLOv2): darknet reads the
    input buffer as (C/s^2, H*s, W*s), writes it as (C, H, W), then hands it on as (C*s^2, H/s, W/s);
    old=False is [reorg3d]."""
    _, h, w, c = x.shape
    s = stride
    nchw = tf.transpose(x, [0, 3, 1, 2])
    if old:
        blocks = tf.reshape(nchw, [-1, c // (s * s), h, s, w, s])
    else:
        blocks = tf.reshape(nchw, [-1, c, h // s, s, w // s, s])
    y = tf.reshape(tf.transpose(blocks, [0, 3, 5, 1, 2, 4]), [-1, *out_shape])
    return tf.transpose(y, [0, 2, 3, 1])
''',
    "yolo_darknet": '''
def yolo_darknet(x, anchors, entries, raw, scaled, scale_x_y, new_coords=False):
    """[yolo] / [Gaussian_yolo] output as darknet leaves it: logistic on every entry but the `raw` ones
    (on none with new_coords), then e*scale_x_y - (scale_x_y - 1)/2 on the `scaled` ones. Channels are
    [anchors][entries]."""
    _, h, w, _ = x.shape
    y = tf.reshape(x, [-1, h, w, anchors, entries])
    if not new_coords:
        logistic = np.ones(entries, bool)
        logistic[list(raw)] = False
        y = tf.where(logistic, tf.sigmoid(y), y)
    if scale_x_y != 1:
        scale, shift = np.ones(entries, np.float32), np.zeros(entries, np.float32)
        scale[list(scaled)], shift[list(scaled)] = scale_x_y, -0.5 * (scale_x_y - 1)
        y = y * scale + shift
    return tf.reshape(y, [-1, h, w, anchors * entries])
''',
    "region_darknet": '''
def region_darknet(x, anchors, coords, classes, softmax):
    """YOLOv2's [region]: per box, logistic objectness and (with softmax=1) softmax over classes, in
    darknet's flat (h, w, anchor, entry) order; output (batch, 1, 1, h*w*anchors*(coords+1+classes))."""
    _, h, w, _ = x.shape
    entries = coords + 1 + classes
    boxes = tf.reshape(x, [-1, h, w, anchors, entries])
    objectness = tf.sigmoid(boxes[..., coords : coords + 1])
    scores = boxes[..., coords + 1 :]
    scores = tf.nn.softmax(scores, axis=-1) if softmax else scores
    out = tf.concat([boxes[..., :coords], objectness, scores], axis=-1)
    return tf.reshape(out, [-1, 1, 1, h * w * anchors * entries])
''',
    "grouped_softmax": '''
def grouped_softmax(x, group_sizes, temperature=1.0):
    """darknet's softmax tree over the last axis: a softmax of x / temperature within each run of
    group_sizes (they tile the axis). Groups of one size are gathered into one (groups, size) block, so
    there is one softmax per distinct size (YOLO9000: ~3k groups, a few dozen sizes)."""
    starts, offset = {}, 0
    for size in group_sizes:
        if size:
            starts.setdefault(size, []).append(offset)
        offset += size
    blocks = [np.add.outer(first, np.arange(size)) for size, first in sorted(starts.items())]
    shape = [-1, *x.shape[1:]]
    x = tf.reshape(x / temperature if temperature != 1 else x, [-1, offset])  # rows of the grouped axis
    parts = [tf.reshape(tf.nn.softmax(tf.gather(x, block, axis=1)), [-1, block.size]) for block in blocks]
    order = np.concatenate([block.ravel() for block in blocks])
    return tf.reshape(tf.gather(tf.concat(parts, axis=1), np.argsort(order), axis=1), shape)
''',
    "region_tree_darknet": '''
def region_tree_darknet(x, anchors, coords, classes, group_sizes):
    """YOLOv2's [region] with tree=: logistic objectness and a softmax within each group of the tree, in
    darknet's flat (h, w, anchor, entry) order; output (batch, 1, 1, h*w*anchors*(coords+1+classes))."""
    _, h, w, _ = x.shape
    entries = coords + 1 + classes
    boxes = tf.reshape(x, [-1, h, w, anchors, entries])
    objectness = tf.sigmoid(boxes[..., coords : coords + 1])
    scores = grouped_softmax(boxes[..., coords + 1 :], group_sizes)
    out = tf.concat([boxes[..., :coords], objectness, scores], axis=-1)
    return tf.reshape(out, [-1, 1, 1, h * w * anchors * entries])
''',
    "softmax_tree_darknet": '''
def softmax_tree_darknet(x, group_sizes, temperature):
    """[softmax] with tree=: the tree's grouped softmax over the flat (C, H, W) input."""
    _, h, w, c = x.shape
    flat = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [-1, c * h * w])
    y = tf.reshape(grouped_softmax(flat, group_sizes, temperature), [-1, c, h, w])
    return tf.transpose(y, [0, 2, 3, 1])
''',
    "detection_softmax": '''
def detection_softmax(x, classes, side):
    """YOLOv1 [detection] with softmax=1: softmax over each cell's classes (the first block of the buffer,
    in darknet's (C, H, W) order)."""
    _, h, w, c = x.shape
    flat = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [-1, c * h * w])
    cells = side * side
    probs = tf.nn.softmax(tf.reshape(flat[:, : cells * classes], [-1, cells, classes]), axis=-1)
    flat = tf.concat([tf.reshape(probs, [-1, cells * classes]), flat[:, cells * classes :]], axis=1)
    return tf.transpose(tf.reshape(flat, [-1, c, h, w]), [0, 2, 3, 1])
''',
    "softmax_darknet": '''
def softmax_darknet(x, groups, temperature):
    """[softmax]: softmax over `groups` contiguous chunks of the flat (C, H, W) input, over temperature."""
    _, h, w, c = x.shape
    flat = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [-1, groups, c * h * w // groups])
    y = tf.reshape(tf.nn.softmax(flat / temperature, axis=-1), [-1, c, h, w])
    return tf.transpose(y, [0, 2, 3, 1])
''',
    "lrn_darknet": '''
def lrn_darknet(x, size, alpha, beta, kappa):
    """darknet's [lrn]: x * (kappa + alpha * S_k)^-beta with S_k the running sum of squares darknet keeps:
    channels 0 .. size/2 - 1 first, then channel k adds k + size/2 and drops k - (size-1)/2 - 1."""
    c = x.shape[-1]
    squared = x * x
    ahead, behind = size // 2, (size - 1) // 2 + 1
    first = tf.reduce_sum(squared[..., :ahead], axis=-1, keepdims=True)
    added = squared[..., ahead + 1 :]  # enters at channel 1 .. c - 1 - ahead
    dropped = squared[..., : max(0, c - behind)]  # leaves at channel behind ..
    step = tf.pad(added, [[0, 0], [0, 0], [0, 0], [1, c - 1 - added.shape[-1]]]) - tf.pad(
        dropped, [[0, 0], [0, 0], [0, 0], [c - dropped.shape[-1], 0]]
    )
    norms = kappa + alpha * (first + tf.math.cumsum(step, axis=-1))
    return x * tf.pow(norms, -beta)
''',
}
_NEEDS = {
    "region_tree_darknet": ("grouped_softmax",),
    "softmax_tree_darknet": ("grouped_softmax",),
}


@dataclass
class LayerCode:
    """What one cfg layer contributes: statements (inside its variable scope) that assign ``l<index>``, and
    for each of its ``.weights`` tensors the variable holding it and how the file's layout maps onto it."""

    lines: list[str]
    tensors: dict[str, tuple[str, str]] = field(default_factory=dict)  # darknet name → (variable, layout)


class TF1Emitter:
    """Visitor over the IR: ``visit_<LayerClass>(layer, inputs)`` returns the layer's :class:`LayerCode`."""

    def __init__(self, graph: Graph, tree: str | Path | None = None):
        self.graph = graph
        self.tree = tree if tree is not None else graph.tree_file  # for tree= layers (see cfgsurgeon.tree)
        self.helpers: set[str] = set()

    # -- driving -------------------------------------------------------------------------------------------
    def emit(self) -> str:
        codes = [self.visit(layer) for layer in self.graph.layers]
        parts = [self._builder(codes), self._weights_order(codes), _LOADER, _MAIN]
        body = "\n".join([*self._helper_sources(), _COMMON, *parts])
        return self._preamble() + "\n" + body

    def visit(self, layer: L.Layer) -> LayerCode:
        method = getattr(self, f"visit_{type(layer).__name__}", None)
        if method is None:
            raise CfgError(f"layer {layer.index} [{layer.header}] has no TF1 implementation", layer.where())
        inputs = [self.name(node) for node in layer.inputs]
        return method(layer, inputs)

    def name(self, node: L.Node) -> str:
        return "x" if isinstance(node, L.Net) else f"l{self.graph.index_of(node)}"

    def use(self, helper: str) -> str:
        self.helpers.add(helper)
        self.helpers.update(_NEEDS.get(helper, ()))
        return helper

    def activation(self, name: str, expr: str) -> str:
        if name == "linear":
            return expr
        if name in _ACTIVATION_INLINE:
            return _ACTIVATION_INLINE[name].format(expr)
        return f"{self.use(name)}({expr})"

    # -- layers with parameters ----------------------------------------------------------------------------
    def visit_Convolutional(self, layer: L.Convolutional, ins: list[str]) -> LayerCode:
        binary = bool(layer.xnor or layer.binary)
        if binary:
            _check_binary_conv(layer)
        else:
            _check_conv_geometry(layer)
        i, shared = layer.index, layer.shares
        owner = f"l{i}" if shared is None else f"l{self.graph.index_of(shared)}"
        c, n, k = layer.in_shape[0], layer.filters, layer.size
        bit_packed = _xnor_bit_packed(layer)
        groups, dil = layer.effective_groups, 1 if bit_packed else layer.effective_dilation
        sy, sx = (1, 1) if layer.antialiasing else layer.strides
        depthwise = groups == c and groups > 1 and (dil == 1 or (sy, sx) == (1, 1))
        lines, tensors = self._conv_variables(
            layer, shared, [k, k, c, n // c] if depthwise else [k, k, c // groups, n]
        )
        x, filters = ins[0], f"{owner}_weights"
        if binary:
            lines += self._binarized(layer, owner, depthwise)
            filters = f"l{i}_signs"
            if layer.xnor:
                lines.append(f"l{i} = tf.where({x} > 0, 1.0, -1.0)  # xnor: the input binarised too")
                x = f"l{i}"
        pad = layer.effective_padding * dil
        if bit_packed and pad:
            pads = _pads(pad, pad, pad, pad)
            lines.append(f"l{i} = tf.pad({x}, {pads}, constant_values=-1.0)  # bit-packed GEMM: -1 bits")
            x = f"l{i}"
        elif pad:
            lines.append(f"l{i} = tf.pad({x}, {_pads(pad, pad, pad, pad)})  # symmetric zero padding")
            x = f"l{i}"
        if depthwise:
            dilations = f", dilations=[{dil}, {dil}]" if dil != 1 else ""
            call = (
                f"tf.nn.depthwise_conv2d({x}, {filters}, strides=[1, {sy}, {sx}, 1], "
                f'padding="VALID"{dilations})'
            )
        else:
            dilations = f", dilations=[1, {dil}, {dil}, 1]" if dil != 1 else ""
            strides = f"strides=[1, {sy}, {sx}, 1]"
            call = f'tf.nn.conv2d({x}, {filters}, {strides}, padding="VALID"{dilations})'
            if groups > 1:
                lines += _GROUPED_CONV_NOTE.format(groups=groups, depth=c // groups).splitlines()
        lines.append(f"l{i} = {call}")
        if binary:
            expr = f"l{i} * l{i}_scale + l{i}_bias"
        elif layer.batch_normalize:
            expr = f"batch_norm(l{i}, {owner}_bn)"
        elif groups > 1 and not depthwise:
            expr = f"l{i} + {owner}_biases"
        else:
            expr = f"tf.nn.bias_add(l{i}, {owner}_biases)"
        lines.append(f"l{i} = {self.activation(_binary_conv_activation(layer), expr)}")
        if layer.antialiasing:
            strides = layer.strides
            lines.append(
                f"l{i} = {self.use('antialiasing_blur')}(l{i}, {layer.antialiasing}, {list(strides)})"
            )
        return LayerCode(lines, tensors)

    def _conv_variables(
        self, layer: L.Convolutional, shared: L.Layer | None, kernel: list[int]
    ) -> tuple[list[str], dict[str, tuple[str, str]]]:
        """The layer's own variables (none with share_index: it uses the shared layer's)."""
        i, n, scope = layer.index, layer.filters, f"l{layer.index}_{_ident(layer.kind)}"
        if shared is not None:
            return [
                f"# share_index: layer {self.graph.index_of(shared)}'s tensors, this layer's geometry"
            ], {}
        if layer.batch_normalize:
            lines = [f"l{i}_bn = batch_norm_variables({n})"]
            tensors = {name: (f"{scope}/{name}", "vector") for name in _BN_NAMES}
        else:
            lines = [f'l{i}_biases = variable("biases", [{n}])']
            tensors = {"biases": (f"{scope}/biases", "vector")}
        lines.append(f'l{i}_weights = variable("weights", {kernel})')
        tensors["weights"] = (f"{scope}/weights", "oihw")
        return lines, tensors

    def _binarized(self, layer: L.Convolutional, owner: str, depthwise: bool) -> list[str]:
        i = layer.index
        norm = f"bn={owner}_bn" if layer.batch_normalize else f"biases={owner}_biases"
        call = f"{self.use('binary_weights')}({owner}_weights, {norm}, depthwise={depthwise})"
        kind = "xnor=1" if layer.xnor else "binary=1"
        return [f"l{i}_signs, l{i}_scale, l{i}_bias = {call}  # {kind}"]

    def visit_Connected(self, layer: L.Connected, ins: list[str]) -> LayerCode:
        i, n, scope = layer.index, layer.output, f"l{layer.index}_{_ident(layer.kind)}"
        c, h, w = layer.in_shape
        lines, tensors = [], {}
        if layer.batch_normalize:
            lines.append(f"l{i}_bn = batch_norm_variables({n})")
            tensors = {name: (f"{scope}/{name}", "vector") for name in _BN_NAMES}
        else:
            lines.append(f'l{i}_biases = variable("biases", [{n}])')
            tensors["biases"] = (f"{scope}/biases", "vector")
        lines.append(f'l{i}_weights = variable("weights", [{c * h * w}, {n}])')
        tensors["weights"] = (f"{scope}/weights", "fc")
        if (h, w) == (1, 1):
            lines.append(f"l{i} = tf.reshape({ins[0]}, [-1, {c}])")
        else:
            flat = f"tf.reshape(tf.transpose({ins[0]}, [0, 3, 1, 2]), [-1, {c * h * w}])"
            lines.append(f"l{i} = {flat}  # flattened in darknet's (C, H, W) order")
        lines.append(f"l{i} = tf.matmul(l{i}, l{i}_weights)")
        expr = f"batch_norm(l{i}, l{i}_bn)" if layer.batch_normalize else f"tf.nn.bias_add(l{i}, l{i}_biases)"
        lines.append(f"l{i} = tf.reshape({self.activation(layer.activation, expr)}, [-1, 1, 1, {n}])")
        return LayerCode(lines, tensors)

    def visit_BatchNorm(self, layer: L.BatchNorm, ins: list[str]) -> LayerCode:
        i, scope = layer.index, f"l{layer.index}_{_ident(layer.kind)}"
        lines = [f"l{i}_bn = batch_norm_variables({layer.in_shape[0]})"]
        lines.append(f"l{i} = batch_norm({ins[0]}, l{i}_bn)")
        return LayerCode(lines, {name: (f"{scope}/{name}", "vector") for name in _BN_NAMES})

    def visit_Shortcut(self, layer: L.Shortcut, ins: list[str]) -> LayerCode:
        i = layer.index
        shape = dict(layer.weight_layout()).get("weights")
        channels = {node.out_shape[0] for node in layer.inputs}
        if shape is None and len(channels) == 1:
            return LayerCode([f"l{i} = {self.activation(layer.activation, ' + '.join(ins))}"])
        lines, tensors, weights = [], {}, "None"
        if shape is not None:
            weights = f"l{i}_weights"
            lines.append(f'{weights} = variable("weights", {list(shape)})  # {layer.weights_type}')
            tensors = {"weights": (f"l{i}_{_ident(layer.kind)}/weights", "vector")}
        call = (
            f"{self.use('shortcut_darknet')}({ins[0]}, [{', '.join(ins[1:])}], {weights}, "
            f'"{layer.weights_normalization}")'
        )
        lines.append(f"l{i} = {self.activation(layer.activation, call)}")
        return LayerCode(lines, tensors)

    def visit_Implicit(self, layer: L.Implicit, ins: list[str]) -> LayerCode:
        i, (c, h, w) = layer.index, layer.out_shape
        lines = [
            f'l{i}_weights = variable("weights", [{c * h * w}])',
            f"l{i} = tf.transpose(tf.reshape(l{i}_weights, [1, {c}, {h}, {w}]), [0, 2, 3, 1])",
            f"l{i} = tf.tile(l{i}, [tf.shape({ins[0]})[0], 1, 1, 1])  # a learned constant per image",
        ]
        return LayerCode(lines, {"weights": (f"l{i}_{_ident(layer.kind)}/weights", "vector")})

    # -- layers without parameters -------------------------------------------------------------------------
    def visit_MaxPool(self, layer: L.MaxPool, ins: list[str]) -> LayerCode:
        i = layer.index
        if layer.maxpool_depth:
            return LayerCode([f"l{i} = {self.use('maxpool_depth')}({ins[0]}, {layer.out_channels})"])
        _refuse_pool_antialiasing(layer)
        pads, crop = _pool_geometry(layer)
        strides = f"[1, {layer.stride_y}, {layer.stride_x}, 1]"
        lines = []
        x = ins[0]
        if any(pads):
            lines.append(f"l{i} = tf.pad({x}, {_pads(*pads)}, constant_values=-np.inf)  # outside: ignored")
            x = f"l{i}"
        lines.append(f'l{i} = tf.nn.max_pool2d({x}, {layer.size}, strides={strides}, padding="VALID")')
        if crop:
            lines.append(f"l{i} = l{i}{crop}")
        return LayerCode(lines)

    def visit_LocalAvgPool(self, layer: L.LocalAvgPool, ins: list[str]) -> LayerCode:
        _refuse_pool_antialiasing(layer)
        pads, crop = _pool_geometry(layer)
        strides = [layer.stride_y, layer.stride_x]
        call = f"{self.use('local_avgpool_darknet')}({ins[0]}, {layer.size}, {strides}, {_pads(*pads)})"
        return LayerCode([f"l{layer.index} = {call}{crop}"])

    def visit_AvgPool(self, layer: L.AvgPool, ins: list[str]) -> LayerCode:
        return LayerCode([f"l{layer.index} = tf.reduce_mean({ins[0]}, axis=[1, 2], keepdims=True)"])

    def visit_Upsample(self, layer: L.Upsample, ins: list[str]) -> LayerCode:
        i, (_, h, w) = layer.index, layer.out_shape
        if layer.stride > 0:
            expr = f"tf1.image.resize_nearest_neighbor({ins[0]}, [{h}, {w}])"
        else:
            expr = f"{self.use('upsample_sum')}({ins[0]}, {-layer.stride})"
        lines = [f"l{i} = {expr}"]
        if layer.scale != 1:
            lines.append(f"l{i} = l{i} * {layer.scale!r}")
        return LayerCode(lines)

    def visit_Route(self, layer: L.Route, ins: list[str]) -> LayerCode:
        if layer.groups > 1:
            ins = [f"tf.split({x}, {layer.groups}, axis=-1)[{layer.group_id}]" for x in ins]
        if len(ins) == 1:
            return LayerCode([f"l{layer.index} = {ins[0]}"])
        return LayerCode(_wrapped(f"l{layer.index} = tf.concat([", ", ".join(ins), "], axis=-1)"))

    def visit_ScaleChannels(self, layer: L.ScaleChannels, ins: list[str]) -> LayerCode:
        scale, target = ins
        factor = f"{scale}[..., :1]" if layer.scale_wh else scale
        return LayerCode([f"l{layer.index} = {self.activation(layer.activation, f'{target} * {factor}')}"])

    def visit_Sam(self, layer: L.Sam, ins: list[str]) -> LayerCode:
        return LayerCode([f"l{layer.index} = {self.activation(layer.activation, f'{ins[0]} * {ins[1]}')}"])

    def visit_Reorg3d(self, layer: L.Reorg3d, ins: list[str]) -> LayerCode:
        if layer.reverse:
            raise CfgError(
                f"layer {layer.index} [{layer.header}] reverse=1 is not supported", layer.where("reverse")
            )
        old = isinstance(layer, L.Reorg)
        shape = list(layer.out_shape)
        call = f"{self.use('reorg_darknet')}({ins[0]}, {layer.stride}, {shape}, old={old})"
        return LayerCode([f"l{layer.index} = {call}"])

    visit_Reorg = visit_Reorg3d

    def visit_Yolo(self, layer: L.Yolo, ins: list[str]) -> LayerCode:
        entries = layer.classes + layer.box_entries
        raw, scaled = ((4, 6), (0, 2)) if isinstance(layer, L.GaussianYolo) else ((2, 3), (0, 1))
        args = f"{ins[0]}, {len(layer.mask)}, {entries}, raw={raw}, scaled={scaled}"
        args += f", scale_x_y={layer.scale_x_y!r}"
        if getattr(layer, "new_coords", 0) and not isinstance(layer, L.GaussianYolo):
            args += ", new_coords=True"
        return LayerCode([f"l{layer.index} = {self.use('yolo_darknet')}({args})"])

    visit_GaussianYolo = visit_Yolo

    def visit_Region(self, layer: L.Region, ins: list[str]) -> LayerCode:
        args = f"{ins[0]}, {layer.num}, {layer.coords}, {layer.classes}"
        if not has_tree(layer):
            args += f", softmax={bool(layer.softmax)}"
            return LayerCode([f"l{layer.index} = {self.use('region_darknet')}({args})"])
        lines = self._tree_groups(layer, layer.classes)  # first: a missing tree file is the first error
        _check_region_tree(layer)
        call = f"{self.use('region_tree_darknet')}({args}, l{layer.index}_tree)"
        return LayerCode([*lines, f"l{layer.index} = {call}"])

    def visit_Detection(self, layer: L.Detection, ins: list[str]) -> LayerCode:
        if layer.options.get("softmax") != "1":
            return LayerCode([f"l{layer.index} = {ins[0]}"])
        classes, side = int(layer.options.get("classes", "1")), int(layer.options.get("side", "7"))
        return LayerCode([f"l{layer.index} = {self.use('detection_softmax')}({ins[0]}, {classes}, {side})"])

    def visit_Softmax(self, layer: L.Softmax, ins: list[str]) -> LayerCode:
        if has_tree(layer):
            lines = self._tree_groups(layer, math.prod(layer.in_shape))
            args = f"{ins[0]}, l{layer.index}_tree, {layer.temperature!r}"
            return LayerCode([*lines, f"l{layer.index} = {self.use('softmax_tree_darknet')}({args})"])
        args = f"{ins[0]}, {layer.groups}, {layer.temperature!r}"
        return LayerCode([f"l{layer.index} = {self.use('softmax_darknet')}({args})"])

    def _tree_groups(self, layer: L.Layer, entries: int) -> list[str]:
        """``l<i>_tree``: the group sizes of the layer's softmax tree, written into the file (no tree file is
        needed when it runs)."""
        tree = load_tree(layer, entries, self.tree)
        sizes = ", ".join(map(str, tree.group_sizes))
        comment = f"# softmax groups of {tree.path.name}: sizes of its runs of siblings, in file order"
        return [comment, *_wrapped(f"l{layer.index}_tree = [", sizes, "]")]

    def visit_Activation(self, layer: L.Activation, ins: list[str]) -> LayerCode:
        return LayerCode([f"l{layer.index} = {self.activation(layer.activation, ins[0])}"])

    def visit_Crop(self, layer: L.Crop, ins: list[str]) -> LayerCode:
        _, h, w = layer.in_shape
        top, left = (h - layer.crop_height) // 2, (w - layer.crop_width) // 2
        rows, cols = f"{top}:{top + layer.crop_height}", f"{left}:{left + layer.crop_width}"
        expr = f"{ins[0]}[:, {rows}, {cols}, :]"
        return LayerCode([f"l{layer.index} = {expr if layer.noadjust else f'{expr} * 2 - 1'}"])

    def visit_Normalization(self, layer: L.Normalization, ins: list[str]) -> LayerCode:
        args = f"{ins[0]}, {layer.size}, {layer.alpha!r}, {layer.beta!r}, {layer.kappa!r}"
        return LayerCode([f"l{layer.index} = {self.use('lrn_darknet')}({args})"])

    def _identity(self, layer: L.Layer, ins: list[str]) -> LayerCode:
        return LayerCode([f"l{layer.index} = {ins[0]}"])

    visit_Dropout = visit_Empty = visit_Cost = visit_Contrastive = _identity

    # -- the file's parts ----------------------------------------------------------------------------------
    def _preamble(self) -> str:
        from .. import __version__

        graph = self.graph
        c, h, w = graph.input_shape
        names = ", ".join(f'"{name}"' for name in output_names(graph))
        return _PREAMBLE.format(
            source=Path(graph.source).name,
            layers=len(graph.layers),
            shape=f"{c}x{h}x{w}",
            version=__version__,
            bn_eps=repr(BN_EPS),
            input_name=INPUT_NAME,
            input_shape=graph.input_shape,
            outputs="\n".join(_wrapped("OUTPUT_NAMES = [", names, "]", indent="")),
        )

    def _helper_sources(self) -> list[str]:
        return [source for name, source in _HELPERS.items() if name in self.helpers]

    def _builder(self, codes: list[LayerCode]) -> str:
        c, h, w = self.graph.input_shape
        lines = [
            "",
            "def build_network():",
            '    """Create the network in the default graph; returns the input placeholder and the outputs',
            "    (NCHW, named OUTPUT_NAMES). Layer i is the block `l<i>_<type>`: its variables and ops",
            '    carry that name, and its output (NHWC) is the Python variable l<i>."""',
            f"    images = tf1.placeholder(tf.float32, [None, {c}, {h}, {w}], name=INPUT_NAME)",
            "    x = tf.transpose(images, [0, 2, 3, 1])  # NCHW -> NHWC: every layer below computes in NHWC",
        ]
        for layer, code in zip(self.graph.layers, codes, strict=True):
            lines += ["", f"    # {_describe(layer)}"]
            lines.append(f'    with tf1.variable_scope("l{layer.index}_{_ident(layer.kind)}"):')
            lines += [f"        {line}" for line in code.lines]
        lines += ["", "    # the outputs, back in NCHW: the torch backend's head tensors", "    outputs = ["]
        for layer, name in zip(head_layers(self.graph), output_names(self.graph), strict=True):
            lines.append(f'        tf.transpose(l{layer.index}, [0, 3, 1, 2], name="{name}"),')
        lines += ["    ]", "    return images, outputs", ""]
        return "\n".join(lines)

    def _weights_order(self, codes: list[LayerCode]) -> str:
        lines = [
            "",
            "# The tensors of a darknet .weights file in file order: (variable, shape in the file, layout);",
            '# layout "oihw": convolution filters (TF wants HWIO), "fc": connected weights (TF: in x out).',
            "DARKNET_ORDER = [",
        ]
        for layer, code in zip(self.graph.layers, codes, strict=True):
            for name, shape in layer.weight_layout():
                variable, layout = code.tensors[name]
                lines.append(f'    ("{variable}", {shape}, "{layout}"),')
        lines.append("]")
        return "\n".join(lines) + "\n"


_BN_NAMES = ("biases", "scales", "rolling_mean", "rolling_variance")


def _pads(top: int, bottom: int, left: int, right: int) -> str:
    return f"[[0, 0], [{top}, {bottom}], [{left}, {right}], [0, 0]]"


def _pool_geometry(layer: L.MaxPool) -> tuple[tuple[int, int, int, int], str]:
    """(top, bottom, left, right) padding of darknet's pooling windows (origin at -padding//2) and the
    slice that trims what the padded pooling computes beyond darknet's output size ('' when nothing)."""
    _, h, w = layer.in_shape
    _, out_h, out_w = layer.out_shape
    top = left = layer.padding // 2
    bottom = max(0, (out_h - 1) * layer.stride_y + layer.size - h - top)
    right = max(0, (out_w - 1) * layer.stride_x + layer.size - w - left)
    pooled_h = (h + top + bottom - layer.size) // layer.stride_y + 1
    pooled_w = (w + left + right - layer.size) // layer.stride_x + 1
    crop = f"[:, :{out_h}, :{out_w}, :]" if (pooled_h, pooled_w) != (out_h, out_w) else ""
    return (top, bottom, left, right), crop


def _refuse_pool_antialiasing(layer: L.MaxPool) -> None:
    if layer.antialiasing:  # pooling at stride 1 then a blur: a different output size than the IR's
        raise CfgError(
            f"layer {layer.index} [{layer.header}] antialiasing is not supported", layer.where("antialiasing")
        )


def _check_region_tree(layer: L.Region) -> None:
    """As the torch backend: darknet's tree softmax starts at entry 5 of each box whatever coords is."""
    if layer.coords != 4:
        raise CfgError(
            f"layer {layer.index} [region] tree= with coords={layer.coords}: darknet applies the tree "
            "at entry 5 of each box whatever coords is (undefined result); use coords=4",
            layer.where("tree"),
        )


def _wrapped(head: str, inner: str, tail: str, indent: str = "        ") -> list[str]:
    """``head + inner + tail`` if it fits in 110 columns (after ``indent``), else ``inner`` filled on its own
    lines between (relative to the block's indentation)."""
    if len(indent + head + inner + tail) <= 110:
        return [head + inner + tail]
    filled = textwrap.wrap(inner + ",", width=110 - len(indent) - 4, break_long_words=False)
    return [head, *(f"    {line}" for line in filled), tail.lstrip()]


def tf1_source(graph: Graph, tree: str | Path | None = None) -> str:
    """The standalone TF1-style source of ``graph`` (it reads a ``.weights`` file at run time). ``tree``: the
    softmax-tree file for ``tree=`` layers, as in :func:`cfgsurgeon.emit.torch.to_torch`."""
    return TF1Emitter(graph, tree).emit()


def write_tf1(graph: Graph, path: str | Path, tree: str | Path | None = None) -> None:
    text = tf1_source(graph, tree)  # before opening the output: an unsupported layer leaves no file behind
    with atomic_output(path, "w") as out:
        out.write(text)


# -- running: the `tf1` backend of cfgsurgeon.runtimes ------------------------------------------------------


def load_module(source: str, name: str = "cfgsurgeon_tf1_generated") -> types.ModuleType:
    """Execute generated source as a module (in this process)."""
    module = types.ModuleType(name)
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


def frozen_graph_def(graph: Graph):
    """Generate the file for ``graph`` (weights loaded) and run its ``export`` in this process on the
    graph's tensors: the frozen GraphDef that its ``main`` would write to a ``.pb``."""
    import tensorflow as tf

    from ..weights import WeightsHeader, stored_floats

    module = load_module(tf1_source(graph))
    floats = stored_floats(graph, WeightsHeader())  # the default header: connected weights not transposed
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # TF1 deprecation notes
    try:
        return module.export(floats)
    finally:
        logger.setLevel(level)


def tf1_runner(graph: Graph, model: Path | None = None, threads: int | None = None):
    """A runner (float32 N×C×H×W batch → head outputs) over the frozen TF1 graph: ``model`` (a ``.pb`` made
    by running the exported file) or, without it, the graph exported from ``graph`` in memory."""
    import numpy as np
    import tensorflow as tf

    tf1 = tf.compat.v1
    if model is None:
        graph_def = frozen_graph_def(graph)
    else:
        graph_def = tf1.GraphDef()
        try:
            graph_def.ParseFromString(model.read_bytes())
        except Exception:  # protobuf's DecodeError
            raise UsageError(f"{model}: not a frozen TensorFlow graph (.pb)") from None
    names = output_names(graph)
    nodes = {node.name: node for node in graph_def.node}
    missing = [name for name in [INPUT_NAME, *names] if name not in nodes]
    if missing:
        raise UsageError(
            f"{model or 'the exported model'} has no node {', '.join(missing)}; the cfg's heads are "
            f"{names} (input '{INPUT_NAME}'): was it exported from this cfg?"
        )
    dims = [d.size for d in nodes[INPUT_NAME].attr["shape"].shape.dim]
    if dims[1:] != list(graph.input_shape):
        raise UsageError(
            f"{model}: input '{INPUT_NAME}' is {dims[1:]} (C, H, W), the cfg's is {list(graph.input_shape)}"
        )
    tf_graph = tf.Graph()
    with tf_graph.as_default():
        tf1.import_graph_def(graph_def, name="")
    del graph_def, nodes  # the weights: only the graph's copy is needed now
    config = tf1.ConfigProto()
    if threads:
        config.intra_op_parallelism_threads = threads
        config.inter_op_parallelism_threads = 1
    session = tf1.Session(graph=tf_graph, config=config)
    fetches = [f"{name}:0" for name in names]

    def run(batch: np.ndarray) -> list[np.ndarray]:
        return session.run(fetches, {f"{INPUT_NAME}:0": np.ascontiguousarray(batch, dtype=np.float32)})

    return run


_PREAMBLE = '''"""{source}: {layers} layers, input {shape} (CxHxW). Generated by cfgsurgeon {version}.

Standalone TF1-style graph code (tf.compat.v1): needs only tensorflow and numpy. Computes what darknet
computes at inference time (batch norm with its running statistics, darknet's pooling windows, raw [yolo]
outputs before box decoding). The input placeholder "images" is float32 (batch, C, H, W), RGB in [0, 1]; the
layers compute in NHWC; the outputs OUTPUT_NAMES are transposed back to (batch, C, H, W).

    python THIS_FILE.py MODEL.weights MODEL.pb [INPUT.npy OUTPUT.npz]

writes the frozen graph MODEL.pb (and runs it on INPUT.npy, saving the outputs to OUTPUT.npz), or in Python:

    graph_def = export("MODEL.weights")  # build_network(), load_darknet_weights(), freeze() in a new graph
    outputs = run_frozen(graph_def, x)  # x: float32 (batch, C, H, W)
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before tensorflow is imported: no C++ info lines

import numpy as np
import tensorflow as tf

tf1 = tf.compat.v1

BN_EPS = {bn_eps}  # darknet's batch-norm epsilon
INPUT_NAME = "{input_name}"
INPUT_SHAPE = {input_shape}  # (C, H, W)
{outputs}
'''

_COMMON = '''
def variable(name, shape):
    """A float32 variable of the current layer's scope (zeros until load_darknet_weights fills it)."""
    return tf1.get_variable(name, shape, tf.float32, tf1.zeros_initializer())


def batch_norm_variables(channels):
    """darknet's batch-norm tensors, named as in its .weights files."""
    names = ("biases", "scales", "rolling_mean", "rolling_variance")
    return {name: variable(name, [channels]) for name in names}


def batch_norm(x, bn):
    """darknet's inference batch norm (last axis): (x - mean) / sqrt(variance + eps) * scales + biases."""
    return tf.nn.batch_normalization(
        x, bn["rolling_mean"], bn["rolling_variance"], bn["biases"], bn["scales"], BN_EPS
    )
'''

_LOADER = '''
def load_darknet_weights(session, path):
    """Read a darknet .weights file into the variables of the session's graph (made by build_network);
    returns the file's header (major, minor, revision, seen).

    The header is three int32 and `seen` (uint64 from version 0.2 on, uint32 before); then every tensor of
    DARKNET_ORDER as float32, with nothing else: the file size must match exactly.
    """
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 16:
        raise ValueError(f"{path}: not a darknet .weights file ({len(data)} bytes)")
    major, minor, revision = (int(v) for v in np.frombuffer(data, dtype="<i4", count=3))
    wide = major * 10 + minor >= 2
    header = 20 if wide else 16
    seen = int(np.frombuffer(data, dtype="<u8" if wide else "<u4", count=1, offset=12)[0])
    transposed = major > 1000 or minor > 1000  # very old files store connected weights as [inputs][outputs]
    needed = sum(int(np.prod(shape)) for _, shape, _ in DARKNET_ORDER)
    if len(data) != header + 4 * needed:
        raise ValueError(f"{path}: {len(data)} bytes, this network needs {header + 4 * needed}")
    assign_darknet_weights(session, np.frombuffer(data, dtype="<f4", offset=header), transposed)
    return major, minor, revision, seen


def assign_darknet_weights(session, floats, transposed=False):
    """Set the variables from the float32 tensors of a .weights file (all of DARKNET_ORDER, in order)."""
    variables = {v.op.name: v for v in session.graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES)}
    feeds, offset = {}, 0
    for name, shape, layout in DARKNET_ORDER:
        count = int(np.prod(shape))
        values = floats[offset : offset + count]
        offset += count
        if layout == "oihw":  # (out, in/g, kh, kw) -> (kh, kw, in/g, out); depthwise: (kh, kw, in, k)
            values = values.reshape(shape).transpose(2, 3, 1, 0)
        elif layout == "fc":  # (out, in) -> (in, out)
            values = values.reshape(shape[::-1]) if transposed else values.reshape(shape).T
        target = variables[name]
        feeds[target.initial_value] = values.reshape(target.shape)
    if offset != len(floats):
        raise ValueError(f"{len(floats)} floats given, this network needs {offset}")
    session.run([variables[name].initializer for name, _, _ in DARKNET_ORDER], feeds)


def freeze(session):
    """The session's graph with its variables turned into constants, cut down to the outputs."""
    graph_def = session.graph.as_graph_def()
    return tf1.graph_util.convert_variables_to_constants(session, graph_def, OUTPUT_NAMES)


def export(weights):
    """Build the network in a new graph, load the weights (a .weights file, or the float32 tensors that
    follow its header) and return the frozen GraphDef."""
    with tf.Graph().as_default():
        build_network()
        with tf1.Session() as session:
            if isinstance(weights, np.ndarray):
                assign_darknet_weights(session, weights)
            else:
                load_darknet_weights(session, weights)
            return freeze(session)


def run_frozen(graph_def, x):
    """Run a frozen graph on x (float32, (C, H, W) or (batch, C, H, W)); returns the outputs (numpy)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    x = x[None] if x.ndim == 3 else x
    with tf.Graph().as_default() as graph:
        tf1.import_graph_def(graph_def, name="")
        with tf1.Session(graph=graph) as session:
            return session.run([f"{name}:0" for name in OUTPUT_NAMES], {f"{INPUT_NAME}:0": x})
'''

_MAIN = """
def main(argv=None):
    parser = argparse.ArgumentParser(description="Freeze the network with darknet weights into a .pb file.")
    parser.add_argument("weights", help="darknet .weights file for this network")
    parser.add_argument("pb", help="frozen graph to write (.pb)")
    parser.add_argument("input", nargs="?", help="optional .npy input, (C, H, W) or (batch, C, H, W)")
    parser.add_argument("output", nargs="?", help=".npz to write the outputs of INPUT to, one per output")
    args = parser.parse_args(argv)
    if (args.input is None) != (args.output is None):
        parser.error("give both INPUT.npy and OUTPUT.npz, or neither")
    graph_def = export(args.weights)
    partial = args.pb + ".partial"
    with open(partial, "wb") as f:
        f.write(graph_def.SerializeToString())
    os.replace(partial, args.pb)
    if args.input is not None:
        outputs = run_frozen(graph_def, np.load(args.input))
        np.savez(args.output, **dict(zip(OUTPUT_NAMES, outputs)))


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")  # TF1 deprecation notes
    main()
"""
