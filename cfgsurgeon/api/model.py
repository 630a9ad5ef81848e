"""``Model``: the object a Python user works with — a darknet model (its IR graph and weights) with one method
per thing the command line does. Every method returns a value; nothing prints unless a callback asks."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..ir import Graph, load_cfg
from .editing import Editing
from .quantizing import Quantizing
from .report import Report
from .running import Running
from .training import Training
from .workflows import Workflows

if TYPE_CHECKING:
    from ..layers import Layer

Warn = Callable[[str], None]
CHECKPOINT_SUFFIXES = (".pt", ".pth")


def quiet(message: str) -> None:
    """The default ``warn`` of the API: cfg warnings are dropped (pass ``warn=print`` to see them)."""


class Model(Editing, Quantizing, Running, Training, Workflows):
    """A darknet model: ``graph`` (the IR, for experts) and where it was read from.

    >>> from cfgsurgeon import Model
    >>> model = Model.load("yolov3-tiny.cfg", "yolov3-tiny.weights")  # doctest: +SKIP
    >>> pruned = model.prune("slim", percent=0.3)  # doctest: +SKIP
    >>> pruned.model.bflops, pruned.report["totals"]  # doctest: +SKIP
    """

    def __init__(
        self, graph: Graph, cfg: str | Path | None = None, weights: str | Path | None = None
    ) -> None:
        self.graph = graph
        self.cfg = None if cfg is None else Path(cfg)
        self.weights = None if weights is None else Path(weights)

    @classmethod
    def load(
        cls,
        cfg: str | Path | None = None,
        weights: str | Path | None = None,
        *,
        tree: str | Path | None = None,
        warn: Warn = quiet,
        checkpoint: bool | None = None,
    ) -> Model:
        """Read a cfg and, optionally, its weights: darknet ``.weights`` or a ``.pt`` checkpoint (ours embeds
        its cfg, so ``cfg`` may be left out; a ``module_list`` state_dict needs it). ``tree``: the
        softmax-tree file of a cfg with ``tree=``. ``warn`` receives the cfg's warnings (default: dropped).
        ``checkpoint``: whether ``weights`` is a PyTorch checkpoint (default: when it ends in .pt or .pth).

        >>> Model.load("yolov3-tiny.cfg", "yolov3-tiny.weights").graph.params  # doctest: +SKIP
        8858734
        """
        if checkpoint is None:
            checkpoint = weights is not None and Path(weights).suffix in CHECKPOINT_SUFFIXES
        if weights is not None and checkpoint:
            from ..convert import load_checkpoint

            graph = load_checkpoint(weights, cfg, warn=warn)
        elif cfg is None:
            raise UsageError("give `cfg` (only a .pt checkpoint of ours carries its own)")
        else:
            graph = load_cfg(cfg, warn=warn)
            if weights is not None:
                from ..weights import read_weights

                read_weights(graph, weights)
        graph.tree_file = None if tree is None else str(tree)
        return cls(graph, cfg, weights)

    @property
    def layers(self) -> list[Layer]:
        """The IR layers in darknet order (``layers[i].index == i``)."""
        return self.graph.layers

    @property
    def params(self) -> int:
        return self.graph.params

    @property
    def bflops(self) -> float:
        return self.graph.bflops

    @property
    def has_weights(self) -> bool:
        """Whether weights were read (or set by a surgery); a bare cfg has none."""
        return any(getattr(layer, "weights", None) for layer in self.graph.layers)

    def summary(self) -> Summary:
        """The layer table of ``cfgsurgeon inspect`` (``str()`` of it) and its data (``.data``).

        >>> print(Model.load("yolov3-tiny.cfg").summary())  # doctest: +SKIP
        """
        return Summary(self.graph, with_gamma=self.has_weights)

    def save(
        self, directory: str | Path, name: str | None = None, inputs: Sequence[str | Path] = ()
    ) -> Saved:
        """Write ``NAME.cfg`` (and ``NAME.weights`` when the model has weights) into ``directory``; ``name``
        defaults to the cfg's stem. Refuses to overwrite the files the model was read from, or ``inputs``
        (other files the caller read, e.g. a names file).

        >>> model.save("out")  # doctest: +SKIP
        """
        from ..emit.cfg import write_cfg
        from ..files import refuse_overwrite
        from ..weights import write_weights

        directory = Path(directory)
        cfg_name = name or (self.cfg.stem if self.cfg else "model")
        weights_name = name or ((self.weights or self.cfg).stem if (self.weights or self.cfg) else "model")
        out_cfg, out_weights = directory / f"{cfg_name}.cfg", directory / f"{weights_name}.weights"
        refuse_overwrite([out_cfg, out_weights], [self.cfg, self.weights, *map(Path, inputs)])
        directory.mkdir(parents=True, exist_ok=True)
        write_cfg(self.graph, out_cfg)
        if not self.has_weights:
            return Saved(out_cfg, None, None)
        return Saved(out_cfg, out_weights, write_weights(self.graph, out_weights))

    def to_torch(self) -> Any:
        """The model as a ``torch.nn.Module`` whose forward is darknet's (needs torch).

        >>> module = Model.load("yolov3-tiny.cfg").to_torch()  # doctest: +SKIP
        """
        from ..emit.torch import to_torch

        return to_torch(self.graph)

    def copy(self) -> Model:
        """An independent copy (graph and weights), e.g. to edit ``graph`` by hand.

        >>> twin = model.copy()  # doctest: +SKIP
        """
        return Model(self.graph.clone(), self.cfg, self.weights)

    def __repr__(self) -> str:
        source = self.cfg or self.graph.source
        return f"Model({source}, {len(self.graph)} layers, {self.params:,} params, {self.bflops:.3f} BFLOPs)"


class Summary(Report):
    """``cfgsurgeon inspect``: the layer table (``lines()``) and the same as data (``data``; ``--json``)."""

    def __init__(self, graph: Graph, with_gamma: bool) -> None:
        from ..summary import graph_summary

        self.graph = graph
        self.with_gamma = with_gamma
        self.data = graph_summary(graph)

    def lines(self) -> list[str]:
        from ..summary import table_lines

        return table_lines(self.graph, with_gamma=self.with_gamma)

    def json(self) -> str:
        return json.dumps(self.data)


class Saved(Report):
    """What :meth:`Model.save` wrote."""

    def __init__(self, cfg: Path, weights: Path | None, weights_bytes: int | None) -> None:
        self.cfg, self.weights, self.weights_bytes = cfg, weights, weights_bytes

    def lines(self) -> list[str]:
        lines = [f"wrote {self.cfg}"]
        if self.weights is not None:
            lines.append(f"wrote {self.weights} ({self.weights_bytes:,} bytes)")
        return lines
