"""Models from other tools: ``import`` (a YOLOv5 or YOLOv8 checkpoint → cfg, weights and names)."""

from __future__ import annotations

from pathlib import Path

import click

from . import main
from .common import warn


@main.command(name="import")
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A YOLOv5 .pt checkpoint (ultralytics/yolov5 repository: Conv, C3, SPPF, SPP, Focus, Detect) or a "
    "YOLOv8 one (ultralytics package DetectionModel: Conv, C2f, SPPF, Detect with DFL). It is read without "
    "those packages and nothing pickled in it is run.",
)
@click.option(
    "-o",
    "--output",
    "outdir",
    default=Path("."),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for <name>.cfg, <name>.weights and <name>.names (name: the checkpoint's).",
)
def import_(checkpoint: Path, outdir: Path) -> None:
    """Convert a YOLOv5 or YOLOv8 checkpoint into a cfg, weights and names. YOLOv5 stays in darknet's own
    vocabulary (convs with activation=swish, routes, shortcuts, maxpools, upsample, and [yolo] heads with
    new_coords=1 scale_x_y=2.0 and the anchors in pixels), which every cfgsurgeon command and OpenCV's
    darknet importer read; YOLOv8's C2f split is a grouped [route] and its head the [anchor_free] layer of
    cfgsurgeon's dialect (see the README). Outputs are written atomically, never over the checkpoint."""
    from ..api.importing import import_checkpoint

    click.echo(import_checkpoint(checkpoint, warn=warn).save(outdir))
