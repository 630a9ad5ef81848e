"""``export --format tf1``: one standalone Python file of TF1-style graph code (``tf.compat.v1``) whose
``main`` loads darknet ``.weights`` and freezes the graph to a ``.pb``; and the ``tf1`` runtime that runs
such a frozen graph (``detect --backend tf1``).

Every generated file is run in a separate interpreter that cannot import cfgsurgeon (``-I -S``: only
tensorflow's and numpy's folders on sys.path; cwd an empty temp dir). Its frozen graph's outputs must match
the torch backend within 1e-4 relative (``max|a - b| / max|b|`` per output); one frozen graph per kind of
model is also converted with ``openvino.convert_model`` and run in f32. The grouped-convolution cases
also run with oneDNN off (``TF_ENABLE_ONEDNN_OPTS=0``: TensorFlow's kernels on CPUs without it), whatever
this CPU's default; otherwise the clean interpreter inherits this process's setting. The heavy cases
(yolov4, the collection sweep, ...) are marked ``slow``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import (
    MISH_TOLERANCE,
    MODELS_DIR,
    REPORT,
    ZOO,
    loadable_cfgs,
    mish_error,
    mish_probe,
    quiet,
    section_headers,
)

from cfgsurgeon import (
    CfgError,
    Graph,
    UsageError,
    WeightsHeader,
    load_cfg,
    loads_cfg,
    read_weights,
    write_weights,
)

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

from test_binary_and_tree_cfgs import synthetic_tree  # noqa: E402
from test_detect import REFERENCE, deviations  # noqa: E402
from test_torch_source import OPS_TREE, SYNTHETIC, TREE_TEXT, conv, load_graph, net, randomize, section  # noqa: E402

from cfgsurgeon.cli import main  # noqa: E402
from cfgsurgeon.emit.tf1 import TF1Emitter, frozen_graph_def, output_names, tf1_source, write_tf1  # noqa: E402
from cfgsurgeon.emit.torch import ACTIVATIONS, BUILDERS, to_torch  # noqa: E402
from cfgsurgeon.runtimes import make_runner  # noqa: E402
from cfgsurgeon.tree import has_tree  # noqa: E402

TOLERANCE = 1e-4  # relative: max|tf - torch| / max|torch|, per output
PHOTOS = sorted((ZOO / "images").glob("*.jpg")) if ZOO.is_dir() else []


def rel_error(ours: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """Largest ``max|a - b| / max|b|`` over the outputs (each output normalised by its own magnitude)."""
    assert [a.shape for a in ours] == [b.shape for b in reference]
    return max(
        float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)) for a, b in zip(ours, reference, strict=True)
    )


def torch_outputs(graph: Graph, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy().copy() for t in to_torch(graph)(torch.from_numpy(x))]


# -- the cases run through generated files ------------------------------------------------------------------
@dataclass
class Case:
    name: str  # cfg (synthetic or collection)
    size: int | None  # input side, None = the cfg's own
    header: WeightsHeader | None = None  # written .weights header (None = the default 0.2.5)
    real: bool = False  # the official yolov3-tiny weights (exported through the CLI) instead of random ones
    prune: str | None = None  # prune the random-weight model with this method (50 %) first
    slow: bool = False
    scale: float = 1.0  # input in [-scale/2, scale/2) instead of [0, 1): exercises xnor's sign of the input


CASES = {
    "yolov3-tiny-real": Case("yolov3-tiny", None, real=True),
    "yolov4-tiny": Case("yolov4-tiny", 128),
    "yolov4-tiny-slim": Case("yolov4-tiny", 128, prune="slim"),
    "yolov2-tiny": Case("yolov2-tiny", 96),  # [region], [maxpool] size=2 stride=1
    "ops_a": Case("ops_a", None),  # synthetic (test_torch_source): every layer type the backend implements
    "ops_a-header-0.1": Case("ops_a", None, WeightsHeader(0, 1, 0, 7)),
    "ops_a-transposed-connected": Case("ops_a", None, WeightsHeader(1001, 0, 0, 9)),
    "ops_b": Case("ops_b", None),
    "ops_c": Case("ops_c", None),  # every activation
    "ops_d": Case("ops_d", None),  # shortcuts of unequal widths, negative-stride upsample, LRN windows
    "ops_e": Case("ops_e", None, scale=4.0),  # xnor / binary convolutions on every path of darknet's code
    "ops_tree": Case("ops_tree", None),  # softmax trees in [softmax] and [region] (a small tree file)
    "grouped": Case("grouped", None),  # grouped and depthwise convolutions: bias, BN, dilation, stride
    "yolov3-tiny_xnor": Case("yolov3-tiny_xnor", 96),
    "yolov4": Case("yolov4", 128, slow=True),
    "yolov4-slim": Case("yolov4", 128, prune="slim", slow=True),
    "yolov3-tiny-prn": Case("yolov3-tiny-prn", 128, slow=True),  # shortcuts of unequal widths
    "enet-coco": Case("enet-coco", 128, slow=True),  # depthwise convolutions, [scale_channels]
    "efficientnet_b0": Case("efficientnet_b0", 64, slow=True),
    "yolov4-sam-mish-csp-reorg-bfm": Case("yolov4-sam-mish-csp-reorg-bfm", 128, slow=True),  # [sam], reorg3d
}
FAST = [case_id for case_id, case in CASES.items() if not case.slow]
PROBE = section("detection")  # an identity head: exposes the tensor before it
GROUPED = "\n".join(
    [
        net(16),
        conv(8, 3, "leaky", bn=1),  # 0
        conv(8, 3, "leaky", groups=2),  # 1: bias + activation, the pattern grappler fuses
        PROBE,  # 2
        conv(16, 3, "swish", groups=4, stride=2),  # 3
        conv(16, 3, "mish", bn=1, groups=4, dilation=2),  # 4
        PROBE,  # 5
        conv(16, 3, "linear", groups=16, dilation=2, stride=2),  # 6: groups = channels, not depthwise in TF
        conv(32, 3, "relu", groups=16),  # 7: depthwise, channel multiplier 2
        conv(24, 1, "logistic", groups=8),  # 8
        PROBE,  # 9
    ]
)
# Grouped convolutions take other kernels without oneDNN (TF_ENABLE_ONEDNN_OPTS=0, and CPUs where TF leaves
# it off), where a fused Conv2D + BiasAdd refuses groups: these cases run there too, whatever this CPU is.
WITHOUT_ONEDNN = ["grouped", "ops_a"]
SLOW = [case_id for case_id, case in CASES.items() if case.slow]

RUNNER = """
import importlib.util, json, runpy, sys, time, traceback
sys.path[:0] = {dirs!r}
jobs = json.load(open(sys.argv[1]))
status = {{"cfgsurgeon_importable": importlib.util.find_spec("cfgsurgeon") is not None, "seconds": {{}}}}
for job in jobs:
    sys.argv = [job["script"], job["weights"], job["pb"], job["input"], job["output"]]
    start = time.perf_counter()
    try:
        runpy.run_path(job["script"], run_name="__main__")
    except BaseException:
        status[job["name"]] = traceback.format_exc()
    status["seconds"][job["name"]] = time.perf_counter() - start
status["cfgsurgeon_imported"] = any(name.split(".")[0] == "cfgsurgeon" for name in sys.modules)
json.dump(status, open("status.json", "w"))
"""


@dataclass
class Prepared:
    graph: Graph
    x: np.ndarray
    expected: list[np.ndarray]
    pb: Path
    output: Path


def _model(case: Case, seed: int, folder: Path) -> Graph:
    if case.name == "ops_tree":  # the tree file beside the cfg, where tree=small.tree is looked for
        (folder / "small.tree").write_text(TREE_TEXT)
        graph = randomize(loads_cfg(OPS_TREE, str(folder / "ops_tree.cfg"), warn=quiet), seed=seed)
    elif case.name == "grouped":
        graph = randomize(loads_cfg(GROUPED, "grouped.cfg", warn=quiet), seed=seed)
    else:
        graph = randomize(load_graph(case.name, case.size), seed=seed)
    if case.prune:
        from cfgsurgeon.surgery.prune import prune

        graph = prune(graph, case.prune, percent=0.5).pruned
    return graph


def _prepare(case_id: str, case: Case, folder: Path) -> tuple[dict, Prepared]:
    script = folder / f"{case_id}.py"
    if case.real:
        weights = MODELS_DIR / f"{case.name}.weights"
        if not weights.is_file():
            pytest.skip(f"needs the read-only shared folder ({weights} is absent)")
        cfg = MODELS_DIR / f"{case.name}.cfg"
        graph = load_cfg(cfg, warn=quiet)
        read_weights(graph, weights)
        args = ["export", "--format", "tf1", "--cfg", str(cfg), "--weights", str(weights), "-o", str(script)]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
    else:
        graph = _model(case, seed=len(case_id), folder=folder)
        weights = folder / f"{case_id}.weights"
        write_weights(graph, weights, case.header)
        write_tf1(graph, script)
    x = np.random.default_rng(1).random((2, *graph.input_shape), dtype=np.float32)
    x = (x - 0.5) * case.scale if case.scale != 1 else x
    np.save(folder / f"{case_id}.npy", x)
    expected = torch_outputs(graph, x)
    prepared = Prepared(graph, x, expected, folder / f"{case_id}.pb", folder / f"{case_id}.npz")
    job = {"name": case_id, "script": str(script), "weights": str(weights), "pb": str(prepared.pb)}
    job |= {"input": str(folder / f"{case_id}.npy"), "output": str(prepared.output)}
    return job, prepared


def _run_isolated(
    case_ids: list[str], folder: Path, onednn: str | None = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
) -> tuple[dict, dict[str, Prepared | str]]:
    """Generate every case, then run all generated files in one clean interpreter (one TF import), with
    ``TF_ENABLE_ONEDNN_OPTS=onednn`` when given (by default as this process has it)."""
    jobs, prepared = [], {}
    for case_id in case_ids:
        try:
            job, prepared[case_id] = _prepare(case_id, CASES[case_id], folder)
            jobs.append(job)
        except pytest.skip.Exception as exc:
            prepared[case_id] = str(exc)
    (folder / "jobs.json").write_text(json.dumps(jobs))
    dirs = sorted({str(Path(module.__file__).resolve().parents[1]) for module in (tf, np)})
    cwd = folder / "cwd"
    cwd.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), "HOME": str(cwd)}
    if onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    command = [sys.executable, "-I", "-S", "-c", RUNNER.format(dirs=dirs), str(folder / "jobs.json")]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((cwd / "status.json").read_text()), prepared


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict[str, Prepared | str]]:
    return _run_isolated(FAST, tmp_path_factory.mktemp("tf1"))


@pytest.fixture(scope="module")
def isolated_without_onednn(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict, dict[str, Prepared | str]]:
    return _run_isolated(WITHOUT_ONEDNN, tmp_path_factory.mktemp("tf1_no_onednn"), onednn="0")


@pytest.fixture(scope="module")
def isolated_slow(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict[str, Prepared | str]]:
    return _run_isolated(SLOW, tmp_path_factory.mktemp("tf1_slow"))


def _found(runs: tuple[dict, dict], case_id: str) -> Prepared:
    status, prepared = runs
    found = prepared[case_id]
    if isinstance(found, str):
        pytest.skip(found)
    assert case_id not in status, status[case_id]
    return found


def test_the_clean_interpreter_cannot_import_cfgsurgeon(isolated: tuple[dict, dict]) -> None:
    status, _ = isolated
    assert status["cfgsurgeon_importable"] is False
    assert status["cfgsurgeon_imported"] is False


def _continuous(case_id: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """ops_c without its two `stair` blocks: stair is a step function of its input, so where a convolution
    output lies within rounding of an integer, TF's and torch's last-bit differences give a step of 1 (stair
    itself is compared exactly on equal inputs in test_activations_equal_the_backend)."""
    if not case_id.startswith("ops_c"):
        return arrays
    names = sorted(ACTIVATIONS)
    keep = np.ones(arrays[0].shape[1], bool)
    for block in (names.index("stair"), len(names) + names.index("stair")):
        keep[8 * block : 8 * block + 8] = False  # each block: the 8 channels of conv 0, scaled
    return [array[:, keep] for array in arrays]


def _check_case(runs: tuple[dict, dict], case_id: str, setting: str = "") -> None:
    found = _found(runs, case_id)
    with np.load(found.output) as outputs:
        assert outputs.files == output_names(found.graph)
        arrays = [outputs[name] for name in outputs.files]
    error = rel_error(_continuous(case_id, arrays), _continuous(case_id, found.expected))
    seconds = runs[0]["seconds"][case_id]
    figures = f"{len(arrays)} outputs, rel. error {error:.1e} vs torch ({seconds:.1f} s)"
    REPORT[f"tf1 {case_id}{setting}"] = figures
    assert error <= TOLERANCE


@pytest.mark.parametrize("case_id", FAST)
def test_frozen_graph_matches_torch(isolated: tuple[dict, dict], case_id: str) -> None:
    _check_case(isolated, case_id)


@pytest.mark.parametrize("case_id", WITHOUT_ONEDNN)
def test_frozen_graph_matches_torch_without_onednn(isolated_without_onednn: tuple[dict, dict], case_id: str):
    _check_case(isolated_without_onednn, case_id, " (TF_ENABLE_ONEDNN_OPTS=0)")


@pytest.mark.slow
@pytest.mark.parametrize("case_id", SLOW)
def test_frozen_graph_matches_torch_large(isolated_slow: tuple[dict, dict], case_id: str) -> None:
    _check_case(isolated_slow, case_id)


def _openvino_outputs(pb: Path, names: list[str], x: np.ndarray) -> list[np.ndarray]:
    ov = pytest.importorskip("openvino")
    from cfgsurgeon.emit.openvino import compile_model

    model = ov.convert_model(str(pb))
    compiled = compile_model(model)
    results = compiled({0: x})
    by_name = {name: results[out] for out in compiled.outputs for name in out.get_names()}
    return [np.asarray(by_name[f"{name}:0"] if f"{name}:0" in by_name else by_name[name]) for name in names]


@pytest.mark.parametrize("case_id", ["yolov4-tiny", "ops_a", "ops_b", "ops_c", "grouped"])
def test_frozen_graph_converts_with_openvino(isolated: tuple[dict, dict], case_id: str) -> None:
    found = _found(isolated, case_id)
    outputs = _openvino_outputs(found.pb, output_names(found.graph), found.x)
    error = rel_error(_continuous(case_id, outputs), _continuous(case_id, found.expected))
    REPORT[f"tf1 -> openvino {case_id}"] = f"rel. error {error:.1e} vs torch"
    assert error <= TOLERANCE


def test_mish_is_accurate_through_openvino(tmp_path: Path) -> None:
    graph, x = mish_probe()
    pb = tmp_path / "mish.pb"
    pb.write_bytes(frozen_graph_def(graph).SerializeToString())
    assert mish_error(_openvino_outputs(pb, output_names(graph), x)[0], x) <= MISH_TOLERANCE
    assert mish_error(make_runner(graph, "tf1", model=pb)(x)[0], x) <= MISH_TOLERANCE


# -- detections of the real yolov3-tiny ----------------------------------------------------------------------
MODEL_FILES = [("cfg", "yolov3-tiny.cfg"), ("weights", "yolov3-tiny.weights"), ("names", "coco.names")]


def _detect(args: list[str], photos: list[Path], outdir: Path) -> dict[str, list[str]]:
    """Run `detect` and split its output into each photo's darknet lines."""
    model = [f"--{option}={MODELS_DIR / name}" for option, name in MODEL_FILES]
    command = ["detect", *model, *args, "-o", str(outdir), *map(str, photos)]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 0, result.output
    lines: dict[str, list[str]] = {}
    current = None
    for line in result.output.splitlines():
        match = re.match(r"^(.*): Predicted in [\d.]+ ms\.$", line)
        if match:
            current = Path(match[1]).stem
            lines[current] = []
        elif current is not None:
            lines[current].append(line)
    return lines


def _compare_with_darknet(found: dict[str, list[str]], photos: list[Path], label: str) -> None:
    worst_prob = worst_box = 0
    for photo in photos:
        reference = (REFERENCE / f"{photo.stem}.txt").read_text().splitlines()
        prob, box = deviations(found[photo.stem], reference)
        worst_prob, worst_box = max(worst_prob, prob), max(worst_box, box)
    REPORT[f"detect --backend tf1 {label}"] = (
        f"{len(photos)} photos as darknet: max prob deviation {worst_prob} points, box {worst_box} px"
    )


@pytest.mark.shared
def test_detect_with_the_frozen_graph_matches_darknet(isolated: tuple[dict, dict], tmp_path: Path) -> None:
    found = _found(isolated, "yolov3-tiny-real")
    if not PHOTOS:
        pytest.skip("needs the zoo photos")
    lines = _detect(["--backend", "tf1", "--model", str(found.pb)], PHOTOS, tmp_path)
    _compare_with_darknet(lines, PHOTOS, "--model yolov3-tiny.pb")


@pytest.mark.shared
@pytest.mark.slow
def test_detect_exporting_in_memory_matches_darknet(tmp_path: Path) -> None:
    if not (MODELS_DIR / "yolov3-tiny.weights").is_file() or not PHOTOS:
        pytest.skip("needs the shared zoo")
    lines = _detect(["--backend", "tf1"], PHOTOS, tmp_path)
    _compare_with_darknet(lines, PHOTOS, "(exported in memory)")


# -- the runtime ---------------------------------------------------------------------------------------------
def test_runner_exports_in_memory_and_matches_torch() -> None:
    graph = randomize(load_graph("ops_b"), seed=5)
    x = np.random.default_rng(2).random((3, *graph.input_shape), dtype=np.float32)
    outputs = make_runner(graph, "tf1", threads=1)(x)
    assert rel_error(outputs, torch_outputs(graph, x)) <= TOLERANCE


def test_runner_refuses_a_graph_of_another_cfg(isolated: tuple[dict, dict]) -> None:
    found = _found(isolated, "yolov2-tiny")
    other = load_graph("yolov4-tiny", 128)
    with pytest.raises(UsageError, match="was it exported from this cfg"):
        make_runner(other, "tf1", found.pb)
    resized = load_graph("yolov2-tiny", 128)
    with pytest.raises(UsageError, match=r"input 'images' is \[3, 96, 96\]"):
        make_runner(resized, "tf1", found.pb)


def test_runner_refuses_a_file_that_is_no_graph(tmp_path: Path) -> None:
    bogus = tmp_path / "model.pb"
    bogus.write_bytes(b"\xff" * 64)
    with pytest.raises(UsageError, match="not a frozen TensorFlow graph"):
        make_runner(load_graph("ops_b"), "tf1", bogus)


# -- the collection: every detection cfg the torch backend supports (slow) ----------------------------------
HEAD_SECTIONS = {"yolo", "Gaussian_yolo", "region", "detection"}
DETECTION_CFGS = [
    path for path in loadable_cfgs() if any(name in HEAD_SECTIONS for _, name in section_headers(path))
]


def _small(path: Path) -> Graph | None:
    """The cfg at the smallest of 128, 256, 512 px that its strides allow (None when none does)."""
    graph = load_cfg(path, warn=quiet)
    for size in (128, 256, 512):
        graph.net.options["width"] = graph.net.options["height"] = str(size)
        try:
            graph.infer()
            return graph
        except CfgError:
            continue
    return None


# Peak memory of this test over the size of the weights: TF needs the variables, the frozen GraphDef, the
# imported graph and grappler's and oneDNN's copies of the constants (measured ~15x on yolov4), torch 2x more.
MEMORY_PER_WEIGHT = 16


def _available_memory() -> float:
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
    except OSError:  # not Linux: no guard
        return float("inf")
    return int(fields["MemAvailable"].split()[0]) * 1024


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize("path", DETECTION_CFGS, ids=[path.stem for path in DETECTION_CFGS])
def test_every_detection_cfg_of_the_collection(path: Path, tmp_path: Path) -> None:
    graph = _small(path)
    if graph is None:
        pytest.skip("no input size up to 512 px fits its strides")
    trees = [layer for layer in graph.layers if has_tree(layer)]
    if trees:  # yolo9000: its 9k.tree is not part of the collection; a synthetic one of the same size
        graph.tree_file = str(synthetic_tree(tmp_path / "9k.tree", trees[0].classes))
    needed = MEMORY_PER_WEIGHT * 4 * graph.params
    if needed > _available_memory():
        pytest.skip(f"{graph.params / 1e6:.0f}M params: needs ~{needed / 1e9:.0f} GB, more than available")
    randomize(graph, seed=0)
    try:
        model = to_torch(graph)
    except CfgError as exc:
        pytest.skip(f"the torch backend refuses it: {exc}")
    x = np.random.default_rng(1).random((1, *graph.input_shape), dtype=np.float32)
    with torch.no_grad():
        expected = [t.numpy() for t in model(torch.from_numpy(x))]
    del model
    start = time.perf_counter()
    outputs = make_runner(graph, "tf1")(x)
    error = rel_error(outputs, expected)
    REPORT[f"tf1 collection {path.stem}"] = (
        f"@{graph.input_shape[1]} px rel. error {error:.1e} vs torch ({time.perf_counter() - start:.0f} s)"
    )
    assert error <= TOLERANCE


# -- the generated source ------------------------------------------------------------------------------------
def _module(graph: Graph) -> types.ModuleType:
    module = types.ModuleType("generated")
    exec(compile(tf1_source(graph), "generated.py", "exec"), module.__dict__)
    return module


def test_every_backend_layer_type_has_a_visit_method() -> None:
    names = [kind.__name__ for kind in BUILDERS]
    assert [name for name in names if not hasattr(TF1Emitter, f"visit_{name}")] == []


def test_activations_equal_the_backend() -> None:
    module = _module(load_graph("ops_c"))
    values = np.concatenate(
        [np.linspace(-100, 100, 20000), [0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, 20.0, -20.0]]
    ).astype(np.float32)
    nchw = values.reshape(2, -1, 1, 1)  # (batch, channels, 1, 1): some activations reduce over channels
    emitter = TF1Emitter(load_graph("ops_c"))
    for name, reference in ACTIVATIONS.items():
        expression = emitter.activation(name, "x")
        x = tf.constant(nchw.transpose(0, 2, 3, 1))  # NHWC
        got = eval(expression, {**module.__dict__, "x": x}).numpy().transpose(0, 3, 1, 2)
        want = reference(torch.from_numpy(nchw)).numpy()
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6, err_msg=name)  # NaN, inf: same places


def test_helpers_are_emitted_only_when_used() -> None:
    source = tf1_source(load_graph("ops_b"))
    for used in ("def maxpool_depth", "def reorg_darknet", "def region_darknet", "def yolo_darknet"):
        assert used in source, used
    for used in ("def detection_softmax", "def gelu", "def conv2d", "def batch_norm", "def dense"):
        assert used in source, used
    for unused in ("def mish", "def shortcut_darknet", "def local_avgpool_darknet", "def upsample_darknet"):
        assert unused not in source, unused
    for unused in ("def softmax_darknet", "def antialiasing_blur", "def lrn_darknet", "def binary_conv"):
        assert unused not in source, unused
    assert "def softmax_tree_darknet" not in source


def test_the_source_embeds_the_text_of_tf_ops() -> None:
    """The generated file's functions are tf_ops' own text (the Keras model runs the same functions)."""
    import inspect

    from cfgsurgeon.emit import tf_ops

    copied = 0
    for case in ("ops_a", "ops_b", "ops_d", "ops_e"):
        source = tf1_source(load_graph(case))
        for name, function in inspect.getmembers(tf_ops, inspect.isfunction):
            if function.__module__ == tf_ops.__name__ and f"def {name}(" in source:
                assert inspect.getsource(function) in source, name
                copied += 1
    assert copied > 40


def test_the_source_reads_layer_by_layer() -> None:
    graph = load_graph("ops_b")
    source = tf1_source(graph)
    assert 'l0_conv = {"weight": variable("weights", [3, 3, 3, 16])}' in source  # HWIO
    assert '"running_var": variable("rolling_variance", [16]),' in source
    assert "l0 = conv2d(\n            x, l0_conv, in_channels=3, filters=16, size=3, stride=(1, 1)" in source
    assert "padding=(1, 1)" in source  # explicit symmetric padding (tf_ops pads, then VALID)
    assert "l2 = conv2d(\n            l1, l1_conv" in source  # share_index=1: layer 1's tensors
    bn_then_elu = "l2 = batch_norm(l2, l1_bn, channels=16, eps=1e-05, spatial=True)\n        l2 = tf.nn.elu"
    assert bn_then_elu in source
    assert "l5_conv, in_channels=5, filters=8, size=3, stride=(1, 2)," in source  # stride_x=2
    assert 'tf.transpose(l21, [0, 3, 1, 2], name="yolo_21")' in source
    for layer in graph.layers:
        assert f"    # {layer.index} [{layer.header}]" in source
        assert f'    with tf1.variable_scope("l{layer.index}_{layer.kind.lower()}"):' in source
        assert f"        l{layer.index} = " in source
    assert "cfgsurgeon" not in source.replace("Generated by cfgsurgeon", "")
    assert max(len(line) for line in source.splitlines()) <= 110
    compile(source, "generated.py", "exec")


def test_darknet_order_matches_the_weights_layout() -> None:
    graph = load_graph("ops_a")
    module = _module(graph)
    layout = [shape for layer in graph.layers for _, shape in layer.weight_layout()]
    assert [tuple(shape) for _, shape, _ in module.DARKNET_ORDER] == layout
    with tf.Graph().as_default():
        module.build_network()
        variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
    assert sorted(variables) == sorted(name for name, _, _ in module.DARKNET_ORDER)
    for name, shape, _ in module.DARKNET_ORDER:
        assert int(np.prod(variables[name].shape)) == int(np.prod(shape)), name


XNOR_AFTER_32 = net(8) + conv(32, 3, "leaky", bn=1)
REGION_TREE = conv(10, 1) + section("region", num=1, coords=4, classes=5, anchors="1,1", tree="t.tree")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (net(8) + conv(4, 1) + section("reorg3d", stride=2, reverse=1), "reverse=1 is not supported"),
        (net(8) + section("maxpool", size=2, stride=2, antialiasing=1), "antialiasing is not supported"),
        (net(16) + section("convolutional", filters=4, size=3, pad=0, dilation=2), "im2col size"),
        (net(8) + conv(4, 1, stride_x=1, stride_y=2), "GEMM matrix"),
        (XNOR_AFTER_32 + conv(8, 3, "leaky", bn=1, xnor=1, antialiasing=1), "xnor=1 with antialiasing"),
        (net(8) + conv(4, 3, "leaky") + conv(8, 3, "leaky", xnor=1, stride=2), "not a multiple of 32"),
        (net(8) + REGION_TREE, "t.tree: file not found"),
        (net(8) + REGION_TREE.replace("coords=4", "coords=2").replace("=10", "=8"), "tree= with coords=2"),
    ],
    ids=[
        "reorg-reverse",
        "maxpool-antialiasing",
        "dilation",
        "1x1-stride-y",
        "xnor-antialiasing",
        "xnor-narrow-strided",
        "tree-file-missing",
        "tree-coords",
    ],
)
def test_unsupported_layers_are_refused_like_the_backend(text: str, message: str, tmp_path: Path) -> None:
    try:
        graph = loads_cfg(text, "bad.cfg", warn=quiet)
    except CfgError as exc:  # pragma: no cover - depends on the shape rules
        pytest.skip(f"refused when loading: {exc}")
    if "coords=2" in text:  # a tree that fits, so that the coords rule is the one that refuses
        (tmp_path / "tree").mkdir()
        graph.tree_file = str(tmp_path / "tree" / "t.tree")
        Path(graph.tree_file).write_text("a\nb\nc 0\nd 0\ne 0\n")
    with pytest.raises(CfgError) as generated:
        write_tf1(graph, tmp_path / "out.py")
    with pytest.raises(CfgError) as backend:
        to_torch(graph)
    assert message in str(generated.value)
    assert str(generated.value) == str(backend.value)
    assert "\n" not in str(generated.value)
    assert not (tmp_path / "out.py").exists()  # nothing written


# -- CLI -----------------------------------------------------------------------------------------------------
def test_cli_export_tf1_needs_weights_and_writes_python(tmp_path: Path) -> None:
    cfg = tmp_path / "ops_b.cfg"
    cfg.write_text(SYNTHETIC["ops_b"])
    graph = randomize(load_graph("ops_b"))
    out = tmp_path / "ops_b.py"
    result = CliRunner().invoke(main, ["export", "--format", "tf1", "--cfg", str(cfg), "-o", str(out)])
    assert result.exit_code == 1 and "needs --weights" in result.output
    write_weights(graph, tmp_path / "ops_b.weights")
    args = ["export", "--format", "tf1", "--cfg", str(cfg), "--weights", str(tmp_path / "ops_b.weights")]
    result = CliRunner().invoke(main, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out} (tf1)" in result.output and "yolo_21" in result.output
    compile(out.read_text(), str(out), "exec")
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "ops_b.pb")])
    assert result.exit_code == 1 and "should end in .py" in result.output
    assert "MODEL.weights MODEL.pb" in CliRunner().invoke(main, ["export", "--help"]).output
    assert "tf1" in CliRunner().invoke(main, ["detect", "--help"]).output


def test_generating_the_file_imports_no_framework() -> None:
    """export --format tf1 and the output names need neither TensorFlow nor torch (a clean interpreter)."""
    code = (
        "import sys\n"
        "from cfgsurgeon import loads_cfg\n"
        "from cfgsurgeon.emit.tf1 import output_names, tf1_source\n"
        f"graph = loads_cfg({SYNTHETIC['ops_b']!r}, 'ops_b.cfg', warn=lambda m: None)\n"
        "assert 'def build_network' in tf1_source(graph) and output_names(graph)\n"
        "print(sorted({'torch', 'tensorflow', 'tf_keras', 'onnx', 'openvino'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_export_without_the_framework_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "ops_b.cfg"
    cfg.write_text(SYNTHETIC["ops_b"])
    write_weights(randomize(load_graph("ops_b")), tmp_path / "ops_b.weights")
    monkeypatch.delitem(sys.modules, "cfgsurgeon.emit.keras", raising=False)
    monkeypatch.setitem(sys.modules, "tf_keras", None)  # as if tf-keras were not installed
    args = ["export", "--format", "keras", "--cfg", str(cfg), "--weights", str(tmp_path / "ops_b.weights")]
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "ops_b.keras")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: --format keras needs the package 'tf_keras': pip install 'cfgsurgeon[tf]' && "
        "pip install --no-deps tf-keras (see the README)"
    ]
    assert not (tmp_path / "ops_b.keras").exists()
