"""Models from other tools' checkpoints: :func:`import_checkpoint` (``cfgsurgeon import``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..files import atomic_output, refuse_overwrite
from .model import Model, quiet
from .report import Lines, Report


def import_checkpoint(checkpoint: str | Path, *, warn: Callable[[str], None] = quiet) -> Imported:
    """A YOLOv5 ``.pt`` checkpoint (the ``ultralytics/yolov5`` repository's) or a YOLOv8 one (the
    ``ultralytics`` package's ``DetectionModel``) as a darknet :class:`Model`, read without those packages and
    without running anything pickled in the file; the checkpoint's model class decides which. YOLOv8's head
    becomes an ``[anchor_free]`` layer. ``warn`` receives the generated cfg's warnings. The result's
    :meth:`Imported.save` writes ``NAME.cfg``, ``NAME.weights`` and ``NAME.names``.

    >>> imported = import_checkpoint("yolov5n.pt")  # doctest: +SKIP
    >>> imported.save("out")  # doctest: +SKIP
    """
    from ..ultralytics import yolov5, yolov8
    from ..ultralytics.pickled import read_pickled

    content = read_pickled(checkpoint)
    if yolov8.is_ultralytics_package(content):
        v8 = yolov8.read_checkpoint(checkpoint, content)
        graph = yolov8.import_graph(v8, warn)
        return Imported(Model(graph), v8.names, Path(checkpoint), v8.model_class, yolov8.multiples(v8))
    read = yolov5.read_checkpoint(checkpoint)
    graph = yolov5.import_graph(read, warn)
    multiples = (read.yaml.get("depth_multiple"), read.yaml.get("width_multiple"))
    return Imported(Model(graph), read.names, Path(checkpoint), read.model_class, multiples)


class Imported(Report):
    """``cfgsurgeon import``: ``model`` (the darknet :class:`Model`, weights included), ``names`` (the class
    names), ``checkpoint`` (the file read). ``lines()``: what was read; :meth:`save` writes the files."""

    def __init__(
        self, model: Model, names: list[str], checkpoint: Path, model_class: str, multiples: tuple
    ) -> None:
        self.model, self.names, self.checkpoint = model, names, checkpoint
        self.model_class, self.multiples = model_class, multiples

    def lines(self) -> list[str]:
        depth, width = self.multiples
        return [
            f"read {self.checkpoint}: {self.model_class} (depth {depth}, width {width}), "
            f"{len(self.names)} classes -> {len(self.model.layers)} darknet layers, "
            f"{self.model.params:,} params, {self.model.bflops:.3f} BFLOPs"
        ]

    def save(self, directory: str | Path) -> Lines:
        """Write ``NAME.cfg``, ``NAME.weights`` and ``NAME.names`` (NAME: the checkpoint's stem) into
        ``directory``, each atomically and never over the checkpoint. Returns the command's output."""
        directory = Path(directory)
        names_file = directory / f"{self.checkpoint.stem}.names"
        refuse_overwrite([names_file], [self.checkpoint])
        saved = self.model.save(directory, self.checkpoint.stem, inputs=[self.checkpoint])
        with atomic_output(names_file, "w") as out:
            out.write("".join(f"{name}\n" for name in self.names))
        return Lines(
            [
                *self.lines(),
                f"wrote {saved.cfg}",
                f"wrote {saved.weights} ({saved.weights_bytes:,} bytes)",
                f"wrote {names_file} ({len(self.names)} names)",
            ]
        )
