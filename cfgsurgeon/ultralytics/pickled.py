"""A checkpoint reader that never runs what the pickle names.

A ``torch.save`` file is a zip holding ``<prefix>/data.pkl`` (the pickled object tree) and one member
``<prefix>/data/<key>`` per tensor storage. A YOLOv5 checkpoint pickles the whole model: classes of the
training repository (``models.yolo.Model``, ``models.common.C3``) and of ``torch.nn``. Unpickling it normally
would import and call whatever the file names, so :class:`_SafeUnpickler` resolves only a fixed table of
harmless callables (our own rebuilders of tensors, storages and numpy arrays, builtin containers)
and turns every other global into an :class:`Inert` class that keeps the state handed to it and does nothing
else. Tensors come back as numpy arrays (read with bounds checks); torch is not imported.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import UsageError

# torch's legacy storage class names (what torch.save writes in a storage's persistent id) → element type.
STORAGE_DTYPES = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",  # kept as raw bits; no YOLO checkpoint here stores bf16
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class Inert:
    """Stands for a class the pickle names but that is never imported: it records the arguments and the
    state the pickle gives it (``__dict__`` for ``torch.nn`` modules: ``_modules``, ``_parameters``,
    ``_buffers`` and plain attributes)."""

    pickled_name: ClassVar[str] = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_pickled_args"] = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (__dict__, __slots__) form
        if isinstance(state, dict):
            self.__dict__.update({str(key): value for key, value in state.items()})
        else:
            self.__dict__["_pickled_state"] = state

    # properties, so that no state from the file can shadow them
    @property
    def qualified(self) -> str:
        """The name the pickle gave the class, ``module.Name``."""
        return type(self).pickled_name

    @property
    def class_name(self) -> str:
        return self.qualified.rsplit(".", 1)[-1]

    def __repr__(self) -> str:
        return f"<inert {self.qualified}>"


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(STORAGE_DTYPES[self.name])


@dataclass(frozen=True)
class _Storage:
    dtype: np.dtype
    data: bytes


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2`` done on bytes: a copy of the strided view, refused when the view
    would reach outside its storage."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor without a storage")
    size, stride = tuple(int(n) for n in size), tuple(int(n) for n in stride)
    count = len(storage.data) // storage.dtype.itemsize
    if len(size) != len(stride) or min((*size, *stride, int(offset)), default=0) < 0:
        raise pickle.UnpicklingError("a tensor with a negative size, stride or offset")
    if math.prod(size) == 0:
        return np.zeros(size, storage.dtype)
    if math.prod(size) > count:  # broadcast views (stride 0) would be copied out to their full size
        raise pickle.UnpicklingError("a tensor with more elements than its storage")
    last = int(offset) + sum((n - 1) * step for n, step in zip(size, stride, strict=True))
    if last >= count:
        raise pickle.UnpicklingError("a tensor reaching outside its storage")
    flat = np.frombuffer(storage.data, storage.dtype, count)
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[int(offset) :], size, tuple(step * itemsize for step in stride), writeable=False
    )
    return view.copy()


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (numpy's raw data)."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# numpy's pickle protocol, redone so that nothing is allocated before its bytes are in hand: a dtype spec,
# then an array placeholder that becomes an array when its state (shape, dtype, raw bytes) arrives.
NUMERIC_DTYPE = re.compile(r"[fiu][1248]|b1")


class NumpyDtype:
    """``numpy.dtype(spec)`` as pickled (byte order from its state); only plain numeric kinds resolve."""

    def __init__(self, spec: Any, *_: Any) -> None:
        self.spec, self.order = str(spec), "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]

    def resolve(self) -> np.dtype:
        if not NUMERIC_DTYPE.fullmatch(self.spec):
            raise pickle.UnpicklingError(f"a numpy array of dtype {self.spec[:20]!r} (only numbers are read)")
        return np.dtype(self.order.replace("|", "=") + self.spec)


class NumpyArray:
    """``numpy.core.multiarray._reconstruct`` + ``__setstate__``: ``array`` once the state has arrived."""

    def __init__(self, *_: Any) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], NumpyDtype)):
            raise pickle.UnpicklingError("a numpy array without (version, shape, dtype, order, data)")
        _, shape, dtype, fortran, raw = state
        dtype = dtype.resolve()
        if not isinstance(raw, bytes) or len(raw) != math.prod(shape) * dtype.itemsize:
            raise pickle.UnpicklingError(f"a numpy array of shape {shape} with {len(raw)} bytes of data")
        self.array = np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C").copy()


def _numpy_scalar(dtype: Any, raw: Any = b"") -> Any:
    if not isinstance(dtype, NumpyDtype) or not isinstance(raw, bytes):
        raise pickle.UnpicklingError("a numpy scalar without dtype and data")
    resolved = dtype.resolve()
    if len(raw) != resolved.itemsize:
        raise pickle.UnpicklingError("a numpy scalar with the wrong number of bytes")
    return np.frombuffer(raw, resolved, 1)[0].item()


def _numpy_callables() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): NumpyArray, ("numpy", "dtype"): NumpyDtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "_reconstruct")] = NumpyArray
        table[(module, "scalar")] = _numpy_scalar
    return table


# The only globals a pickle gets as themselves; every other name becomes an Inert class.
ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("__builtin__", "set"): set,
    ("builtins", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1_encode,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
    **_numpy_callables(),
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix
        self.inert: dict[str, type[Inert]] = {}

    def find_class(self, module: str, name: str) -> Any:
        allowed = ALLOWED.get((module, name))
        if allowed is not None:
            return allowed
        qualified = f"{module}.{name}"
        if qualified not in self.inert:
            self.inert[qualified] = type(name, (Inert,), {"pickled_name": qualified, "__module__": __name__})
        return self.inert[qualified]

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {str(pid)[:40]}")
        kind, key = pid[1], str(pid[2])
        if not isinstance(kind, _StorageType):
            raise pickle.UnpicklingError(f"a storage of unknown type {kind!r}")
        try:
            data = self.archive.read(f"{self.prefix}data/{key}")
        except KeyError:
            raise pickle.UnpicklingError(f"storage data/{key} is missing") from None
        return _Storage(kind.dtype, data)


def read_pickled(path: str | Path) -> Any:
    """The object tree of a ``torch.save`` zip checkpoint, with every class it names inert (see the module
    doc). A file that is not such a zip, or is damaged, is a :class:`UsageError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError("no such checkpoint file", path)
    with path.open("rb") as stream:
        head = stream.read(4)
    if not zipfile.is_zipfile(path):
        if head[:1] == b"\x80":
            found = "a bare pickle (torch's legacy format before 1.6); re-save it with a current torch"
        elif head[:2] == b"PK":
            found = "a damaged or truncated zip"
        else:
            found = "neither a zip nor a pickle"
        raise UsageError(f"not a PyTorch checkpoint: expected a torch.save zip, found {found}", path)
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
            if len(pickles) != 1:
                found = f"{len(pickles)} data.pkl members"
                raise UsageError(f"not a PyTorch checkpoint: expected one data.pkl, found {found}", path)
            prefix = pickles[0][: -len("data.pkl")]
            return _SafeUnpickler(archive.read(pickles[0]), archive, prefix).load()
    except UsageError:
        raise
    except (
        zipfile.BadZipFile,
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        OSError,
        OverflowError,
        RecursionError,
        MemoryError,
    ) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"damaged PyTorch checkpoint ({detail})", path) from None
