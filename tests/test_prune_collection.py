"""Pruning acceptance on the darknet cfg collection (../shared/zoo/cfg).

For every loadable cfg with batch-normalised convolutions (random well-conditioned weights, 30 % of every BN
layer's channels dead: γ = β = 0 exactly) and every strategy, the compact model must compute what the
keep-size model computes with the removed channels switched off. The selection asks for no more than the
dead share (``percent``) or for channels below 1e-9 (``threshold``), so the keep-size reference is the
original model itself; the test checks that only dead channels went (compensation of live channels, exact
only away from zero-padded borders, is tested on small cfgs in test_prune.py). Layer pruning is compared with
the original model whose removed units' bodies are made to add exactly zero.

Each case also writes pruned.cfg/pruned.weights, reloads them with our loader (same IR, same tensors) and,
where OpenCV's darknet importer runs the cfg, with OpenCV: its outputs for the pruned files must match its
outputs for the original files, and (where OpenCV computes what darknet computes on the original model, with
the BN-epsilon correction of test_torch_vs_opencv.py) our compact model's outputs.

The default run covers the named models of the acceptance list; the whole sweep is marked slow.
"""

from __future__ import annotations

import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CFG_DIR, REPORT, SHARED_MARK, loadable_cfgs, quiet
from test_prune import (
    check_kept_channels,
    check_rewired,
    outputs,
    producer_convs,
    rel_error,
    removed_layers,
    without_units,
)

from cfgsurgeon import layers as L
from cfgsurgeon.emit.cfg import write_cfg
from cfgsurgeon.errors import CfgError, UsageError
from cfgsurgeon.ir import Graph, load_cfg
from cfgsurgeon.postprocess import decode
from cfgsurgeon.randinit import random_weights
from cfgsurgeon.surgery.groups import analyse
from cfgsurgeon.surgery.layer import residual_units
from cfgsurgeon.surgery.prune import PruneResult, prune, report
from cfgsurgeon.weights import read_weights, write_weights

try:  # OpenCV's darknet importer, driven the way test_torch_vs_opencv.py drives it
    import cv2
    from test_torch_vs_opencv import (
        _raw_rows,
        _yolo_rows_to_raw,
        opencv_blob_names,
        opencv_net,
        relative_error,
        write_for_opencv,
    )
except (ImportError, pytest.skip.Exception):  # no cv2, or an OpenCV without readNetFromDarknet
    cv2 = None

pytestmark = SHARED_MARK

TOLERANCE = 1e-4  # max|compact − reference| / max|reference| per output
ROUNDING = 1e-10  # what the float64 comparison gives when nothing but the order of additions differs
DEAD = 0.3  # share of every BN layer's channels made dead (γ = β = 0)
SEED = 0
INPUT_SEED = 1
MIN_SIZE = 64  # reduced input: the smallest multiple of the net's stride at least this big
ROUND_TO = 8
CHANNEL_METHODS = ("normal", "shortcut", "slim", "regular")
LAYER_METHODS = ("layer", "layer-channel")

# The default run: the acceptance list's named models (the sweep covers every method of every model).
NAMED: dict[str, tuple[str, ...]] = {
    "yolov4-tiny.cfg": CHANNEL_METHODS,  # grouped routes
    "yolov3-tiny-prn.cfg": CHANNEL_METHODS,  # partial-residual shortcuts of unequal widths
    "yolov7-tiny.cfg": CHANNEL_METHODS,  # concat-heavy
    "enet-coco.cfg": ("shortcut", "regular"),  # depthwise, scale_channels
    "efficientnet_b0.cfg": ("slim", "regular"),  # depthwise, scale_channels, classifier
    "yolov4.cfg": ("shortcut", "layer-channel"),  # CSP, SPP, mish, residual stages
    "yolov7.cfg": ("slim",),  # concat-heavy, swish
}

# Cases that fail because of an engine bug, each also shown on a tiny cfg in test_prune.py (none open now).
KNOWN_BUGS: dict[tuple[str, str], str] = {}

# Convs whose width is not one group's count: split between two groups (a shortcut whose narrower operand
# couples only the first channels of the wider one) or partly fixed (the channels a narrower operand
# ignores). test_rounding_cfgs_are_these (slow) checks that the list is complete.
ROUNDING_CFGS = {
    "csresnext50-panet-spp-original-optimal.cfg": "split",
    "csresnext50-panet-spp.cfg": "split",
    "resnet152_trident.cfg": "split",
    "yolov4-sam-mish-csp-reorg-bfm.cfg": "split",
    "yolov3-tiny-prn.cfg": "partly fixed",
}
FAST_ROUNDING = ("yolov3-tiny-prn.cfg", "resnet152_trident.cfg")


# -- which cfgs ----------------------------------------------------------------------------------------------
def has_bn_convs(path: Path) -> bool:
    """Read from the text (not with our parser): a [convolutional] section with batch_normalize=1."""
    section = None
    for raw in path.read_bytes().decode("utf-8-sig").split("\n"):
        line = re.sub(r"[ \t\r]", "", raw)
        if line.startswith("["):
            section = line[1 : line.find("]")]
        elif section in ("convolutional", "conv") and re.fullmatch(r"batch_normalize=0*[1-9]\d*", line):
            return True
    return False


def bn_cfgs() -> list[Path]:
    return [path for path in loadable_cfgs() if has_bn_convs(path)]


def cases() -> list:
    found = []
    for path in bn_cfgs():
        for method in CHANNEL_METHODS + LAYER_METHODS:
            named = method in NAMED.get(path.name, ())
            marks = [] if named else [pytest.mark.slow]
            if (path.name, method) in KNOWN_BUGS:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[path.name, method]))
            found.append(pytest.param(path.name, method, id=f"{path.stem}-{method}", marks=marks))
    return found or [pytest.param(None, None, marks=pytest.mark.skip(reason="no shared collection"))]


# -- preparing a cfg (once per cfg: the cases of one cfg run one after the other) ----------------------------
def net_stride(graph: Graph) -> int:
    """The largest downsampling factor of any layer's output relative to the input."""
    stride: dict[int, int] = {id(graph.net): 1}
    for layer in graph.layers:
        s = max(stride[id(node)] for node in layer.inputs)
        if isinstance(layer, L.Convolutional):
            s *= max(layer.strides)
        elif isinstance(layer, L.MaxPool) and not layer.maxpool_depth:  # local_avgpool included
            s *= max(layer.stride_x, layer.stride_y)
        elif isinstance(layer, L.Upsample):
            s = max(1, s // layer.stride) if layer.stride > 0 else s * -layer.stride
        elif isinstance(layer, L.Reorg3d):
            s = max(1, s // layer.stride) if layer.reverse else s * layer.stride
        stride[id(layer)] = s
    return max(stride.values())


def reduce_input(graph: Graph) -> None:
    """Shrink the input to the smallest multiple of the net's stride ≥ MIN_SIZE (fully connected and crop
    layers depend on the size: those cfgs keep theirs)."""
    if any(isinstance(layer, L.Connected | L.Crop) for layer in graph.layers):
        return
    stride = net_stride(graph)
    size = stride * math.ceil(MIN_SIZE / stride)
    if size >= min(graph.input_shape[1:]):
        return
    width, height = graph.net.width, graph.net.height
    graph.net.width = graph.net.height = size
    try:
        graph.infer()
    except CfgError:
        graph.net.width, graph.net.height = width, height
        graph.infer()


@dataclass
class Prepared:
    name: str
    graph: Graph
    x: torch.Tensor
    folder: Path
    reference: list[np.ndarray] | None = None  # our outputs of the original model (None: torch refuses)
    torch_refusal: str = ""
    dead_share: dict[str, float] = field(default_factory=dict)  # per candidate set: share of dead channels
    units: int = 0
    opencv_refusal: str = ""
    opencv_original: list[np.ndarray] | None = None  # OpenCV's outputs of the original files, as written
    opencv_faithful: float | None = None  # OpenCV vs ours on the original model (BN epsilon corrected)
    seconds: float = 0.0


def dead_shares(graph: Graph) -> dict[str, float]:
    """Share of candidate channels whose unit is dead (all its producer channels have γ = 0), for the
    'normal' candidates (no shortcut-coupled group) and for all prunable groups; computed from the γ."""
    analysis = analyse(graph)
    units = len(analysis.unit_prunable)
    weight, alive = np.zeros(units), np.zeros(units, dtype=bool)
    for layer in producer_convs(graph):
        labels = analysis.output_units[layer.index]
        np.add.at(weight, labels, 1)
        np.logical_or.at(alive, labels, np.asarray(layer.weights["scales"]) != 0)
    shares = {}
    for key, coupled_too in (("normal", False), ("all", True)):
        groups = [g.id for g in analysis.groups if coupled_too or not g.shortcut_coupled]
        candidate = np.isin(analysis.unit_group, groups) & analysis.unit_prunable
        total = weight[candidate].sum()
        shares[key] = float(weight[candidate & ~alive].sum() / total) if total else 0.0
    return shares


class Workbench:
    """Prepared cfgs, the last few kept (the cases of one cfg are consecutive)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.cache: dict[str, Prepared] = {}

    def get(self, name: str) -> Prepared:
        if name not in self.cache:
            while len(self.cache) >= 2:
                dropped = self.cache.pop(next(iter(self.cache)))
                shutil.rmtree(dropped.folder, ignore_errors=True)  # a sweep would fill the disk
            self.cache[name] = self._prepare(name)
        return self.cache[name]

    def _prepare(self, name: str) -> Prepared:
        start = time.perf_counter()
        graph = load_cfg(CFG_DIR / name, warn=quiet)
        reduce_input(graph)
        random_weights(graph, seed=SEED, dead_fraction=DEAD)
        x = torch.from_numpy(np.random.default_rng(INPUT_SEED).random((1, *graph.input_shape)))
        folder = self.folder / Path(name).stem
        folder.mkdir(exist_ok=True)  # a fixture re-created per test module may prepare a cfg again
        prep = Prepared(name, graph, x, folder)
        prep.dead_share = dead_shares(graph)
        prep.units = len(residual_units(graph))
        try:
            prep.reference = outputs(graph, x)
        except CfgError as exc:
            prep.torch_refusal = str(exc)
        if cv2 is not None:
            self._opencv_original(prep)
        prep.seconds = time.perf_counter() - start
        return prep

    def _opencv_original(self, prep: Prepared) -> None:
        cfg, weights = prep.folder / "original.cfg", prep.folder / "original.weights"
        write_cfg(prep.graph, cfg)
        write_weights(prep.graph, weights)
        try:
            prep.opencv_original = opencv_outputs(prep.graph, cfg, weights, prep.x)
        except cv2.error as exc:
            match = re.search(r"error: \([^)]*\) (.*?)(?: in function|$)", str(exc))
            prep.opencv_refusal = match.group(1) if match else str(exc).strip().splitlines()[-1]
            return
        if prep.reference is not None:
            shifted = opencv_outputs(prep.graph, *write_for_opencv(prep.graph, prep.folder), prep.x)
            prep.opencv_faithful = opencv_error(prep.graph, prep.reference, shifted)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Workbench:
    return Workbench(tmp_path_factory.mktemp("prune-collection"))


# -- OpenCV --------------------------------------------------------------------------------------------------
def opencv_outputs(graph: Graph, cfg: Path, weights: Path, x: torch.Tensor) -> list[np.ndarray]:
    """OpenCV's blobs of the graph's heads (or last layer), as float64."""
    net = opencv_net(cfg, weights)
    names = opencv_blob_names(net, graph)
    heads = [i for i, layer in enumerate(graph.layers) if isinstance(layer, L.Yolo | L.Region | L.Detection)]
    wanted = [names[i] for i in heads or [len(graph.layers) - 1]]
    net.setInput(x.numpy().astype(np.float32))
    return [np.asarray(blob, dtype=np.float64) for blob in net.forward(wanted)]


def _head_space(layer: L.Layer, blob: np.ndarray, net_hw: tuple[int, int]) -> np.ndarray:
    """OpenCV's decoded [yolo] rows back in the layer's own output space (well conditioned, see
    test_torch_vs_opencv._yolo_rows_to_raw); other outputs flattened."""
    if isinstance(layer, L.Yolo):
        return _yolo_rows_to_raw(layer, blob.reshape(-1, blob.shape[-1]), net_hw)
    return blob.reshape(-1)


def opencv_error(graph: Graph, ours: list[np.ndarray], theirs: list[np.ndarray]) -> float:
    """Our outputs against OpenCV's (decoded-row heads compared in raw space, class columns where OpenCV
    kept them)."""
    heads = [i for i, layer in enumerate(graph.layers) if isinstance(layer, L.Yolo | L.Region | L.Detection)]
    worst = 0.0
    for index, mine, blob in zip(heads or [len(graph.layers) - 1], ours, theirs, strict=True):
        layer = graph.layers[index]
        if isinstance(layer, L.Yolo):
            mine, blob = _raw_rows(layer, mine[0]), _head_space(layer, blob, graph.input_shape[1:])
            worst = max(worst, rows_error(mine, blob))
        elif isinstance(layer, L.Region):
            rows = decode(layer, mine[0], graph.input_shape[1:])
            worst = max(worst, rows_error(rows, blob.reshape(-1, blob.shape[-1])))
        else:
            worst = max(worst, relative_error(mine.reshape(-1), blob.reshape(-1)))
    return worst


def rows_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Box and objectness columns everywhere, class columns where both sides kept them (OpenCV zeroes those
    below its threshold)."""
    both = (ours[:, 5:] != 0) & (theirs[:, 5:] != 0)
    error = relative_error(ours[:, :5], theirs[:, :5])
    if both.any():
        error = max(
            error, float(np.abs(ours[:, 5:] - theirs[:, 5:])[both].max() / np.abs(theirs[:, 5:]).max())
        )
    return error


def opencv_self_error(graph_a: Graph, a: list[np.ndarray], graph_b: Graph, b: list[np.ndarray]) -> float:
    """OpenCV's outputs of two models with the same heads (compact vs original), compared as OpenCV gives
    them, [yolo] rows in raw space."""
    worst = 0.0
    heads_a = [
        i for i, layer in enumerate(graph_a.layers) if isinstance(layer, L.Yolo | L.Region | L.Detection)
    ]
    heads_b = [
        i for i, layer in enumerate(graph_b.layers) if isinstance(layer, L.Yolo | L.Region | L.Detection)
    ]
    for i, j, blob_a, blob_b in zip(heads_a or [-1], heads_b or [-1], a, b, strict=True):
        layer = graph_b.layers[j]
        if isinstance(layer, L.Yolo | L.Region):
            rows_a = blob_a.reshape(-1, blob_a.shape[-1])
            rows_b = blob_b.reshape(-1, blob_b.shape[-1])
            if isinstance(layer, L.Yolo):
                rows_a = _head_space(graph_a.layers[i], rows_a, graph_a.input_shape[1:])
                rows_b = _head_space(layer, rows_b, graph_b.input_shape[1:])
            worst = max(worst, rows_error(rows_a, rows_b))
        else:
            worst = max(worst, relative_error(blob_a.reshape(-1), blob_b.reshape(-1)))
    return worst


# -- one case ------------------------------------------------------------------------------------------------
def run_method(prep: Prepared, method: str) -> PruneResult:
    """Remove only dead channels: ``percent`` just under the dead share of the method's candidates, or the
    threshold 1e-9 for slim (its own mode); layer methods remove about half the removable residual units."""
    graph = prep.graph
    shortcuts = 0
    if method in LAYER_METHODS:
        units = residual_units(graph)
        removable = len(units) - len({u.stage for u in units})
        if removable == 0:
            pytest.skip(f"no removable residual units ({len(units)} units, one per stage)")
        shortcuts = max(1, removable // 2)
    if method == "layer":
        return prune(graph, "layer", shortcuts=shortcuts)
    if method in ("slim", "layer-channel"):
        return prune(graph, method, threshold=1e-9, shortcuts=shortcuts)
    share = prep.dead_share["normal" if method == "normal" else "all"]
    return prune(graph, method, percent=share * (1 - 1e-9), round_to=ROUND_TO)


def check_only_dead_channels_removed(result: PruneResult) -> int:
    """Every removed channel is dead in the (layer-pruned) original: then switching it off changes nothing,
    and the original's outputs are the keep-size reference. Returns how many channels went."""
    source = result.analysis.graph
    count = 0
    for index, channels in check_kept_channels(result).items():
        layer = source.layers[index]
        assert not np.asarray(layer.weights["scales"])[channels].any(), f"layer {index}: a live γ removed"
        assert not np.asarray(layer.weights["biases"])[channels].any(), f"layer {index}: a live β removed"
        count += len(channels)
    return count


def check_structure(original: Graph, result: PruneResult, method: str) -> None:
    pruned, source = result.pruned, result.analysis.graph if result.analysis else result.pruned
    if method == "regular":
        for layer in producer_convs(source):
            width = pruned.layers[layer.index].filters
            assert width % ROUND_TO == 0 or width == layer.filters, f"layer {layer.index}: width {width}"
    if result.analysis is None:
        return
    for old, new in zip(source.layers, pruned.layers, strict=True):
        if (
            isinstance(old, L.Convolutional)
            and old.effective_groups > 1
            and old.in_shape[0] == old.effective_groups
        ):
            multiplier = old.filters // old.effective_groups  # depthwise stays depthwise
            assert new.groups == new.in_shape[0] == new.filters // multiplier, f"layer {old.index}"
        if isinstance(old, L.Route) and old.groups > 1:
            for node in new.inputs:
                assert node.out_shape[0] % old.groups == 0, (
                    f"route {old.index}: source width {node.out_shape[0]}"
                )
            assert new.out_shape[0] == sum(node.out_shape[0] for node in new.inputs) // old.groups


def check_report(result: PruneResult) -> None:
    data = report(result)
    assert data["totals"]["params_after"] == result.pruned.params < data["totals"]["params_before"]
    assert data["removed_shortcuts"] == result.removed_shortcuts
    assert data["compensation"]["inexact_at_borders"] == result.border_layers
    if result.selection is None:
        return
    assert data["achieved_ratio"] == result.selection.achieved_ratio
    twins = {layer.line: layer for layer in result.pruned.layers}
    for row, before in zip(data["layers"], result.original.layers, strict=True):
        after = twins.get(before.line)
        assert row["removed"] == (after is None)
        if isinstance(before, L.Convolutional) and after is not None and after.filters < before.filters:
            assert row["kept_indices"] == result.kept_channels[before.index], f"layer {before.index}"
        else:
            assert "kept_indices" not in row, f"layer {before.index}"


def check_files(result: PruneResult, folder: Path) -> tuple[Path, Path]:
    """pruned.cfg/pruned.weights reload into the same IR with the same tensors."""
    cfg, weights = folder / "pruned.cfg", folder / "pruned.weights"
    write_cfg(result.pruned, cfg)
    write_weights(result.pruned, weights)
    reloaded = load_cfg(cfg, warn=quiet)
    read_weights(reloaded, weights)
    assert reloaded.signature() == result.pruned.signature()
    for ours, theirs in zip(result.pruned.layers, reloaded.layers, strict=True):
        for name, tensor in (ours.weights or {}).items():
            np.testing.assert_array_equal(
                np.asarray(tensor), theirs.weights[name], err_msg=f"{ours.index} {name}"
            )
    if result.removed_shortcuts:
        check_rewired(result.original, removed_layers(result.original, result.removed_shortcuts), reloaded)
    return cfg, weights


def check_case(bench: Workbench, name: str, method: str, folder: Path) -> None:
    start = time.perf_counter()
    prep = bench.get(name)
    graph = prep.graph
    groups = analyse(graph).groups
    if method in CHANNEL_METHODS and not any(method != "normal" or not g.shortcut_coupled for g in groups):
        with pytest.raises(UsageError, match="no channels that this method can prune"):
            prune(graph, method, percent=0.1)
        why = (
            "every prunable group is shortcut-coupled" if groups else "nothing is prunable (binarised convs)"
        )
        pytest.skip(f"{why}: '{method}' refuses (checked)")
    result = run_method(prep, method)
    removed = check_only_dead_channels_removed(result) if result.analysis is not None else 0
    if method not in ("layer",):
        assert removed > 0, "nothing was pruned"
        assert result.selection.achieved_ratio > 0
    check_structure(graph, result, method)
    check_report(result)
    cfg, weights = check_files(result, folder)
    figures = [f"removed {removed} channels, {len(result.removed_shortcuts)} units"]
    if result.selection is not None:
        figures.append(f"ratio {result.selection.achieved_ratio:.3f}")
    if prep.reference is None:
        REPORT[f"prune {name} {method}"] = ", ".join(figures) + f"; torch refuses: {prep.torch_refusal}"
        pytest.skip(f"structure and files checked; our torch backend refuses the cfg: {prep.torch_refusal}")

    reference_graph = without_units(graph, result.removed_shortcuts) if result.removed_shortcuts else graph
    reference = outputs(reference_graph, prep.x) if result.removed_shortcuts else prep.reference
    ours = outputs(result.pruned, prep.x)
    error = rel_error(ours, reference)
    figures.append(f"torch {error:.1e}")
    failures = [] if error <= TOLERANCE else [f"compact vs keep-size model: relative error {error:.2e}"]
    if not result.border_layers and error > ROUNDING:  # nothing to be inexact about: should be exact
        failures.append(f"compact vs keep-size model: {error:.2e}, more than rounding, no border layers")

    if cv2 is not None and not prep.opencv_refusal:
        cv_pruned = opencv_outputs(result.pruned, cfg, weights, prep.x)  # the files as written
        if result.removed_shortcuts:  # OpenCV's own output for the reference model
            ref_cfg, ref_weights = folder / "reference.cfg", folder / "reference.weights"
            write_cfg(reference_graph, ref_cfg)
            write_weights(reference_graph, ref_weights)
            cv_reference = opencv_outputs(reference_graph, ref_cfg, ref_weights, prep.x)
        else:
            cv_reference = prep.opencv_original
        self_error = opencv_self_error(result.pruned, cv_pruned, reference_graph, cv_reference)
        figures.append(f"opencv pruned-vs-original files {self_error:.1e}")
        if self_error > TOLERANCE:
            failures.append(f"OpenCV: pruned files vs original files: relative error {self_error:.2e}")
        shifted = opencv_outputs(result.pruned, *write_for_opencv(result.pruned, folder), prep.x)
        cross = opencv_error(result.pruned, ours, shifted)
        figures.append(f"opencv-vs-ours {cross:.1e} (original {prep.opencv_faithful:.1e})")
        if prep.opencv_faithful <= TOLERANCE and cross > TOLERANCE:
            failures.append(f"OpenCV vs ours on the compact model: relative error {cross:.2e}")
    else:
        figures.append(
            f"OpenCV refuses the cfg: {prep.opencv_refusal}" if cv2 else "no OpenCV darknet importer"
        )
    figures.append(f"{time.perf_counter() - start + prep.seconds:.1f}s")
    prep.seconds = 0.0  # counted once
    REPORT[f"prune {name} {method}"] = ", ".join(figures)
    assert not failures, "; ".join(failures)


@pytest.mark.parametrize(("name", "method"), cases())
def test_collection(bench: Workbench, name: str, method: str, tmp_path: Path) -> None:
    try:
        check_case(bench, name, method, tmp_path)
    finally:  # written models are up to 1.5 GB a case: the whole sweep's would fill the disk
        shutil.rmtree(tmp_path, ignore_errors=True)


# -- regular: every conv's width rounded as a whole ---------------------------------------------------------
def mixed_convs(graph: Graph) -> list[int]:
    """Producer convs whose channels do not all lie in one group (some in another group, or fixed)."""
    analysis = analyse(graph)
    return [
        layer.index
        for layer in producer_convs(graph)
        if len(set(analysis.unit_group[analysis.output_units[layer.index]].tolist())) > 1
    ]


@pytest.mark.slow
def test_rounding_cfgs_are_these() -> None:
    found = [path.name for path in bn_cfgs() if mixed_convs(load_cfg(path, warn=quiet))]
    assert sorted(found) == sorted(ROUNDING_CFGS)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[] if n in FAST_ROUNDING else [pytest.mark.slow]) for n in ROUNDING_CFGS]
)
def test_regular_rounds_every_conv_as_a_whole(name: str) -> None:
    """Live channels removed at two ratios; every producer's width a multiple of --round-to or full. The
    parts of these convs are multiples of 8, so only a --round-to that does not divide them (24, 48) shows
    what rounding each group alone does (resnet152_trident at 48: 464 of 512 channels)."""
    graph = load_cfg(CFG_DIR / name, warn=quiet)
    random_weights(graph, seed=SEED)
    mixed = mixed_convs(graph)
    assert mixed
    narrowed = set()
    for round_to in (8, 24, 48):
        for percent in (0.3, 0.6):
            result = prune(graph, "regular", percent=percent, round_to=round_to)
            for layer in producer_convs(graph):
                width = result.pruned.layers[layer.index].filters
                assert width % round_to == 0 or width == layer.filters, (round_to, percent, layer.index)
            narrowed |= {i for i in mixed if result.pruned.layers[i].filters < graph.layers[i].filters}
    check_kept_channels(result)
    assert narrowed, "no mixed conv was ever narrowed"


# -- the named models' own rules, with live channels removed as well -----------------------------------------
def test_yolov4_tiny_grouped_routes_keep_their_halves(bench: Workbench) -> None:
    """route groups=2 group_id=1 reads the second half of a conv: that conv must lose channel k and k + n/2
    together, so its width stays even and the route passes exactly half of it."""
    graph = bench.get("yolov4-tiny.cfg").graph
    routes = [layer for layer in graph.layers if isinstance(layer, L.Route) and layer.groups > 1]
    assert len(routes) == 3
    for method, kwargs in (
        ("shortcut", {"percent": 0.5}),
        ("regular", {"percent": 0.5}),
        ("slim", {"threshold": 1e-9}),
    ):
        result = prune(graph, method, **kwargs)
        check_kept_channels(result)
        for route in routes:
            (source,) = route.inputs
            kept, half = result.kept_channels[source.index], source.filters // 2
            assert len(kept) % 2 == 0 and len(kept) < source.filters, (method, source.index, len(kept))
            assert [k for k in kept if k < half] == [k - half for k in kept if k >= half]
            assert result.pruned.layers[route.index].out_shape[0] == len(kept) // 2


@pytest.mark.parametrize("name", ["enet-coco.cfg", "efficientnet_b0.cfg"])
def test_depthwise_convs_stay_depthwise(bench: Workbench, name: str) -> None:
    """Every depthwise conv keeps groups == filters == input channels. In these two cfgs none is narrowed:
    each depthwise channel is one unit with the expand conv before it and with the squeeze-and-excitation
    factor after it ([scale_channels]), and that factor comes from a conv without batch norm (nothing to
    score, and a removed channel times a varying factor is no constant to fold), so the unit is fixed.
    The test checks exactly that, so that a change there is noticed; test_prune.py narrows depthwise convs."""
    graph = bench.get(name).graph
    depthwise = [
        layer
        for layer in graph.layers
        if isinstance(layer, L.Convolutional) and layer.effective_groups == layer.in_shape[0] > 1
    ]
    assert depthwise
    result = prune(graph, "slim", percent=0.3)
    check_kept_channels(result)
    analysis = result.analysis
    for old in depthwise:
        new = result.pruned.layers[old.index]
        assert new.groups == new.filters == new.in_shape[0], f"layer {old.index}: {new.groups} {new.filters}"
        if new.filters == old.filters:  # not narrowed: because the analysis fixed it, never by chance
            units = analysis.output_units[old.index]
            assert not analysis.unit_prunable[units].any(), f"layer {old.index}: prunable but never pruned"
            gated = [
                layer
                for layer in graph.layers
                if isinstance(layer, L.Convolutional)
                and not layer.batch_normalize
                and np.isin(analysis.output_units[layer.index], units).any()
            ]
            assert gated, f"layer {old.index}: fixed without a non-BN conv in its units"
    assert all(np.isfinite(y).all() for y in outputs(result.pruned, bench.get(name).x))
