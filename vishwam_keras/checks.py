"""Argument checks shared by layers, models and training code.

Each raises a `ValueError` that names the argument, what was given and what is expected,
before any work is done, and returns the value in its plain Python type.
"""

import math
import numbers

import numpy as np


def check_int(name, value, minimum=1, allow_none=False):
    """`value` as an int >= `minimum` (bools refused); `None` passes when `allow_none`."""
    if allow_none and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        expected = f"an int >= {minimum}"
        if allow_none:
            expected = f"None or {expected}"
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    return int(value)


def check_float(name, value, minimum=0.0, strict=False, allow_none=False):
    """`value` as a finite float >= `minimum` (> when `strict`; no bound when `minimum` is
    `None`); strings and bools refused."""
    if allow_none and value is None:
        return None
    bad = isinstance(value, bool) or not isinstance(value, numbers.Real)
    if not bad:
        bad = not math.isfinite(float(value)) or (
            minimum is not None and (value <= minimum if strict else value < minimum)
        )
    if bad:
        relation = ">" if strict else ">="
        expected = "a finite float" if minimum is None else f"a finite float {relation} {minimum}"
        if allow_none:
            expected = f"None or {expected}"
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    return float(value)


def static_dim(size):
    """A static dimension as an int; `None` for unknown or symbolic ones (jax2tf export,
    `tf.function`), which only compare safely with `==`."""
    return int(size) if isinstance(size, (int, np.integer)) else None
