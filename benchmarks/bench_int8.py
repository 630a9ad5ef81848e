"""INT8 (``cfgsurgeon quantize``) against float: accuracy on real data and latency, on this CPU.

(a) accuracy: the zoo's COCO yolov3-tiny retargeted by name to the four vehicle classes (so it scores its own
    COCO rows) and, when ``runs/vehicles/finetune/yolov3-tiny_best.weights`` exists, the fine-tuned vehicles
    model: mAP@0.5 of float (torch) and of OpenVINO INT8 (NNCF, calibrated on ``--subset`` photos of the
    vehicles train split) on the vehicles test split, with our evaluator; and the COCO model's detections on
    dog.jpg, float and int8 (darknet finds dog, truck and bicycle). ``--max-drop D``: the int8 models with
    NNCF's accuracy control instead, scored on the valid split while quantizing (the test split stays unseen).
(b) latency: int8 ÷ float of each of ``--models`` (random weights unless the zoo has them) on OpenVINO and
    ONNX Runtime, the files measured interleaved in one ``cfgsurgeon.bench`` run. ``yolov4-slim`` is the
    stack: yolov4 with random weights in which 80 % of every BN layer's channels are dead, slim-pruned at 0.8
    (the README's pruning-latency table: ``init --dead-fraction 0.8``, ``prune --method slim --percent
    0.8``), float and int8, interleaved with the original float yolov4: int8 ÷ the original float.

    nice -n 19 python benchmarks/bench_int8.py --out runs/int8 [--skip-accuracy]
        [--models yolov3-tiny,yolov4-tiny,yolov4,yolov4-slim]

Writes ``OUT/int8.json`` and prints the CPU (``lscpu``'s model name) and a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

from cfgsurgeon import Model
from cfgsurgeon.api import bench
from cfgsurgeon.api.running import BenchReport
from cfgsurgeon.bench import ModelSpec
from cfgsurgeon.emit.cfg import write_cfg

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODELS = SHARED / "zoo" / "models"
VEHICLES = SHARED / "data" / "vehicles"
FINETUNED = ROOT / "runs" / "vehicles" / "finetune"
DOG = SHARED / "zoo" / "images" / "dog.jpg"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def test_data(folder: Path) -> Path:
    """A .data file whose valid= list is the vehicles test split (eval scores valid=)."""
    data = folder / "vehicles-test.data"
    data.write_text(f"classes=4\nvalid={VEHICLES / 'test.txt'}\nnames={VEHICLES / 'vehicles.names'}\n")
    return data


def valid_data(folder: Path) -> Path:
    """A .data file of the vehicles valid split: what the accuracy control scores (never the test split)."""
    data = folder / "vehicles-valid.data"
    data.write_text(f"classes=4\nvalid={VEHICLES / 'valid.txt'}\nnames={VEHICLES / 'vehicles.names'}\n")
    return data


def accuracy(name: str, model: Model, out: Path, subset: int, max_drop: float | None) -> dict:
    """Float vs int8 mAP@0.5 on the test split; with ``max_drop``, NNCF's accuracy control on the valid
    split (``quantize --accuracy-control``)."""
    xml = out / f"{name}-int8{'-ac' if max_drop else ''}.xml"
    control = {"accuracy_control": True, "data": valid_data(out), "max_drop": max_drop} if max_drop else {}
    quantized = model.quantize(
        xml, backend="openvino", calibration=VEHICLES / "train.txt", subset=subset, **control
    )
    log(str(quantized))
    data = test_data(out)
    floats = model.evaluate(data)
    int8 = model.evaluate(data, backend="openvino", model=xml)  # the runner runs the file, not the weights
    row = {
        "model": name,
        "float_mAP50": floats.mAP50,
        "int8_mAP50": int8.mAP50,
        "kept": int8.mAP50 / floats.mAP50,
        "float_bytes": quantized.float_bytes,
        "int8_bytes": quantized.int8_bytes,
        "layers": quantized.data["layers"],
        "accuracy_control": quantized.data["accuracy_control"],
    }
    log(f"{name}: mAP@0.5 float {floats.mAP50:.4f}, OpenVINO int8 {int8.mAP50:.4f} ({row['kept']:.3f}x)")
    return row


def dog(out: Path, subset: int) -> dict:
    model = Model.load(MODELS / "yolov3-tiny.cfg", MODELS / "yolov3-tiny.weights")
    xml = out / "yolov3-tiny-coco-int8.xml"
    model.quantize(xml, backend="openvino", calibration=VEHICLES / "train.txt", subset=subset)
    names = MODELS / "coco.names"
    found = {
        "float": model.detect(DOG, names=names).detections[0],
        "int8": Model.load(MODELS / "yolov3-tiny.cfg")
        .detect(DOG, names=names, backend="openvino", model=xml)
        .detections[0],
    }
    rows = {key: [(d.name, round(d.prob, 3)) for d in dets] for key, dets in found.items()}
    log(f"dog.jpg: {rows}")
    return rows


LATENCY_MODELS = ("yolov3-tiny", "yolov4-tiny", "yolov4", "yolov4-slim")
EXPORTS = {"openvino": ("openvino", ".xml"), "onnxruntime": ("onnx", ".onnx")}  # backend: format, suffix


def zoo_model(name: str) -> Model:
    """The zoo's trained model when it has one, else the reference cfg with seeded random weights."""
    cfg, weights = MODELS / f"{name}.cfg", MODELS / f"{name}.weights"
    if cfg.exists() and weights.exists():
        return Model.load(cfg, weights)
    return Model.load(SHARED / "zoo" / "cfg" / f"{name}.cfg").init_weights(seed=0).model


def slim_yolov4() -> tuple[Model, Model]:
    """yolov4 with 80 % dead channels in every BN layer, and its slim pruning at 0.8 (the README's table)."""
    original = Model.load(SHARED / "zoo" / "cfg" / "yolov4.cfg").init_weights(seed=0, dead_fraction=0.8).model
    return original, original.prune("slim", percent=0.8).model


def interleaved(files: list[tuple[Model, Path]], backend: str, runs: int) -> BenchReport:
    """Each (model, file) measured through ``backend`` with the cfg alone, alternating run by run."""
    specs = []
    for model, file in files:
        cfg = file.with_suffix(".cfg")
        write_cfg(model.graph, cfg)
        specs.append(ModelSpec(cfg, model=file))
    return bench(specs, backend=backend, size=None, runs=runs, interleave=True)


def latency(name: str, out: Path, subset: int, runs: int) -> dict:
    """Per backend, the float export and the int8 file interleaved (``yolov4-slim``: the original float
    yolov4 first, then the pruned model float and int8); the ratios are to the first file."""
    if name == "yolov4-slim":
        original, model = slim_yolov4()
    else:
        original = model = zoo_model(name)
    rows = {}
    for backend, (format, suffix) in EXPORTS.items():
        files = [(original, out / f"{name}-original-float{suffix}")] if original is not model else []
        files += [(model, out / f"{name}-float{suffix}"), (model, out / f"{name}-{backend}-int8{suffix}")]
        for source, file in files[:-1]:
            source.export(format, file)
        model.quantize(files[-1][1], backend=backend, calibration=VEHICLES / "train.txt", subset=subset)
        report = interleaved(files, backend, runs)
        rows[backend] = {
            "files": [str(file) for _, file in files],
            "median_ms": [row.median_ms for row in report.models],
            "int8_ratio": report.models[-1].latency_ratio,  # int8 ÷ the first (the original float)
            "threads": report.data["threads"],
            "version": report.data["backend_version"],
        }
        measured = zip(files, report.models, strict=True)
        times = [f"{file.name} {row.median_ms:.2f} ms" for (_, file), row in measured]
        log(f"{name} {backend}: {', '.join(times)}; int8 ÷ first {rows[backend]['int8_ratio']:.3f}")
    return rows


def cpu() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {
        "model": fields.get("Model name", platform.processor()).strip(),
        "int8_flags": [f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")],
        "load": Path("/proc/loadavg").read_text().split()[:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "int8")
    parser.add_argument("--subset", type=int, default=300, help="calibration photos (vehicles train split)")
    parser.add_argument(
        "--models", default=",".join(LATENCY_MODELS), help=f"models for (b), of {', '.join(LATENCY_MODELS)}"
    )
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument(
        "--max-drop",
        type=float,
        help="(a) with NNCF's accuracy control: this mAP@0.5 drop on the valid split",
    )
    args = parser.parse_args()
    chosen = [name for name in args.models.split(",") if name]
    unknown = sorted(set(chosen) - set(LATENCY_MODELS))
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)} (choose from {', '.join(LATENCY_MODELS)})")
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"cpu": cpu(), "subset": args.subset, "runs": args.runs, "accuracy": [], "latency": {}}
    print(f"CPU: {result['cpu']['model']} (int8 flags {', '.join(result['cpu']['int8_flags'])}), "
          f"load average {' '.join(result['cpu']['load'])}", flush=True)  # fmt: skip
    if not args.skip_accuracy:
        coco = Model.load(MODELS / "yolov3-tiny.cfg", MODELS / "yolov3-tiny.weights").retarget(
            names=VEHICLES / "vehicles.names", old_names=MODELS / "coco.names"
        )
        result["accuracy"].append(
            accuracy("yolov3-tiny-coco", coco.model, args.out, args.subset, args.max_drop)
        )
        if (FINETUNED / "yolov3-tiny_best.weights").exists():
            tuned = Model.load(FINETUNED / "yolov3-tiny.cfg", FINETUNED / "yolov3-tiny_best.weights")
            result["accuracy"].append(
                accuracy("vehicles-finetuned", tuned, args.out, args.subset, args.max_drop)
            )
        result["dog"] = dog(args.out, args.subset)
    for name in chosen:
        result["latency"][name] = latency(name, args.out, args.subset, args.runs)
    result["cpu"]["load_after"] = Path("/proc/loadavg").read_text().split()[:3]
    (args.out / "int8.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({key: value for key, value in result.items() if key != "accuracy"}, indent=1))
    for name, backends in result["latency"].items():
        for backend, row in backends.items():
            times = ", ".join(f"{ms:.1f}" for ms in row["median_ms"])
            print(f"{name:<12} {backend:<12} median ms {times:<26} int8 ÷ float {row['int8_ratio']:.3f}")
    for row in result["accuracy"]:
        print(f"{row['model']}: mAP@0.5 float {row['float_mAP50']:.4f} int8 {row['int8_mAP50']:.4f} "
              f"kept {row['kept']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
