"""A/B of the exported models before and after a change of the emitters, over the whole cfg collection.

For each cfg of the collection that loads, one ``.weights`` file of seeded random weights
(``randinit.random_weights``, seed 0) is written; each version of cfgsurgeon (the old one from a checkout,
``--old``, the new one from this tree) exports the model in a subprocess with ``PYTHONPATH`` pointing at its
tree, to: the torch module (traced to TorchScript, so the file runs without either version's code), the
standalone torch source, ONNX, OpenVINO IR, the TF1 frozen graph (written by running the generated .py) and
Keras (a SavedModel directory, which TensorFlow loads without either version's layer classes). A third
subprocess runs the old and the new file of each format in the same runtime on the same seeded input and
reports max|old − new| / max|old| per output (the export tests' measure), the largest over the outputs.

    git worktree add /tmp/ab_old d201b1c
    nice -n 19 python benchmarks/ab_exports.py --old /tmp/ab_old [--cfg NAME ...] [--timeout 900]

Within float rounding means ≤ ``TOLERANCE`` (1e-4, the tolerance of the export tests against torch): a
change that reorders float32 sums (another convolution algorithm, a fused op split in two) moves deep
outputs by 1e-7 to 1e-5 of their scale, a change of semantics by far more. A cfg whose export does not
finish within ``--timeout`` seconds (per version) is reported as such, never dropped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED_CFGS = ROOT.parent / "shared" / "zoo" / "cfg"
TOLERANCE = 1e-4  # max|old − new| / max|old| per output
WEIGHTS_SEED = 0
INPUT_SEED = 1
FORMATS = ("torch module", "torch source", "onnx", "openvino", "tf1", "keras")
FILES = {
    "torch module": "module.pt",
    "torch source": "source.py",
    "onnx": "model.onnx",
    "openvino": "model.xml",
    "tf1": "model.pb",
    "keras": "saved_model",
}


# -- exporting (runs under either version of cfgsurgeon) ---------------------------------------------------
def _trace_module(graph, path: Path) -> None:
    import torch

    from cfgsurgeon.emit.torch import to_torch

    model = to_torch(graph).eval()
    example = torch.zeros(1, *graph.input_shape)
    with torch.no_grad():
        traced = torch.jit.trace(model, (example,), strict=False, check_trace=False)
    traced.save(str(path))


def _write_tf1_frozen(graph, path: Path, weights: Path) -> None:
    from cfgsurgeon.emit.tf1 import write_tf1

    source = path.with_name("tf1_graph.py")
    write_tf1(graph, source)
    # the generated file is standalone (tensorflow + numpy): run without either version on the path
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    subprocess.run(
        [sys.executable, str(source), str(weights), str(path)],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )


def _export(fmt: str, graph, folder: Path, weights: Path) -> None:
    path = folder / FILES[fmt]
    if fmt == "torch module":
        _trace_module(graph, path)
    elif fmt == "torch source":
        from cfgsurgeon.emit.torch_source import write_torch_source

        write_torch_source(graph, path)
    elif fmt == "onnx":
        from cfgsurgeon.emit.onnx import write_onnx

        write_onnx(graph, path)
    elif fmt == "openvino":
        from cfgsurgeon.emit.openvino import write_openvino

        write_openvino(graph, path)
    elif fmt == "tf1":
        _write_tf1_frozen(graph, path, weights)
    elif fmt == "keras":
        from cfgsurgeon.emit.keras import write_keras

        write_keras(graph, path)


def export_worker(cfg: Path, weights: Path, folder: Path) -> None:
    """Every format of ``FORMATS`` into ``folder``; ``status.json``: per format "ok" or the error."""
    import cfgsurgeon
    from cfgsurgeon import load_cfg, read_weights

    folder.mkdir(parents=True, exist_ok=True)
    graph = load_cfg(cfg, warn=lambda message: None)
    read_weights(graph, weights)
    status = {"cfgsurgeon": str(Path(cfgsurgeon.__file__).parent)}
    for fmt in FORMATS:
        start = time.perf_counter()
        try:
            _export(fmt, graph, folder, weights)
            status[fmt] = "ok"
        except subprocess.CalledProcessError as exc:
            status[fmt] = f"generated file failed: {exc.stderr.strip().splitlines()[-1:]}"
        except Exception as exc:  # an export error is a result to report, not a crash of the A/B
            status[fmt] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[:1]}"
        status[f"{fmt} seconds"] = round(time.perf_counter() - start, 1)
        (folder / "status.json").write_text(json.dumps(status, indent=1))


# -- running both files in one runtime ----------------------------------------------------------------------
def _run_torch_module(path: Path, x: np.ndarray) -> list[np.ndarray]:
    import torch

    module = torch.jit.load(str(path))
    with torch.no_grad():
        return [out.numpy() for out in module(torch.from_numpy(x))]


def _run_torch_source(path: Path, x: np.ndarray, weights: Path) -> list[np.ndarray]:
    import torch

    spec = importlib.util.spec_from_file_location(f"ab_{path.parent.name}_source", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.Darknet().eval()
    module.load_darknet_weights(model, str(weights))
    with torch.no_grad():
        return [out.numpy() for out in model(torch.from_numpy(x))]


def _run_onnx(path: Path, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def _run_openvino(path: Path, x: np.ndarray) -> list[np.ndarray]:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    results = compiled.create_infer_request().infer({0: x})
    return [np.array(results[out]) for out in compiled.outputs]


def _run_tf1(path: Path, x: np.ndarray, heads: list[str]) -> list[np.ndarray]:
    import tensorflow as tf

    tf1 = tf.compat.v1
    graph_def = tf1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf1.import_graph_def(graph_def, name="")
    with tf1.Session(graph=graph) as session:
        return session.run([f"{name}:0" for name in heads], {"images:0": x})


def _run_keras(path: Path, x: np.ndarray) -> list[np.ndarray]:
    import tensorflow as tf

    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    (name,) = serve.structured_input_signature[1]
    outputs = serve(**{name: tf.constant(x)})
    return [outputs[name].numpy() for name in sorted(outputs)]


def _outputs(fmt: str, folder: Path, x: np.ndarray, weights: Path, heads: list[str]) -> list[np.ndarray]:
    path = folder / FILES[fmt]
    runners = {
        "torch module": lambda: _run_torch_module(path, x),
        "torch source": lambda: _run_torch_source(path, x, weights),
        "onnx": lambda: _run_onnx(path, x),
        "openvino": lambda: _run_openvino(path, x),
        "tf1": lambda: _run_tf1(path, x, heads),
        "keras": lambda: _run_keras(path, x),
    }
    return [np.asarray(out) for out in runners[fmt]()]


def relative_difference(new: list[np.ndarray], old: list[np.ndarray]) -> float:
    """max|new − old| / max|old| per output, the largest over the outputs."""
    if len(new) != len(old) or any(a.shape != b.shape for a, b in zip(new, old, strict=True)):
        shapes = [a.shape for a in new], [b.shape for b in old]
        raise ValueError(f"outputs differ in number or shape: new {shapes[0]}, old {shapes[1]}")
    worst = 0.0
    for a, b in zip(new, old, strict=True):
        a, b = a.astype(np.float64), b.astype(np.float64)
        scale = np.abs(b).max()
        worst = max(worst, float(np.abs(a - b).max() / scale) if scale > 0 else float(np.abs(a).max()))
    return worst


def compare_worker(cfg: Path, old: Path, new: Path, weights: Path, input_path: Path, result: Path) -> None:
    """Per format exported by both versions: the relative difference, or why it could not be measured."""
    from cfgsurgeon import load_cfg
    from cfgsurgeon.emit.heads import output_names

    heads = output_names(load_cfg(cfg, warn=lambda message: None))  # the TF1 graph's output nodes
    x = np.load(input_path)
    old_status = json.loads((old / "status.json").read_text())
    new_status = json.loads((new / "status.json").read_text())
    found: dict[str, object] = {}
    for fmt in FORMATS:
        if old_status.get(fmt) != "ok" or new_status.get(fmt) != "ok":
            found[fmt] = {
                "old": old_status.get(fmt, "not reached"),
                "new": new_status.get(fmt, "not reached"),
            }
            continue
        try:
            found[fmt] = relative_difference(
                _outputs(fmt, new, x, weights, heads), _outputs(fmt, old, x, weights, heads)
            )
        except Exception as exc:  # a file that does not run is reported with the cfg
            found[fmt] = {"run": f"{type(exc).__name__}: {str(exc).strip().splitlines()[:1]}"}
        result.write_text(json.dumps(found, indent=1))
    result.write_text(json.dumps(found, indent=1))


# -- the driver ----------------------------------------------------------------------------------------------
def _subprocess(args: list[str], pythonpath: Path, timeout: float) -> str | None:
    """Run this script with ``args`` under the cfgsurgeon of ``pythonpath``; None or why it failed."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    try:
        done = subprocess.run(
            [sys.executable, __file__, *args], env=env, timeout=timeout, capture_output=True, text=True
        )
    except subprocess.TimeoutExpired:
        return f"did not finish in {timeout:.0f} s"
    if done.returncode:
        return (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    return None


def prepare(cfg: Path, folder: Path) -> str | None:
    """The seeded weights and input of ``cfg`` in ``folder``; None, or why the cfg does not load."""
    from cfgsurgeon import load_cfg, write_weights
    from cfgsurgeon.errors import CfgError
    from cfgsurgeon.randinit import random_weights

    try:
        graph = load_cfg(cfg, warn=lambda message: None)
        random_weights(graph, seed=WEIGHTS_SEED)
    except CfgError as exc:
        return str(exc).splitlines()[0]
    folder.mkdir(parents=True, exist_ok=True)
    write_weights(graph, folder / "model.weights")
    x = np.random.default_rng(INPUT_SEED).random((1, *graph.input_shape), dtype=np.float32)
    np.save(folder / "input.npy", x)
    return None


def ab_one(cfg: Path, old_tree: Path, work: Path, timeout: float) -> dict:
    folder = work / cfg.stem
    refused = prepare(cfg, folder)
    if refused:
        return {"does not load": refused}
    weights = folder / "model.weights"
    outcome: dict[str, object] = {}
    for version, tree in (("old", old_tree), ("new", ROOT)):
        failure = _subprocess(["export", str(cfg), str(weights), str(folder / version)], tree, timeout)
        if failure:
            outcome[f"{version} export"] = failure
    result = folder / "result.json"
    failure = _subprocess(
        [
            "compare",
            str(cfg),
            str(folder / "old"),
            str(folder / "new"),
            str(weights),
            str(folder / "input.npy"),
            str(result),
        ],
        ROOT,
        timeout,
    )
    if failure:
        outcome["compare"] = failure
    if result.is_file():
        outcome.update(json.loads(result.read_text()))
    return outcome


def _cost(cfg: Path) -> tuple[int, str]:
    """Cheapest first: the number of weights (export time grows with it), then the name."""
    from cfgsurgeon import load_cfg
    from cfgsurgeon.errors import CfgError

    try:
        return load_cfg(cfg, warn=lambda message: None).params, cfg.name
    except CfgError:
        return 0, cfg.name


def table(results: dict[str, dict]) -> str:
    lines = [
        f"{'format':<14} {'compared':>8} {'max rel. diff':>14}  worst cfg            within {TOLERANCE:g}"
    ]
    for fmt in FORMATS:
        measured = {cfg: r[fmt] for cfg, r in results.items() if isinstance(r.get(fmt), float)}
        if not measured:
            lines.append(f"{fmt:<14} {0:>8}")
            continue
        worst = max(measured, key=measured.get)
        verdict = "yes" if measured[worst] <= TOLERANCE else "NO"
        lines.append(f"{fmt:<14} {len(measured):>8} {measured[worst]:>14.2e}  {worst:<20} {verdict}")
    return "\n".join(lines)


def problems(results: dict[str, dict]) -> list[str]:
    """Every cfg × format that was not measured, with the reason, and every difference over the tolerance."""
    found = []
    for cfg, r in results.items():
        for key, value in r.items():
            if isinstance(value, float):
                if value > TOLERANCE:
                    found.append(f"{cfg}: {key}: {value:.3e} > {TOLERANCE:g}")
            else:
                found.append(f"{cfg}: {key}: {value}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="checkout of the old version")
    parser.add_argument("--cfg", action="append", help="only these collection cfgs (file names)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per cfg and version")
    parser.add_argument("--work", type=Path, help="keep the exports here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument(
        "--stop-after", type=float, help="start no cfg after this many seconds (the rest is listed)"
    )
    parser.add_argument("--resume", action="store_true", help="keep the cfgs already measured in --json")
    args = parser.parse_args()
    cfgs = sorted(SHARED_CFGS.glob("*.cfg"), key=_cost)  # with --stop-after, as many cfgs as possible
    if args.cfg:
        cfgs = [path for path in cfgs if path.name in set(args.cfg)]
    work = args.work or Path(tempfile.mkdtemp(prefix="ab_exports."))
    results: dict[str, dict] = {}
    if args.resume and args.json and args.json.is_file():
        results = json.loads(args.json.read_text())
    start = time.perf_counter()
    for k, cfg in enumerate(cfgs, start=1):
        if cfg.name in results and "not started" not in results[cfg.name]:
            continue
        if args.stop_after is not None and time.perf_counter() - start > args.stop_after:
            results[cfg.name] = {"not started": f"--stop-after {args.stop_after:.0f} s reached"}
            continue
        results[cfg.name] = ab_one(cfg, args.old.resolve(), work, args.timeout)
        if args.work is None:
            shutil.rmtree(work / cfg.stem, ignore_errors=True)
        elapsed = time.perf_counter() - start
        eta = elapsed / k * (len(cfgs) - k)
        summary = ", ".join(
            f"{key} {v:.1e}" if isinstance(v, float) else f"{key}: {v}"
            for key, v in results[cfg.name].items()
        )
        print(f"[{k}/{len(cfgs)} {elapsed:.0f} s, ETA {eta:.0f} s] {cfg.name}: {summary}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(results))
    print()
    print("\n".join(problems(results)) or "every cfg × format measured, all within the tolerance")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "export":
        export_worker(*map(Path, sys.argv[2:5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "compare":
        compare_worker(*map(Path, sys.argv[2:8]))
    else:
        main()
