"""Reductions the layers share (no imports from the rest of the package)."""

from keras import ops


def masked_mean(tokens, mask=None):
    """Mean of `tokens` `(batch, length, dim)` over the positions where `mask`
    `(batch, length)` is true (all of them without a mask).

    A row with no true entry gives zeros (the divisor is at least 1), so masked-out rows
    (a text-only example, a batch without images) stay finite.

    Example:
    >>> import keras
    >>> import numpy as np
    >>> tokens = np.array([[[1.0], [3.0], [9.0]]], "float32")
    >>> keras.ops.convert_to_numpy(masked_mean(tokens, np.array([[True, True, False]]))).tolist()
    [[2.0]]
    """
    if mask is None:
        return ops.mean(tokens, axis=1)
    weights = ops.cast(mask, tokens.dtype)[:, :, None]
    return ops.sum(tokens * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)
