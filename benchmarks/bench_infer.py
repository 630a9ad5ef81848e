"""Torch backend inference against OpenCV's DNN: ratios measured in one interleaved run (not a test).

For each cfg (random well-conditioned weights, square input of --size) and each thread count: the torch
runner that `detect` and `bench` use (``runtimes.make_runner``: the inference model, batch norms folded,
channels-last, oneDNN convolutions with their activations fused) and OpenCV's darknet importer at its
defaults (fusion and Winograd on), alternating run by run on the same input. Per run: wall time and this
process's CPU time (user + system; on one thread the better measure on a busy machine, where the wall time
mostly says how long the OS kept us waiting). Prints the medians and torch ÷ OpenCV.

    python benchmarks/bench_infer.py [--cfg yolov4-tiny.cfg --cfg yolov4.cfg] [--threads 1 2] [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cfgsurgeon import cfg_text, load_cfg, write_weights
from cfgsurgeon.randinit import random_weights
from cfgsurgeon.runtimes import make_runner

SHARED = Path(__file__).resolve().parents[2] / "shared" / "zoo" / "cfg"


def cpu_model() -> str:
    found = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in found.splitlines() if "Model name" in line), "?")


def opencv_runner(graph, folder: Path, threads: int) -> Callable[[np.ndarray], object]:
    import cv2

    cv2.setNumThreads(threads)
    (folder / "model.cfg").write_text(cfg_text(graph))
    write_weights(graph, folder / "model.weights")
    net = cv2.dnn.readNetFromDarknet(str(folder / "model.cfg"), str(folder / "model.weights"))
    outputs = net.getUnconnectedOutLayersNames()

    def run(x: np.ndarray) -> object:
        net.setInput(x)
        return net.forward(outputs)

    return run


def measure(cfg: Path, size: int, threads: int, runs: int, warmup: int, folder: Path) -> dict[str, tuple]:
    import cv2

    graph = load_cfg(cfg, warn=lambda _: None)
    graph.net.width = graph.net.height = size
    graph.infer()
    random_weights(graph, seed=0)
    x = np.random.default_rng(1).random((1, *graph.input_shape), dtype=np.float32)
    runners = {
        "torch": make_runner(graph, "torch", threads=threads),
        "opencv": opencv_runner(graph, folder, threads),
    }
    import torch  # after the runner, which imports it as `detect` does (see runtimes._torch)

    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    for i in range(warmup + runs):
        names = list(runners)[i % 2 :] + list(runners)[: i % 2]  # each takes each position in turn
        for name in names:
            torch.set_num_threads(threads)
            cv2.setNumThreads(threads)
            wall, cpu = time.perf_counter(), time.process_time()
            runners[name](x)
            if i >= warmup:
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {name: tuple(np.median(np.asarray(found), axis=0) * 1000) for name, found in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", type=Path, action="append", help="default: yolov4-tiny.cfg and yolov4.cfg")
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    cfgs = args.cfg or [SHARED / "yolov4-tiny.cfg", SHARED / "yolov4.cfg"]
    print(f"{cpu_model()}, load average {os.getloadavg()[0]:.1f} at the start; {args.size}x{args.size}")
    folder = Path(tempfile.mkdtemp(prefix="bench_infer."))
    try:
        for cfg in cfgs:
            for threads in args.threads:
                found = measure(cfg, args.size, threads, args.runs, args.warmup, folder)
                (torch_wall, torch_cpu), (cv_wall, cv_cpu) = found["torch"], found["opencv"]
                print(
                    f"{cfg.name}, {threads} thread{'s' if threads > 1 else ''}, median of {args.runs}: "
                    f"torch {torch_wall:.1f} ms (CPU {torch_cpu:.1f}), "
                    f"OpenCV {cv_wall:.1f} ms (CPU {cv_cpu:.1f}); "
                    f"torch / OpenCV wall {torch_wall / cv_wall:.2f}x, CPU {torch_cpu / cv_cpu:.2f}x "
                    f"(load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
