"""Core speed, as ratios measured in one run (never a timed test):

1. parsing: load every cfg of the darknet collection into the IR (grammar, typed layers, shape inference);
2. inspect: `cfgsurgeon inspect --cfg` as a process against `python -c "import numpy, lark, click"`,
   interleaved;
3. weights: our read_weights + write_weights of a large model against a plain numpy read + write of the
   same bytes (the floor any implementation has to pay).

    python benchmarks/bench_core.py [--cfg ../shared/zoo/cfg/yolov4.cfg] [--repeat 3]
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cfgsurgeon import load_cfg, read_weights, write_weights
from cfgsurgeon.errors import CfgError
from cfgsurgeon.weights import WeightsHeader

SHARED = Path(__file__).resolve().parents[2] / "shared" / "zoo" / "cfg"


def best_of(repeat: int, run, clock=time.perf_counter) -> float:
    """The least time of ``repeat`` runs by ``clock`` (wall by default, or this process's CPU time)."""
    times = []
    for _ in range(repeat):
        start = clock()
        run()
        times.append(clock() - start)
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

    start, start_cpu = time.perf_counter(), time.process_time()
    load_all()  # the first pass pays what a process pays once (the grammar, if a file needs it)
    first, first_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    seconds = best_of(repeat, load_all)
    cpu = best_of(repeat, load_all, clock=time.process_time)
    lines = sum(Path(name).read_text().count("\n") for name in files)
    read_only = best_of(repeat, lambda: [Path(name).read_text() for name in files])
    print(
        f"parse: {len(files)} cfgs ({lines:,} lines) in {seconds:.3f} s "
        f"= {1e3 * seconds / len(files):.1f} ms/cfg, "
        f"{lines / seconds:,.0f} lines/s; ratio to reading the text: {seconds / read_only:.0f}x; "
        f"CPU {cpu:.3f} s; first pass in a fresh process {first:.3f} s (CPU {first_cpu:.3f} s; target <= 1 s)"
    )


def child_seconds(args: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one child process, measured alone (``os.wait4``)."""
    start = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"failed: {' '.join(args)}")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def bench_inspect(cfg: Path, repeat: int) -> None:
    """`cfgsurgeon inspect --cfg` against `python -c "import numpy, lark, click"` (its floor: the imports
    any implementation on this stack pays), interleaved run by run; best of ``repeat`` each."""
    commands = {
        "imports": [sys.executable, "-c", "import numpy, lark, click"],
        "inspect": [sys.executable, "-m", "cfgsurgeon.cli", "inspect", "--cfg", str(cfg)],
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, args in commands.items():
            runs[name].append(child_seconds(args))
    (wall0, cpu0), (wall, cpu) = (
        (min(w for w, _ in runs[name]), min(c for _, c in runs[name])) for name in commands
    )
    print(
        f"inspect --cfg {cfg.name}: {wall:.3f} s (CPU {cpu:.3f} s); import numpy, lark, click: {wall0:.3f} s "
        f"(CPU {cpu0:.3f} s); ratio {wall / wall0:.2f}x (CPU {cpu / cpu0:.2f}x), target <= 3x"
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
    bench_inspect(args.cfg, max(args.repeat, 5))
    bench_weights(args.cfg, args.repeat)


if __name__ == "__main__":
    main()
