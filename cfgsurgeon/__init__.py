"""cfgsurgeon: darknet .cfg transpiler and model-surgery tool for YOLO.

The pipeline reads one way: ``parse`` (text → sections) → ``ir`` (typed graph) → ``surgery`` → ``emit``.
"""

from .api import Model, Report
from .emit.cfg import cfg_text, write_cfg
from .errors import CfgError, CfgSurgeonError, CfgSyntaxError, Location, UsageError, WeightsError
from .ir import Graph, load_cfg, loads_cfg
from .version import __version__ as __version__
from .weights import WeightsHeader, read_weights, write_weights

__all__ = [
    "CfgError",
    "CfgSurgeonError",
    "CfgSyntaxError",
    "Graph",
    "Location",
    "Model",
    "Report",
    "UsageError",
    "WeightsError",
    "WeightsHeader",
    "cfg_text",
    "load_cfg",
    "loads_cfg",
    "read_weights",
    "write_cfg",
    "write_weights",
]
