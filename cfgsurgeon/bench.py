"""``cfgsurgeon bench``: latency, throughput, BFLOPs and params of one or more models side by side.

Each model runs through :func:`cfgsurgeon.runtimes.make_runner`, the runner ``detect`` uses, so the figures
are those of the deployed network (raw head tensors, no pre- or post-processing). Per model: ``warmup``
untimed forward passes, then ``runs`` timed ones on the same random batch; latency is the wall time of one
forward pass of the whole batch (median and 90th percentile), throughput is images per second over the timed
runs. Ratios are relative to the first model.

By default the models are measured one after the other, each runner released before the next is built.
``interleave=True`` builds them all and alternates them run by run (rotating the order every round), so a
change in the machine's load during the benchmark weighs on every model alike: fairer ratios on a shared
machine, at the cost of holding every model in memory.

Threads: ``threads`` (default: :func:`cfgsurgeon.runtimes.default_threads`, the idle CPUs this process may
use) is passed to every runtime, so the backends and the models are compared on the same number of threads,
and the figure printed is the one used.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError
from .ir import Graph, load_cfg
from .runtimes import default_threads

Warn = Callable[[str], None]


@dataclass(frozen=True)
class ModelSpec:
    """A model to measure: a cfg and its weights (None: seeded well-conditioned random weights), or the cfg
    and a ``model`` file exported for the backend (an int8 model, say), which holds its own weights."""

    cfg: Path
    weights: Path | None = None
    model: Path | None = None

    @property
    def random_weights(self) -> bool:
        return self.weights is None and self.model is None


@dataclass(frozen=True)
class LoadedModel:
    """A model already in memory: its graph (left untouched: measured on a copy when resized or given random
    weights) and the cfg and weights the report names; ``random_weights``: the graph has none of its own."""

    graph: Graph
    cfg: str
    weights: str | None
    random_weights: bool
    model: Path | None = None


def prepare_graph(
    spec: ModelSpec | LoadedModel, size: int | None, seed: int = 0, warn: Warn = lambda _: None
) -> Graph:
    """Load the cfg (and weights), set a square input of ``size`` when given, draw random weights if none."""
    from .randinit import random_weights

    if isinstance(spec, LoadedModel):
        graph = spec.graph
        if _resizes(graph, size) or spec.random_weights:
            graph = graph.clone()  # the caller's model stays as it is
    else:
        graph = _load(spec, warn)
    if _resizes(graph, size):
        graph.net.width = graph.net.height = size
        graph.infer()
    if spec.random_weights:
        random_weights(graph, seed=seed)  # after resizing: BN statistics are those of this input size
    return graph


def _resizes(graph: Graph, size: int | None) -> bool:
    return size is not None and (graph.net.width, graph.net.height) != (size, size)


def _load(spec: ModelSpec, warn: Warn) -> Graph:
    from .weights import read_weights

    graph = load_cfg(spec.cfg, warn=warn)
    if spec.weights is not None:
        read_weights(graph, spec.weights)
    return graph


def _runner(graph: Graph, backend: str, threads: int, batch: int, tmp: Path, model: Path | None = None):
    """``make_runner`` as ``detect`` calls it (on ``model`` when given); with a batch above 1 the
    onnxruntime/openvino model is exported with a symbolic batch dimension first (the in-memory export
    has batch 1)."""
    from .runtimes import make_runner

    if batch == 1 or model is not None or backend not in ("onnxruntime", "openvino"):
        return make_runner(graph, backend, model, threads=threads)
    if backend == "onnxruntime":
        from .emit.onnx import write_onnx

        path = tmp / "model.onnx"
        write_onnx(graph, path, dynamic_batch=True)
    else:
        from .emit.openvino import write_openvino

        path = tmp / "model.xml"
        write_openvino(graph, path, dynamic_batch=True)
    return make_runner(graph, backend, model=path, threads=threads)


@dataclass
class _Timed:
    """One model under measurement: its runner, input and timings (seconds)."""

    run: Callable[[np.ndarray], Any]
    x: np.ndarray
    setup_s: float
    times: list[float] = field(default_factory=list)

    def step(self, timed: bool) -> None:
        start = time.perf_counter()
        self.run(self.x)
        if timed:
            self.times.append(time.perf_counter() - start)


def _build(
    graph: Graph, backend: str, threads: int, batch: int, seed: int, tmp: Path, model: Path | None = None
) -> _Timed:
    x = np.random.default_rng(seed).random((batch, *graph.input_shape), dtype=np.float32)
    start = time.perf_counter()
    run = _runner(graph, backend, threads, batch, tmp, model)
    return _Timed(run, x, time.perf_counter() - start)


def _progress(total: int, label: str, progress: bool | None):
    from tqdm import tqdm

    # progress None: a bar only when stderr is a terminal
    return tqdm(
        total=total,
        desc=label,
        unit="run",
        file=sys.stderr,
        disable=None if progress is None else not progress,
    )


def _figures(timed: _Timed, batch: int) -> dict[str, Any]:
    ms = np.asarray(timed.times) * 1000.0
    return {
        "latency_ms": {
            "median": float(np.median(ms)),
            "p90": float(np.percentile(ms, 90)),
            "mean": float(ms.mean()),
            "min": float(ms.min()),
            "max": float(ms.max()),
        },
        "throughput": batch * len(ms) / (ms.sum() / 1000.0),
        "setup_s": timed.setup_s,
    }


def _check_counts(runs: int, warmup: int, batch: int) -> None:
    if runs < 1 or warmup < 0 or batch < 1:
        raise UsageError(f"need runs >= 1, warmup >= 0 and batch >= 1 (got {runs}, {warmup}, {batch})")


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
    model: Path | None = None,
) -> dict[str, Any]:
    """Time ``runs`` forward passes of a random ``batch`` after ``warmup`` untimed ones (weights loaded),
    of the exported ``model`` when given."""
    _check_counts(runs, warmup, batch)
    with tempfile.TemporaryDirectory() as tmp:
        timed = _build(graph, backend, threads or default_threads(), batch, seed, Path(tmp), model)
        with _progress(warmup + runs, label or backend, progress) as bar:
            for i in range(warmup + runs):
                timed.step(i >= warmup)
                bar.update()
    return _figures(timed, batch)


def _measure_interleaved(
    graphs: Sequence[Graph],
    backend: str,
    runs: int,
    warmup: int,
    threads: int,
    batch: int,
    seed: int,
    progress: bool | None,
    files: Sequence[Path | None],
) -> list[dict[str, Any]]:
    with ExitStack() as stack:
        models = [
            _build(
                graph,
                backend,
                threads,
                batch,
                seed,
                Path(stack.enter_context(tempfile.TemporaryDirectory())),
                file,
            )
            for graph, file in zip(graphs, files, strict=True)
        ]
        with _progress((warmup + runs) * len(models), "interleaved", progress) as bar:
            for i in range(warmup + runs):
                shift = i % len(models)
                for model in models[shift:] + models[:shift]:  # every model takes every position in turn
                    model.step(i >= warmup)
                    bar.update()
        return [_figures(model, batch) for model in models]


def backend_version(backend: str) -> str | None:
    module = {
        "torch": "torch",
        "onnxruntime": "onnxruntime",
        "openvino": "openvino",
        "tflite": "tensorflow-cpu",
    }.get(backend)
    try:
        from importlib.metadata import version

        return version(module) if module else None
    except Exception:  # noqa: BLE001 - a version is informative only
        return None


def bench(
    specs: Sequence[ModelSpec | LoadedModel],
    backend: str = "torch",
    size: int | None = 416,
    runs: int = 50,
    warmup: int = 5,
    threads: int | None = None,
    batch: int = 1,
    seed: int = 0,
    interleave: bool = False,
    progress: bool | None = None,
    warn: Warn = lambda _: None,
    note: Warn = lambda _: None,
) -> dict[str, Any]:
    """Measure every model (see the module's docstring) and return the JSON-ready report."""
    if not specs:
        raise UsageError("give at least one model (`specs`)")
    if size is not None and size < 1:
        raise UsageError(f"`size` must be positive, got {size}")
    _check_counts(runs, warmup, batch)
    threads = threads or default_threads()
    models: list[dict[str, Any]] = []
    graphs: list[Graph] = []
    for spec in specs:
        graph = prepare_graph(spec, size, seed, warn)
        note(f"{spec.cfg}: input {'x'.join(map(str, graph.input_shape))}, {graph.bflops:.3f} BFLOPs")
        models.append(
            {
                "cfg": str(spec.cfg),
                "weights": str(spec.weights) if spec.weights is not None else None,
                "model": str(spec.model) if spec.model is not None else None,
                "random_weights": spec.random_weights,
                "input": list(graph.input_shape),
                "bflops": graph.bflops,
                "params": graph.params,
            }
        )
        if interleave:
            graphs.append(graph)
        else:
            models[-1].update(
                measure(
                    graph,
                    backend,
                    runs,
                    warmup,
                    threads,
                    batch,
                    seed,
                    progress,
                    Path(spec.cfg).name,
                    spec.model,
                )
            )
    if interleave:
        for model, figures in zip(
            models,
            _measure_interleaved(
                graphs, backend, runs, warmup, threads, batch, seed, progress, [spec.model for spec in specs]
            ),
            strict=True,
        ):
            model.update(figures)
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
        "interleaved": interleave,
        "models": models,
    }


def table_lines(report: dict[str, Any]) -> list[str]:
    """The report as a text table, one row per model; the × columns are relative to the first model."""
    version = f" {report['backend_version']}" if report["backend_version"] else ""
    order = ", models interleaved run by run" if report.get("interleaved") else ""
    threads = f"{report['threads']} thread{'s' if report['threads'] != 1 else ''}"
    lines = [
        f"backend {report['backend']}{version} on {report['device']}, {threads}, "
        f"batch {report['batch']}, {report['runs']} timed runs after {report['warmup']} warm-up{order}",
        f"{'model':<28}{'input':>12}{'BFLOPs':>10}{'params':>14}{'median ms':>11}{'p90 ms':>10}"
        f"{'img/s':>9}{'×latency':>10}{'×BFLOPs':>9}{'×params':>9}",
    ]
    for model in report["models"]:
        name = Path(model.get("model") or model["cfg"]).name + (
            " (random)" if model["random_weights"] else ""
        )
        c, h, w = model["input"]
        ratios = model["ratios"]
        lines.append(
            f"{name[:27]:<28}{f'{w}x{h}x{c}':>12}{model['bflops']:>10.3f}{model['params']:>14,}"
            f"{model['latency_ms']['median']:>11.2f}{model['latency_ms']['p90']:>10.2f}"
            f"{model['throughput']:>9.2f}{ratios['latency_median']:>10.3f}{ratios['bflops']:>9.3f}"
            f"{ratios['params']:>9.3f}"
        )
    return lines
