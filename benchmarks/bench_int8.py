"""INT8 (``cfgsurgeon quantize``) against float: accuracy on real data and latency, on this CPU.

(a) accuracy: the zoo's COCO yolov3-tiny retargeted by name to the four vehicle classes (so it scores its own
    COCO rows) and, when ``runs/vehicles/finetune/yolov3-tiny_best.weights`` exists, the fine-tuned vehicles
    model: mAP@0.5 of float (torch) and of OpenVINO INT8 (NNCF, calibrated on ``--subset`` photos of the
    vehicles train split) on the vehicles test split, with our evaluator; and the COCO model's detections on
    dog.jpg, float and int8 (darknet finds dog, truck and bicycle).
(b) latency: int8 ÷ float of each ``--latency`` model (random weights unless the zoo has them) on OpenVINO
    and ONNX Runtime, the two files measured interleaved in one ``cfgsurgeon.bench`` run.

    nice -n 19 python benchmarks/bench_int8.py --out runs/int8 [--latency yolov3-tiny,yolov4-tiny,yolov4]

Writes ``OUT/int8.json`` and prints a table.
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
from cfgsurgeon.bench import ModelSpec

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


def accuracy(name: str, model: Model, out: Path, subset: int) -> dict:
    xml = out / f"{name}-int8.xml"
    quantized = model.quantize(xml, backend="openvino", calibration=VEHICLES / "train.txt", subset=subset)
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


def latency(name: str, out: Path, subset: int, runs: int) -> dict:
    cfg = (
        MODELS / f"{name}.cfg"
        if (MODELS / f"{name}.cfg").exists()
        else SHARED / "zoo" / "cfg" / f"{name}.cfg"
    )
    weights = MODELS / f"{name}.weights"
    model = Model.load(cfg, weights if weights.exists() else None)
    if not model.has_weights:
        model = model.init_weights(seed=0).model
    rows = {}
    for backend, suffix in (("openvino", ".xml"), ("onnxruntime", ".onnx")):
        float_file, int8_file = out / f"{name}-float{suffix}", out / f"{name}-{backend}-int8{suffix}"
        model.export("openvino" if backend == "openvino" else "onnx", float_file)
        model.quantize(int8_file, backend=backend, calibration=VEHICLES / "train.txt", subset=subset)
        report = bench(
            [ModelSpec(cfg, model=float_file), ModelSpec(cfg, model=int8_file)],
            backend=backend,
            size=None,
            runs=runs,
            interleave=True,
        )
        float_row, int8_row = report.models
        rows[backend] = {
            "float_ms": float_row.median_ms,
            "int8_ms": int8_row.median_ms,
            "ratio": int8_row.latency_ratio,
            "threads": report.data["threads"],
            "version": report.data["backend_version"],
        }
        log(f"{name} {backend}: float {float_row.median_ms:.2f} ms, int8 {int8_row.median_ms:.2f} ms, "
            f"int8/float {int8_row.latency_ratio:.3f}")  # fmt: skip
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
    parser.add_argument("--latency", default="yolov3-tiny,yolov4-tiny,yolov4", help="models for (b)")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"cpu": cpu(), "subset": args.subset, "accuracy": [], "latency": {}}
    if not args.skip_accuracy:
        coco = Model.load(MODELS / "yolov3-tiny.cfg", MODELS / "yolov3-tiny.weights").retarget(
            names=VEHICLES / "vehicles.names", old_names=MODELS / "coco.names"
        )
        result["accuracy"].append(accuracy("yolov3-tiny-coco", coco.model, args.out, args.subset))
        if (FINETUNED / "yolov3-tiny_best.weights").exists():
            tuned = Model.load(FINETUNED / "yolov3-tiny.cfg", FINETUNED / "yolov3-tiny_best.weights")
            result["accuracy"].append(accuracy("vehicles-finetuned", tuned, args.out, args.subset))
        result["dog"] = dog(args.out, args.subset)
    for name in filter(None, args.latency.split(",")):
        result["latency"][name] = latency(name, args.out, args.subset, args.runs)
    result["cpu"]["load_after"] = Path("/proc/loadavg").read_text().split()[:3]
    (args.out / "int8.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({key: value for key, value in result.items() if key != "accuracy"}, indent=1))
    for row in result["accuracy"]:
        print(f"{row['model']}: mAP@0.5 float {row['float_mAP50']:.4f} int8 {row['int8_mAP50']:.4f} "
              f"kept {row['kept']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
