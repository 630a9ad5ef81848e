"""Random weights that keep a darknet network well conditioned, with BN statistics that agree with them.

A freshly drawn network is useful for testing converters, pruning and fusing, but only if it behaves like a
trained one: activations of order one in every layer (not 1e-30 or 1e30 after 150 layers) and BN layers whose
``rolling_mean`` / ``rolling_variance`` are the real statistics of what they normalise, so folding BN into the
conv or pruning by ``γ`` means the same thing as on a trained model.

Method: per-channel moments (mean, variance) of every node's output are propagated through the graph in layer
order, treating channels and spatial taps as independent; each layer type has one rule in :data:`RULES`.
A convolution draws ``N(0, 1)`` filters and rescales each so its pre-activation variance ``Σ w² σ²_in``
lands in ``[1/2, 2]`` (log-uniform, so BN statistics differ per channel; without BN the input's second
moment ``σ² + μ²`` stands in for ``σ²``), and its BN statistics are exactly the predicted pre-BN moments.
Nonlinear maps (activations, max pooling) are integrated numerically against the normal density on a fixed
grid, so the result is deterministic and free of sampling noise.

Borders matter because BN statistics are averages over every position: near a border a convolution sees zero
padding, so its mean differs there and its variance is lower. Each node therefore also carries a spatial
*profile* (the variance at each position relative to the channel's average, shared by all channels), and
windowed layers count which taps fall inside the input. Without this, deep stacks of swish/mish convolutions
(yolov7) drift by a few percent per layer, which compounds through fixed BN statistics into a blow-up.

Approximations (mostly from the independence assumption): the mean of an input channel is taken as the same
at every position; ``[reorg]`` (the old YOLOv2 memory order) is treated like ``[reorg3d]``; ``maxpool_depth``
takes the max of identically distributed channels with the pooled moments; xnor/binary convolutions are
treated as float ones; activations use their mathematical definition (darknet's CPU gives 0 for relu6 in a
conv and for swish/mish outside conv and shortcut layers); ones outside ``activations.ELEMENTWISE`` count as
linear.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cache
from statistics import NormalDist
from typing import Any

import numpy as np

from . import registry
from .activations import ELEMENTWISE
from .ir import Graph
from .layers import (
    Activation,
    AnchorFree,
    AvgPool,
    BatchNorm,
    Connected,
    Contrastive,
    Convolutional,
    Cost,
    Crop,
    Detection,
    Dropout,
    Empty,
    GaussianYolo,
    Implicit,
    Layer,
    Local,
    LocalAvgPool,
    MaxPool,
    Normalization,
    Region,
    Reorg,
    Reorg3d,
    Route,
    Sam,
    ScaleChannels,
    Shortcut,
    Softmax,
    Upsample,
    Yolo,
)

BN_EPS = 1e-5  # darknet's normalize_cpu epsilon
VAR_RANGE = (0.5, 2.0)  # pre-activation variance of each filter, drawn log-uniform in this range
GAMMA_RANGE = (0.5, 1.5)  # BN scales, uniform
BETA_MEAN = 0.5  # BN biases: normal around this (positive: see _normalise)
BETA_STD = 0.1  # BN biases (and the offset left on un-normalised biases), normal
IMAGE = (0.5, 1.0 / 12.0)  # mean, variance of a pixel uniform in [0, 1]
BN_TENSORS = ("biases", "scales", "rolling_mean", "rolling_variance")
DEAD_VARIANCE = 1e-12  # below this an input counts as constant (a channel switched off by dead_fraction)
POOL_CORRELATION = 0.15  # between the positions a global [avgpool] averages (see _avgpool)
BLUR_GAIN = {1: 36.0 / 256.0, 2: 4.0 / 16.0}  # Σ w² of the antialiasing blur kernels (3×3 [1 2 1]², 2×2 box)

# Quadrature grid for E[f(X)], X ~ N(0, 1): trapezoid rule on [-8, 8] (exact to ~1e-12 for smooth f;
# a kink such as relu's costs ~3e-4 relative).
_Z = np.linspace(-8.0, 8.0, 321)
_P = np.exp(-0.5 * _Z**2)
_P /= _P.sum()


@dataclass(frozen=True)
class Law:
    """How each channel's values arise: ``activation(max of k draws of N(pre_mean, pre_var))``, per channel.

    Max pooling acts on the pre-activation Gaussian (max commutes with a monotone activation), so pooling the
    skewed output of e.g. leaky is modelled exactly instead of by a Gaussian with the same moments.
    """

    pre_mean: np.ndarray
    pre_var: np.ndarray
    activation: np.ndarray  # names
    k: np.ndarray

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.pre_mean, self.pre_var, self.activation, self.k

    def take(self, index: Any) -> Law:
        return Law(*(a[index] for a in self.arrays()))

    @staticmethod
    def concat(parts: Sequence[Law]) -> Law:
        return Law(*(np.concatenate(arrays) for arrays in zip(*(p.arrays() for p in parts), strict=True)))


@dataclass(frozen=True)
class Moments:
    """Per-channel mean and variance (float64 arrays of length C) of one node's output, over all positions.

    ``law`` (None: a Gaussian with these moments) says more about the distribution where a layer needs it;
    ``profile`` (H×W, mean 1, None: flat) is the variance at each position relative to the average.
    """

    mean: np.ndarray
    var: np.ndarray
    law: Law | None = None
    profile: np.ndarray | None = None

    @property
    def channels(self) -> int:
        return len(self.mean)

    def gaussian_law(self) -> Law:
        c = self.channels
        return self.law or Law(self.mean, self.var, np.full(c, "linear"), np.ones(c, dtype=np.int64))

    def take(self, index: Any) -> Moments:
        law = None if self.law is None else self.law.take(index)
        return Moments(self.mean[index], self.var[index], law, self.profile)

    def affine(self, scale: float | np.ndarray, shift: float | np.ndarray = 0.0) -> Moments:
        """Moments of ``scale·x + shift``."""
        return Moments(self.mean * scale + shift, self.var * np.square(scale), None, self.profile)

    @staticmethod
    def concat(parts: Sequence[Moments]) -> Moments:
        law = None if all(p.law is None for p in parts) else Law.concat([p.gaussian_law() for p in parts])
        profile = _blend([p.profile for p in parts], [float(p.var.sum()) for p in parts])
        mean, var = np.concatenate([p.mean for p in parts]), np.concatenate([p.var for p in parts])
        return Moments(mean, var, law, profile)


@dataclass
class _Init:
    """The one random stream (consumed in layer order) and the options every rule sees."""

    rng: np.random.Generator
    dead_fraction: float

    def dead(self, n: int) -> np.ndarray:
        """Channels to switch off: ``round(F·n)`` of them, never all. Always draws a full permutation, so the
        rest of the stream (hence every other weight) does not depend on the dead fraction."""
        order = self.rng.permutation(n)
        return np.sort(order[: min(round(self.dead_fraction * n), n - 1)])


def random_weights(graph: Graph, seed: int = 0, dead_fraction: float = 0.0) -> None:
    """Fill ``layer.weights`` of every layer that stores tensors with well-conditioned random float32 arrays.

    ``seed`` makes the result reproducible byte for byte. ``dead_fraction=F`` zeroes ``γ`` and ``β`` of
    exactly ``round(F·n)`` channels (at most ``n - 1``) in every layer with a BN triplet (to test pruning).
    Layers without tensors get ``weights = None``. BN statistics are those of inputs of the graph's own
    ``[net]`` size (border effects depend on it).
    """
    if not 0.0 <= dead_fraction <= 1.0:
        raise ValueError(f"dead_fraction must lie in [0, 1], got {dead_fraction}")
    init = _Init(np.random.default_rng(seed), dead_fraction)
    moments: dict[int, Moments] = {id(graph.net): _constant(graph.net.out_shape[0], *IMAGE)}
    for layer in graph.layers:
        rule = registry.rule("randinit", layer)
        layer.weights = None
        out = rule(layer, [moments[id(node)] for node in layer.inputs], init)
        moments[id(layer)] = replace(out, profile=_fit(out.profile, layer.out_shape[1:]))
        _check_layout(layer)


# -- helpers ------------------------------------------------------------------------------------------------
def _constant(channels: int, mean: float, var: float) -> Moments:
    return Moments(np.full(channels, mean), np.full(channels, var))


def _store(layer: Layer, tensors: dict[str, np.ndarray]) -> None:
    """Attach ``tensors`` as float32, in the layer's file order."""
    layer.weights = {
        name: np.ascontiguousarray(tensors[name], dtype=np.float32).reshape(shape)
        for name, shape in layer.weight_layout()
    } or None


def _check_layout(layer: Layer) -> None:
    layout = layer.weight_layout()
    got = [(name, a.shape) for name, a in (layer.weights or {}).items()]
    if got != layout:
        raise AssertionError(f"layer {layer.index} [{layer.header}]: made {got}, layout is {layout}")


# -- spatial profiles ---------------------------------------------------------------------------------------
def _fit(profile: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """``profile`` normalised to mean 1 if it describes a map of ``shape`` (else None: flat)."""
    if profile is None or profile.shape != tuple(shape):
        return None
    total = float(profile.mean())
    return profile / total if total > 0 else None


def _blend(profiles: Sequence[np.ndarray | None], weights: Sequence[float]) -> np.ndarray | None:
    """Weighted average of the profiles of inputs that are joined (route, shortcut)."""
    if all(p is None for p in profiles):
        return None
    shape = next(p.shape for p in profiles if p is not None)
    if any(p is not None and p.shape != shape for p in profiles):
        return None
    total = sum(weights) or 1.0
    parts = (w * (np.ones(shape) if p is None else p) for p, w in zip(profiles, weights, strict=True))
    return sum(parts) / total


@dataclass(frozen=True)
class _Windows:
    """Where the taps of every output position land in the input of a sliding-window layer (rows and columns
    may fall outside: zero padding for a conv, ignored taps for a pool)."""

    rows: np.ndarray  # (out_h, size) input row of each tap
    cols: np.ndarray  # (out_w, size)
    height: int
    width: int

    @classmethod
    def along(
        cls,
        in_hw: tuple[int, int],
        out_hw: tuple[int, ...],
        strides: tuple[int, int],
        start: int,
        size: int,
        step: int = 1,
    ) -> _Windows:
        taps = step * np.arange(size)
        rows = np.arange(out_hw[0])[:, None] * strides[0] + start + taps
        cols = np.arange(out_hw[1])[:, None] * strides[1] + start + taps
        return cls(rows, cols, *in_hw)

    def inside(self) -> tuple[np.ndarray, np.ndarray]:
        """Whether each tap's row (out_h, size) and column (out_w, size) fall inside the input."""
        return (self.rows >= 0) & (self.rows < self.height), (self.cols >= 0) & (self.cols < self.width)

    def counts(self) -> np.ndarray:
        """Taps inside the input at each output position, (out_h, out_w)."""
        r, c = self.inside()
        return np.outer(r.sum(1), c.sum(1))

    def tap_maps(self, profile: np.ndarray | None) -> Iterator[np.ndarray]:
        """For each tap (row-major), the input profile under it at every output position, 0 outside."""
        v = np.ones((self.height, self.width)) if profile is None else profile
        (r_in, c_in), size = self.inside(), self.rows.shape[1]
        rows, cols = np.clip(self.rows, 0, self.height - 1), np.clip(self.cols, 0, self.width - 1)
        for i in range(size):
            for j in range(size):
                yield v[np.ix_(rows[:, i], cols[:, j])] * np.outer(r_in[:, i], c_in[:, j])

    def patterns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Distinct inside-masks ``(M, size²)``, the pattern of each output position ``(out_h, out_w)`` and
        the share of positions with each: border positions are few kinds, so means are computed per kind."""
        r, c = self.inside()
        rp, ri = np.unique(r, axis=0, return_inverse=True)
        cp, ci = np.unique(c, axis=0, return_inverse=True)
        masks = (rp[:, None, :, None] & cp[None, :, None, :]).reshape(len(rp) * len(cp), -1)
        kind = ri.reshape(-1)[:, None] * len(cp) + ci.reshape(-1)[None, :]
        share = np.bincount(kind.ravel(), minlength=len(masks)) / kind.size
        return masks.astype(np.float64), kind, share


def _conv_windows(layer: Convolutional) -> _Windows:
    _, h, w = layer.in_shape
    strides = (1, 1) if layer.antialiasing else layer.strides
    d = layer.effective_dilation
    start = -layer.effective_padding * d  # darknet's im2col pads by pad·dilation
    return _Windows.along((h, w), layer.conv_output(), strides, start, layer.size, d)


def _pool_windows(layer: MaxPool) -> _Windows:
    _, h, w = layer.in_shape
    start = -(layer.padding // 2)
    return _Windows.along((h, w), layer.out_shape[1:], (layer.stride_y, layer.stride_x), start, layer.size)


# -- linear layers ------------------------------------------------------------------------------------------
def _tap_sums(w: np.ndarray, values: np.ndarray, groups: int, square: bool = False) -> np.ndarray:
    """``Σ_c w[f, c, t] · values[c]`` (or with ``w²``) per filter and tap, ``(filters, taps)``; filter f
    reads input group ``f // (filters/groups)``."""
    n, cg, taps = w.shape
    wg = w.reshape(groups, n // groups, cg, taps)
    v = values.reshape(groups, cg).astype(np.float32)
    out = np.einsum("gfct,gfct,gc->gft", wg, wg, v) if square else np.einsum("gfct,gc->gft", wg, v)
    return out.reshape(n, taps).astype(np.float64)


def _dense_moments(w: np.ndarray, m: Moments) -> Moments:
    """``[connected]``: every input value is a tap, weighted by its position's share of the variance."""
    usage = np.ones(w.shape[2]) if m.profile is None else m.profile.ravel()
    return Moments(_tap_sums(w, m.mean, 1).sum(1), _tap_sums(w, m.var, 1, square=True) @ usage)


def _conv_moments(w: np.ndarray, m: Moments, groups: int, windows: _Windows) -> Moments:
    """Moments of a convolution's output over all its positions, and their profile.

    At a position whose taps ``V`` fall inside the input, the mean is ``Σ_V S`` and the variance ``Σ_V Q·v``
    (``S``, ``Q``: per-tap sums of ``w·μ`` and ``w²·σ²``; ``v`` the input profile); a channel's variance over
    positions adds the spread of those means."""
    total, square = _tap_sums(w, m.mean, groups), _tap_sums(w, m.var, groups, square=True)
    masks, kind, share = windows.patterns()
    means = total @ masks.T  # (filters, kinds)
    mean = means @ share
    spread = np.square(means - mean[:, None])
    usage, within = np.empty(square.shape[1]), spread.mean(axis=0)[kind]
    for t, (tap, energy) in enumerate(zip(windows.tap_maps(m.profile), square.mean(axis=0), strict=True)):
        usage[t] = tap.mean()
        within += energy * tap
    return Moments(mean, np.maximum(square @ usage + spread @ share, 0.0), profile=within)


def _draw_filters(
    init: _Init, filters: int, m: Moments, groups: int, taps: int, normalised: bool
) -> np.ndarray:
    """``N(0, 1)`` weights ``(filters, C/groups, taps)``, each filter rescaled so that ``Σ w² s²`` lies in
    VAR_RANGE. ``s²`` is the input variance when BN follows (it re-normalises the output anyway), else the
    input's second moment ``σ² + μ²`` (He-style): an input that barely varies, such as a global average
    pool feeding a squeeze-excitation block, must not be blown up into huge weights that amplify errors."""
    w = init.rng.standard_normal((filters, m.channels // groups, taps), dtype=np.float32)
    power = m.var if normalised else m.var + m.mean**2
    raw = _tap_sums(w, power, groups, square=True).sum(1)
    target = np.exp(init.rng.uniform(*np.log(VAR_RANGE), filters))
    alive = raw > DEAD_VARIANCE  # a filter that only sees dead channels keeps a plain 1/sqrt(fan-in) scale
    scale = np.where(alive, np.sqrt(target / np.where(alive, raw, 1.0)), 1.0 / np.sqrt(w.shape[1] * taps))
    w *= scale.astype(np.float32)[:, None, None]
    return w


def _normalise(pre: Moments, init: _Init) -> tuple[dict[str, np.ndarray], Moments]:
    """BN tensors whose rolling statistics are ``pre`` itself; returns them and the output moments.

    ``β`` is centred on BETA_MEAN > 0 so that most of each channel lies on the linear side of leaky, swish
    or mish: there ``d log Var(out) / d log Var(in)`` is 0.8-0.95, whereas around 0 swish gives 1.1. The
    moment model is off by a percent or so per layer, and with a factor above 1 that error compounds
    through the fixed BN statistics of a deep stack (yolov7 blew up); below 1 it dies out."""
    n = pre.channels
    scales = init.rng.uniform(*GAMMA_RANGE, n)
    biases = init.rng.normal(BETA_MEAN, BETA_STD, n)
    dead = init.dead(n)
    scales[dead] = 0.0
    biases[dead] = 0.0
    tensors = {"biases": biases, "scales": scales, "rolling_mean": pre.mean, "rolling_variance": pre.var}
    return tensors, _apply_bn(pre, tensors)


def _apply_bn(pre: Moments, tensors: dict[str, np.ndarray]) -> Moments:
    """Moments after darknet's inference BN, computed from the float32 values that are stored."""
    t = {k: np.asarray(tensors[k], dtype=np.float32).astype(np.float64) for k in BN_TENSORS}
    gain = t["scales"] / np.sqrt(t["rolling_variance"] + BN_EPS)
    return pre.affine(gain, t["biases"] - gain * t["rolling_mean"])


def _finish_linear(
    pre: Moments, w: np.ndarray, m: Moments, groups: int, batch_normalize: int, init: _Init
) -> tuple[dict[str, np.ndarray], Moments]:
    """Biases (and BN tensors) for a layer with weights ``w`` on input ``m`` whose output before them has
    moments ``pre``; returns them and the output moments."""
    if batch_normalize:
        return _normalise(pre, init)
    # No BN: a bias that centres the output up to a random offset: N(0, 0.1²) normally, but where the input's
    # means outweigh its variation (Σ w² μ² > Σ w² σ²) the offset keeps that excess, so a layer fed by a
    # global average pool (squeeze-excitation, a classifier) gives O(1) values, not a near-zero constant
    # that the next layer would have to amplify.
    mean_power = _tap_sums(w, m.mean**2, groups, square=True).sum(1)
    offset = np.sqrt(np.maximum(mean_power - pre.var, BETA_STD**2))
    biases = (-pre.mean + offset * init.rng.standard_normal(pre.channels)).astype(np.float32)
    return {"biases": biases}, replace(pre, mean=pre.mean + biases)


# -- activations and other nonlinear maps -------------------------------------------------------------------
def activation_moments(m: Moments, activation: str) -> Moments:
    """Moments of ``f(X)``, ``X ~ N(mean, var)`` per channel (``m.law`` is not looked at: f of an arbitrary
    law is not representable, so the input counts as Gaussian). The profile is kept."""
    if activation == "linear":
        return m
    c = m.channels
    out = evaluate(Law(m.mean, m.var, np.full(c, activation), np.ones(c, dtype=np.int64)))
    return replace(out, profile=m.profile)


def evaluate(law: Law) -> Moments:
    """Moments of every channel of ``law``, by quadrature on a fixed grid (in blocks of channels, so the
    temporaries stay in cache)."""
    mean, var = law.pre_mean.astype(np.float64), law.pre_var.astype(np.float64)  # right for linear, k = 1
    for name in np.unique(law.activation):
        f = ELEMENTWISE.get(str(name), ELEMENTWISE["linear"])
        for k in np.unique(law.k[law.activation == name]):
            rows = np.flatnonzero((law.activation == name) & (law.k == k))
            if f is ELEMENTWISE["linear"] and k == 1:
                continue
            weights = _max_density(int(k))
            for block in np.array_split(rows, -(-len(rows) // 128)):
                with np.errstate(over="ignore", invalid="ignore"):  # exp() of far tails; results are finite
                    y = f(law.pre_mean[block, None] + np.sqrt(law.pre_var[block, None]) * _Z)
                mean[block] = y @ weights
                y -= mean[block, None]
                var[block] = np.square(y, out=y) @ weights
    return Moments(mean, var, law)


@cache
def _max_density(k: int) -> np.ndarray:
    """Quadrature weights for the largest of ``k`` independent standard normals (density ``k φ Φ^(k-1)``)."""
    if k == 1:
        return _P
    cdf = np.array([NormalDist().cdf(z) for z in _Z])
    density = _P * cdf ** (k - 1)
    return density / density.sum()


def _max_moments(m: Moments, k: int) -> Moments:
    """Moments of the largest of ``k`` independent draws of each channel."""
    law = m.gaussian_law()
    return evaluate(Law(law.pre_mean, law.pre_var, law.activation, law.k * k))


def _blur(m: Moments, antialiasing: int) -> Moments:
    """After darknet's fixed antialiasing blur (a weighted mean of independent taps; profile dropped)."""
    return replace(m.affine(np.sqrt(BLUR_GAIN[antialiasing])), profile=None) if antialiasing else m


def _mixture(m: Moments) -> tuple[float, float]:
    """Mean and variance of a value drawn from a uniformly chosen channel."""
    mean = float(m.mean.mean())
    return mean, max(float((m.var + m.mean**2).mean() - mean**2), 0.0)


def _mix(parts: Sequence[Moments], share: np.ndarray) -> Moments:
    """Moments over positions whose values follow ``parts[i]`` with probability ``share[i]``."""
    mean = sum(p * part.mean for p, part in zip(share, parts, strict=True))
    second = sum(p * (part.var + part.mean**2) for p, part in zip(share, parts, strict=True))
    return Moments(mean, np.maximum(second - mean**2, 0.0))


def _product(a: Moments, b: Moments) -> Moments:
    """Moments of ``x·y`` for independent ``x``, ``y``."""
    mean = a.mean * b.mean
    return Moments(mean, np.maximum((a.var + a.mean**2) * (b.var + b.mean**2) - mean**2, 0.0))


# -- one rule per layer type ------------------------------------------------------------------------------
Rule = Callable[[Any, list[Moments], _Init], Moments]


def _convolutional(layer: Convolutional, ins: list[Moments], init: _Init) -> Moments:
    m, groups, taps, windows = ins[0], layer.effective_groups, layer.size**2, _conv_windows(layer)
    owner = layer.shares
    if owner is None:
        w = _draw_filters(init, layer.filters, m, groups, taps, bool(layer.batch_normalize))
        pre = _conv_moments(w, m, groups, windows)
        tensors, out = _finish_linear(pre, w, m, groups, layer.batch_normalize, init)
        _store(layer, {**tensors, "weights": w})
    else:  # weights (and BN statistics, measured elsewhere) borrowed from an earlier conv
        own = owner.weights or {}
        pre = _conv_moments(own["weights"].reshape(layer.filters, -1, taps), m, groups, windows)
        out = _apply_bn(pre, own) if layer.batch_normalize else replace(pre, mean=pre.mean + own["biases"])
    return _blur(activation_moments(out, layer.activation), layer.antialiasing)


def _connected(layer: Connected, ins: list[Moments], init: _Init) -> Moments:
    _, h, w = layer.in_shape
    m = ins[0]
    weights = _draw_filters(init, layer.output, m, 1, h * w, bool(layer.batch_normalize))
    tensors, out = _finish_linear(_dense_moments(weights, m), weights, m, 1, layer.batch_normalize, init)
    _store(layer, {**tensors, "weights": weights})
    return activation_moments(out, layer.activation)


def _local(layer: Local, ins: list[Moments], init: _Init) -> Moments:
    """Each output position's filters drawn as a convolution's (no BN: biases centre each output value),
    moments taken over the taps inside the input at that position; a filter's output is then the mixture of
    its positions (their variance profile kept)."""
    m, (h, w), n, taps = ins[0], layer.local_output(), layer.filters, layer.size**2
    windows = _Windows.along(layer.in_shape[1:], (h, w), (layer.stride,) * 2, -layer.pad, layer.size)
    rows, cols = windows.inside()
    inside = (rows[:, None, :, None] & cols[None, :, None, :]).reshape(h * w, 1, taps)  # (position, 1, tap)
    weights = _draw_filters(init, h * w * n, m, 1, taps, normalised=False)  # (position·filter, c, tap)
    total = _tap_sums(weights, m.mean, 1).reshape(h * w, n, taps)
    square = _tap_sums(weights, m.var, 1, square=True).reshape(h * w, n, taps)
    pre = Moments((total * inside).sum(2).ravel(), (square * inside).sum(2).ravel())
    tensors, out = _finish_linear(pre, weights, m, 1, 0, init)
    mean, var = out.mean.reshape(h * w, n), out.var.reshape(h * w, n)
    _store(layer, {"biases": tensors["biases"].reshape(h * w, n).T, "weights": weights})
    over = mean.mean(axis=0)
    spread = np.square(mean - over).mean(axis=0)
    profile = var.mean(axis=1).reshape(h, w)
    return activation_moments(Moments(over, var.mean(axis=0) + spread, profile=profile), layer.activation)


def _batchnorm(layer: BatchNorm, ins: list[Moments], init: _Init) -> Moments:
    tensors, out = _normalise(ins[0], init)
    _store(layer, tensors)
    return out


def _shortcut_coefficients(w: np.ndarray, normalization: str) -> np.ndarray:
    """Effective weights per input (rows) after darknet's ``weights_normalization``."""
    if normalization in ("relu", "avg_relu"):
        w = np.maximum(w, 0.0)
        return w / (1e-4 + w.sum(axis=0))
    if normalization == "softmax":
        e = np.exp(w - w.max(axis=0))
        return e / (1e-4 + e.sum(axis=0))
    return w


def _shortcut(layer: Shortcut, ins: list[Moments], init: _Init) -> Moments:
    c = ins[0].channels
    coef = np.ones((len(ins), c))
    layout = layer.weight_layout()
    if layout:
        weights = np.ones(layout[0][1])  # darknet's initial value
        _store(layer, {"weights": weights})
        coef = np.broadcast_to(_shortcut_coefficients(weights, layer.weights_normalization), coef.shape)
    mean, var, shares = np.zeros(c), np.zeros(c), []
    for k, m in enumerate(ins):
        j = min(c, m.channels)  # a from-layer adds only to the first channels they share
        mean[:j] += coef[k, :j] * m.mean[:j]
        var[:j] += coef[k, :j] ** 2 * m.var[:j]
        shares.append(float((coef[k, :j] ** 2 * m.var[:j]).sum()))
    profile = _blend([m.profile for m in ins], shares)
    return activation_moments(Moments(mean, var, profile=profile), layer.activation)


def _route(layer: Route, ins: list[Moments], init: _Init) -> Moments:
    g, gid = layer.groups, layer.group_id
    return Moments.concat([m.take(slice(gid * m.channels // g, (gid + 1) * m.channels // g)) for m in ins])


def _maxpool(layer: MaxPool, ins: list[Moments], init: _Init) -> Moments:
    m = ins[0]
    if layer.maxpool_depth:
        k = -(-m.channels // layer.out_channels)
        out = _max_moments(_constant(layer.out_channels, *_mixture(m)), k)
        return _blur(replace(out, profile=m.profile), layer.antialiasing)
    windows = _pool_windows(layer)
    sizes = windows.counts()  # border windows have fewer taps
    ks, inverse = np.unique(sizes, return_inverse=True)
    parts = [_max_moments(m, int(k)) for k in ks]
    out = parts[0] if len(parts) == 1 else _mix(parts, np.bincount(inverse.ravel()) / sizes.size)
    profile = sum(windows.tap_maps(m.profile)) / sizes  # the mean profile under each window
    return _blur(replace(out, profile=profile), layer.antialiasing)


def _local_avgpool(layer: LocalAvgPool, ins: list[Moments], init: _Init) -> Moments:
    windows = _pool_windows(layer)
    profile = sum(windows.tap_maps(ins[0].profile)) / windows.counts() ** 2  # mean of the valid taps only
    return Moments(ins[0].mean, ins[0].var * float(profile.mean()), profile=profile)


def _avgpool(layer: AvgPool, ins: list[Moments], init: _Init) -> Moments:
    """The mean of n = H·W values with correlation ρ = POOL_CORRELATION has variance σ²(ρ + (1 - ρ)/n).
    Independent positions (ρ = 0) would make a global average nearly constant, which holds for noise but
    not for images; it would also tell a following squeeze-excitation block that its input is known to
    ~σ/sqrt(n), far better than this model's own error, and that block amplifies such errors."""
    _, h, w = layer.in_shape
    return Moments(ins[0].mean, ins[0].var * (POOL_CORRELATION + (1.0 - POOL_CORRELATION) / (h * w)))


def _upsample(layer: Upsample, ins: list[Moments], init: _Init) -> Moments:
    s, m = layer.stride, ins[0]
    profile = m.profile
    if s > 0 and profile is not None:
        profile = profile.repeat(s, axis=0).repeat(s, axis=1)
    if s < 0:  # downsampling sums s×s taps
        m = Moments(m.mean * s * s, m.var * s * s)
        profile = _block_mean(profile, -s)
    m = replace(m, profile=profile)
    return m if layer.scale == 1.0 else m.affine(layer.scale)


def _block_mean(profile: np.ndarray | None, s: int) -> np.ndarray | None:
    if profile is None:
        return None
    h, w = profile.shape[0] // s * s, profile.shape[1] // s * s
    return profile[:h, :w].reshape(h // s, s, w // s, s).mean(axis=(1, 3))


def _reorg(layer: Reorg3d, ins: list[Moments], init: _Init) -> Moments:
    m, s = ins[0], layer.stride
    if not layer.reverse:  # output channel k holds input channel k % C
        out = m.take(np.arange(m.channels * s * s) % m.channels)
        return replace(out, profile=_block_mean(m.profile, s))
    c = m.channels // (s * s)  # output channel j interleaves input channels j, j + c, ...: a mixture of them
    blocks = [Moments(m.mean[j::c], m.var[j::c]) for j in range(c)]
    mixed = np.array([_mixture(b) for b in blocks])
    profile = None if m.profile is None else m.profile.repeat(s, axis=0).repeat(s, axis=1)
    return Moments(mixed[:, 0], mixed[:, 1], profile=profile)


def _scale_channels(layer: ScaleChannels, ins: list[Moments], init: _Init) -> Moments:
    scale, target = ins
    if layer.scale_wh:  # the first scale channel multiplies every channel
        scale = scale.take(np.zeros(target.channels, dtype=int))
    out = replace(_product(scale, target), profile=target.profile)
    return activation_moments(out, layer.activation)


def _sam(layer: Sam, ins: list[Moments], init: _Init) -> Moments:
    profiles = [m.profile for m in ins if m.profile is not None]
    profile = np.prod(profiles, axis=0) if profiles else None
    return activation_moments(replace(_product(ins[0], ins[1]), profile=profile), layer.activation)


def _crop(layer: Crop, ins: list[Moments], init: _Init) -> Moments:
    m = ins[0] if layer.noadjust else ins[0].affine(2.0, -1.0)
    return replace(m, profile=None)


def _implicit(layer: Implicit, ins: list[Moments], init: _Init) -> Moments:
    mean, std = (float(layer.options.get(key, default)) for key, default in (("mean", "0"), ("std", "0.2")))
    weights = init.rng.uniform(mean - std, mean + std, layer.filters * layer.atoms)
    _store(layer, {"weights": weights})
    rows = weights.astype(np.float32).astype(np.float64).reshape(layer.filters, layer.atoms)
    return Moments(rows.mean(axis=1), rows.var(axis=1))


def _activation(layer: Activation, ins: list[Moments], init: _Init) -> Moments:
    return activation_moments(ins[0], layer.activation)


def _identity(layer: Layer, ins: list[Moments], init: _Init) -> Moments:
    return ins[0]


RULES = registry.define(
    "randinit",
    {
        Convolutional: _convolutional,
        Connected: _connected,
        Local: _local,
        BatchNorm: _batchnorm,
        Shortcut: _shortcut,
        Route: _route,
        MaxPool: _maxpool,
        LocalAvgPool: _local_avgpool,
        AvgPool: _avgpool,
        Upsample: _upsample,
        Reorg3d: _reorg,
        Reorg: _reorg,
        ScaleChannels: _scale_channels,
        Sam: _sam,
        Crop: _crop,
        Implicit: _implicit,
        Activation: _activation,
        # heads, identities at inference, and layers whose output scale does not matter downstream
        Yolo: _identity,
        AnchorFree: _identity,
        GaussianYolo: _identity,
        Region: _identity,
        Detection: _identity,
        Softmax: _identity,
        Dropout: _identity,
        Empty: _identity,
        Cost: _identity,
        Contrastive: _identity,
        Normalization: _identity,
    },
)
