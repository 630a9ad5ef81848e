"""Training options read from a cfg section the way darknet reads them (``option_find_*``: ``atoi``/``atof``
of the text, so ``0.7  # note`` is 0.7), with darknet's default when the key is absent."""

from __future__ import annotations

import re

from ..errors import CfgError
from ..layers import Node

# The choices of the training options, framework-free so the command line can list them without torch.
OPTIMIZERS = ("sgd", "adam")
LR_POLICIES = ("constant", "steps", "step", "poly", "cosine")
SPARSITY_SCHEDULES = ("constant", "global-decay", "local-decay", "layer-decay")
SPARSITY_SCOPES = ("normal", "shortcut", "slim", "all")  # the prune methods' channel sets, or every BN layer
DISTILL_MODES = ("soft", "detection")
SPLITS = ("valid", "train")  # the image lists of a .data file that can be scored
QAT_SCHEMES = ("int8", "dorefa", "pow2")  # quantization-aware training (train/qat.py)

_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def number(node: Node, key: str, default: float) -> float:
    text = node.options.get(key)
    if text is None:
        return default
    found = _NUMBER.match(text)
    if found is None:
        raise CfgError(f"option '{key}' expects a number, found '{text}'", node.where(key))
    return float(found.group(0))


def integer(node: Node, key: str, default: int) -> int:
    return int(number(node, key, default))


def text(node: Node, key: str, default: str) -> str:
    value = node.options.get(key)
    return default if value is None else value.strip()


def numbers(node: Node, key: str) -> list[float]:
    """A comma-separated list (``steps=``, ``scales=``); empty when the key is absent."""
    value = node.options.get(key)
    if value is None:
        return []
    parts = [part for part in value.split(",") if part.strip()]
    found = [_NUMBER.match(part) for part in parts]
    if any(match is None for match in found):
        raise CfgError(f"option '{key}' expects comma-separated numbers, found '{value}'", node.where(key))
    return [float(match.group(0)) for match in found if match is not None]
