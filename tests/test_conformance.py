"""Backend conformance: every primitive op of the lowering (``cfgsurgeon.emit.lower``) × every backend,
against the torch reference, in one place.

The torch module is the reference: it is itself checked against OpenCV's darknet importer
(test_torch_vs_opencv) and numpy transcriptions of darknet's C (test_torch_layers, test_local). Every other
backend — each runner of ``runtimes.BACKENDS`` exporting in memory (ONNX → ONNX Runtime, OpenVINO, the TF1
frozen graph, Keras, float TFLite), plus the standalone torch source file — runs the same cfgs on the same
input and must match it within ``TOLERANCE`` = max|backend − torch| / max|torch| per output, the tolerance
of the per-backend tests.

Each *case* is a short chain of darknet sections exercising one op and one of its edge cases (pool padding
on odd sizes, stride_x ≠ stride_y, grouped / depthwise / dilated convolutions, crop, logistic ranges of the
heads, shortcut weight normalisation, reorg, upsample with stride and scale, ``[local]``, softmax groups and
trees, every activation, …). To pay each backend's conversion once per model rather than once per case,
cases are joined into one cfg: layer 0 is ``[empty]`` (the input, unchanged), each case starts with
``[route] layers=0`` and ends in a head — an identity ``[detection]`` probe unless the case is a head — so
every case is one output of the model. The default run is two such models per backend: ``CORE`` (a case of
every op and the edge cases where backends part ways) and every activation; the op list comes from the
lowering itself (``test_every_op_and_activation_has_a_case_in_the_default_run`` fails for an op no default
case produces) and the backend list from the runners table (``test_every_backend_is_in_the_matrix``).
Marked slow: every case, a family per model, and each case alone in its own model (the exhaustive matrix).
What a backend cannot run, or runs wrongly, is in ``CANNOT`` / ``BUGS`` with the reason, and expected to fail
(strict xfail) until it is fixed.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from conftest import REPORT, quiet
from test_lower import _op_types, section

from cfgsurgeon import layers as L
from cfgsurgeon import loads_cfg, write_weights
from cfgsurgeon.emit import lower as lo
from cfgsurgeon.ir import Graph
from cfgsurgeon.randinit import random_weights
from cfgsurgeon.runtimes import BACKENDS

torch = pytest.importorskip("torch")

TOLERANCE = 1e-4  # max|backend − torch| / max|torch| per output (test_export_runtimes, test_tf1, test_keras)
REFERENCE = "torch"  # the runner all others are compared with
STANDALONE = "torch-source"  # the standalone torch file: an export with no runner of its own
# The packages each backend needs (a missing one skips that backend's column).
REQUIRES = {
    "onnxruntime": ("onnx", "onnxruntime"),
    "openvino": ("onnx", "openvino"),
    "tf1": ("tensorflow",),
    "keras": ("tensorflow", "tf_keras"),
    "tflite": ("tensorflow", "tf_keras"),
    STANDALONE: (),
}
# (case, backend) pairs a backend cannot run, with the reason; each is expected to fail (xfail strict), so
# the entry goes away when the backend learns the op.
CANNOT: dict[tuple[str, str], str] = {}
# Known backend bugs (case, backend) → what goes wrong; xfail strict until fixed.
BUGS: dict[tuple[str, str], str] = {}  # (case, backend) → what the backend computes wrongly, until fixed

TREE_TEXT = "a -1\nb -1\nc -1\nd 0\ne 0\nf 2\ng 2\nh 2\n"  # groups: a b c | d e | f g h (8 entries)


# -- the cases -----------------------------------------------------------------------------------------------
def conv(**options: object) -> str:
    return section("convolutional", **{"filters": 6, "size": 3, "pad": 1, "activation": "leaky", **options})


STEM = conv(batch_normalize=1)  # 6 channels, the input's size
WIDE = conv(filters=32, size=1, pad=0)  # 32 channels: darknet's bit-packed xnor path needs a multiple of 32
YOLO = {"mask": "0,1", "num": 2, "anchors": "1,1,2,2", "classes": 2}


@dataclass(frozen=True)
class Family:
    """Cases joined into one cfg of input ``channels × height × width``, run on ``scale``·U[−½, ½) + shift."""

    cases: dict[str, tuple[str, ...]]
    height: int = 9
    width: int = 11
    channels: int = 3
    scale: float = 4.0
    shift: float = 1.0


FAMILIES: dict[str, Family] = {
    "conv": Family(
        {
            "conv bn leaky": (STEM,),
            "conv bias linear": (conv(activation="linear"),),
            "conv dilation 2": (conv(dilation=2, batch_normalize=1),),
            "conv dilation 3 stride 2": (conv(filters=4, dilation=3, stride=2, activation="linear"),),
            "conv stride_x 2 stride_y 1": (conv(filters=4, stride_x=2, stride_y=1, activation="swish"),),
            "conv stride_y 3": (conv(filters=4, stride=2, stride_y=3, activation="logistic"),),
            "conv explicit padding": (conv(filters=3, pad=0, padding=2),),
            "conv 5x5 stride 2": (conv(filters=3, size=5, stride=2, activation="relu"),),
            "conv even kernel": (conv(filters=3, size=2, activation="tanh"),),
            "conv no padding stride 2": (conv(filters=3, pad=0, stride=2, activation="elu"),),
            "conv groups bias": (STEM, conv(groups=2)),
            "conv groups bn mish": (STEM, conv(filters=9, groups=3, batch_normalize=1, activation="mish")),
            "conv groups dilation stride": (STEM, conv(filters=12, groups=3, stride=2, dilation=2)),
            "conv groups 1x1": (STEM, conv(filters=8, size=1, pad=0, groups=2, activation="logistic")),
            "conv depthwise stride 2": (STEM, conv(groups=6, stride=2, activation="relu6")),
            "conv depthwise x2 bn": (STEM, conv(filters=12, groups=6, batch_normalize=1)),
            "conv depthwise dilation": (STEM, conv(groups=6, dilation=2, activation="linear")),
            "conv antialiasing 1": (conv(filters=4, stride=2, antialiasing=1),),
            "conv antialiasing 2": (conv(filters=4, stride=2, antialiasing=2),),
            "share_index other dilation": (
                STEM,
                conv(batch_normalize=1),
                conv(batch_normalize=1, dilation=2, share_index=-1),
            ),
            "conv xnor bn": (STEM, conv(filters=5, xnor=1, batch_normalize=1)),
            "conv xnor bin_output": (conv(filters=4, xnor=1, bin_output=1),),
            "conv xnor 32 stride 2": (WIDE, conv(filters=5, stride=2, xnor=1, batch_normalize=1)),
            "conv xnor 32 unequal strides": (WIDE, conv(filters=4, stride_x=2, stride_y=1, xnor=1)),
            "conv binary stride 2": (conv(filters=4, stride=2, binary=1, activation="relu"),),
            "conv binary depthwise dilation": (
                STEM,
                conv(filters=12, groups=6, dilation=2, binary=1, batch_normalize=1),
            ),
            "conv binary groups antialiasing": (
                STEM,
                conv(filters=9, groups=3, stride=2, antialiasing=1, binary=1, batch_normalize=1),
            ),
            "connected": (section("connected", output=7, activation="leaky"),),
            "connected bn": (STEM, section("connected", output=5, batch_normalize=1, activation="linear")),
            "batchnorm": (section("batchnorm"),),
            "local 3s1 pad": (section("local", filters=5, size=3, stride=1, pad=1, activation="leaky"),),
            "local 3s2": (section("local", filters=2, size=3, stride=2, activation="linear"),),
            "local 3s2 pad": (STEM, section("local", filters=3, size=3, stride=2, pad=1, activation="mish")),
            "local 2s1": (section("local", filters=4, size=2, stride=1, activation="leaky"),),
            "local 1x1": (section("local", filters=2, size=1, stride=1, activation="logistic"),),
        }
    ),
    "spatial": Family(
        {
            "maxpool 2/2 odd": (section("maxpool", size=2, stride=2),),
            "maxpool 2/1 same": (section("maxpool", size=2, stride=1),),
            "maxpool 3/2 odd": (section("maxpool", size=3, stride=2),),
            "maxpool 5/1 spp": (section("maxpool", size=5, stride=1),),
            "maxpool padding 0": (section("maxpool", size=3, stride=2, padding=0),),
            "maxpool padding 3": (section("maxpool", size=3, stride=2, padding=3),),
            "maxpool 2/1 padding 2": (section("maxpool", size=2, stride=1, padding=2),),
            "maxpool stride_x 2 stride_y 1": (section("maxpool", size=2, stride_x=2, stride_y=1),),
            "maxpool stride_y 3": (section("maxpool", size=3, stride=1, stride_y=3),),
            "maxpool_depth 4 of 6": (STEM, section("maxpool", maxpool_depth=1, out_channels=4)),
            "local_avgpool 3/2": (section("local_avgpool", size=3, stride=2),),
            "local_avgpool padding 3": (section("local_avgpool", size=3, stride=2, padding=3),),
            "local_avgpool 4/4": (section("local_avgpool", size=4, stride=4),),
            "local_avgpool 4/4 padding 3": (section("local_avgpool", size=4, stride=4, padding=3),),
            "local_avgpool stride_x 1 stride_y 2": (
                section("local_avgpool", size=2, stride_x=1, stride_y=2),
            ),
            "local_avgpool padding 3, leaky": (
                section("local_avgpool", size=3, stride=2, padding=3),
                section("activation", activation="leaky"),
            ),
            "avgpool": (STEM, section("avgpool")),
            "upsample 2": (section("upsample", stride=2),),
            "upsample 3 scale 0.5": (section("upsample", stride=3, scale=0.5),),
            "upsample 3 scale 0.5, leaky": (
                section("upsample", stride=3, scale=0.5),
                section("activation", activation="leaky"),
            ),
            "upsample -2 sum (odd input)": (section("upsample", stride=-2),),
            "upsample -3 scale 1.5": (section("upsample", stride=-3, scale=1.5),),
            "reorg3d 2": (conv(filters=8, size=2, pad=0), section("reorg3d", stride=2)),
            "reorg 2 (old)": (conv(filters=8, size=2, pad=0), section("reorg", stride=2)),
            "crop": (section("crop", crop_height=5, crop_width=6),),
            "crop noadjust": (section("crop", crop_height=4, crop_width=3, noadjust=1),),
        }
    ),
    "joins": Family(
        {
            "route two": (STEM, conv(filters=4, size=1, pad=0), section("route", layers="-1,-2")),
            "route groups": (
                STEM,
                conv(filters=4, size=1, pad=0),
                section("route", layers="-1,-2", groups=2, group_id=1),
            ),
            "route one group of 3": (STEM, section("route", layers=-1, groups=3, group_id=2)),
            "shortcut": (STEM, conv(size=1, pad=0), section("shortcut", **{"from": -2}, activation="leaky")),
            "shortcut fewer channels": (
                STEM,
                conv(filters=4, size=1, pad=0),
                conv(size=1, pad=0),
                section("shortcut", **{"from": -2}),
            ),
            "shortcut more channels": (
                STEM,
                conv(filters=4, size=1, pad=0),
                section("shortcut", **{"from": -2}),
            ),
            "shortcut per_feature relu": (
                STEM,
                conv(size=1, pad=0),
                conv(size=1, pad=0),
                section(
                    "shortcut", **{"from": "-2,-3"}, weights_type="per_feature", weights_normalization="relu"
                ),
            ),
            "shortcut per_channel softmax": (
                STEM,
                conv(filters=4, size=1, pad=0),
                section(
                    "shortcut",
                    **{"from": -2},
                    weights_type="per_channel",
                    weights_normalization="softmax",
                    activation="mish",
                ),
            ),
            "shortcut per_layer avg_relu": (
                STEM,
                conv(size=1, pad=0),
                section(
                    "shortcut", **{"from": -2}, weights_type="per_layer", weights_normalization="avg_relu"
                ),
            ),
            "scale_channels": (
                STEM,
                section("avgpool"),
                conv(size=1, pad=0, activation="logistic"),
                section("scale_channels", **{"from": -3}),
            ),
            "scale_channels scale_wh": (
                STEM,
                conv(size=1, pad=0, activation="logistic"),
                section("scale_channels", **{"from": -2}, scale_wh=1),
            ),
            "sam": (STEM, conv(size=1, pad=0, activation="logistic"), section("sam", **{"from": -2})),
            "implicit": (section("implicit", filters=4, atoms=3),),
            "normalization 5": (STEM, section("normalization", size=5, alpha=0.001, beta=0.75, kappa=2)),
            "normalization 4 (even)": (
                STEM,
                section("normalization", size=4, alpha=0.001, beta=0.5, kappa=2),
            ),
            "softmax": (STEM, section("softmax")),
            "softmax groups temperature": (STEM, section("softmax", groups=3, temperature=2.0)),
            "softmax tree": (conv(filters=8), section("avgpool"), section("softmax", tree="t.tree")),
            "dropout empty": (STEM, section("dropout", probability=0.5), section("empty")),
        }
    ),
    "heads": Family(
        {
            "yolo scale_x_y": (
                conv(filters=14, size=1, pad=0, activation="linear"),
                section("yolo", **YOLO, scale_x_y=1.1),
            ),
            "yolo new_coords": (
                conv(filters=14, size=1, pad=0, activation="logistic"),
                section("yolo", **YOLO, new_coords=1, scale_x_y=2.0),
            ),
            "Gaussian_yolo": (
                conv(filters=22, size=1, pad=0, activation="linear"),
                section("Gaussian_yolo", **YOLO, scale_x_y=1.05),
            ),
            "region softmax": (
                conv(filters=21, size=1, pad=0, activation="linear"),
                section("region", classes=2, num=3, coords=4, softmax=1, anchors="1,1,2,2,3,3"),
            ),
            "region logistic only": (
                conv(filters=21, size=1, pad=0, activation="linear"),
                section("region", classes=2, num=3, coords=4, softmax=0, anchors="1,1,2,2,3,3"),
            ),
            "region tree": (
                conv(filters=26, size=1, pad=0, activation="linear"),
                section("region", classes=8, num=2, coords=4, anchors="1,1,2,2", tree="t.tree"),
            ),
            "anchor_free two levels": (
                conv(filters=10, size=1, pad=0, activation="linear"),
                conv(filters=10, stride=2, activation="linear"),
                section("anchor_free", layers="-2,-1", classes=2, reg_max=2, strides="2,4"),
            ),
            "detection softmax": (
                section("connected", output=40, activation="linear"),
                section("detection", classes=2, side=2, num=1, coords=4, softmax=1),
            ),
        }
    ),
    # every activation on the input itself (no arithmetic before it: step functions such as stair compare
    # exactly), over −25 … 25: both signs, past every knee and saturation
    "activations": Family(
        {f"activation {name}": (section("activation", activation=name),) for name in sorted(L.ACTIVATIONS)},
        height=5,
        width=7,
        channels=4,
        scale=50.0,
        shift=0.0,
    ),
}

CASES = {name: (family, sections) for family, f in FAMILIES.items() for name, sections in f.cases.items()}
# The default run: one model per backend holding a case of every op and the edge cases where backends part
# ways, and one of every activation; the other cases (each family in one model, each case alone) are slow.
CORE = (
    "conv stride_x 2 stride_y 1",
    "conv groups dilation stride",
    "conv depthwise stride 2",
    "conv xnor 32 stride 2",
    "conv antialiasing 1",
    "connected bn",
    "batchnorm",
    "local 3s1 pad",
    "local 3s2",
    "local 3s2 pad",
    "local 2s1",
    "local 1x1",
    "maxpool 3/2 odd",
    "maxpool stride_x 2 stride_y 1",
    "maxpool_depth 4 of 6",
    "local_avgpool padding 3, leaky",
    "upsample -3 scale 1.5",
    "reorg 2 (old)",
    "crop",
    "route groups",
    "shortcut per_channel softmax",
    "scale_channels",
    "implicit",
    "normalization 4 (even)",
    "softmax groups temperature",
    "softmax tree",
    "yolo scale_x_y",
    "Gaussian_yolo",
    "region tree",
    "anchor_free two levels",
    "detection softmax",
)
DEFAULT = {"core": CORE, "activations": tuple(FAMILIES["activations"].cases)}
HEAD_KINDS = ("[yolo]", "[Gaussian_yolo]", "[region]", "[detection]")


def cfg_text(family: Family, cases: list[str]) -> str:
    """The family's cases joined into one cfg: each reads the input through layer 0 and ends in a head."""
    parts = [
        section("net", width=family.width, height=family.height, channels=family.channels),
        section("empty"),
    ]
    for name in cases:
        sections = CASES[name][1]
        parts += [section("route", layers=0), *sections]
        if not sections[-1].startswith(HEAD_KINDS):
            parts.append(section("detection"))  # an identity head: the case's output
    return "\n".join(parts)


# -- models, inputs and the reference ------------------------------------------------------------------------
@dataclass
class Model:
    graph: Graph
    cases: list[str]  # in output order
    x: np.ndarray
    expected: list[np.ndarray]
    folder: Path


def _random_shortcut_weights(graph: Graph) -> None:
    """Shortcut weights away from their neutral 1.0, so the normalisations matter."""
    rng = np.random.default_rng(5)
    for layer in graph.layers:
        if isinstance(layer, L.Shortcut) and layer.weights is not None:
            shape = layer.weights["weights"].shape
            layer.weights = {"weights": rng.normal(0, 1.5, shape).astype(np.float32)}


def torch_outputs(graph: Graph, x: np.ndarray) -> list[np.ndarray]:
    from cfgsurgeon.emit.torch import to_torch

    with torch.inference_mode():
        return [out.numpy().copy() for out in to_torch(graph)(torch.from_numpy(x))]


_MODELS: dict[tuple[str, tuple[str, ...]], Model] = {}


def model(family_name: str, cases: list[str], folder: Path) -> Model:
    """The cfg of ``cases`` with seeded weights, its input and the torch outputs (built once per session)."""
    key = (family_name, tuple(cases))
    if key not in _MODELS:
        family = FAMILIES.get(family_name, Family({}))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "t.tree").write_text(TREE_TEXT)  # where tree=t.tree is looked for
        graph = loads_cfg(cfg_text(family, cases), str(folder / "conformance.cfg"), warn=quiet)
        random_weights(graph, seed=0)
        _random_shortcut_weights(graph)
        rng = np.random.default_rng(1)
        x = (rng.random((1, *graph.input_shape), dtype=np.float32) - 0.5) * family.scale + family.shift
        x = x.astype(np.float32)
        _MODELS[key] = Model(graph, list(cases), x, torch_outputs(graph, x), folder)
    return _MODELS[key]


# -- the backends --------------------------------------------------------------------------------------------
def _standalone_runner(graph: Graph, folder: Path) -> Callable[[np.ndarray], list[np.ndarray]]:
    """The standalone torch file, imported from where it was written, with the .weights file it reads."""
    from cfgsurgeon.emit.torch_source import write_torch_source

    source, weights = folder / "standalone.py", folder / "standalone.weights"
    write_torch_source(graph, source)
    write_weights(graph, weights)
    spec = importlib.util.spec_from_file_location(f"conformance_{folder.name}", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclass-style annotations resolve through sys.modules
    spec.loader.exec_module(module)
    net = module.Darknet().eval()
    module.load_darknet_weights(net, str(weights))

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            return [out.numpy() for out in net(torch.from_numpy(x))]

    return run


def runner(backend: str, m: Model) -> Callable[[np.ndarray], list[np.ndarray]]:
    for package in REQUIRES[backend]:
        pytest.importorskip(package)
    if backend == STANDALONE:
        return _standalone_runner(m.graph, m.folder)
    from cfgsurgeon.runtimes import make_runner

    return make_runner(m.graph, backend)


def backends() -> list[str]:
    return [name for name in BACKENDS if name != REFERENCE] + [STANDALONE]


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    scale = np.abs(reference).max()
    return float(np.abs(ours - reference).max() / scale) if scale > 0 else float(np.abs(ours).max())


def case_errors(backend: str, m: Model) -> dict[str, float]:
    """Per case of the model: its output's error against torch."""
    outputs = runner(backend, m)(m.x)
    assert len(outputs) == len(m.expected) == len(m.cases)
    return {case: relative_error(a, b) for case, a, b in zip(m.cases, outputs, m.expected, strict=True)}


# -- which op each case exercises --------------------------------------------------------------------------
def op_names(lowered: lo.Lowered) -> set[str]:
    """The op types of a lowered layer (those inside other ops' fields included), activations by name."""
    names = {f"Act:{op.name}" if isinstance(op, lo.Act) else type(op).__name__ for op in lowered.ops}
    return names | {type(op).__name__ for op in lowered.modules()}


@cache
def ops_of_cases() -> dict[str, frozenset[str]]:
    """Case → the ops its layers lower to (the joining [route] and the probe left out)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="conformance."))
    (folder / "t.tree").write_text(TREE_TEXT)
    found = {}
    for case, (family, sections) in CASES.items():
        graph = loads_cfg(cfg_text(FAMILIES[family], [case]), str(folder / "case.cfg"), warn=quiet)
        layers = graph.layers[2 : 2 + len(sections)]
        found[case] = frozenset().union(*(op_names(lo.lower(layer, folder / "t.tree")) for layer in layers))
    return found


# -- coverage: the op list from the lowering, the backend list from the runners table ----------------------
def test_every_op_and_activation_has_a_case_in_the_default_run() -> None:
    covered = set().union(*(ops_of_cases()[case] for cases in DEFAULT.values() for case in cases))
    activations = {f"Act:{name}" for name in L.ACTIVATIONS if name != "linear"}  # linear is no op (lo.Act)
    wanted = {cls.__name__ for cls in _op_types()} - {"Act"} | activations
    assert sorted(wanted - covered) == []


def test_every_backend_is_in_the_matrix() -> None:
    assert REFERENCE in BACKENDS
    assert set(backends()) == set(REQUIRES)  # a new runner needs its packages stated here
    for case, backend in {**CANNOT, **BUGS}:
        assert case in CASES and backend in REQUIRES, (case, backend)


# -- the matrix ----------------------------------------------------------------------------------------------
def _record(backend: str, errors: dict[str, float]) -> None:
    worst = max(errors, key=errors.get)
    key = f"conformance {backend} (max|a-b|/max|b| vs torch)"
    previous = REPORT.get(key)
    text = f"{len(errors)} cases, max {errors[worst]:.1e} ({worst})"
    if previous is None or float(previous.split("max ")[1].split(" ")[0]) < errors[worst]:
        REPORT[key] = text


def _check_together(name: str, cases: tuple[str, ...], backend: str, folder: Path) -> None:
    """``cases`` in one model on ``backend``; those the tables excuse are left to their own test."""
    m = model(name, [case for case in cases if (case, backend) not in CANNOT | BUGS], folder)
    errors = case_errors(backend, m)
    _record(backend, errors)
    over = {case: f"{error:.2e}" for case, error in errors.items() if not error <= TOLERANCE}
    ops = {case: sorted(ops_of_cases()[case]) for case in over}
    assert over == {}, f"{backend} differs from torch by more than {TOLERANCE:g}: {over}; their ops: {ops}"


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("name", list(DEFAULT))
def test_backend_matches_torch(name: str, backend: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    _check_together(name, DEFAULT[name], backend, tmp_path_factory.mktemp(f"{name}-{backend}"))


@pytest.mark.slow
@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_matches_torch(family: str, backend: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every case, a family in one model per backend."""
    cases = tuple(FAMILIES[family].cases)
    _check_together(family, cases, backend, tmp_path_factory.mktemp(f"{family}-{backend}"))


def _excused() -> list:
    """The table's entries for the default cases (the others are in the slow matrix, xfail too)."""
    default = {case for cases in DEFAULT.values() for case in cases} | {"local_avgpool padding 3"}
    return [
        pytest.param(
            case, backend, marks=pytest.mark.xfail(reason=reason, strict=True), id=f"{case}-{backend}"
        )
        for (case, backend), reason in (CANNOT | BUGS).items()
        if case in default
    ]


@pytest.mark.parametrize(("case", "backend"), _excused())
def test_what_a_backend_cannot_run_still_fails(case: str, backend: str, tmp_path: Path) -> None:
    _check_one(case, backend, tmp_path)


def _check_one(case: str, backend: str, folder: Path) -> None:
    m = model(CASES[case][0], [case], folder)
    (error,) = case_errors(backend, m).values()
    assert error <= TOLERANCE, f"{case} on {backend}: {error:.2e}; ops {sorted(ops_of_cases()[case])}"


def _every_pair() -> list:
    pairs = []
    for case in CASES:
        for backend in backends():
            reason = (CANNOT | BUGS).get((case, backend))
            marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
            pairs.append(pytest.param(case, backend, marks=marks, id=f"{case}-{backend}"))
    return pairs


@pytest.mark.slow
@pytest.mark.parametrize(("case", "backend"), _every_pair())
def test_each_case_alone(case: str, backend: str, tmp_path: Path) -> None:
    """The exhaustive matrix: one model per case and backend (a backend's conversion of a lone op)."""
    _check_one(case, backend, tmp_path)
