"""RMSNorm, Gemma style: zero-initialised weights, scale `1 + w`, computed in float32.

Used before and after every attention and feed-forward block, for QK-norm and the final norm.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="vishwam_keras")
class RMSNorm(keras.layers.Layer):
    """Root-mean-square normalisation over the last axis.

    `y = x / sqrt(mean(x^2) + epsilon) * (1 + scale)`. The scale starts at zero, so a
    fresh layer is a pure normalisation. The computation runs in float32 whatever the
    dtype policy, and the result is cast back to the compute dtype.

    Args:
        epsilon: float. Added to the mean square. Defaults to `1e-6`.

    Example:
    >>> norm = RMSNorm()
    >>> norm(keras.ops.ones((2, 3, 8))).shape
    (2, 3, 8)
    """

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        if not epsilon > 0:
            raise ValueError(f"`epsilon` must be positive. Received: epsilon={epsilon!r}")
        self.epsilon = epsilon

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale", shape=(input_shape[-1],), initializer="zeros"
        )
        self.built = True

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        variance = ops.mean(ops.square(x), axis=-1, keepdims=True)
        x = x * ops.rsqrt(variance + self.epsilon)
        x = x * (1.0 + ops.cast(self.scale, "float32"))
        return ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config
