"""Rotary position embedding (RoPE) with a base wavelength and frequency scaling.

Applied to queries and keys inside attention; local and global layers use their own settings.
"""

import keras
from keras import ops

from vishwam_keras.checks import check_float


@keras.saving.register_keras_serializable(package="vishwam_keras")
class RotaryEmbedding(keras.layers.Layer):
    """Rotates pairs of features by a position-dependent angle (Su et al., 2021).

    Feature `i` of the first half is paired with feature `i` of the second half (the
    "rotate half" layout of Gemma and KerasHub). Frequencies are
    `max_wavelength ** (-2i / head_dim)`; positions are divided by `scaling_factor`,
    which stretches the context a model was trained on (Gemma 3 uses 8 on global layers).

    Args:
        max_wavelength: int. The base wavelength. Defaults to `10000`.
        scaling_factor: float >= 1. Position interpolation factor. Defaults to `1.0`.

    Call arguments:
        inputs: tensor `(batch, length, heads, head_dim)`; head_dim must be even.
        positions: optional int tensor `(length,)` or `(batch, length)`.
        start_index: int or scalar tensor, used when `positions` is None. Defaults to 0.

    Example:
    >>> rope = RotaryEmbedding(max_wavelength=10_000)
    >>> tuple(rope(keras.ops.ones((1, 4, 2, 8))).shape)
    (1, 4, 2, 8)
    """

    def __init__(self, max_wavelength=10000, scaling_factor=1.0, **kwargs):
        super().__init__(**kwargs)
        check_float("max_wavelength", max_wavelength, strict=True)
        check_float("scaling_factor", scaling_factor, minimum=1.0)
        self.max_wavelength = max_wavelength
        self.scaling_factor = scaling_factor
        self.built = True  # no weights; an unbuilt layer makes JAX `predict` trace op by op

    def _angles(self, positions, head_dim):
        exponents = ops.arange(0, head_dim // 2, dtype="float32") * (2.0 / head_dim)
        inverse_frequencies = 1.0 / ops.power(float(self.max_wavelength), exponents)
        positions = ops.cast(positions, "float32") / self.scaling_factor
        return positions[..., None] * inverse_frequencies  # (..., length, head_dim/2)

    def call(self, inputs, positions=None, start_index=0):
        if len(inputs.shape) != 4:
            raise ValueError(
                "`inputs` must have rank 4: (batch, length, heads, head_dim). "
                f"Received: inputs.shape={tuple(inputs.shape)}"
            )
        head_dim = inputs.shape[-1]
        if head_dim % 2 != 0:
            raise ValueError(f"RoPE needs an even head_dim. Received: head_dim={head_dim}")
        if positions is None:
            length = ops.shape(inputs)[1]
            positions = ops.arange(length, dtype="float32") + ops.cast(start_index, "float32")
        angles = self._angles(positions, head_dim)
        if len(angles.shape) == 2:
            angles = angles[None]
        cos = ops.cos(angles)[:, :, None, :]
        sin = ops.sin(angles)[:, :, None, :]
        x = ops.cast(inputs, "float32")
        first, second = ops.split(x, 2, axis=-1)
        rotated = ops.concatenate(
            [first * cos - second * sin, second * cos + first * sin], axis=-1
        )
        return ops.cast(rotated, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {"max_wavelength": self.max_wavelength, "scaling_factor": self.scaling_factor}
        )
        return config
