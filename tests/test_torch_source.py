"""Acceptance 4: ``export --format torch-source`` writes one standalone Python file that computes exactly what
``cfgsurgeon.emit.torch`` computes. Every generated file is run in a separate interpreter that cannot import
cfgsurgeon (``-I -S``: no PYTHONPATH, no .pth files, so not the editable install either; only torch's and
numpy's folder on sys.path; cwd an empty temp dir), and its ``.npz`` outputs must be bit-identical to the
in-memory module's.

Also home to the small synthetic cfgs that cover the layer types the collection lacks (used by
test_convert too) and to the random-weights helper.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import MODELS_DIR, REPORT, SHARED, quiet

from cfgsurgeon import CfgError, Graph, WeightsHeader, load_cfg, loads_cfg, read_weights, write_weights

torch = pytest.importorskip("torch")

from cfgsurgeon.cli import main  # noqa: E402
from cfgsurgeon.emit.torch import ACTIVATIONS, BUILDERS, to_torch  # noqa: E402
from cfgsurgeon.emit.torch_source import TorchSourceEmitter, torch_source, write_torch_source  # noqa: E402

COLLECTION = SHARED / "zoo" / "cfg"


# -- synthetic cfgs: every layer type and option the torch backend implements --------------------------------
def section(name: str, **options: object) -> str:
    return "\n".join([f"[{name}]", *(f"{key}={value}" for key, value in options.items())]) + "\n"


def conv(filters: int, size: int = 1, activation: str = "linear", bn: int = 0, **options: object) -> str:
    stride = options.pop("stride", 1)
    pad = 1 if size > 1 else 0
    return section(
        "convolutional",
        batch_normalize=bn,
        filters=filters,
        size=size,
        stride=stride,
        pad=pad,
        activation=activation,
        **options,
    )


def net(size: int) -> str:
    return section("net", width=size, height=size, channels=3)


def _from(index: int) -> dict[str, int]:
    return {"from": index}


# [detection] without softmax is an identity and a head: it exposes intermediate tensors as outputs.
PROBE = section("detection")

OPS_A = "\n".join(  # weighted shortcuts, pooling variants, route groups, reorg3d, sam, SE, connected, ...
    [
        net(32),
        conv(8, 3, "mish", bn=1),  # 0
        conv(8, 3, "swish", groups=2, dilation=2),  # 1
        section(
            "shortcut",
            **_from(0),
            weights_type="per_channel",
            weights_normalization="softmax",
            activation="leaky",
        ),  # 2
        PROBE,  # 3
        conv(16, 3, "leaky", bn=1, stride=2, antialiasing=1),  # 4
        conv(8, 1, "relu6", bn=1),  # 5
        section("shortcut", **_from(4), weights_type="per_feature", weights_normalization="relu"),  # 6
        PROBE,  # 7
        section("maxpool", size=3, stride=1),  # 8
        section("local_avgpool", size=2, stride=2),  # 9
        PROBE,  # 10
        section("route", layers=10, groups=2, group_id=1),  # 11
        section("upsample", stride=2, scale=0.5),  # 12
        section("route", layers="12,7"),  # 13
        section("upsample", stride=-2),  # 14
        section("reorg3d", stride=2),  # 15
        PROBE,  # 16
        conv(48, 1, "logistic"),  # 17
        section("sam", **_from(16)),  # 18
        section("avgpool"),  # 19
        conv(48, 1, "logistic"),  # 20
        section("scale_channels", **_from(18)),  # 21
        section("activation", activation="hard_mish"),  # 22
        section("batchnorm"),  # 23
        section("dropout", probability=0.5),  # 24
        section("lrn", size=5, alpha=0.0001, beta=0.75),  # 25
        PROBE,  # 26
        section("crop", crop_height=2, crop_width=2),  # 27
        section("connected", output=10, batch_normalize=1, activation="selu"),  # 28
        section("connected", output=6, activation="linear"),  # 29
        section("softmax", groups=2, temperature=2),  # 30
        section("cost"),  # 31
        PROBE,  # 32
    ]
)

ANCHORS = "1,1,2,2"
OPS_B = "\n".join(  # share_index, maxpool_depth, stride_x/stride_y, old reorg, region, implicit, heads
    [
        net(32),
        conv(16, 3, "leaky", bn=1),  # 0
        conv(16, 3, "leaky", bn=1),  # 1
        conv(16, 3, "elu", bn=1, share_index=1),  # 2
        section("maxpool", maxpool_depth=1, out_channels=5),  # 3
        PROBE,  # 4
        conv(8, 3, "gelu", bn=1, stride_x=2, stride_y=1),  # 5
        section("maxpool", size=2, stride_x=1, stride_y=2),  # 6
        section("reorg", stride=2),  # 7
        PROBE,  # 8
        conv(16, 1),  # 9
        section("region", num=2, coords=4, classes=3, anchors=ANCHORS, softmax=1),  # 10
        section("route", layers=8),  # 11
        section("implicit", filters=32),  # 12
        section("scale_channels", **_from(11)),  # 13
        conv(22, 1),  # 14
        section("Gaussian_yolo", mask="0,1", num=2, classes=2, anchors=ANCHORS, scale_x_y=1.1),  # 15
        section("route", layers=13),  # 16
        conv(14, 1, "logistic"),  # 17
        section("yolo", mask="0,1", num=2, classes=2, anchors=ANCHORS, new_coords=1, scale_x_y=2.0),  # 18
        section("route", layers=13),  # 19
        conv(14, 1),  # 20
        section("yolo", mask="0,1", num=2, classes=2, anchors=ANCHORS, scale_x_y=1.05),  # 21
        section("route", layers=13),  # 22
        section("connected", output=32, activation="linear"),  # 23
        section("detection", classes=3, side=2, coords=4, num=1, softmax=1),  # 24
        section("route", layers=9),  # 25
        section("region", num=2, coords=4, classes=3, anchors=ANCHORS),  # 26: no class softmax
    ]
)


OPS_D = "\n".join(  # where darknet is not the textbook op: wide shortcut inputs, upsample<0, its LRN window
    [
        net(7),
        conv(16, 3, "leaky", bn=1),  # 0: 16x7x7
        conv(8, 3, "leaky", bn=1),  # 1: 8x7x7
        section(
            "shortcut", **_from(0), weights_type="per_channel", weights_normalization="softmax"
        ),  # 2: from a wider layer, per_channel weights
        section("shortcut", **_from(0), activation="leaky"),  # 3: from a wider layer, no weights
        PROBE,  # 4
        section("upsample", stride=-2),  # 5: 7x7 -> 3x3, read from the flat buffer (7 is not a multiple)
        PROBE,  # 6
        section("route", layers=0),  # 7
        section("upsample", stride=-3, scale=0.5),  # 8: 7x7 -> 2x2
        PROBE,  # 9
        section("route", layers=0),  # 10
        section("normalization", size=5, alpha=0.01, beta=0.75, kappa=1),  # 11
        PROBE,  # 12
        section("route", layers=0),  # 13
        section("lrn", size=4, alpha=0.5, beta=0.5, kappa=2),  # 14: even size
        PROBE,  # 15
    ]
)


OPS_E = "\n".join(  # xnor / binary convolutions: each path of darknet's xnor code, bin_output, binary=1
    [
        net(16),
        conv(32, 3, "leaky", bn=1),  # 0: a float conv first, as in darknet's xnor nets
        conv(32, 3, "leaky", bn=1, xnor=1, bin_output=1),  # 1: bit-packed, 32 channels, linear
        conv(16, 3, "leaky", bn=1, xnor=1, stride=2),  # 2: bit-packed, stride 2
        conv(8, 3, "mish", bn=1, xnor=1, stride_x=2, stride_y=1),  # 3: float path (unequal strides)
        conv(8, 3, "leaky", bn=1, xnor=1),  # 4: bit-packed, 8 channels, same-size 3x3
        conv(8, 3, "linear", binary=1, groups=2),  # 5: binary weights only, no BN
        conv(8, 1, "logistic", bn=1, binary=1, antialiasing=1, stride=2),  # 6
        PROBE,  # 7
    ]
)

# softmax trees: a [softmax] and a [region] with tree= (the tree file is written by the test)
TREE_TEXT = "r0\nr1\nr2\na 0\nb 0\nc 1\nd 3\ne 3\nf 3\ng 0\n"
OPS_TREE = "\n".join(
    [
        net(8),
        conv(10, 3, "leaky", bn=1),  # 0
        section("avgpool"),  # 1
        section("softmax", temperature=2, tree="small.tree"),  # 2
        PROBE,  # 3
        section("route", layers=0),  # 4
        conv(30, 1),  # 5
        section("region", num=2, coords=4, classes=10, anchors=ANCHORS, softmax=1, tree="small.tree"),  # 6
    ]
)


def _activations_cfg() -> str:
    """Every activation on O(1) values ×4 and ×20.5 (past mish's softplus threshold), concatenated."""
    parts = [net(8), conv(8, 1), section("upsample", stride=1, scale=4.0)]
    parts += [section("route", layers=0), section("upsample", stride=1, scale=20.5)]
    outputs = []
    for source in (1, 3):
        for name in sorted(ACTIVATIONS):
            parts += [section("route", layers=source), section("activation", activation=name)]
            outputs.append(len(parts) - 2)
    parts.append(section("route", layers=",".join(map(str, outputs))))
    return "\n".join(parts)


OPS_C = _activations_cfg()
SYNTHETIC = {"ops_a": OPS_A, "ops_b": OPS_B, "ops_c": OPS_C, "ops_d": OPS_D, "ops_e": OPS_E}


# -- models --------------------------------------------------------------------------------------------------
def randomize(graph: Graph, seed: int = 0) -> Graph:
    """Random weights: cfgsurgeon.randinit's well-conditioned ones when present, else plain draws."""
    try:
        from cfgsurgeon.randinit import random_weights
    except ImportError:
        rng = np.random.default_rng(seed)
        for layer in graph.layers:
            layout = layer.weight_layout()
            if layout:
                layer.weights = {name: _draw(rng, name, shape) for name, shape in layout}
    else:
        random_weights(graph, seed=seed)
    return graph


def _draw(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    values = rng.uniform(0.5, 1.5, shape) if name == "rolling_variance" else rng.normal(0, 0.3, shape)
    return values.astype(np.float32)


def load_graph(name: str, size: int | None = None) -> Graph:
    """A synthetic cfg by name, else ``<name>.cfg`` of the shared collection (skips when it is absent),
    with the input resized to ``size``×``size``."""
    if name in SYNTHETIC:
        graph = loads_cfg(SYNTHETIC[name], f"{name}.cfg", warn=quiet)
    else:
        path = COLLECTION / f"{name}.cfg"
        if not path.is_file():
            pytest.skip(f"needs the read-only shared folder ({path} is absent)")
        graph = load_cfg(path, warn=quiet)
    if size is not None:
        graph.net.options["width"] = graph.net.options["height"] = str(size)
        graph.infer()
    return graph


def bit_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Identical float32 bit patterns (NaN included)."""
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.int32), b.view(np.int32))


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    both = np.isfinite(a) & np.isfinite(b)
    return float(np.abs(a[both] - b[both]).max(initial=0.0))


# -- running generated files in a clean interpreter ----------------------------------------------------------
@dataclass
class Case:
    name: str  # cfg (synthetic or collection)
    size: int | None  # input side, None = the cfg's own
    header: WeightsHeader | None = None  # written .weights header (None = the default 0.2.5)
    real: bool = False  # the official yolov3-tiny weights instead of random ones


CASES = {
    "yolov3-tiny-real": Case("yolov3-tiny", None, real=True),
    "yolov4-tiny": Case("yolov4-tiny", 128),
    "yolov2-tiny": Case("yolov2-tiny", 96),
    "efficientnet_b0": Case("efficientnet_b0", 64),
    "enet-coco": Case("enet-coco", 128),
    "ops_a": Case("ops_a", None),
    "ops_a-header-0.1": Case("ops_a", None, WeightsHeader(0, 1, 0, 7)),
    "ops_a-transposed-connected": Case("ops_a", None, WeightsHeader(1001, 0, 0, 9)),
    "ops_b": Case("ops_b", None),
    "ops_c": Case("ops_c", None),
    "ops_d": Case("ops_d", None),
    "ops_e": Case("ops_e", None),
    "yolov3-tiny_xnor": Case("yolov3-tiny_xnor", 96),
}

RUNNER = """
import importlib.util, json, runpy, sys, traceback
sys.path[:0] = {dirs!r}
jobs = json.load(open(sys.argv[1]))
status = {{"cfgsurgeon_importable": importlib.util.find_spec("cfgsurgeon") is not None}}
for job in jobs:
    sys.argv = [job["script"], job["weights"], job["input"], job["output"]]
    try:
        runpy.run_path(job["script"], run_name="__main__")
    except BaseException:
        status[job["name"]] = traceback.format_exc()
status["cfgsurgeon_imported"] = any(name.split(".")[0] == "cfgsurgeon" for name in sys.modules)
json.dump(status, open("status.json", "w"))
"""


@dataclass
class Prepared:
    expected: list[np.ndarray]
    output: Path
    error: str = ""


def _prepare(case_id: str, case: Case, folder: Path) -> tuple[dict, Prepared]:
    script = folder / f"{case.name}.py"
    if case.real:
        weights = MODELS_DIR / f"{case.name}.weights"
        if not weights.is_file():
            pytest.skip(f"needs the read-only shared folder ({weights} is absent)")
        graph = load_cfg(MODELS_DIR / f"{case.name}.cfg", warn=quiet)
        read_weights(graph, weights)
    else:
        graph = randomize(load_graph(case.name, case.size), seed=len(case_id))
        weights = folder / f"{case_id}.weights"
        write_weights(graph, weights, case.header)
    write_torch_source(graph, script)
    x = np.random.default_rng(1).random((2, *graph.input_shape), dtype=np.float32)
    np.save(folder / f"{case_id}.npy", x)
    with torch.no_grad():
        expected = [t.numpy().copy() for t in to_torch(graph)(torch.from_numpy(x))]
    output = folder / f"{case_id}.npz"
    job = {"name": case_id, "script": str(script), "weights": str(weights)}
    job |= {"input": str(folder / f"{case_id}.npy"), "output": str(output)}
    return job, Prepared(expected, output)


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict[str, Prepared | str]]:
    """Generate every case, then run all generated files in one clean interpreter (one torch import)."""
    folder = tmp_path_factory.mktemp("torch_source")
    jobs, prepared = [], {}
    for case_id, case in CASES.items():
        try:
            job, prepared[case_id] = _prepare(case_id, case, folder)
            jobs.append(job)
        except pytest.skip.Exception as exc:
            prepared[case_id] = str(exc)
    (folder / "jobs.json").write_text(json.dumps(jobs))
    dirs = sorted({str(Path(module.__file__).resolve().parents[1]) for module in (torch, np)})
    cwd = folder / "cwd"
    cwd.mkdir()
    threads = str(torch.get_num_threads())  # same threads as this process: same reduction order
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), "HOME": str(cwd), "OMP_NUM_THREADS": threads}
    command = [sys.executable, "-I", "-S", "-c", RUNNER.format(dirs=dirs), str(folder / "jobs.json")]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((cwd / "status.json").read_text()), prepared


def test_the_clean_interpreter_cannot_import_cfgsurgeon(isolated: tuple[dict, dict]) -> None:
    status, _ = isolated
    assert status["cfgsurgeon_importable"] is False
    assert status["cfgsurgeon_imported"] is False


@pytest.mark.slow
@pytest.mark.parametrize("case_id", list(CASES))
def test_generated_file_computes_the_same_outputs(isolated: tuple[dict, dict], case_id: str) -> None:
    status, prepared = isolated
    found = prepared[case_id]
    if isinstance(found, str):
        pytest.skip(found)
    assert case_id not in status, status[case_id]
    with np.load(found.output) as outputs:
        arrays = [outputs[name] for name in outputs.files]
    assert len(arrays) == len(found.expected)
    for got, want in zip(arrays, found.expected, strict=True):
        assert bit_equal(got, want), f"max |diff| {max_abs_diff(got, want)}"
    REPORT[f"torch-source {case_id}"] = f"{len(arrays)} outputs bit-identical (max |diff| 0)"


# -- in-process checks ---------------------------------------------------------------------------------------
def _module(graph: Graph) -> types.ModuleType:
    module = types.ModuleType("generated")
    exec(compile(torch_source(graph), "generated.py", "exec"), module.__dict__)
    return module


def test_darknet_specific_layers_equal_the_backend_bit_for_bit(tmp_path: Path) -> None:
    """ops_d (wide shortcut inputs with per_channel weights, upsample<0 on a size it does not divide,
    darknet's LRN window) in the default run too: the generated code exec'd in this process."""
    graph = randomize(load_graph("ops_d"))
    write_weights(graph, tmp_path / "ops_d.weights")
    module = _module(graph)
    model = module.Darknet()
    module.load_darknet_weights(model, str(tmp_path / "ops_d.weights"))
    x = torch.from_numpy(np.random.default_rng(1).random((2, *graph.input_shape), dtype=np.float32))
    with torch.no_grad():
        got, want = model(x), to_torch(graph)(x)
    assert len(got) == len(want) == 5
    for name, a, b in zip(module.OUTPUT_NAMES, got, want, strict=True):
        assert bit_equal(a.numpy(), b.numpy()), f"{name}: max |diff| {max_abs_diff(a.numpy(), b.numpy())}"


@pytest.mark.parametrize("name", ["ops_e", "ops_tree"])
def test_binary_convolutions_and_trees_equal_the_backend_bit_for_bit(name: str, tmp_path: Path) -> None:
    """xnor/binary convolutions (ops_e) and softmax trees (the group sizes are written into the file, so it
    runs without the tree file) in the default run: the generated code exec'd in this process."""
    if name == "ops_tree":
        (tmp_path / "small.tree").write_text(TREE_TEXT)
        graph = randomize(loads_cfg(OPS_TREE, str(tmp_path / "tree.cfg"), warn=quiet))
    else:
        graph = randomize(load_graph(name))
    write_weights(graph, tmp_path / "model.weights")
    module = _module(graph)
    (tmp_path / "small.tree").unlink(missing_ok=True)
    model = module.Darknet()
    module.load_darknet_weights(model, str(tmp_path / "model.weights"))
    x = torch.from_numpy(np.random.default_rng(1).random((2, *graph.input_shape), dtype=np.float32) * 4 - 2)
    with torch.no_grad():
        got = model(x)
        (tmp_path / "small.tree").write_text(TREE_TEXT)
        want = to_torch(graph)(x)
    assert len(got) == len(want) == {"ops_e": 1, "ops_tree": 2}[name]
    for output, a, b in zip(module.OUTPUT_NAMES, got, want, strict=True):
        assert bit_equal(a.numpy(), b.numpy()), f"{output}: max |diff| {max_abs_diff(a.numpy(), b.numpy())}"


def test_every_backend_layer_type_has_a_visit_method() -> None:
    names = [kind.__name__ for kind in BUILDERS]
    assert [name for name in names if not hasattr(TorchSourceEmitter, f"visit_{name}")] == []


def test_activation_helpers_equal_the_backend_bit_for_bit() -> None:
    module = _module(load_graph("ops_c"))
    values = torch.cat(
        [torch.linspace(-100, 100, 20000), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, 20.0, -20.0])]
    ).view(2, -1, 1, 1)  # (batch, channels, 1, 1): the channel-normalising activations reduce over dim 1
    inline = {"linear": lambda x: x, "relu": torch.relu, "logistic": torch.sigmoid, "tanh": torch.tanh}
    for name, reference in ACTIVATIONS.items():
        generated = inline.get(name) or getattr(module, name)
        assert bit_equal(generated(values).numpy(), reference(values).numpy()), name


def test_helpers_are_emitted_only_when_used() -> None:
    source = torch_source(load_graph("ops_b"))
    for used in (
        "def maxpool_depth",
        "def reorg_darknet",
        "def region_darknet",
        "def gaussian_yolo_darknet",
        "def yolo_darknet",
        "def detection_softmax",
        "def elu",
        "def gelu",
        "def leaky",
    ):
        assert used in source, used
    for unused in (
        "def mish",
        "def shortcut_darknet",
        "def local_avgpool_darknet",
        "def upsample_darknet",
        "def softmax_darknet",
        "def antialiasing_blur",
        "def route_group",
    ):
        assert unused not in source, unused


def test_the_source_reads_layer_by_layer() -> None:
    graph = load_graph("ops_b")
    source = torch_source(graph)
    assert "self.l0_conv = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)" in source
    assert "self.l0_bn = nn.BatchNorm2d(16, eps=BN_EPS)" in source
    assert "self.l12_implicit = nn.Parameter(torch.zeros(32))" in source
    assert "l2 = elu(self.l1_bn(self.l2_conv(l1)))" in source  # share_index=1: layer 1's tensors
    assert "self.l2_conv.weight = self.l1_conv.weight" in source  # ... in layer 2's own geometry
    for layer in graph.layers:
        assert f"        # {layer.index} [{layer.header}]" in source
        assert f"        l{layer.index} = " in source
    compile(source, "generated.py", "exec")


def test_generated_model_loads_the_same_state_as_the_backend() -> None:
    graph = randomize(load_graph("ops_a"))
    module = _module(graph)
    model = module.Darknet()
    state = model.state_dict(keep_vars=True)
    tensors = [np.asarray(layer.weights[name]) for layer in graph.layers for name, _ in layer.weight_layout()]
    assert len(module.DARKNET_ORDER) == len(tensors)
    for name, array in zip(module.DARKNET_ORDER, tensors, strict=True):
        assert state[name].numel() == array.size, name
    assert sum(state[name].numel() for name in module.DARKNET_ORDER) == graph.params


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (net(8) + conv(4, 3, "leaky", bn=1) + conv(4, 1, "leaky", bn=1, xnor=1), "not a multiple of 32"),
        (net(8) + conv(4, 1) + section("reorg3d", stride=2, reverse=1), "reverse=1 is not supported"),
        (net(8) + conv(10, 1) + section("region", num=1, coords=4, classes=5, tree="x.tree"), "not found"),
        (
            net(8) + section("convolutional", filters=4, size=3, pad=0, padding=0, dilation=2),
            "im2col size",
        ),
        (net(8) + conv(4, 1, stride_x=1, stride_y=2), "a 1x1 convolution with stride_x=1 and stride_y=2"),
        (net(8) + conv(4, 1) + section("maxpool", size=2, stride=2, antialiasing=1), "antialiasing"),
        (net(8) + conv(4, 1) + section("local_avgpool", size=2, stride=2, antialiasing=2), "antialiasing"),
    ],
    ids=[
        "xnor-1x1-8ch",
        "reorg-reverse",
        "region-tree-missing",
        "dilated-conv",
        "1x1-stride-y",
        "maxpool-aa",
        "avgpool-aa",
    ],
)
def test_unsupported_layers_are_refused_like_the_backend(text: str, message: str, tmp_path: Path) -> None:
    graph = loads_cfg(text, "bad.cfg", warn=quiet)
    with pytest.raises(CfgError) as generated:
        write_torch_source(graph, tmp_path / "out.py")
    with pytest.raises(CfgError) as backend:
        to_torch(graph)
    assert message in str(generated.value)
    assert str(generated.value) == str(backend.value)
    assert "\n" not in str(generated.value)
    assert not list(tmp_path.iterdir())  # nothing written


# -- CLI -----------------------------------------------------------------------------------------------------
def _cfg_file(folder: Path, name: str = "ops_b") -> Path:
    path = folder / f"{name}.cfg"
    path.write_text(SYNTHETIC[name])
    return path


EXPORT = ["export", "--format", "torch-source"]


def test_cli_export_torch_source(tmp_path: Path) -> None:
    cfg = _cfg_file(tmp_path)
    out = tmp_path / "ops_b.py"
    result = CliRunner().invoke(main, [*EXPORT, "--cfg", str(cfg), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    compile(out.read_text(), str(out), "exec")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--format", "onnx2", "-o", "x.py"], 2, "Invalid value for '--format'"),
        (["--format", "torch-source", "-o", "x.txt"], 1, "should end in .py"),
        (["--format", "torch-source", "-o", "x.py", "--cfg", "missing.cfg"], 1, "missing.cfg"),
    ],
    ids=["unknown-format", "wrong-suffix", "missing-cfg"],
)
def test_cli_export_errors(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    if "--cfg" not in args:
        args = [*args, "--cfg", str(_cfg_file(tmp_path))]
    result = CliRunner().invoke(main, ["export", *args])
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_export_never_overwrites_its_cfg(tmp_path: Path) -> None:
    cfg = tmp_path / "model.py"  # a cfg that happens to be named like the output
    cfg.write_text(OPS_B)
    result = CliRunner().invoke(main, [*EXPORT, "--cfg", str(cfg), "-o", str(cfg)])
    assert result.exit_code == 1
    assert "refusing to overwrite" in result.output
    assert cfg.read_text() == OPS_B


def test_cli_export_help_lists_formats() -> None:
    result = CliRunner().invoke(main, ["export", "--help"])
    assert result.exit_code == 0
    assert "torch-source" in result.output
