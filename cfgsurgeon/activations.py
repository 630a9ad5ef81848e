"""darknet's activation functions in numpy (float64), for passes that evaluate constants or statistics.
The torch backend's are functions of ``emit/torch_ops.py`` (also copied into standalone sources); tests hold
the two together."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _logistic(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def _softplus(x: np.ndarray, threshold: float = 20.0) -> np.ndarray:
    return np.where(
        x > threshold, x, np.where(x < -threshold, np.exp(x), np.log1p(np.exp(np.minimum(x, 30.0))))
    )


def _stair(x: np.ndarray) -> np.ndarray:
    n = np.floor(x)
    half = np.floor(x / 2)
    return np.where(np.remainder(n, 2) == 0, half, (x - n) + half)


ELEMENTWISE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda x: x,
    "leaky": lambda x: np.where(x > 0, x, 0.1 * x),
    "revleaky": lambda x: np.where(x > 0, x, 0.1 * x),
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "relie": lambda x: np.where(x > 0, x, 0.01 * x),
    "ramp": lambda x: x * (x > 0) + 0.1 * x,
    "logistic": _logistic,
    "loggy": lambda x: 2.0 * _logistic(x) - 1.0,
    "tanh": np.tanh,
    "elu": lambda x: np.where(x >= 0, x, np.expm1(np.minimum(x, 0.0))),
    "selu": lambda x: np.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * np.expm1(np.minimum(x, 0.0))),
    "gelu": lambda x: 0.5 * x * (1.0 + np.tanh(0.797885 * x + 0.035677 * x**3)),
    "swish": lambda x: x * _logistic(x),
    "mish": lambda x: x * np.tanh(_softplus(x)),
    "hard_mish": lambda x: np.where(x > 0, x, np.where(x > -2, 0.5 * x * x + x, 0.0)),
    "plse": lambda x: np.where(x < -4, 0.01 * (x + 4), np.where(x > 4, 0.01 * (x - 4) + 1, 0.125 * x + 0.5)),
    "hardtan": lambda x: np.clip(x, -1.0, 1.0),
    "lhtan": lambda x: np.where(x < 0, 0.001 * x, np.where(x > 1, 0.001 * (x - 1) + 1, x)),
    "stair": _stair,
}


def activate(name: str, x: np.ndarray) -> np.ndarray:
    """Apply an element-wise activation (the normalize_channels family mixes channels and is not here)."""
    return ELEMENTWISE[name](np.asarray(x, dtype=np.float64))
