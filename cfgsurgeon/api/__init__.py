"""The Python API: :class:`Model` and the reports its methods return (``str(report)`` is what the matching
command prints), plus the functions that are not about one model. Importing it imports no framework; methods
import torch/TF/OpenVINO when they need them."""

from .editing import Initialized, Preview, Pruned, Retargeted, Written
from .importing import Imported, import_checkpoint
from .model import Model, Saved, Summary
from .quantizing import Quantized
from .report import Lines, Report
from .running import Benched, BenchReport, Detections, Evaluation, Exported, bench
from .training import DemoReport, Sparsified, Synthesized, Trained, demo, synth_dataset
from .workflows import Iteration, Plan, Sensitivity, Sweep

__all__ = [
    "BenchReport",
    "Benched",
    "DemoReport",
    "Detections",
    "Evaluation",
    "Exported",
    "Imported",
    "Initialized",
    "Iteration",
    "Lines",
    "Model",
    "Plan",
    "Preview",
    "Pruned",
    "Quantized",
    "Report",
    "Retargeted",
    "Saved",
    "Sensitivity",
    "Sparsified",
    "Summary",
    "Sweep",
    "Synthesized",
    "Trained",
    "Written",
    "bench",
    "demo",
    "import_checkpoint",
    "synth_dataset",
]
