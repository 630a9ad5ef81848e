"""The Python API: :class:`Model` and the reports its methods return (``str(report)`` is what the matching
command prints). Importing it imports no framework; methods import torch/TF/OpenVINO when they need them."""

from .model import Model, Saved, Summary
from .report import Lines, Report

__all__ = ["Lines", "Model", "Report", "Saved", "Summary"]
