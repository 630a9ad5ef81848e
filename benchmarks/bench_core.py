"""Core speed, as ratios measured in one run (never a timed test):

1. parsing: load every cfg of the darknet collection into the IR (grammar, typed layers, shape inference);
2. weights: our read_weights + write_weights of a large model against a plain numpy read + write of the
   same bytes (the floor any implementation has to pay).

    python benchmarks/bench_core.py [--cfg ../shared/zoo/cfg/yolov4.cfg] [--repeat 3]
"""

from __future__ import annotations

import argparse
import glob
import tempfile
import time
from pathlib import Path

import numpy as np

from cfgsurgeon import load_cfg, read_weights, write_weights
from cfgsurgeon.errors import CfgError
from cfgsurgeon.weights import WeightsHeader

SHARED = Path(__file__).resolve().parents[2] / "shared" / "zoo" / "cfg"


def best_of(repeat: int, run) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_parsing(cfg_dir: Path, repeat: int) -> None:
    files = sorted(glob.glob(str(cfg_dir / "*.cfg")))

    def load_all() -> int:
        loaded = 0
        for name in files:
            try:
                load_cfg(name, warn=lambda message: None)
                loaded += 1
            except CfgError:
                pass  # recurrent cfgs and the resnets darknet refuses
        return loaded

    load_all()  # warm: grammar compiled once per process
    seconds = best_of(repeat, load_all)
    lines = sum(Path(name).read_text().count("\n") for name in files)
    read_only = best_of(repeat, lambda: [Path(name).read_text() for name in files])
    print(
        f"parse: {len(files)} cfgs ({lines:,} lines) in {seconds:.3f} s "
        f"= {1e3 * seconds / len(files):.1f} ms/cfg, "
        f"{lines / seconds:,.0f} lines/s; ratio to reading the text: {seconds / read_only:.0f}x"
    )


def bench_weights(cfg: Path, repeat: int) -> None:
    graph = load_cfg(cfg, warn=lambda message: None)
    header = WeightsHeader()
    with tempfile.TemporaryDirectory() as tmp:
        source, ours, plain = (
            Path(tmp) / "in.weights",
            Path(tmp) / "ours.weights",
            Path(tmp) / "plain.weights",
        )
        rng = np.random.default_rng(0)
        with open(source, "wb") as out:
            out.write(header.to_bytes())
            rng.standard_normal(graph.params, dtype=np.float32).tofile(out)
        size = source.stat().st_size

        def ours_rw() -> None:
            g = load_cfg(cfg, warn=lambda message: None)
            read_weights(g, source)
            write_weights(g, ours)

        def numpy_rw() -> None:
            np.fromfile(source, dtype=np.uint8).tofile(plain)

        numpy_rw(), ours_rw()  # warm the page cache for both
        t_ours, t_plain = best_of(repeat, ours_rw), best_of(repeat, numpy_rw)
        assert ours.read_bytes() == source.read_bytes(), "round trip changed the bytes"
    print(
        f"weights: {cfg.name} {size / 2**20:.0f} MiB read+write: ours {t_ours:.3f} s, "
        f"plain numpy {t_plain:.3f} s, "
        f"ratio {t_ours / t_plain:.2f}x (byte-identical)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", type=Path, default=SHARED / "yolov4.cfg")
    parser.add_argument("--cfg-dir", type=Path, default=SHARED)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    bench_parsing(args.cfg_dir, args.repeat)
    bench_weights(args.cfg, args.repeat)


if __name__ == "__main__":
    main()
