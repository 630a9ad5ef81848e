"""NMS speed, as a ratio measured in one run (never a timed test): ``detect.nms_sort`` (closeness of every
pair of boxes computed once, then a greedy pass per class) against its one-box-at-a-time path, on the worst
case of evaluation: an untrained yolov3-tiny's 2,535 boxes at 416×416, 80 classes, every probability above
``eval``'s threshold 0.001. Both must give identical probabilities (checked).

    python benchmarks/bench_nms.py [--boxes 2535] [--classes 80] [--kind iou|diou|diounms] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cfgsurgeon import detect


def best_of(repeat: int, run) -> tuple[float, np.ndarray]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), result


def random_detections(boxes: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, (boxes, 2))
    sizes = rng.uniform(0.02, 0.5, (boxes, 2))
    probs = rng.uniform(0, 0.01, (boxes, classes)).astype(np.float32)
    probs[probs < 0.001] = 0  # eval's threshold
    return np.hstack([centres, sizes]).astype(np.float32), probs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=2535)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--kind", default="iou", choices=["iou", "diou", "diounms"])
    parser.add_argument("--thresh", type=float, default=0.45)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    boxes, probs = random_detections(args.boxes, args.classes)
    limit = np.float32(args.thresh)
    fast, ours = best_of(args.repeat, lambda: detect.nms_sort(boxes, probs, args.thresh, args.kind))
    slow, theirs = best_of(
        args.repeat, lambda: detect._nms_sort_per_box(boxes, probs.copy(), limit, args.kind, 0.6)
    )
    assert np.array_equal(ours, theirs), "the two paths disagree"
    setting = f"{args.kind} NMS at {args.thresh}, best of {args.repeat}"
    print(f"{args.boxes} boxes × {args.classes} classes, {setting}")
    print(f"  pairwise once + greedy per class: {fast:.3f} s")
    print(f"  one kept box at a time:           {slow:.3f} s")
    print(f"  ratio: {fast / slow:.3f} (identical probabilities)")


if __name__ == "__main__":
    main()
