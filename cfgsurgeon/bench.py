"""``cfgsurgeon bench``: latency, throughput, BFLOPs and params of one or more models side by side.

Each model runs through :func:`cfgsurgeon.runtimes.make_runner`, the runner ``detect`` uses, so the figures
are those of the deployed network (raw head tensors, no pre- or post-processing). Per model: ``warmup``
untimed forward passes, then ``runs`` timed ones on the same random batch; latency is the wall time of one
forward pass of the whole batch (median and 90th percentile), throughput is images per second over the timed
runs. Ratios are relative to the first model.

Threads: ``threads`` (default: every CPU this process may use) is passed to every runtime, so the backends
and the models are compared on the same number of threads, and the figure printed is the one used.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError
from .ir import Graph, load_cfg

Warn = Callable[[str], None]


@dataclass(frozen=True)
class ModelSpec:
    """A model to measure: a cfg and its weights (None: seeded well-conditioned random weights)."""

    cfg: Path
    weights: Path | None = None


def default_threads() -> int:
    """Every CPU this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def prepare_graph(spec: ModelSpec, size: int | None, seed: int = 0, warn: Warn = lambda _: None) -> Graph:
    """Load the cfg (and weights), set a square input of ``size`` when given, draw random weights if none."""
    from .randinit import random_weights
    from .weights import read_weights

    graph = load_cfg(spec.cfg, warn=warn)
    if spec.weights is not None:
        read_weights(graph, spec.weights)
    if size is not None and (graph.net.width, graph.net.height) != (size, size):
        graph.net.width = graph.net.height = size
        graph.infer()
    if spec.weights is None:
        random_weights(graph, seed=seed)  # after resizing: BN statistics are those of this input size
    return graph


def _runner(graph: Graph, backend: str, threads: int, batch: int, tmp: Path):
    """``make_runner`` as ``detect`` calls it; with a batch above 1 the onnxruntime/openvino model is
    exported with a symbolic batch dimension first (the in-memory export has batch 1)."""
    from .runtimes import make_runner

    if batch == 1 or backend == "torch":
        return make_runner(graph, backend, threads=threads)
    if backend == "onnxruntime":
        from .emit.onnx import write_onnx

        path = tmp / "model.onnx"
        write_onnx(graph, path, dynamic_batch=True)
    else:
        from .emit.openvino import write_openvino

        path = tmp / "model.xml"
        write_openvino(graph, path, dynamic_batch=True)
    return make_runner(graph, backend, model=path, threads=threads)


def measure(
    graph: Graph,
    backend: str,
    runs: int = 50,
    warmup: int = 5,
    threads: int | None = None,
    batch: int = 1,
    seed: int = 0,
    progress: bool | None = None,
    label: str = "",
) -> dict[str, Any]:
    """Time ``runs`` forward passes of a random ``batch`` after ``warmup`` untimed ones (weights loaded)."""
    from tqdm import tqdm

    if runs < 1 or warmup < 0 or batch < 1:
        raise UsageError(f"need runs >= 1, warmup >= 0 and batch >= 1 (got {runs}, {warmup}, {batch})")
    threads = threads or default_threads()
    x = np.random.default_rng(seed).random((batch, *graph.input_shape), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = _runner(graph, backend, threads, batch, Path(tmp))
        setup = time.perf_counter() - start
        times = []
        # progress None: a bar only when stderr is a terminal
        disable = None if progress is None else not progress
        steps = tqdm(range(warmup + runs), desc=label or backend, file=sys.stderr, disable=disable)
        for i in steps:
            start = time.perf_counter()
            run(x)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        del run
    ms = np.asarray(times) * 1000.0
    return {
        "latency_ms": {
            "median": float(np.median(ms)),
            "p90": float(np.percentile(ms, 90)),
            "mean": float(ms.mean()),
            "min": float(ms.min()),
            "max": float(ms.max()),
        },
        "throughput": batch * len(ms) / (ms.sum() / 1000.0),
        "setup_s": setup,
    }


def backend_version(backend: str) -> str | None:
    module = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}.get(backend)
    try:
        from importlib.metadata import version

        return version(module) if module else None
    except Exception:  # noqa: BLE001 - a version is informative only
        return None


def bench(
    specs: Sequence[ModelSpec],
    backend: str = "torch",
    size: int | None = 416,
    runs: int = 50,
    warmup: int = 5,
    threads: int | None = None,
    batch: int = 1,
    seed: int = 0,
    progress: bool | None = None,
    warn: Warn = lambda _: None,
    note: Warn = lambda _: None,
) -> dict[str, Any]:
    """Measure every model in turn (one at a time, each runner released before the next is built)."""
    if not specs:
        raise UsageError("give at least one --cfg")
    if size is not None and size < 1:
        raise UsageError(f"--size must be positive, got {size}")
    threads = threads or default_threads()
    models: list[dict[str, Any]] = []
    for spec in specs:
        graph = prepare_graph(spec, size, seed, warn)
        note(f"{spec.cfg}: input {'x'.join(map(str, graph.input_shape))}, {graph.bflops:.3f} BFLOPs")
        timing = measure(graph, backend, runs, warmup, threads, batch, seed, progress, label=spec.cfg.name)
        models.append(
            {
                "cfg": str(spec.cfg),
                "weights": str(spec.weights) if spec.weights is not None else None,
                "random_weights": spec.weights is None,
                "input": list(graph.input_shape),
                "bflops": graph.bflops,
                "params": graph.params,
                **timing,
            }
        )
    first = models[0]
    for model in models:
        model["ratios"] = {
            "latency_median": model["latency_ms"]["median"] / first["latency_ms"]["median"],
            "latency_p90": model["latency_ms"]["p90"] / first["latency_ms"]["p90"],
            "throughput": model["throughput"] / first["throughput"],
            "bflops": model["bflops"] / first["bflops"],
            "params": model["params"] / first["params"],
        }
    return {
        "backend": backend,
        "backend_version": backend_version(backend),
        "device": "CPU",
        "threads": threads,
        "size": size,
        "batch": batch,
        "runs": runs,
        "warmup": warmup,
        "models": models,
    }


def table_lines(report: dict[str, Any]) -> list[str]:
    """The report as a text table, one row per model; the × columns are relative to the first model."""
    version = f" {report['backend_version']}" if report["backend_version"] else ""
    lines = [
        f"backend {report['backend']}{version} on {report['device']}, {report['threads']} threads, "
        f"batch {report['batch']}, {report['runs']} timed runs after {report['warmup']} warm-up",
        f"{'model':<28}{'input':>12}{'BFLOPs':>10}{'params':>14}{'median ms':>11}{'p90 ms':>10}"
        f"{'img/s':>9}{'×latency':>10}{'×BFLOPs':>9}{'×params':>9}",
    ]
    for model in report["models"]:
        name = Path(model["cfg"]).name + ("" if model["weights"] else " (random)")
        c, h, w = model["input"]
        ratios = model["ratios"]
        lines.append(
            f"{name[:27]:<28}{f'{w}x{h}x{c}':>12}{model['bflops']:>10.3f}{model['params']:>14,}"
            f"{model['latency_ms']['median']:>11.2f}{model['latency_ms']['p90']:>10.2f}"
            f"{model['throughput']:>9.2f}{ratios['latency_median']:>10.3f}{ratios['bflops']:>9.3f}"
            f"{ratios['params']:>9.3f}"
        )
    return lines
