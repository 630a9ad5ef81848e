"""Conversions between darknet ``.weights``, cfgsurgeon's own ``.pt`` checkpoints and the state_dicts written
by the PyTorch trainers that build their network from a darknet cfg.

Our checkpoint is a plain dict that a reader can trust without running code::

    {"format": "cfgsurgeon", "version": 1, "cfg": <cfg text>,
     "header": {"major", "minor", "revision", "seen"}, "state_dict": DarknetModel.state_dict()}

The other family read here is the ultralytics/yolov3 archive and its forks (e.g. the channel/layer pruning
repositories). Their ``train.py`` saves ``{"epoch", "best_fitness", "training_results", "model",
"optimizer"}`` where ``model`` is the ``state_dict`` of a ``module_list`` with one entry per cfg section, so
``module_list.N`` is our layer N: ``module_list.N.Conv2d.weight`` / ``.bias`` and
``module_list.N.BatchNorm2d.weight`` / ``bias`` / ``running_mean`` / ``running_var`` (earlier versions and
eriklindernoren-style code name them ``conv_N`` and ``batch_norm_N``). Such files may also be a bare
state_dict or carry DataParallel's ``module.`` prefix, and they carry no cfg, so the user names it.

Every checkpoint is read with ``torch.load(..., weights_only=True)``; numpy arrays and scalars (the archive's
``best_fitness``) are allowed through torch's allowlist, arbitrary Python objects never are.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .emit.cfg import cfg_text
from .errors import UsageError
from .files import atomic_output
from .ir import Graph, load_cfg, loads_cfg
from .layers import BatchNorm, Connected, Convolutional, Implicit, Layer, Shortcut
from .parse import Warn
from .weights import WeightsHeader, write_weights

if TYPE_CHECKING:
    from .emit.torch import DarknetModel

CHECKPOINT_FORMAT = "cfgsurgeon"
CHECKPOINT_VERSION = 1
OUTPUT_SUFFIXES = (".pt", ".weights")

# For a layer and one of its ``.weights`` tensors: candidate keys (first found wins), the shape stored under
# that key, and a function turning the stored array into the darknet tensor.
Convert = Callable[[np.ndarray], np.ndarray]
Resolver = Callable[[Layer, str], tuple[list[str], tuple[int, ...], Convert | None]]


# -- writing ----------------------------------------------------------------------------------------------
def save_checkpoint(
    model_or_graph: DarknetModel | Graph, path: str | Path, extra: Mapping[str, Any] | None = None
) -> None:
    """Write our ``.pt`` checkpoint for a model (or a graph with weights loaded), atomically. ``extra``: more
    top-level entries (tensors, numbers, strings, lists, dicts only), e.g. the trainer's ``"train"`` state;
    readers of the weights ignore them."""
    import torch

    from .emit.torch import to_torch

    if isinstance(model_or_graph, Graph):
        graph, model = model_or_graph, to_torch(model_or_graph)
    else:
        model, graph = model_or_graph, model_or_graph.graph
    header = graph.weights_header or WeightsHeader()
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "cfg": cfg_text(graph),
        "header": asdict(header),
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
    }
    clash = set(extra or {}) & set(payload)
    if clash:
        raise ValueError(f"checkpoint entries {sorted(clash)} are reserved")
    payload.update(extra or {})
    with atomic_output(path) as out:
        torch.save(payload, out)


def write_model(graph: Graph, path: str | Path) -> int:
    """Write ``graph`` (weights loaded) as ``.weights`` or ``.pt``, chosen by the suffix; returns its size."""
    path = Path(path)
    check_output_suffix(path)
    if path.suffix == ".weights":
        return write_weights(graph, path)
    save_checkpoint(graph, path)
    return path.stat().st_size


def check_output_suffix(path: Path) -> None:
    if path.suffix not in OUTPUT_SUFFIXES:
        raise UsageError(
            f"output {path} should end in .pt (cfgsurgeon checkpoint) or .weights (darknet weights)"
        )


# -- reading ----------------------------------------------------------------------------------------------
def load_checkpoint(path: str | Path, cfg_path: str | Path | None = None, warn: Warn = print) -> Graph:
    """Read a ``.pt`` file into a :class:`Graph` with ``layer.weights`` filled and ``weights_header`` set.

    Our own checkpoints embed their cfg (``cfg_path``, when given, replaces it); the ultralytics-archive
    family needs ``cfg_path``. A state_dict that does not fit the cfg is an error naming the key and shapes.
    """
    path = Path(path)
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        return _load_ours(obj, path, cfg_path, warn)
    state = _archive_state_dict(obj)
    if state is None:
        raise UsageError(
            "not a checkpoint this tool knows: expected a cfgsurgeon .pt or a state_dict with "
            "'module_list.N.…' keys (ultralytics/yolov3 archive layout)",
            path,
        )
    if cfg_path is None:
        message = "this checkpoint (module_list.N.… keys) carries no cfg: name it with `cfg_path`"
        raise UsageError(message, path)
    graph = load_cfg(cfg_path, warn)
    _fill_weights(graph, state, _archive_resolver, _is_counter, path)
    graph.weights_header = WeightsHeader(seen=_seen(obj))
    return graph


def checkpoint_entry(path: str | Path, key: str) -> Any:
    """A top-level entry of our checkpoint besides the model (see ``extra`` of :func:`save_checkpoint`), or
    None when absent; read with ``weights_only=True`` like everything here."""
    path = Path(path)
    obj = _torch_load(path)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise UsageError("not a cfgsurgeon checkpoint", path)
    return obj.get(key)


def _load_ours(obj: dict, path: Path, cfg_path: str | Path | None, warn: Warn) -> Graph:
    version = obj.get("version")
    if version != CHECKPOINT_VERSION:
        raise UsageError(f"cfgsurgeon checkpoint version {version} is not supported (reads 1)", path)
    state, text = obj.get("state_dict"), obj.get("cfg")
    if not isinstance(state, Mapping) or not isinstance(text, str):
        raise UsageError("damaged cfgsurgeon checkpoint: it needs a 'cfg' text and a 'state_dict'", path)
    if cfg_path is not None:
        graph = load_cfg(cfg_path, warn)
    else:
        graph = loads_cfg(text, f"{path} (embedded cfg)", warn)
    extra = _ours_extra_keys(graph)
    _fill_weights(graph, state, _ours_resolver, lambda key: key in extra or _is_counter(key), path)
    header = obj.get("header") or {}
    graph.weights_header = WeightsHeader(**{k: int(v) for k, v in header.items() if k in _HEADER_FIELDS})
    return graph


_HEADER_FIELDS = ("major", "minor", "revision", "seen")


def _torch_load(path: Path) -> Any:
    import torch

    if not path.is_file():
        raise UsageError("no such checkpoint file", path)
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_numpy_globals()):
            warnings.simplefilter("ignore")  # torch's advice to pass weights_only=False: never taken here
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _load_error(exc, path) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise UsageError(f"cannot read as a PyTorch checkpoint ({_first_line(exc)})", path) from None


def _load_error(exc: pickle.UnpicklingError, path: Path) -> UsageError:
    """Python objects the restricted unpickler refused, or a file that is not a torch.save file at all."""
    text = str(exc)
    names = _unsafe_globals(path) or re.findall(r"safe_globals\(\[([^\]]+)\]\)", text)[:1]
    if any(name.startswith(("models.yolo.", "models.common.", "ultralytics.")) for name in names):
        return UsageError(
            "a YOLOv5/ultralytics model checkpoint: convert it with `cfgsurgeon import --checkpoint FILE` "
            "first, then load the .cfg/.weights it writes",
            path,
        )
    if names or any(sign in text for sign in ("allowed global", "Unsupported global", "Can only build")):
        return UsageError(_unsafe_message(list(dict.fromkeys(names))), path)
    detail = text.split("WeightsUnpickler error:")[-1].strip().splitlines()[0] if text.strip() else ""
    return UsageError(f"cannot read as a PyTorch checkpoint (not a torch.save file? {detail})".strip(), path)


def _numpy_globals() -> list[Any]:
    """Plain numeric numpy arrays and scalars (never object arrays): what training scripts store besides
    tensors, e.g. ``best_fitness``. torch's restricted unpickler still refuses everything else."""
    core = getattr(np, "_core", None) or np.core
    allowed: list[Any] = [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype]
    allowed += [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFD"]
    return allowed


def _unsafe_globals(path: Path) -> list[str]:
    import torch

    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # a legacy (non-zip) file: the names are only a courtesy
        return []


def _unsafe_message(names: list[str]) -> str:
    listed = f" ({', '.join(names[:4])}{', …' if len(names) > 4 else ''})" if names else ""
    return (
        f"the file contains Python objects{listed} that cannot be loaded safely with weights_only=True, and "
        "cfgsurgeon never unpickles code from a file; if you trust it, re-save just the weights where its "
        "training code is importable: ck = torch.load(f, weights_only=False); m = ck['model']; "
        "torch.save({'model': m.state_dict() if hasattr(m, 'state_dict') else m}, 'state_dict.pt')"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _archive_state_dict(obj: Any) -> dict[str, Any] | None:
    """The ``module_list.N.…`` state_dict inside ``obj`` (``model``, ``state_dict`` or ``obj`` itself), with
    DataParallel's ``module.`` prefixes removed; None when there is none."""
    candidates = [obj.get("model"), obj.get("state_dict"), obj] if isinstance(obj, dict) else []
    for candidate in candidates:
        if not isinstance(candidate, Mapping) or not candidate:
            continue
        state = {_strip_module_prefix(str(key)): value for key, value in candidate.items()}
        if any(key.startswith("module_list.") for key in state):
            return state
    return None


def _strip_module_prefix(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module.") :]
    return key


def _seen(obj: Any) -> int:
    value = obj.get("seen") if isinstance(obj, dict) else None
    try:
        return int(np.asarray(value).reshape(-1)[0]) if value is not None else 0
    except (TypeError, ValueError, IndexError):
        return 0


# -- one mapping per family: IR tensor → key(s) ------------------------------------------------------------
_BN_PATHS = {
    "biases": "bias",
    "scales": "weight",
    "rolling_mean": "running_mean",
    "rolling_variance": "running_var",
}


def _ours_resolver(layer: Layer, name: str) -> tuple[list[str], tuple[int, ...], Convert | None]:
    from .emit.torch import tensor_paths

    shape = dict(layer.weight_layout())[name]
    return [f"blocks.{layer.index}.{tensor_paths(layer)[name]}"], shape, None


def _ours_extra_keys(graph: Graph) -> set[str]:
    """Keys our state_dict holds that no ``.weights`` tensor comes from: the antialiasing blur (a constant)
    and the second name of parameters shared with ``share_index``."""
    extra = set()
    for layer in graph.layers:
        if not isinstance(layer, Convolutional):
            continue
        prefix = f"blocks.{layer.index}"
        if layer.antialiasing:
            extra.add(f"{prefix}.blur.weight")
        if layer.shares is not None:
            extra |= {f"{prefix}.conv.weight", f"{prefix}.conv.bias"}
            extra |= {f"{prefix}.bn.{key}" for key in (*_BN_PATHS.values(), "num_batches_tracked")}
    return extra


def _archive_resolver(layer: Layer, name: str) -> tuple[list[str], tuple[int, ...], Convert | None]:
    shape = dict(layer.weight_layout())[name]
    base = f"module_list.{layer.index}"
    if isinstance(layer, Convolutional):
        convs = [f"{base}.Conv2d", f"{base}.conv_{layer.index}"]
        bns = [f"{base}.BatchNorm2d", f"{base}.batch_norm_{layer.index}"]
        if name == "weights":
            return [f"{conv}.weight" for conv in convs], shape, None
        if name == "biases" and not layer.batch_normalize:
            return [f"{conv}.bias" for conv in convs], shape, None
        return [f"{bn}.{_BN_PATHS[name]}" for bn in bns], shape, None
    if isinstance(layer, BatchNorm):
        return [f"{base}.{_BN_PATHS[name]}", f"{base}.BatchNorm2d.{_BN_PATHS[name]}"], shape, None
    if isinstance(layer, Shortcut):
        return _archive_shortcut(layer)
    kind = "connected" if isinstance(layer, Connected) else "implicit" if isinstance(layer, Implicit) else ""
    raise UsageError(
        f"layer {layer.index} [{layer.header}] has weights, but checkpoints in the module_list layout have "
        f"no convention for {kind or 'this layer type'}; convert it from .weights instead",
        layer.where(),
    )


def _archive_shortcut(layer: Shortcut) -> tuple[list[str], tuple[int, ...], Convert | None]:
    """The archive's weighted shortcut stores one raw scalar per input (``w``) and uses ``sigmoid(w)·2/n``;
    darknet's per_feature/per_layer weights with ``weights_normalization=none`` are exactly those factors."""
    import torch

    n = len(layer.inputs)
    if layer.weights_type not in ("per_feature", "per_layer") or layer.weights_normalization != "none":
        raise UsageError(
            f"layer {layer.index} [shortcut] has weights_type={layer.weights_type} "
            f"weights_normalization={layer.weights_normalization}; the module_list layout's weighted "
            "shortcut (sigmoid(w)·2/n per input) equals only weights_type=per_feature (or per_layer) with "
            "weights_normalization=none",
            layer.where(),
        )

    def to_darknet(raw: np.ndarray) -> np.ndarray:
        return (torch.sigmoid(torch.from_numpy(raw)) * (2 / n)).numpy().reshape(n, 1)

    return [f"module_list.{layer.index}.w"], (n,), to_darknet


def _is_counter(key: str) -> bool:
    return key.endswith(".num_batches_tracked")


# -- filling the graph ------------------------------------------------------------------------------------
def _fill_weights(
    graph: Graph, state: Mapping[str, Any], resolve: Resolver, ignorable: Callable[[str], bool], path: Path
) -> None:
    """Set every layer's ``weights`` from ``state``; shape errors name the key, missing and unexpected keys
    are reported together (an unexpected key means the cfg does not describe the checkpoint)."""
    missing: list[str] = []
    used: set[str] = set()
    for layer in graph.layers:
        layout = layer.weight_layout()
        if not layout:
            continue
        tensors = {}
        for name, _ in layout:
            keys, stored_shape, convert = resolve(layer, name)
            key = next((k for k in keys if k in state), None)
            if key is None:
                missing.append(keys[0])
                continue
            used.add(key)
            array = _as_float32(state[key], key, path)
            if array.shape != stored_shape:
                raise UsageError(
                    f"checkpoint key '{key}' has shape {tuple(array.shape)}, layer {layer.index} "
                    f"[{layer.header}] (cfg line {layer.line}) needs {stored_shape}; wrong cfg?",
                    path,
                )
            tensors[name] = convert(array) if convert else array
        layer.weights = tensors
    unexpected = [key for key in state if key not in used and not ignorable(key)]
    if missing or unexpected:
        raise UsageError(_mismatch(missing, unexpected, graph.source), path)


def _as_float32(value: Any, key: str, path: Path) -> np.ndarray:
    import torch

    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise UsageError(f"checkpoint key '{key}' is not a floating-point tensor", path)
    return value.detach().to(torch.float32).contiguous().numpy().copy()


def _mismatch(missing: list[str], unexpected: list[str], cfg: str) -> str:
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            shown = ", ".join(keys[:3]) + (", …" if len(keys) > 3 else "")
            parts.append(f"{len(keys)} {what} key{'s' if len(keys) > 1 else ''} ({shown})")
    return f"the checkpoint does not fit {cfg}: " + "; ".join(parts)
