"""The primitive ops of :mod:`.lower` in TensorFlow, channels last (NHWC): one function per op, plus
darknet's activations, all computing what :mod:`.torch_ops` computes.

The Keras model (:mod:`.keras`) calls these functions inside its layers; the TF1 source (:mod:`.tf1`)
copies their text into the file it writes, so both run the same code. Hence the rules for what lies above
the tables at the end: module-level functions that use only ``tf``, ``np`` and each other, with ASCII
text. A tensor-holding op's tensors come as a dict keyed like the lowering's ``params`` (``weight``,
``bias``, ``running_mean``, ...): a convolution's filters are HWIO ``(k, k, in/groups, filters)``, a
connected layer's ``(inputs, outputs)``. Inside another op (xnor's convolution) such an op is a dict of
its fields with its tensors under ``tensors``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from . import lower as lo

# -- darknet's activations (activations.c / gemm.c), channels last -------------------------------------------


def linear(x):
    return x


def leaky(x):
    return tf.nn.leaky_relu(x, alpha=0.1)


def relie(x):
    return tf.nn.leaky_relu(x, alpha=0.01)


def ramp(x):
    return tf.nn.relu(x) + 0.1 * x


def loggy(x):
    return 2.0 * tf.sigmoid(x) - 1.0


def selu(x):
    return tf.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * tf.math.expm1(x))


def gelu(x):
    return 0.5 * x * (1.0 + tf.tanh(0.797885 * x + 0.035677 * x * x * x))


def swish(x):
    return x * tf.sigmoid(x)


def mish(x):
    """x*tanh(softplus(x)) as torch_ops.mish computes it: log(1 + e^x) loses accuracy in converted graphs."""
    e = tf.exp(tf.minimum(x, 20.0))
    n = e * (e + 2)
    return tf.where(x > 20, x, x * n / (n + 2))


def hard_mish(x):
    return tf.where(x > 0, x, tf.where(x > -2, x * x / 2 + x, tf.zeros_like(x)))


def plse(x):
    return tf.where(x < -4, 0.01 * (x + 4), tf.where(x > 4, 0.01 * (x - 4) + 1, 0.125 * x + 0.5))


def hardtan(x):
    return tf.clip_by_value(x, -1.0, 1.0)


def lhtan(x):
    return tf.where(x < 0, 0.001 * x, tf.where(x > 1, 0.001 * (x - 1) + 1, x))


def stair(x):
    n = tf.floor(x)
    half = tf.floor(x / 2)
    return tf.where(tf.equal(tf.math.floormod(n, 2), 0), half, (x - n) + half)  # == is identity in TF1 graphs


def normalize_channels(x):
    positive = tf.nn.relu(x)
    return positive / (1e-4 + tf.reduce_sum(positive, axis=-1, keepdims=True))


def normalize_channels_softmax(x):
    e = tf.exp(x)
    return e / (1e-4 + tf.reduce_sum(e, axis=-1, keepdims=True))


def normalize_channels_softmax_maxval(x):
    return normalize_channels_softmax(x - tf.reduce_max(x, axis=-1, keepdims=True))


# -- ops that hold tensors -----------------------------------------------------------------------------------


def padded(x, top, bottom, left, right, value=0.0):
    """x with rows and columns of `value` around it (NHWC)."""
    if not (top or bottom or left or right):
        return x
    return tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=value)


def conv2d(x, conv, in_channels, filters, size, stride, padding, dilation, groups, bias):
    """Cross-correlation with explicit symmetric zero padding, then VALID. groups = channels is a depthwise
    convolution (the HWIO filters read as (k, k, channels, multiplier)) unless it is also strided and
    dilated, which depthwise_conv2d refuses; other groups TensorFlow infers from the filters' depth."""
    x = padded(x, padding[0], padding[0], padding[1], padding[1])
    strides = [1, stride[0], stride[1], 1]
    depthwise = groups == in_channels > 1 and (dilation == 1 or tuple(stride) == (1, 1))
    if depthwise:
        kernel = tf.reshape(conv["weight"], [size, size, in_channels, filters // in_channels])
        y = tf.nn.depthwise_conv2d(x, kernel, strides, "VALID", dilations=[dilation, dilation])
    else:
        y = tf.nn.conv2d(x, conv["weight"], strides, "VALID", dilations=[1, dilation, dilation, 1])
    if not bias:
        return y
    # a plain add for grouped convolutions: without oneDNN, grappler fuses Conv2D + BiasAdd into a kernel
    # that refuses groups (Conv2D + Add is not fused)
    return y + conv["bias"] if groups > 1 and not depthwise else tf.nn.bias_add(y, conv["bias"])


def batch_norm(x, bn, channels, eps, spatial):
    """darknet's inference batch norm over the last axis: (x - mean) / sqrt(var + eps) * scale + bias."""
    return tf.nn.batch_normalization(x, bn["running_mean"], bn["running_var"], bn["bias"], bn["weight"], eps)


def dense(x, fc, inputs, outputs, bias):
    """[connected]'s matrix product; the weights are (inputs, outputs)."""
    y = tf.matmul(x, fc["weight"])
    return tf.nn.bias_add(y, fc["bias"]) if bias else y


def antialiasing_blur(x, channels, kind, stride):
    """Fixed depthwise blur after an antialiased convolution: 3x3 binomial (kind 1) or 2x2 box (kind 2)."""
    if kind == 1:
        kernel, pad = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 16, 1
    else:
        kernel, pad = np.full((2, 2), 0.25, np.float32), 0
    filters = np.tile(kernel[:, :, None, None], (1, 1, channels, 1))
    x = padded(x, pad, pad, pad, pad)
    return tf.nn.depthwise_conv2d(x, filters, strides=[1, stride[0], stride[1], 1], padding="VALID")


def binary_conv_darknet(x, conv, bn, xnor, minus_one_pad):
    """xnor=1 / binary=1 convolution as darknet's detector test runs it, before the activation: batch norm
    folded into the weights (fuse_conv_batchnorm), each filter binarised to +-mean|w| (w > 0 is +); xnor
    also binarises the input to +-1 and, in darknet's bit-packed GEMM, pads it with -1."""
    weight = conv["tensors"]["weight"]
    if bn is None:
        bias = conv["tensors"]["bias"]
    else:  # w * scale / sqrt(var + eps), bias - scale * mean / sqrt(var + eps); the filters are the last axis
        norm = bn["tensors"]
        factor = norm["weight"] / tf.sqrt(norm["running_var"] + bn["eps"])
        weight, bias = weight * factor, norm["bias"] - factor * norm["running_mean"]
    scale = tf.reduce_mean(tf.abs(weight), axis=[0, 1, 2])
    signs = tf.where(weight > 0, 1.0, -1.0)
    if xnor:
        x = tf.where(x > 0, 1.0, -1.0)
    if minus_one_pad is not None:
        x = padded(x, minus_one_pad, minus_one_pad, minus_one_pad, minus_one_pad, value=-1.0)
    geometry = {key: value for key, value in conv.items() if key not in ("tensors", "bias")}
    y = conv2d(x, {"weight": signs}, **geometry, bias=False)
    return y * scale + bias


def local_darknet(x, weights, biases, size, stride, padding):
    """[local] before its activation: at each output position, darknet's im2col column (zero padding, order
    channel, kernel row, kernel column) times that position's filters weights[y, x] (filters, c, size, size),
    plus one bias per output value (biases: (filters, out_h, out_w)). The column is gathered by strided
    slices, one per kernel tap."""
    out_h, out_w, filters = weights.shape[:3]
    x = padded(x, padding, padding, padding, padding)
    rows, cols = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1
    taps = [x[:, i : i + rows : stride, j : j + cols : stride, :] for i in range(size) for j in range(size)]
    columns = tf.reshape(tf.stack(taps, axis=-1), [-1, out_h, out_w, x.shape[-1] * size * size])
    kernels = tf.reshape(weights, [out_h, out_w, filters, -1])
    return tf.einsum("bhwk,hwnk->bhwn", columns, kernels) + tf.transpose(biases, [1, 2, 0])


# -- ops without tensors -------------------------------------------------------------------------------------


def maxpool_darknet(x, size, stride, pads, out_hw):
    """darknet's max pooling: pads (top, bottom, left, right) of -inf, so taps outside the input never win."""
    y = tf.nn.max_pool2d(padded(x, *pads, value=-np.inf), size, [1, stride[0], stride[1], 1], "VALID")
    return y if tuple(y.shape[1:3]) == tuple(out_hw) else y[:, : out_hw[0], : out_hw[1], :]


def local_avgpool_darknet(x, size, stride, pads, out_hw):
    """darknet's [local_avgpool]: the mean over the taps of each window that lie inside the input."""
    window = dict(ksize=size, strides=[1, stride[0], stride[1], 1], padding="VALID")
    total = tf.nn.avg_pool2d(padded(x, *pads), **window)
    inside = tf.nn.avg_pool2d(padded(tf.ones_like(x[:1, :, :, :1]), *pads), **window)
    y = total / inside
    return y if tuple(y.shape[1:3]) == tuple(out_hw) else y[:, : out_hw[0], : out_hw[1], :]


def maxpool_depth(x, out_channels):
    """maxpool_depth=1: per pixel, the max over channels g, g + out_channels, g + 2*out_channels, ..."""
    _, h, w, c = x.shape
    groups = -(-c // out_channels)
    padded_c = tf.pad(x, [[0, 0], [0, 0], [0, 0], [0, groups * out_channels - c]], constant_values=-np.inf)
    return tf.reduce_max(tf.reshape(padded_c, [-1, h, w, groups, out_channels]), axis=3)


def global_avgpool(x):
    return tf.reduce_mean(x, axis=[1, 2], keepdims=True)


def upsample_darknet(x, stride, scale):
    """Nearest-neighbour upsampling by stride; a negative stride sums s x s blocks instead. darknet reads
    the (C, H, W) input buffer with the output's geometry times s, so when s does not divide H or W the
    blocks run on in memory order."""
    _, h, w, c = x.shape
    if stride > 0:
        y = tf.compat.v1.image.resize_nearest_neighbor(x, [h * stride, w * stride])
    else:
        s = -stride
        oh, ow = h // s, w // s
        flat = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [-1, c * h * w])[:, : c * oh * s * ow * s]
        y = tf.transpose(tf.reduce_sum(tf.reshape(flat, [-1, c, oh, s, ow, s]), axis=[3, 5]), [0, 2, 3, 1])
    return y * scale if scale != 1 else y


def route_group(x, groups, group_id):
    """[route] groups=/group_id=: one of `groups` equal channel slices."""
    return tf.split(x, groups, axis=-1)[group_id]


def concat(xs):
    return tf.concat(xs, axis=-1)


def shortcut_darknet(xs, weights, normalization):
    """[shortcut]: w0*x0 + sum(wk*xk) (weights optional); an input with fewer channels adds to the first
    channels only, one with more channels is first cut to the first input's channels."""
    w = None if weights is None else shortcut_weights(weights, normalization)
    out = xs[0] * w[0] if w is not None else xs[0]
    channels = xs[0].shape[-1]
    for k, other in enumerate(xs[1:], start=1):
        other = other[..., :channels] if other.shape[-1] > channels else other
        term = other * w[k][: other.shape[-1]] if w is not None else other
        n = term.shape[-1]
        out = tf.concat([out[..., :n] + term, out[..., n:]], axis=-1) if n < channels else out + term
    return out


def shortcut_weights(w, normalization):
    """darknet's weights_normalization over the inputs (axis 0): relu or softmax, each plus 1e-4 below."""
    if normalization == "relu":
        positive = tf.nn.relu(w)
        return positive / (1e-4 + tf.reduce_sum(positive, axis=0, keepdims=True))
    if normalization == "softmax":
        e = tf.exp(w - tf.reduce_max(w, axis=0, keepdims=True))
        return e / (1e-4 + tf.reduce_sum(e, axis=0, keepdims=True))
    return w


def scale_darknet(xs, first_channel):
    """[scale_channels] / [sam]: xs[1] times xs[0] (per channel), or times channel 0 of xs[0]."""
    return xs[1] * (xs[0][..., :1] if first_channel else xs[0])


def reorg_darknet(x, stride, out_shape, old):
    """Space-to-depth, in darknet's (C, H, W) order. old=True is [reorg] (YOLOv2): darknet reads the input
    buffer as (C/s^2, H*s, W*s), writes it as (C, H, W), then hands it on as (C*s^2, H/s, W/s); old=False
    is [reorg3d]."""
    _, h, w, c = x.shape
    s = stride
    nchw = tf.transpose(x, [0, 3, 1, 2])
    if old:
        blocks = tf.reshape(nchw, [-1, c // (s * s), h, s, w, s])
    else:
        blocks = tf.reshape(nchw, [-1, c, h // s, s, w // s, s])
    y = tf.reshape(tf.transpose(blocks, [0, 3, 5, 1, 2, 4]), [-1, *out_shape])
    return tf.transpose(y, [0, 2, 3, 1])


def yolo_darknet(x, anchors, entries, logistic, scaled, scale_x_y):
    """[yolo] output as darknet leaves it, channels [anchors][entries]: the entries in the logistic ranges
    [start, stop) squashed, then the scaled ones (x, y) mapped to v*scale_x_y - (scale_x_y - 1)/2."""
    _, h, w, _ = x.shape
    y = tf.reshape(x, [-1, h, w, anchors, entries])
    if logistic:
        squash = np.zeros(entries, bool)
        for start, stop in logistic:
            squash[start:stop] = True
        y = tf.where(squash, tf.sigmoid(y), y)
    if scale_x_y != 1:
        scale, shift = np.ones(entries, np.float32), np.zeros(entries, np.float32)
        scale[list(scaled)], shift[list(scaled)] = scale_x_y, -0.5 * (scale_x_y - 1)
        y = y * scale + shift
    return tf.reshape(y, [-1, h, w, anchors * entries])


def gaussian_yolo_darknet(x, anchors, entries, logistic, scaled, scale_x_y):
    """[Gaussian_yolo]: yolo_darknet on its entries x, sx, y, sy, w, sw, h, sh, obj, classes."""
    return yolo_darknet(x, anchors, entries, logistic, scaled, scale_x_y)


def grouped_softmax(x, tree):
    """darknet's softmax tree over the last axis: a softmax of x / temperature within each run of the
    tree's group_sizes (they tile the axis). Groups of one size are gathered into one (groups, size) block,
    so there is one softmax per distinct size (YOLO9000: ~3k groups, a few dozen sizes)."""
    starts, offset = {}, 0
    for size in tree["group_sizes"]:
        if size:
            starts.setdefault(size, []).append(offset)
        offset += size
    blocks = [np.add.outer(first, np.arange(size)) for size, first in sorted(starts.items())]
    shape = [-1, *x.shape[1:]]
    temperature = tree["temperature"]
    x = tf.reshape(x / temperature if temperature != 1 else x, [-1, offset])  # rows of the grouped axis
    parts = [tf.reshape(tf.nn.softmax(tf.gather(x, block, axis=1)), [-1, block.size]) for block in blocks]
    order = np.concatenate([block.ravel() for block in blocks])
    return tf.reshape(tf.gather(tf.concat(parts, axis=1), np.argsort(order), axis=1), shape)


def region_darknet(x, anchors, coords, classes, softmax, tree):
    """YOLOv2's [region]: per box, logistic objectness and a softmax over the classes (softmax=1) or within
    each group of the tree (which takes precedence), in darknet's flat (h, w, anchor, entry) order; output
    (batch, 1, 1, h*w*anchors*(coords+1+classes))."""
    _, h, w, _ = x.shape
    entries = coords + 1 + classes
    boxes = tf.reshape(x, [-1, h, w, anchors, entries])
    objectness = tf.sigmoid(boxes[..., coords : coords + 1])
    scores = boxes[..., coords + 1 :]
    if tree is not None:
        scores = grouped_softmax(scores, tree)
    elif softmax:
        scores = tf.nn.softmax(scores, axis=-1)
    out = tf.concat([boxes[..., :coords], objectness, scores], axis=-1)
    return tf.reshape(out, [-1, 1, 1, h * w * anchors * entries])


def distribution_head(x, reg_max, classes):
    """[anchor_free], one level (NHWC): each side's expected distance over its reg_max softmaxed bins (in
    grid cells), then the class scores through the logistic; output (batch, h, w, 4 + classes)."""
    _, h, w, _ = x.shape
    bins = tf.nn.softmax(tf.reshape(x[..., : 4 * reg_max], [-1, h, w, 4, reg_max]), axis=-1)
    sides = tf.reduce_sum(bins * np.arange(reg_max, dtype=np.float32), axis=-1)
    return tf.concat([sides, tf.sigmoid(x[..., 4 * reg_max :])], axis=-1)


def anchor_free_boxes(xs, strides):
    """[anchor_free], levels joined: distances (l, t, r, b) around each cell centre (column + 0.5, row + 0.5)
    become the box centre and size in input pixels; output (batch, cells, 1, 4 + classes)."""
    levels = []
    for x, stride in zip(xs, strides, strict=True):
        _, h, w, c = x.shape
        cx = np.broadcast_to(np.arange(w, dtype=np.float32) + 0.5, (h, w))
        cy = np.broadcast_to((np.arange(h, dtype=np.float32) + 0.5)[:, None], (h, w))
        x1, y1, x2, y2 = cx - x[..., 0], cy - x[..., 1], cx + x[..., 2], cy + x[..., 3]
        box = tf.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1) * float(stride)
        levels.append(tf.reshape(tf.concat([box, x[..., 4:]], axis=-1), [-1, h * w, c]))
    return tf.concat(levels, axis=1)[:, :, None, :]


def flat_nchw(x):
    """(batch, H, W, C) -> (batch, C*H*W) in darknet's (C, H, W) order."""
    _, h, w, c = x.shape
    return tf.reshape(tf.transpose(x, [0, 3, 1, 2]) if h * w > 1 else x, [-1, c * h * w])


def unflat_nchw(flat, like):
    """flat_nchw's inverse, to the shape of `like`."""
    _, h, w, c = like.shape
    return tf.transpose(tf.reshape(flat, [-1, c, h, w]), [0, 2, 3, 1])


def softmax_darknet(x, groups, temperature):
    """[softmax]: softmax over `groups` contiguous chunks of the flat (C, H, W) input, over temperature."""
    flat = tf.reshape(flat_nchw(x), [-1, groups, int(np.prod(x.shape[1:])) // groups])
    return unflat_nchw(tf.nn.softmax(flat / temperature, axis=-1), x)


def softmax_tree_darknet(x, tree):
    """[softmax] tree=: the tree's grouped softmax over the flat (C, H, W) input."""
    return unflat_nchw(grouped_softmax(flat_nchw(x), tree), x)


def detection_softmax(x, classes, side):
    """YOLOv1 [detection] with softmax=1: softmax over each cell's classes (the first block of the buffer,
    in darknet's (C, H, W) order)."""
    flat = flat_nchw(x)
    cells = side * side
    probs = tf.nn.softmax(tf.reshape(flat[:, : cells * classes], [-1, cells, classes]), axis=-1)
    flat = tf.concat([tf.reshape(probs, [-1, cells * classes]), flat[:, cells * classes :]], axis=1)
    return unflat_nchw(flat, x)


def crop_darknet(x, top, left, height, width, adjust):
    """[crop]: the window at (top, left); adjust: then 2x - 1 (darknet's default, noadjust=0)."""
    y = x[:, top : top + height, left : left + width, :]
    return y * 2 - 1 if adjust else y


def lrn_darknet(x, size, alpha, beta, kappa):
    """[normalization]: x * (kappa + alpha*S_k)^-beta with S_k the running sum of squares darknet keeps:
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


def implicit(x, weights, shape):
    """[implicit]: the learned tensor as a (C, H, W) map for each batch item (x gives only the batch)."""
    value = tf.transpose(tf.reshape(weights, [1, *shape]), [0, 2, 3, 1])
    return tf.tile(value, [tf.shape(x)[0], 1, 1, 1])


def flatten(x):
    return flat_nchw(x)


def unflatten(x):
    return tf.reshape(x, [-1, 1, 1, x.shape[-1]])


# -- tables: darknet name / op type -> the function above ----------------------------------------------------

ACTIVATIONS: dict[str, Callable] = {
    "linear": linear,
    "leaky": leaky,
    "revleaky": leaky,
    "relu": tf.nn.relu,
    "relu6": tf.nn.relu6,
    "relie": relie,
    "ramp": ramp,
    "logistic": tf.sigmoid,
    "loggy": loggy,
    "tanh": tf.tanh,
    "elu": tf.nn.elu,
    "selu": selu,
    "gelu": gelu,
    "swish": swish,
    "mish": mish,
    "hard_mish": hard_mish,
    "plse": plse,
    "hardtan": hardtan,
    "lhtan": lhtan,
    "stair": stair,
    "normalize_channels": normalize_channels,
    "normalize_channels_softmax": normalize_channels_softmax,
    "normalize_channels_softmax_maxval": normalize_channels_softmax_maxval,
}

FUNCTIONS: dict[type, Callable] = {
    lo.Conv2d: conv2d,
    lo.BatchNorm: batch_norm,
    lo.Linear: dense,
    lo.Blur: antialiasing_blur,
    lo.BinaryConv: binary_conv_darknet,
    lo.LocallyConnected: local_darknet,
    lo.MaxPool: maxpool_darknet,
    lo.LocalAvgPool: local_avgpool_darknet,
    lo.MaxPoolDepth: maxpool_depth,
    lo.GlobalAvgPool: global_avgpool,
    lo.Upsample: upsample_darknet,
    lo.Slice: route_group,
    lo.Concat: concat,
    lo.WeightedSum: shortcut_darknet,
    lo.Scale: scale_darknet,
    lo.Reorg: reorg_darknet,
    lo.HeadAct: yolo_darknet,
    lo.GaussianHeadAct: gaussian_yolo_darknet,
    lo.RegionAct: region_darknet,
    lo.DistributionHeadAct: distribution_head,
    lo.AnchorFreeBoxes: anchor_free_boxes,
    lo.Softmax: softmax_darknet,
    lo.TreeSoftmax: softmax_tree_darknet,
    lo.DetectionSoftmax: detection_softmax,
    lo.Crop: crop_darknet,
    lo.LRN: lrn_darknet,
    lo.Implicit: implicit,
    lo.Flatten: flatten,
    lo.Unflatten: unflatten,
}
